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
  middle, steps forward, then back). Target: under 2 s.
* replay speed: the recording's wall time for an interval (less the
  checkpoint's downtime) against the time to replay the same instructions.
  Target: at least 0.9.
* ``verify`` of every interval with 2 local processes against 1. Target: at
  least 1.6x on 2 cores.

``SBTUI_BENCH_SIZES`` (e.g. ``256``) limits the sizes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from engine.debugger import ReplayDebugger, _free_port
from engine.gdb import GdbDebugger
from engine.guest import build_demo_guest
from engine.qemu import MachineSpec, QemuProcess, gdb_tcp
from engine.recording.format import Recording
from engine.recording.recorder import Recorder
from engine.replay.session import ReplaySession
from engine.replay.verify import verify_recording

SIZES = (256, 1024)
RESTORE_ROUNDS = int(os.environ.get("SBTUI_BENCH_RESTORE_ROUNDS", "9"))


def _record(guest, mib: int, where: Path) -> Recording:
    work = max(16, mib * 2 // 5)
    spec = MachineSpec(memory_mib=mib, kernel=str(guest.kernel), initrd=str(guest.initrd),
                       append=guest.append_for("memchurn", mem=work))
    path = where / f"rec-{mib}"
    summary = asyncio.run(Recorder(path, spec, interval=2.0, duration=240.0,
                                   guest_info={"workload": "memchurn"}).run())
    print(f"  recorded {summary.checkpoints} checkpoints in {summary.wall_s:.1f} s "
          f"({summary.status})", flush=True)
    return Recording.open(path)


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


async def _replay_speed(rec: Recording, a, b) -> tuple[float, float]:
    async with ReplaySession(rec, a) as rs:
        t0 = time.monotonic()
        await rs.run_to(b.icount)
        replay_s = time.monotonic() - t0
    record_s = (b.wall_time - a.wall_time) - b.downtime_ms / 1000.0
    return record_s, replay_s


def _reverse_stepi(rec: Recording, a, b) -> float:
    dbg = ReplayDebugger.start(rec, a.store_id)
    try:
        dbg.goto_icount(a.icount + (b.icount - a.icount) // 2)
        for _ in range(3):
            dbg.stepi()
        times = []
        for _ in range(3):
            t0 = time.monotonic()
            dbg.reverse_stepi()
            times.append(time.monotonic() - t0)
        return statistics.median(times)
    finally:
        dbg.close()


def main() -> None:
    sizes = tuple(int(s) for s in os.environ.get("SBTUI_BENCH_SIZES", "").split(",") if s) or SIZES
    guest = build_demo_guest()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for mib in sizes:
        print(f"--- demo guest, memchurn, {mib} MiB ---", flush=True)
        with tempfile.TemporaryDirectory(prefix="sbtui-bench-replay-") as tmp:
            work = Path(tmp)
            rec = _record(guest, mib, work)
            cps = rec.checkpoints()
            # The interval with the most instructions: the workload, not boot or idle.
            k = max(range(len(cps) - 1), key=lambda i: cps[i + 1].icount - cps[i].icount)
            a, b = cps[k], cps[k + 1]
            _restore_figures(rec, b, work, RESTORE_ROUNDS)
            rev = _reverse_stepi(rec, a, b)
            print(f"  reverse-stepi in the middle of interval {k}: median {rev:.2f} s "
                  f"(target < 2 s)", flush=True)
            record_s, replay_s = asyncio.run(_replay_speed(rec, a, b))
            print(f"  interval {k} ({b.icount - a.icount:,} instructions): recorded in "
                  f"{record_s:.2f} s, replayed in {replay_s:.2f} s: replay speed "
                  f"{record_s / replay_s:.2f} of recording (target >= 0.9)", flush=True)
            t1 = verify_recording(rec, jobs=1).wall_s
            r2 = verify_recording(rec, jobs=2)
            print(f"  verify {r2.intervals} intervals: jobs=1 {t1:.1f} s, jobs=2 {r2.wall_s:.1f} s: "
                  f"speedup {t1 / r2.wall_s:.2f}x (target >= 1.6); "
                  f"{r2.verified} verified", flush=True)
            rec.close()


if __name__ == "__main__":
    main()
