"""Replay and time-travel figures on the demo guest (``python -m benchmarks replay``).

For each guest size (256 MiB and 1 GiB; memchurn over about 40 % of RAM,
recorded with a checkpoint every 2 s until the guest powers off), measured in
the same run:

* restore: from "restore checkpoint k" to a paused replay with gdb attached
  (our route: a new replay QEMU, the state streamed from the page store over
  a pipe), against QEMU's own route for the same state: a replay QEMU started
  with ``rrsnapshot=`` that ``loadvm``s it from a qcow2 image, plus the same
  gdb attach. Both routes start gdb at the same moment, beside QEMU's work
  (as the debugger does), and attach it the same way. Each route runs
  ``SBTUI_BENCH_RESTORE_ROUNDS`` (9) times, alternated; medians. Also
  printed: the time until the replay is paused (no gdb), and our phases
  (``ReplaySession.timings``). Target: ratio at most 1.
* reverse-stepi in the middle of an interval (the debugger goes to the
  middle, steps forward, then back: it remembers where each step came from),
  and once more after going elsewhere (nothing remembered: it finds the stop
  before by stepping from 16 instructions earlier). Target: under 2 s.
* replay speed, for the interval with the most instructions: the
  recording's wall time for it (from checkpoint a's stop to b's, less a's
  pause) against the time ``run_to(b)`` takes after restoring a (median of
  ``SBTUI_BENCH_SPEED_REPLAYS``, 3). Target: at least 0.9. Recording and
  replay run at different moments, and the load on this machine changes
  from one minute to the next, so the figure is the median of
  ``SBTUI_BENCH_SPEED_ROUNDS`` (3) pairs of a recording and the replays
  right after it. Also printed: the QEMU vCPU thread's CPU time per
  instruction in both modes (less sensitive to the load than wall time,
  though not immune: cache and memory contention raise it too) and how long
  that thread waited for a core (the load's share of the wall time).
* ``verify`` of every interval with 2 local processes against 1. Target: at
  least 1.6x on 2 cores.

``SBTUI_BENCH_SIZES`` (e.g. ``256``) limits the sizes; ``SBTUI_BENCH_PARTS``
(e.g. ``speed``; of ``restore,reverse,speed,verify``) the figures.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import threadtime
from engine.debugger import ReplayDebugger, _free_port
from engine.gdb import GdbDebugger
from engine.guest import build_demo_guest
from engine.qemu import MachineSpec, QemuProcess, gdb_tcp
from engine.recording.events import CheckpointTaken
from engine.recording.format import Recording
from engine.recording.recorder import Recorder
from engine.replay.session import ReplaySession
from engine.replay.verify import verify_recording

SIZES = (256, 1024)
RESTORE_ROUNDS = int(os.environ.get("SBTUI_BENCH_RESTORE_ROUNDS", "9"))
SPEED_ROUNDS = int(os.environ.get("SBTUI_BENCH_SPEED_ROUNDS", "3"))
SPEED_REPLAYS = int(os.environ.get("SBTUI_BENCH_SPEED_REPLAYS", "3"))
PARTS = ("restore", "reverse", "speed", "verify")


def _record(guest, mib: int, where: Path, *,
            name: str | None = None) -> tuple[Recording, dict[int, threadtime.Sample]]:
    """The recording, and the recording QEMU's thread times sampled as each
    checkpoint resumed the guest (for the replay-speed figure)."""
    work = max(16, mib * 2 // 5)
    spec = MachineSpec(memory_mib=mib, kernel=str(guest.kernel), initrd=str(guest.initrd),
                       append=guest.append_for("memchurn", mem=work))
    path = where / (name or f"rec-{mib}")
    samples: dict[int, threadtime.Sample] = {}

    def on_event(ev) -> None:
        vm = recorder.vm
        if isinstance(ev, CheckpointTaken) and vm is not None and vm.pid is not None:
            try:
                samples[ev.index] = threadtime.sample(vm.pid)
            except OSError:
                pass  # QEMU is gone: no figure for this checkpoint

    recorder = Recorder(path, spec, interval=2.0, duration=240.0,
                        guest_info={"workload": "memchurn"}, on_event=on_event)
    summary = asyncio.run(recorder.run())
    print(f"  recorded {summary.checkpoints} checkpoints in {summary.wall_s:.1f} s "
          f"({summary.status})", flush=True)
    return Recording.open(path), samples


async def _restore_ours(rec: Recording, cp) -> tuple[float, float, dict[str, float]]:
    """Our route until gdb read the registers: (seconds, seconds until the
    replay was paused at the checkpoint, the session's phases)."""
    t0 = time.monotonic()
    port = _free_port()
    gdb = GdbDebugger()
    try:
        gdb.start_launch()   # both routes start gdb at t0, beside QEMU's work
        async with ReplaySession(rec, cp, gdb=gdb_tcp(port)) as rs:
            paused = time.monotonic() - t0
            gdb.connect(f"127.0.0.1:{port}")
            gdb.registers()
            return time.monotonic() - t0, paused, dict(rs.timings)
    finally:
        gdb.close()


async def _loadvm_image(rec: Recording, cp, work: Path) -> tuple[Path, Path]:
    """QEMU's own route needs the state as a qcow2 snapshot: savevm it (not timed)."""
    image = work / "loadvm.qcow2"
    async with ReplaySession(rec, cp) as rs:
        await rs.save_snapshot("bench")
        shutil.copyfile(rs.vmstate_image, image)
    return image, rec.replay_log(work)


async def _restore_qemu_loadvm(rec: Recording, image: Path, log: Path,
                               work: Path) -> tuple[float, float]:
    """A replay QEMU that loads the snapshot with rrsnapshot= (at start-up),
    until gdb read the registers: (seconds, seconds until QMP answered, i.e.
    the state was loaded)."""
    port = _free_port()
    spec = rec.machine_spec().with_rr("replay").replace(
        rrfile=str(log), vmstate_image=str(image), rrsnapshot="bench", paused=True,
        debugcon_path=str(work / "debugcon.out"), gdb=gdb_tcp(port))
    t0 = time.monotonic()
    gdb = GdbDebugger()
    try:
        gdb.start_launch()
        async with QemuProcess(spec, workdir=work / "q"):
            paused = time.monotonic() - t0
            gdb.connect(f"127.0.0.1:{port}")
            gdb.registers()
            return time.monotonic() - t0, paused
    finally:
        gdb.close()


def _restore_figures(rec: Recording, cp, work: Path, rounds: int) -> None:
    """Both routes, alternated ``rounds`` times; medians (the machine is noisy)."""
    image, log = asyncio.run(_loadvm_image(rec, cp, work))
    ours, theirs, phases = [], [], []
    for _ in range(rounds):
        total, paused, timings = asyncio.run(_restore_ours(rec, cp))
        ours.append((total, paused))
        phases.append(timings)
        theirs.append(asyncio.run(_restore_qemu_loadvm(rec, image, log, work)))
    o, op = (statistics.median(x) for x in zip(*ours))
    t, tp = (statistics.median(x) for x in zip(*theirs))
    print(f"  restore + gdb attach (median of {rounds}): {o:.2f} s, QEMU loadvm (rrsnapshot) + "
          f"gdb attach {t:.2f} s: ratio {o / t:.2f} (target <= 1); until paused without gdb: "
          f"{op:.2f} s against {tp:.2f} s, ratio {op / tp:.2f}", flush=True)
    names = list(phases[0])
    print("  our phases (median): " + ", ".join(
        f"{n} {statistics.median(p.get(n, 0.0) for p in phases) * 1000:.0f} ms" for n in names),
        flush=True)


@dataclass(frozen=True)
class _Run:
    """One run of an interval: its wall seconds and the vCPU thread's times."""

    wall_s: float
    vcpu: threadtime.ThreadTime | None


def _recorded_run(samples: dict[int, threadtime.Sample], cps: list) -> _Run:
    """The recording from ``cps[0]`` to ``cps[-1]``. A checkpoint's wall time is
    when it stopped the guest and its downtime how long the guest stood, so
    the guest ran from a.wall_time + a.downtime until the next one stopped
    it. The thread samples were taken as each checkpoint resumed the guest:
    the vCPU thread does not run while a checkpoint is taken."""
    wall = (cps[-1].wall_time - cps[0].wall_time) - sum(c.downtime_ms for c in cps[:-1]) / 1000.0
    vcpu = None
    if cps[0].index in samples and cps[-1].index in samples:
        vcpu = threadtime.busiest(samples[cps[0].index], samples[cps[-1].index])
    return _Run(wall, vcpu)


async def _replayed_run(rec: Recording, a, b) -> _Run:
    async with ReplaySession(rec, a) as rs:
        pid = rs.vm.pid if rs.vm is not None else None
        before = threadtime.sample(pid) if pid is not None else None
        t0 = time.monotonic()
        await rs.run_to(b.icount)
        wall = time.monotonic() - t0
        vcpu = threadtime.busiest(before, threadtime.sample(pid)) if before is not None else None
    return _Run(wall, vcpu)


def _busiest_interval(rec: Recording) -> tuple[int, object, object]:
    """The interval with the most instructions (the workload, not boot or idle).

    Every interval lasts about the same wall time, so this is also the one
    the recording ran fastest (a phase that is cheap per instruction, or a
    quiet moment on the machine): compare with the whole recording too."""
    cps = rec.checkpoints()
    k = max(range(len(cps) - 1), key=lambda i: cps[i + 1].icount - cps[i].icount)
    return k, cps[k], cps[k + 1]


@dataclass(frozen=True)
class _Span:
    """Instructions from one checkpoint to another, as recorded and as replayed."""

    what: str
    insns: int
    recorded: _Run
    replayed: list[_Run]

    def wall_ratio(self) -> float:
        return self.recorded.wall_s / statistics.median(r.wall_s for r in self.replayed)

    def cpu_ratio(self) -> float | None:
        cpu = [r.vcpu.run_s for r in self.replayed if r.vcpu is not None]
        if self.recorded.vcpu is None or not cpu or self.recorded.vcpu.run_s <= 0:
            return None
        return self.recorded.vcpu.run_s / statistics.median(cpu)

    def line(self) -> str:
        walls = [r.wall_s for r in self.replayed]
        text = (f"{self.what} ({self.insns:,} instructions): recorded in "
                f"{self.recorded.wall_s:.2f} s, replayed in {statistics.median(walls):.2f} s"
                f"{f' (median of {len(walls)})' if len(walls) > 1 else ''}: "
                f"wall {self.wall_ratio():.2f}")
        cpu = self.cpu_ratio()
        if cpu is not None:
            assert self.recorded.vcpu is not None
            vcpu = [r.vcpu for r in self.replayed if r.vcpu is not None]
            run = statistics.median(v.run_s for v in vcpu)
            wait = statistics.median(v.wait_s for v in vcpu)
            text += (f"; vCPU thread {self.recorded.vcpu.run_s * 1e9 / self.insns:.2f} against "
                     f"{run * 1e9 / self.insns:.2f} ns/instruction: {cpu:.2f} in CPU time; "
                     f"it waited for a core {self.recorded.vcpu.wait_s:.2f} s against {wait:.2f} s")
        return text


def _speed_round(rec: Recording, samples: dict[int, threadtime.Sample],
                 replays: int) -> tuple[_Span, _Span]:
    """The busiest interval of ``rec`` (restored at its start, replayed
    ``replays`` times) and the whole recording (one replay from checkpoint 0
    to the last), each against the recording."""
    cps = rec.checkpoints()
    k, a, b = _busiest_interval(rec)
    busiest = _Span(f"interval {k}", b.icount - a.icount, _recorded_run(samples, [a, b]),
                    [asyncio.run(_replayed_run(rec, a, b)) for _ in range(max(1, replays))])
    whole = _Span(f"checkpoints 0-{len(cps) - 1}", cps[-1].icount - cps[0].icount,
                  _recorded_run(samples, cps), [asyncio.run(_replayed_run(rec, cps[0], cps[-1]))])
    return busiest, whole


def _replay_speed(guest, mib: int, work: Path, first: tuple[Recording, dict], rounds: int,
                  replays: int) -> None:
    """``rounds`` pairs of (a recording, replays of it right after it): a
    recording and its replays see about the same machine load, so each pair
    gives a ratio; the figures are the median pair. The first pair uses the
    recording the other figures use."""
    pairs = []
    for i in range(max(1, rounds)):
        if i == 0:
            rec, samples = first
            pairs.append(_speed_round(rec, samples, replays))
        else:
            rec, samples = _record(guest, mib, work, name=f"speed-{mib}-{i}")
            try:
                pairs.append(_speed_round(rec, samples, replays))
            finally:
                rec.close()
                shutil.rmtree(rec.path, ignore_errors=True)
        for span in pairs[-1]:
            print(f"  replay speed, {span.line()}", flush=True)
    for j, label in enumerate(("the busiest interval (target >= 0.9)", "the whole recording")):
        walls = [p[j].wall_ratio() for p in pairs]
        cpus = [c for c in (p[j].cpu_ratio() for p in pairs) if c is not None]
        text = (f"  replay speed against recording, {label}, median of {len(walls)} pairs: "
                f"wall {statistics.median(walls):.2f} ({min(walls):.2f}-{max(walls):.2f})")
        if cpus:
            text += (f", CPU time per instruction {statistics.median(cpus):.2f} "
                     f"({min(cpus):.2f}-{max(cpus):.2f})")
        print(text, flush=True)


def _reverse_stepi(rec: Recording, a, b) -> tuple[float, float]:
    """(median reverse-stepi after forward steps, median reverse-stepi just
    after a goto, with no memory of the stop before)."""
    dbg = ReplayDebugger.start(rec, a.store_id)
    try:
        middle = a.icount + (b.icount - a.icount) // 2
        dbg.goto_icount(middle)
        for _ in range(3):
            dbg.stepi()
        times = []
        for _ in range(3):
            t0 = time.monotonic()
            dbg.reverse_stepi()
            times.append(time.monotonic() - t0)
        cold = []
        for k in range(1, 4):
            dbg.goto_icount(middle + k * 1_000_000)
            t0 = time.monotonic()
            dbg.reverse_stepi()
            cold.append(time.monotonic() - t0)
        return statistics.median(times), statistics.median(cold)
    finally:
        dbg.close()


def main() -> None:
    sizes = tuple(int(s) for s in os.environ.get("SBTUI_BENCH_SIZES", "").split(",") if s) or SIZES
    parts = tuple(p for p in os.environ.get("SBTUI_BENCH_PARTS", "").split(",") if p) or PARTS
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"SBTUI_BENCH_PARTS: unknown {', '.join(unknown)}; known: {', '.join(PARTS)}")
    guest = build_demo_guest()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for mib in sizes:
        print(f"--- demo guest, memchurn, {mib} MiB ---", flush=True)
        with tempfile.TemporaryDirectory(prefix="sbtui-bench-replay-") as tmp:
            work = Path(tmp)
            rec, samples = _record(guest, mib, work)
            k, a, b = _busiest_interval(rec)
            # First: its first pair compares replays with the recording just made.
            if "speed" in parts:
                _replay_speed(guest, mib, work, (rec, samples), SPEED_ROUNDS, SPEED_REPLAYS)
            if "restore" in parts:
                _restore_figures(rec, b, work, RESTORE_ROUNDS)
            if "reverse" in parts:
                rev, cold = _reverse_stepi(rec, a, b)
                print(f"  reverse-stepi in the middle of interval {k}: median {rev:.2f} s "
                      f"after stepping, {cold:.2f} s right after a jump (target < 2 s)", flush=True)
            if "verify" in parts:
                t1 = verify_recording(rec, jobs=1).wall_s
                r2 = verify_recording(rec, jobs=2)
                print(f"  verify {r2.intervals} intervals: jobs=1 {t1:.1f} s, jobs=2 {r2.wall_s:.1f} s: "
                      f"speedup {t1 / r2.wall_s:.2f}x (target >= 1.6); "
                      f"{r2.verified} verified", flush=True)
            rec.close()


if __name__ == "__main__":
    main()
