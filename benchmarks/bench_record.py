"""The recorder's figures on the demo guest (``make bench`` or ``python -m benchmarks record``).

For each guest size (256 MiB and 1 GiB, memchurn over about 40 % of RAM,
three rounds, then the guest powers off) in the same run:

* the wall time of the whole recording (boot, workload, power-off) with a
  checkpoint every 2 s, against the same workload recorded with checkpoint 0
  only (the baseline): the ratio, target at most 1.15;
* the guest's downtime per checkpoint (median, max): from QEMU's STOP to
  RESUME event;
* whether ingestion keeps up: the most checkpoints ever taken but not yet
  stored (target at most 2);
* once more with the checkpoint proofs running in the background (they replay
  each interval beside the recording, so they compete for the 2 cores).

Then live mode: ``background-snapshot`` checkpoints of a 512 MiB guest running
memchurn, QEMU's own downtime figure (median, target under 10 ms).

``SBTUI_BENCH_SIZES`` (e.g. ``256``) limits the sizes. Numbers depend on the
load of the machine: the load average is printed with them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from engine.guest import build_demo_guest
from engine.qemu import MachineSpec
from engine.recording.live import LiveRecorder
from engine.recording.recorder import Recorder

INTERVAL = 2.0
SIZES = (256, 1024)
LIVE_MIB = 512


def _spec(guest, mib: int, duration: int | None = None) -> MachineSpec:
    work = max(16, mib * 2 // 5)
    append = guest.append_for("memchurn", mem=work, duration=duration)
    return MachineSpec(memory_mib=mib, kernel=str(guest.kernel), initrd=str(guest.initrd),
                       append=append)


async def _record(spec: MachineSpec, where: Path, interval: float, prove: str):
    """(wall time of the recording itself, wall time until proofs were done, summary)."""
    shutil.rmtree(where, ignore_errors=True)
    t0 = time.monotonic()
    summary = await Recorder(where, spec, interval=interval, prove=prove).run()
    total = time.monotonic() - t0
    shutil.rmtree(where, ignore_errors=True)
    # summary.wall_s: from the recording's creation until QEMU exited and
    # ingestion drained; the proofs of the last intervals come after it.
    return summary.wall_s, total, summary


def _fmt(v, unit="", digits=1) -> str:
    return "-" if v is None else f"{v:.{digits}f}{unit}"


async def _bench(tmp: Path) -> None:
    guest = build_demo_guest()
    sizes = SIZES
    if os.environ.get("SBTUI_BENCH_SIZES"):
        sizes = tuple(int(x) for x in os.environ["SBTUI_BENCH_SIZES"].split(","))
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores; others' work skews these)")
    rows = []
    for mib in sizes:
        spec = _spec(guest, mib)
        base_wall, _t, base = await _record(spec, tmp / f"base-{mib}", 1e6, "off")
        ck_wall, _t, ck = await _record(spec, tmp / f"ck-{mib}", INTERVAL, "off")
        pr_wall, pr_total, pr = await _record(spec, tmp / f"prove-{mib}", INTERVAL, "background")
        rows.append((mib, base_wall, ck_wall, ck, pr_wall, pr))
        print(f"{mib} MiB: baseline {base_wall:.1f} s; with checkpoints {ck_wall:.1f} s "
              f"(ratio {ck_wall / base_wall:.3f}, {ck.checkpoints} checkpoints, downtime median "
              f"{_fmt(ck.downtime_median_ms, ' ms')} max {_fmt(ck.downtime_max_ms, ' ms')}, "
              f"ingestion at most {ck.max_lag} behind, ingest median "
              f"{_fmt(statistics.median(ck.ingest_s) if ck.ingest_s else None, ' s', 2)}); "
              f"with background proofs {pr_wall:.1f} s (ratio {pr_wall / base_wall:.3f}; all "
              f"proven {pr_total:.1f} s after the start: {pr.proofs})", flush=True)

    # Live mode: background-snapshot of a running guest.
    live_dir = tmp / "live"
    live = await LiveRecorder(live_dir, _spec(guest, LIVE_MIB, duration=600), interval=1.0,
                              duration=12.0).run()
    shutil.rmtree(live_dir, ignore_errors=True)
    # Checkpoint 0 comes while the guest boots and registers all of RAM for
    # write tracking the first time; the steady state is the rest.
    steady = live.downtimes_ms[1:] or live.downtimes_ms

    print()
    print(f"{'guest':>8} {'base s':>7} {'ckpt s':>7} {'ratio':>6} {'target':>7} "
          f"{'down med':>9} {'down max':>9} {'lag max':>8} {'target':>7} {'+proofs':>8}")
    for mib, base_wall, ck_wall, ck, pr_wall, pr in rows:
        ratio = ck_wall / base_wall
        print(f"{mib:>5}MiB {base_wall:>7.1f} {ck_wall:>7.1f} {ratio:>6.3f} "
              f"{'ok' if ratio <= 1.15 else 'MISSED':>7} {_fmt(ck.downtime_median_ms, 'ms'):>9} "
              f"{_fmt(ck.downtime_max_ms, 'ms'):>9} {ck.max_lag:>8} "
              f"{'ok' if ck.max_lag <= 2 else 'MISSED':>7} {pr_wall / base_wall:>8.3f}")
    med = statistics.median(steady)
    print(f"live {LIVE_MIB} MiB background-snapshot: downtime median {med:.1f} ms "
          f"({'ok' if med < 10 else 'MISSED'} < 10 ms), max {max(steady):.1f} ms over "
          f"{len(steady)} checkpoints (first one, at boot: {live.downtimes_ms[0]:.1f} ms)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sbtui-bench-record-"))
    try:
        asyncio.run(_bench(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
