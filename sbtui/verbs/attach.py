"""``sbtui attach QMP_SOCKET REC``: live checkpoints of a QEMU someone else started.

Connects to ``QMP_SOCKET`` (QEMU started with ``-qmp unix:PATH,server=on,wait=off``),
takes a ``background-snapshot`` checkpoint every ``--interval`` seconds into
the live recording ``REC`` (created, or appended to), and detaches after
``--count`` checkpoints, ``--duration`` seconds or Ctrl-C. It never stops or
quits that VM and puts back the migration settings it changed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from engine.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attach", help="attach to a live QEMU guest over QMP",
                       description="Take live checkpoints (background-snapshot) of a running QEMU "
                                   "through its QMP socket, then detach leaving it running.")
    p.add_argument("socket", metavar="QMP_SOCKET", type=Path,
                   help="QEMU's QMP socket (-qmp unix:PATH,server=on,wait=off)")
    p.add_argument("recording", metavar="REC", type=Path,
                   help="live recording to create or to add checkpoints to")
    p.add_argument("--interval", type=float, default=2.0, metavar="S",
                   help="seconds between checkpoints (default 2)")
    p.add_argument("--count", type=int, metavar="N", help="detach after N checkpoints")
    p.add_argument("--duration", type=float, metavar="S", help="detach after S seconds")
    p.add_argument("--json", action="store_true", help="print a summary object on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sbtui.verbs.record import Progress
    if args.interval <= 0:
        raise UsageError(f"--interval must be a positive number of seconds, got {args.interval:g}")
    if args.duration is not None and args.duration <= 0:
        raise UsageError(f"--duration must be a positive number of seconds, got {args.duration:g}")
    out = Progress(sys.stderr)
    summary = asyncio.run(_attach(args, out))
    if args.json:
        print(json.dumps(summary.to_json()))
    out.say(f"detached; {summary.checkpoints} checkpoint(s) in {summary.path}, the guest runs on")
    return 130 if summary.status == "interrupted" else 0


async def _attach(args: argparse.Namespace, out):
    from engine.recording.live import attach
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await attach(args.socket, args.recording, interval=args.interval,
                            count=args.count, duration=args.duration, stop=stop, on_event=out)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
