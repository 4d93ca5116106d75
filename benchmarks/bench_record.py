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

Then live mode: ``background-snapshot`` checkpoints (one a second, about 20)
of a 512 MiB guest running memchurn, twice in the same run: as ``sbtui record
--live`` takes them (guest RAM collapsed back into huge pages between
checkpoints, engine/recording/thp.py) and, as the baseline, without that.
For each: QEMU's own downtime figure (median and max of the steady state,
target median under 10 ms; the first checkpoint, taken while the guest boots,
apart), the STOP-to-RESUME time of QEMU's events, and where the pause goes,
from QEMU's trace events (``-trace``, microsecond timestamps):

* ``kick``: from the stop request until the vCPU stopped (TCG notices a kick
  at its next translation block; on a busy host, when it next gets a core);
* ``devices``: saving the non-RAM device state (into a buffer, not the pipe);
* ``wprotect``: userfaultfd write protection of guest RAM;
* ``wake``: until the main loop runs the bottom half that resumes the guest.

``SBTUI_BENCH_SIZES`` (e.g. ``256``) limits the record-mode sizes; ``none``
runs only the live part. Numbers depend on the load of the machine: the load
average is printed with them.
"""

from __future__ import annotations

import asyncio
import os
import re
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
LIVE_CHECKPOINTS = 21           # the one at boot and 20 in the steady state
LIVE_SECONDS = 300.0            # a bound: ingestion of 512 MiB takes 1-5 s on a busy machine
TRACE_EVENTS = ("vmstate_downtime_checkpoint", "vm_state_notify",
                "ram_write_tracking_ramblock_start")
PHASES = ("kick", "devices", "wprotect", "wake")


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


def _pause_phases(log: Path) -> list[dict[str, float]]:
    """Per checkpoint, in order: milliseconds of each phase of QEMU's pause (trace log)."""
    rows: list[dict[str, float]] = []
    marks: dict[str, float] = {}

    def close() -> None:
        m = marks
        if "start" in m and "end" in m:
            d = lambda a, b: (m[b] - m[a]) * 1e3 if a in m and b in m else float("nan")
            rows.append({"kick": d("start", "paused"), "devices": d("stopped", "saved"),
                         "wprotect": d("saved", "protected"), "wake": d("protected", "running"),
                         "total": d("start", "end")})

    for line in log.read_text(errors="replace").splitlines():
        hit = re.match(r"\d+@(\d+\.\d+):(\S+) ?(.*)", line)
        if not hit:
            continue
        t, name, args = float(hit[1]), hit[2], hit[3]
        if name == "vmstate_downtime_checkpoint" and "src-downtime-start" in args:
            close()
            marks = {"start": t}
        elif not marks:
            continue
        elif name == "vm_state_notify":
            marks.setdefault("paused" if "running 0" in args else "running", t)
        elif name == "vmstate_downtime_checkpoint":
            key = {"src-vm-stopped": "stopped", "src-non-iterable-saved": "saved",
                   "src-downtime-end": "end"}.get(args.strip())
            if key:
                marks.setdefault(key, t)
        elif name == "ram_write_tracking_ramblock_start":
            marks["protected"] = t          # the last RAM block's
    close()
    return rows


async def _live(guest, where: Path, *, collapse: bool) -> dict:
    """One live recording of the 512 MiB memchurn guest; its pause figures."""
    shutil.rmtree(where, ignore_errors=True)
    trace = [a for e in TRACE_EVENTS for a in ("-trace", f"enable={e}")]
    spec = _spec(guest, LIVE_MIB, duration=600).replace(
        extra_args=("-msg", "timestamp=on", *trace))
    recorder: LiveRecorder

    def off(_event) -> None:
        # The baseline: the checkpointer made its collapser in prepare; drop
        # it before the first checkpoint ends.
        if recorder.cp is not None:
            recorder.cp.collapser = None

    recorder = LiveRecorder(where, spec, interval=1.0, duration=LIVE_SECONDS,
                            on_event=None if collapse else off)
    recorder.count = LIVE_CHECKPOINTS
    summary = await recorder.run()
    cp = recorder.cp
    phases = _pause_phases(where / "qemu.log")
    shutil.rmtree(where, ignore_errors=True)
    assert cp is not None
    return {"downtimes": list(summary.downtimes_ms), "pauses": list(cp.pauses_ms),
            "phases": phases, "collapse_s": list(cp.collapse_s),
            "collapse_off": cp.collapser.reason if cp.collapser is not None else "baseline"}


def _live_lines(label: str, r: dict) -> list[str]:
    down = r["downtimes"]
    steady = down[1:] or down
    pauses = [p for p in r["pauses"][1:] if p is not None]
    med = statistics.median(steady)
    out = [f"live {LIVE_MIB} MiB {label}: QEMU downtime median {med:.1f} ms "
           f"({'ok' if med < 10 else 'MISSED'} < 10 ms), max {max(steady):.1f} ms over "
           f"{len(steady)} checkpoints (first, at boot: {down[0]:.1f} ms); STOP->RESUME median "
           f"{_fmt(statistics.median(pauses) if pauses else None, ' ms', 2)}, max "
           f"{_fmt(max(pauses) if pauses else None, ' ms', 2)}"]
    steady_phases = r["phases"][1:]
    if steady_phases:
        parts = []
        for name in PHASES:
            vals = [p[name] for p in steady_phases if p[name] == p[name]]
            if vals:
                parts.append(f"{name} {statistics.median(vals):.2f}/{max(vals):.2f}")
        out.append("    pause by phase, ms median/max: " + ", ".join(parts))
    if r["collapse_s"]:
        out.append(f"    huge-page collapse after each checkpoint: median "
                   f"{statistics.median(r['collapse_s']) * 1e3:.0f} ms of CPU (off the pause)")
    elif r["collapse_off"] != "baseline":
        out.append(f"    huge-page collapse unavailable: {r['collapse_off']}")
    return out


def _fmt(v, unit="", digits=1) -> str:
    return "-" if v is None else f"{v:.{digits}f}{unit}"


async def _bench(tmp: Path) -> None:
    guest = build_demo_guest()
    sizes = SIZES
    if os.environ.get("SBTUI_BENCH_SIZES") == "none":
        sizes = ()
    elif os.environ.get("SBTUI_BENCH_SIZES"):
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

    # Live mode: background-snapshot of a running guest, without and with the
    # huge-page collapse. Checkpoint 0 comes while the guest boots, before any
    # snapshot has split guest RAM into small pages; the steady state is the rest.
    base_live = await _live(guest, tmp / "live-base", collapse=False)
    live = await _live(guest, tmp / "live", collapse=True)

    print()
    print(f"{'guest':>8} {'base s':>7} {'ckpt s':>7} {'ratio':>6} {'target':>7} "
          f"{'down med':>9} {'down max':>9} {'lag max':>8} {'target':>7} {'+proofs':>8}")
    for mib, base_wall, ck_wall, ck, pr_wall, pr in rows:
        ratio = ck_wall / base_wall
        print(f"{mib:>5}MiB {base_wall:>7.1f} {ck_wall:>7.1f} {ratio:>6.3f} "
              f"{'ok' if ratio <= 1.15 else 'MISSED':>7} {_fmt(ck.downtime_median_ms, 'ms'):>9} "
              f"{_fmt(ck.downtime_max_ms, 'ms'):>9} {ck.max_lag:>8} "
              f"{'ok' if ck.max_lag <= 2 else 'MISSED':>7} {pr_wall / base_wall:>8.3f}")
    for line in (_live_lines("background-snapshot (sbtui record --live)", live)
                 + _live_lines("baseline without huge-page collapse", base_live)):
        print(line)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sbtui-bench-record-"))
    try:
        asyncio.run(_bench(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
