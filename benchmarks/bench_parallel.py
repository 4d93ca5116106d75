"""Parallel interval replay on the demo guest (``python -m benchmarks parallel``).

In one run, on one fresh recording of the demo guest (128 MiB, memchurn, a
checkpoint every 2 s):

* ``verify`` of every interval serially (one local process), with
  ``--jobs 2`` (target: at least 1.6x faster on 2 cores) and on a local Dask
  cluster of two single-threaded workers started as separate processes
  (target: at least 1.5x);
* the overhead of each job (building it: export and log slice; setting up on
  the worker; starting QEMU and restoring the checkpoint) against the
  interval's replay time, and the job's size on the wire;
* ``writeset`` with ``--jobs 2``: each interval's working set as a fraction
  of guest RAM;
* the speedup SimuBoost's model predicts from the serial run's own per-job
  times, against what the runs achieved. The model: every interval is an
  independent job costing its overhead plus its replay; with N slots and the
  longest job first (LPT), the run takes as long as the busiest slot, so
  ``S = sum(job) / makespan`` (never more than ``n`` nor than
  ``sum / max(job)``: the longest interval bounds it).

Numbers depend on the load of the machine (other people's QEMUs compete for
the same 2 cores): the load average is printed with them, and the three
``verify`` runs are repeated in interleaved rounds (``SBTUI_BENCH_ROUNDS``,
default 2), the fastest of each kept. ``SBTUI_BENCH_SECONDS`` sets how long
the guest is recorded (default 12). ``SBTUI_BENCH_ICOUNT_SLEEP=off`` records
with ``sbtui record --icount-sleep off`` (no replay-slow idle stretch in the
boot; see the README's performance notes).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from engine.guest import build_demo_guest
from engine.parallel.dask import DaskScheduler
from engine.parallel.job import build_job
from engine.parallel.local import LocalScheduler
from engine.parallel.simulate import simulate
from engine.qemu import MachineSpec
from engine.recording.format import Recording
from engine.recording.recorder import Recorder

INTERVAL = 2.0
MIB = 128


def _record(path: Path, seconds: float, icount_sleep: bool = True) -> Recording:
    guest = build_demo_guest()
    spec = MachineSpec(memory_mib=MIB, kernel=str(guest.kernel), initrd=str(guest.initrd),
                       append=guest.append_for("memchurn", duration=600), icount_sleep=icount_sleep)
    summary = asyncio.run(Recorder(path, spec, interval=INTERVAL, duration=seconds,
                                   prove="off").run())
    if summary.status != "complete":
        raise RuntimeError(f"the recording ended {summary.status}: {summary}")
    return Recording.open(path)


@contextmanager
def _local_cluster(workdir: Path, workers: int = 2):
    """``dask scheduler`` and ``workers`` single-threaded ``dask worker`` processes on 127.0.0.1."""
    dask = str(Path(sys.executable).with_name("dask"))
    sched_file = workdir / "scheduler.json"
    procs = []

    def start(argv, name):
        log = open(workdir / f"{name}.log", "wb")
        procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True))
        log.close()

    try:
        start([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
               "--scheduler-file", str(sched_file)], "scheduler")
        deadline = time.monotonic() + 60
        address = None
        while address is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the dask scheduler did not start")
            try:
                address = json.loads(sched_file.read_text())["address"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.05)
        for i in range(workers):
            start([dask, "worker", address, "--nthreads", "1", "--nworkers", "1", "--no-nanny",
                   "--host", "127.0.0.1", "--no-dashboard", "--name", f"bench-{i}",
                   "--local-directory", str(workdir / f"w{i}")], f"worker{i}")
        from distributed import Client
        with Client(address, timeout=30, set_as_default=False) as c:
            c.wait_for_workers(workers, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    p.wait(timeout=10)


def _lpt_makespan(costs: list[float], slots: int) -> float:
    loads = [0.0] * slots
    for c in sorted(costs, reverse=True):
        loads[loads.index(min(loads))] += c
    return max(loads)


def _overhead(t: dict) -> float:
    return t.get("build_s", 0) + t.get("setup_s", 0) + t.get("restore_s", 0) + t.get("snapshot_s", 0)


def _check(report) -> None:
    if report.failed:
        raise RuntimeError(f"{report.scheduler}: intervals {report.failed} did not verify: "
                           + "; ".join(f"{r.index}: {r.detail}" for r in report.results if not r.ok))


def main() -> None:
    seconds = float(os.environ.get("SBTUI_BENCH_SECONDS", "12"))
    rounds = max(1, int(os.environ.get("SBTUI_BENCH_ROUNDS", "2")))
    sleep = os.environ.get("SBTUI_BENCH_ICOUNT_SLEEP", "on")
    if sleep not in ("on", "off"):
        raise SystemExit(f"SBTUI_BENCH_ICOUNT_SLEEP must be on or off, got {sleep!r}")
    tmp = Path(tempfile.mkdtemp(prefix="sbtui-bench-parallel-"))
    try:
        print(f"recording the demo guest: {MIB} MiB, memchurn, a checkpoint every {INTERVAL:g} s "
              f"for {seconds:g} s, -icount sleep={sleep}", flush=True)
        rec = _record(tmp / "rec", seconds, icount_sleep=sleep == "on")
        cps = rec.checkpoints()
        print(f"  {len(cps)} intervals, {rec.manifest.end_icount / 1e9:.2f} G instructions, "
              f"replay log {rec.log_path.stat().st_size / 1e6:.1f} MB; "
              f"load average {os.getloadavg()[0]:.1f}\n", flush=True)

        # Interleaved rounds, the fastest of each kept: other people's work on
        # the same 2 cores slows single runs by tens of percent.
        runs: dict = {}
        walls: dict = {}

        def keep(label, report):
            _check(report)
            walls.setdefault(label, []).append(report.wall_s)
            if label not in runs or report.wall_s < runs[label].wall_s:
                runs[label] = report
            print(f"verify {label:<22} {report.wall_s:6.1f} s   (load {os.getloadavg()[0]:.1f})",
                  flush=True)

        with _local_cluster(tmp) as address:
            for _round in range(rounds):
                keep("serial (1 process)", simulate(rec, "verify", LocalScheduler(1), save=False))
                keep("--jobs 2", simulate(rec, "verify", LocalScheduler(2), save=False))
                with DaskScheduler(address) as cluster:
                    keep("dask, 2 workers", simulate(rec, "verify", cluster, save=False))
        print("fastest of " + ", ".join(f"{k}: {min(v):.1f} s" for k, v in walls.items()))

        serial = runs["serial (1 process)"]
        print("\nper job (serial run): overhead = build + worker setup + QEMU start and restore "
              "+ end snapshot")
        sizes = {}
        for r in serial.results:
            job = build_job(rec, r.index, "verify")
            sizes[r.index] = (len(job.encode(compress=True)), job.log_bytes)
        print(f"  {'interval':>8} {'job MB':>7} {'log MB':>7} {'overhead s':>10} {'replay s':>9} "
              f"{'overhead/replay':>15}")
        for r in serial.results:
            t = r.timings
            over, rep = _overhead(t), t.get("replay_s", 0.0)
            wire, logb = sizes[r.index]
            print(f"  {r.index:>8} {wire / 1e6:7.1f} {logb / 1e6:7.2f} {over:10.2f} {rep:9.2f} "
                  f"{over / rep if rep else float('inf'):15.2f}")

        dask_run = runs["dask, 2 workers"]
        dispatch = [r.timings["dispatch_s"] for r in dask_run.results if "dispatch_s" in r.timings]
        if dispatch:
            print(f"  dask: submit to arrival on the worker {sum(dispatch) / len(dispatch):.2f} s per job "
                  f"on average (max {max(dispatch):.2f} s); the client builds each job in "
                  f"{sum(r.timings.get('build_s', 0) for r in dask_run.results) / len(dask_run.results):.2f} s")

        costs = [r.timings.get("total_s", 0) + r.timings.get("build_s", 0) for r in serial.results]
        predicted = sum(costs) / _lpt_makespan(costs, 2)
        bound = sum(costs) / max(costs)
        print(f"\nSimuBoost model from the serial run's job times (LPT on 2 slots): "
              f"{predicted:.2f}x predicted (at most {min(2.0, bound):.2f}x: "
              f"the longest interval is {max(costs):.1f} of {sum(costs):.1f} s)")
        for label in ("--jobs 2", "dask, 2 workers"):
            target = 1.6 if label == "--jobs 2" else 1.5
            s = serial.wall_s / runs[label].wall_s
            print(f"  achieved {label:<18} {s:.2f}x  (target {target}x: "
                  f"{'met' if s >= target else 'NOT met'})")

        ws = simulate(rec, "writeset", LocalScheduler(2))
        _check(ws)
        print(f"\nwriteset --jobs 2 in {ws.wall_s:.1f} s, sub-step {ws.params['step'] / 1e6:g} M "
              f"instructions; working set per interval (of {MIB} MiB of RAM):")
        for r in ws.results:
            o = r.output
            frac = o["working_set"] / o["ram_pages"]
            dirty = o.get("store_dirty")
            print(f"  interval {r.index}: {o['working_set']:6d} pages = {100 * frac:5.1f} % of RAM "
                  f"in {len(o['steps'])} steps"
                  + (f"; the store's dirty pages {dirty}, missed {o['missed']}" if dirty is not None
                     else ""))
        rec.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
