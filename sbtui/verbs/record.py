"""``sbtui record REC``: record a guest with a checkpoint every interval.

Record mode (default): the guest runs under QEMU's record/replay; the
recording replays instruction by instruction from any checkpoint. ``--live``:
no record/replay, checkpoints by ``background-snapshot`` (the guest pauses
for milliseconds only; the checkpoints can be opened, not replayed).

The guest is the demo guest (``--workload``) unless ``--kernel`` (with
``--initrd``/``--append``) names another. Progress goes to stderr, one line
per checkpoint; ``--json`` prints a summary object on stdout at the end. On a
terminal, without ``--headless`` or ``--json``, the app shows the recording as
it grows instead (as ``sbtui demo`` does; q ends the recording, and with
``--live`` stops the guest).
Ctrl-C ends the recording cleanly (no new checkpoint, QEMU finalizes the
log, ingestion drains, proofs finish) and exits 130; a second Ctrl-C stops
at once, still leaving a recording that opens. Exit 1 when recording failed
(QEMU died, disk full, ...): what was stored up to then is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from engine.errors import UsageError
from engine.recording.events import (CheckpointStored, CheckpointTaken, MarkerRecorded, Notice,
                                     ProofFinished, ProofStarted, RecordingStarted, RecordSummary)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("record", help="record a guest with periodic checkpoints",
                       description="Start a guest under QEMU's record/replay (TCG, -icount, q35) and "
                                   "take a checkpoint every --interval seconds into the recording "
                                   "REC (a new directory). Stops after --duration seconds, when the "
                                   "guest powers off, or on Ctrl-C, always leaving a complete, "
                                   "replayable recording.")
    p.add_argument("recording", metavar="REC", type=Path, help="the recording directory to create")
    p.add_argument("--interval", type=float, default=2.0, metavar="S",
                   help="seconds between checkpoints (default 2)")
    p.add_argument("--duration", type=float, metavar="S",
                   help="stop after S seconds (default: when the guest powers off, or Ctrl-C)")
    p.add_argument("--memory", type=int, default=256, metavar="MIB", help="guest RAM in MiB (default 256)")
    p.add_argument("--workload", metavar="NAME",
                   help="demo-guest workload (idle, memchurn, compress; default idle)")
    p.add_argument("--kernel", type=Path, metavar="K", help="the guest's kernel (default: the demo guest)")
    p.add_argument("--initrd", type=Path, metavar="I", help="the guest's initrd (with --kernel)")
    p.add_argument("--append", metavar="A", help="the guest's kernel command line")
    p.add_argument("--live", action="store_true",
                   help="no record/replay: live checkpoints (background-snapshot); KVM when it works")
    p.add_argument("--prove", choices=("background", "end", "off"), default="background",
                   help="when to prove that each checkpoint restores exactly: while recording "
                        "(default), after it, or not at all (checkpoints stay 'unproven')")
    p.add_argument("--icount-shift", type=int, metavar="N",
                   help="-icount shift (guest ns per instruction = 2**N; default 2)")
    p.add_argument("--icount-sleep", choices=("on", "off"), default="on",
                   help="off: an idle guest skips to its next timer at once instead of waiting "
                        "in real time (guest time no longer follows wall time; no clock-warp "
                        "checkpoints, which make guest busy-waits slow to replay); default on")
    p.add_argument("--headless", action="store_true",
                   help="no UI: progress on stderr, one line per checkpoint")
    p.add_argument("--json", action="store_true", help="print a summary object on stdout at the end")
    p.set_defaults(func=run)


def _machine(args: argparse.Namespace):
    from engine.qemu import MachineSpec
    if args.memory < 16:
        raise UsageError(f"--memory must be at least 16 MiB, got {args.memory}")
    if args.kernel is None:
        if args.initrd is not None:
            raise UsageError("--initrd needs --kernel (the demo guest brings its own)")
        from engine.guest import build_demo_guest
        guest = build_demo_guest()
        workload = args.workload or "idle"
        append = guest.append_for(workload)
        if args.append:
            append = f"{append} {args.append}"
        spec = MachineSpec(memory_mib=args.memory, kernel=str(guest.kernel),
                           initrd=str(guest.initrd), append=append)
        info = {"demo": True, "workload": workload}
        if guest.system_map:
            info["system_map_source"] = str(guest.system_map)
        return spec, info
    if args.workload:
        raise UsageError("--workload picks a demo-guest workload; with --kernel, pass the guest's "
                         "own settings with --append")
    for opt, value in (("--kernel", args.kernel), ("--initrd", args.initrd)):
        if value is not None and not value.is_file():
            raise UsageError(f"{opt} {value}: no such file")
    spec = MachineSpec(memory_mib=args.memory, kernel=str(args.kernel),
                       initrd=str(args.initrd) if args.initrd else None, append=args.append)
    return spec, {"demo": False}


def run(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError(f"--interval must be a positive number of seconds, got {args.interval:g}")
    if args.duration is not None and args.duration <= 0:
        raise UsageError(f"--duration must be a positive number of seconds, got {args.duration:g}")
    if args.live and args.icount_shift is not None:
        raise UsageError("--icount-shift applies to record mode; --live records no instructions")
    if args.live and args.icount_sleep == "off":
        raise UsageError("--icount-sleep applies to record mode; --live runs without -icount")
    if args.recording.exists() and (not args.recording.is_dir() or any(args.recording.iterdir())):
        raise UsageError(f"{args.recording}: exists and is not an empty directory; choose a new path")
    spec, guest_info = _machine(args)
    if args.icount_sleep == "off":
        spec = spec.replace(icount_sleep=False)
    if not (args.headless or args.json) and sys.stdin.isatty() and sys.stdout.isatty():
        return _in_app(args, spec, guest_info)
    if not args.headless:
        print("sbtui record: the live view of a recording comes with the app; showing progress "
              "here (use --headless to silence this note)", file=sys.stderr)
    summary = asyncio.run(_record(args, spec, guest_info))
    if args.json:
        print(json.dumps(summary.to_json()))
    return 130 if summary.status == "interrupted" else 0


def _in_app(args: argparse.Namespace, spec, guest_info: dict) -> int:
    """The app on the recording as it grows (as ``sbtui demo`` does); q ends the recording."""
    from sbtui.app import run_live

    out = Progress(sys.stderr)
    recorder = asyncio.run(_recorder(args, spec, guest_info))
    summary = run_live(recorder, on_finish=out.say)
    if summary is not None:
        out.final(summary)
    return 0    # q is the way to end it here, not an interruption


async def _recorder(args: argparse.Namespace, spec, guest_info: dict, on_event=None):
    """The recorder the options ask for: record/replay, or live (KVM when it works)."""
    if args.live:
        from engine.qemu import choose_accel
        from engine.recording.live import LiveRecorder
        accel = await choose_accel()
        return LiveRecorder(args.recording, spec.replace(accel=accel), interval=args.interval,
                            duration=args.duration, guest_info=guest_info, on_event=on_event)
    from engine.recording.recorder import DEFAULT_ICOUNT_SHIFT, Recorder
    return Recorder(args.recording, spec, interval=args.interval, duration=args.duration,
                    icount_shift=args.icount_shift if args.icount_shift is not None
                    else DEFAULT_ICOUNT_SHIFT,
                    guest_info=guest_info, prove=args.prove, on_event=on_event)


async def _record(args: argparse.Namespace, spec, guest_info: dict) -> RecordSummary:
    out = Progress(sys.stderr)
    recorder = await _recorder(args, spec, guest_info, on_event=out)
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    presses = 0

    def interrupt() -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            out.say("stopping: no new checkpoints; QEMU finishes the log, stored checkpoints are "
                    "kept and proven (Ctrl-C again to stop at once)")
            recorder.stop()
        elif main is not None:
            main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    try:
        summary = await recorder.run()
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    out.final(summary)
    return summary


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class Progress:
    """Turns recorder events into one line per checkpoint on stderr."""

    def __init__(self, stream, verb: str = "record"):
        self.stream = stream
        self.verb = verb              # the lines name the command that prints them
        self.taken: dict[int, CheckpointTaken] = {}

    def say(self, text: str) -> None:
        print(f"sbtui {self.verb}: {text}", file=self.stream, flush=True)

    def __call__(self, event: object) -> None:
        if isinstance(event, RecordingStarted):
            self.say(f"recording into {event.path}")
        elif isinstance(event, CheckpointTaken):
            self.taken[event.index] = event
        elif isinstance(event, CheckpointStored):
            e = event.entry
            icount = f"icount {e.icount}" if e.origin != "live" else f"t+{e.wall_time:.1f}s"
            self.say(f"checkpoint {e.index}: {icount}, downtime {e.downtime_ms:.1f} ms, "
                     f"dirty {event.pages_dirty} / new {event.pages_new} pages, "
                     f"stored {_mb(event.stored_bytes)}, ingestion lag {event.lag}")
        elif isinstance(event, ProofStarted):
            self.say(f"proving interval {event.index}...")
        elif isinstance(event, ProofFinished):
            extra = " (checkpoint rebuilt by replay)" if event.rebuilt else ""
            self.say(f"interval {event.index}: {event.status}{extra}"
                     + (f": {event.detail}" if event.detail and event.status != "verified" else ""))
        elif isinstance(event, Notice):
            self.say(event.text)
        elif isinstance(event, MarkerRecorded):
            pass  # markers can come by the hundred; `sbtui markers REC` lists them

    def final(self, s: RecordSummary) -> None:
        med, mx = s.downtime_median_ms, s.downtime_max_ms
        down = f", downtime median {med:.1f} ms / max {mx:.1f} ms" if med is not None else ""
        self.say(f"{s.status}: {s.checkpoints} checkpoints, {s.markers} markers in {s.wall_s:.1f} s"
                 f"{down}, stored {_mb(s.stored_bytes)} for {_mb(s.raw_bytes)} of state")
        if s.kind == "record":
            p = s.proofs
            self.say(f"proofs: {p.get('verified', 0)} verified, {p.get('failed', 0)} failed, "
                     f"{p.get('unproven', 0)} unproven, {p.get('rebuilt', 0)} rebuilt"
                     + (f" ({s.proof_note})" if s.proof_note else ""))
