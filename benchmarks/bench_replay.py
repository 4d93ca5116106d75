"""Replay and time-travel figures on the demo guest (``python -m benchmarks replay``).

For each guest size (256 MiB and 1 GiB; memchurn over about 40 % of RAM,
recorded with a checkpoint every 2 s until the guest powers off), measured in
the same run:

* restore: from "restore checkpoint k" to a paused replay with gdb attached
  (our route: a new replay QEMU, the state streamed from the page store over
  a pipe), against QEMU's own route for the same state: a replay QEMU started
  with ``rrsnapshot=`` that ``loadvm``s it from a qcow2 image, plus the same
  gdb attach. Target: ratio at most 1.
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
from engine.replay.session import ReplaySession, make_vmstate_image
from engine.replay.verify import verify_recording

SIZES = (256, 1024)


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


async def _restore_ours(rec: Recording, cp) -> float:
    t0 = time.monotonic()
    async with ReplaySession(rec, cp, gdb=gdb_tcp(port := _free_port())):
        with GdbDebugger() as gdb:
            gdb.connect(f"127.0.0.1:{port}")
            gdb.registers()
            return time.monotonic() - t0


async def _restore_qemu_loadvm(rec: Recording, cp, work: Path) -> float:
    """QEMU's own route: savevm the same state into a qcow2 (not timed), then
    time a replay QEMU that loads it with rrsnapshot= until gdb reads registers."""
    image = work / "loadvm.qcow2"
    async with ReplaySession(rec, cp) as rs:
        await rs.save_snapshot("bench")
        shutil.copyfile(rs.vmstate_image, image)
    log = rec.replay_log(work)
    port = _free_port()
    spec = rec.machine_spec().with_rr("replay").replace(
        rrfile=str(log), vmstate_image=str(image), rrsnapshot="bench", paused=True,
        debugcon_path=str(work / "debugcon.out"), gdb=gdb_tcp(port))
    t0 = time.monotonic()
    async with QemuProcess(spec, workdir=work / "q"):
        with GdbDebugger() as gdb:
            gdb.connect(f"127.0.0.1:{port}")
            gdb.registers()
            return time.monotonic() - t0


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
            ours = asyncio.run(_restore_ours(rec, b))
            theirs = asyncio.run(_restore_qemu_loadvm(rec, b, work))
            print(f"  restore + gdb attach: {ours:.2f} s, QEMU loadvm (rrsnapshot) + gdb attach "
                  f"{theirs:.2f} s: ratio {ours / theirs:.2f} (target <= 1)", flush=True)
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
