"""``sbtui attach QMP_SOCKET REC``: live checkpoints of a QEMU someone else started.

Connects to ``QMP_SOCKET`` (QEMU started with ``-qmp unix:PATH,server=on,wait=off``),
takes a ``background-snapshot`` checkpoint every ``--interval`` seconds into
the live recording ``REC`` (created, or appended to), and detaches after
``--count`` checkpoints, ``--duration`` seconds, q in the app or Ctrl-C. It
never quits that VM, pauses it only when asked to (p in the app), and puts
back the migration settings it changed.

On a terminal, without ``--headless`` or ``--json``, the app shows the live
recording as it grows (p pauses/resumes, c checkpoints now, q detaches);
otherwise progress goes to stderr, one line per checkpoint.
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
    p.add_argument("--headless", action="store_true",
                   help="no app: progress on stderr, one line per checkpoint")
    p.add_argument("--json", action="store_true", help="print a summary object on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sbtui.verbs.record import Progress
    if args.interval <= 0:
        raise UsageError(f"--interval must be a positive number of seconds, got {args.interval:g}")
    if args.duration is not None and args.duration <= 0:
        raise UsageError(f"--duration must be a positive number of seconds, got {args.duration:g}")
    out = Progress(sys.stderr, "attach")
    if not (args.headless or args.json) and sys.stdin.isatty() and sys.stdout.isatty():
        return _in_app(args, out)
    summary, note = asyncio.run(_attach(args, out))
    if args.json:
        print(json.dumps(summary.to_json()))
    out.say(f"detached; {summary.checkpoints} checkpoint(s) in {summary.path}, {note}")
    return 130 if summary.status == "interrupted" else 0


def _job(args: argparse.Namespace, on_event=None):
    from engine.recording.live import LiveAttach
    return LiveAttach(args.socket, args.recording, interval=args.interval, count=args.count,
                      duration=args.duration, on_event=on_event)


def _in_app(args: argparse.Namespace, out) -> int:
    """The app on the live recording as it grows; q detaches."""
    from sbtui.app import run_live

    job = _job(args)
    s = run_live(job, on_finish=out.say)
    count = s.checkpoints if s is not None else len(job.cp.entries) if job.cp else 0
    out.say(f"detached; {count} checkpoint(s) in {job.rec_path}, {job.detach_note or 'the guest runs on'}")
    return 0    # q is the way to detach here, not an interruption


async def _attach(args: argparse.Namespace, out):
    job = _job(args, on_event=out)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, job.stop)
    try:
        return await job.run(), job.detach_note
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
