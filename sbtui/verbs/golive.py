"""``sbtui golive REC --from CHECKPOINT [--record NEWREC]``: a normal VM started from a checkpoint.

The guest carries on from the checkpoint without replay (new timing, new
input): its console goes to stdout (and ``--console-out``), lines typed on
stdin go to its console. Ctrl-C, ``--duration`` or the guest powering off
ends it; QEMU is shut down either way. With ``--record NEWREC`` the new run
is a live recording (a checkpoint every ``--interval`` seconds,
:class:`engine.golive.GoLiveRecorder`) that ``sbtui open NEWREC`` shows and
``sbtui golive NEWREC`` starts from again.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from engine.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("golive", help="start a normal VM from a checkpoint (explore 'what if')",
                       description="Start a normal (not replaying) VM from a checkpoint of a "
                                   "recording and let it run: console on stdout, stdin to the "
                                   "guest's console. --record keeps the new run as a live "
                                   "recording.")
    p.add_argument("recording", metavar="REC", help="recording directory or packed file")
    p.add_argument("--from", dest="start", required=True, metavar="CHECKPOINT",
                   help="checkpoint to start from (interval index or store id)")
    p.add_argument("--record", type=Path, metavar="NEWREC",
                   help="record the new run into NEWREC (a new directory): live checkpoints")
    p.add_argument("--interval", type=float, metavar="S",
                   help="with --record: a checkpoint every S seconds (default 2)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--console-out", type=Path, metavar="FILE",
                   help="also write the console output to FILE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sbtui.verbs.replay import open_recording
    if args.duration is not None and args.duration <= 0:
        raise UsageError(f"--duration must be positive, got {args.duration:g}")
    if args.interval is not None:
        if args.record is None:
            raise UsageError("--interval needs --record (it is the new recording's checkpoint interval)")
        if args.interval <= 0:
            raise UsageError(f"--interval must be positive, got {args.interval:g}")
    rec = open_recording(args.recording)
    cp = rec.checkpoint(args.start)
    recorder = None
    if args.record is not None:
        from engine.golive import GoLiveRecorder
        # Checks the path and the source's machine before anything starts.
        recorder = GoLiveRecorder(rec, cp, args.record, interval=args.interval or 2.0,
                                  duration=args.duration)
    return asyncio.run(_run(rec, cp, recorder, args))


def _say(message: str) -> None:
    print(f"sbtui golive: {message}", file=sys.stderr, flush=True)


async def _run(rec, cp, recorder, args) -> int:
    from engine.golive import LiveFromCheckpoint
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    console_out = open(args.console_out, "wb") if args.console_out else None
    try:
        if recorder is None:
            async with LiveFromCheckpoint(rec, cp) as live:
                _say(f"checkpoint {cp.index} (icount {cp.icount}) is running live (no replay); "
                     "Ctrl-C stops it")
                exited = asyncio.ensure_future(live.vm.wait_exit(10**9))
                try:
                    await _pump(live.vm, exited, stop, args.duration, console_out)
                finally:
                    exited.cancel()
        else:
            task = asyncio.ensure_future(recorder.run())
            try:
                while recorder.vm is None and not task.done():
                    if stop.is_set():
                        recorder.stop()
                    await asyncio.sleep(0.05)
                if recorder.vm is not None:
                    _say(f"checkpoint {cp.index} (icount {cp.icount}) is running live (no replay), "
                         f"recorded into {recorder.path}; Ctrl-C stops it")
                    await _pump(recorder.vm, task, stop, None, console_out)
                recorder.stop()
                summary = await task
            finally:
                if not task.done():
                    recorder.stop()
                    await asyncio.wait({task}, timeout=60)
            _say(f"recorded {summary.checkpoints} checkpoint(s) into {recorder.path} "
                 f"(sbtui open {recorder.path})")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if console_out is not None:
            console_out.close()
    _say("stopped")
    return 130 if stop.is_set() else 0


async def _pump(vm, ended: asyncio.Future, stop: asyncio.Event, duration: float | None,
                console_out) -> None:
    """Console to stdout (and ``console_out``), stdin lines to the console, until the end."""
    loop = asyncio.get_running_loop()
    reading = sys.stdin.isatty()
    if reading:
        loop.add_reader(sys.stdin.fileno(), lambda: asyncio.ensure_future(
            vm.console.send(sys.stdin.readline().replace("\n", "\r"))))
    shown = 0

    def show() -> None:
        nonlocal shown
        out = vm.console.output
        if len(out) > shown:
            sys.stdout.buffer.write(out[shown:])
            sys.stdout.buffer.flush()
            if console_out is not None:
                console_out.write(out[shown:])
            shown = len(out)

    deadline = loop.time() + duration if duration else None
    try:
        while not stop.is_set() and not ended.done() and vm.alive:
            if deadline is not None and loop.time() >= deadline:
                break
            show()
            await asyncio.sleep(0.05)
        show()
    finally:
        if reading:
            loop.remove_reader(sys.stdin.fileno())
