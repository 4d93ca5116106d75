"""``sbtui golive REC --from CHECKPOINT``: a normal VM started from a checkpoint.

The guest carries on from the checkpoint without replay (new timing, new
input): its console goes to stdout (and ``--console-out``), lines typed on
stdin go to its console. Ctrl-C, ``--duration`` or the guest powering off
ends it; QEMU is shut down either way.
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
                                   "guest's console.")
    p.add_argument("recording", metavar="REC", help="recording directory or packed file")
    p.add_argument("--from", dest="start", required=True, metavar="CHECKPOINT",
                   help="checkpoint to start from (interval index or store id)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--console-out", type=Path, metavar="FILE",
                   help="also write the console output to FILE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sbtui.verbs.replay import open_recording
    if args.duration is not None and args.duration <= 0:
        raise UsageError(f"--duration must be positive, got {args.duration:g}")
    rec = open_recording(args.recording)
    cp = rec.checkpoint(args.start)
    return asyncio.run(_run(rec, cp, args))


async def _run(rec, cp, args) -> int:
    from engine.golive import LiveFromCheckpoint
    say = lambda m: print(f"sbtui golive: {m}", file=sys.stderr, flush=True)  # noqa: E731
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with LiveFromCheckpoint(rec, cp, console_path=args.console_out) as live:
            vm = live.vm
            say(f"checkpoint {cp.index} (icount {cp.icount}) is running live (TCG, icount, no replay); "
                "Ctrl-C stops it")
            if sys.stdin.isatty():
                loop.add_reader(sys.stdin.fileno(), lambda: asyncio.ensure_future(
                    vm.console.send(sys.stdin.readline().replace("\n", "\r"))))
            shown = 0
            exited = asyncio.ensure_future(vm.wait_exit(10**9))
            deadline = loop.time() + args.duration if args.duration else None
            while not stop.is_set() and not exited.done():
                if deadline is not None and loop.time() >= deadline:
                    break
                out = vm.console.output
                if len(out) > shown:
                    sys.stdout.buffer.write(out[shown:])
                    sys.stdout.buffer.flush()
                    shown = len(out)
                await asyncio.sleep(0.05)
            out = vm.console.output
            sys.stdout.buffer.write(out[shown:])
            sys.stdout.buffer.flush()
            exited.cancel()
            if sys.stdin.isatty():
                loop.remove_reader(sys.stdin.fileno())
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    say("stopped")
    return 130 if stop.is_set() else 0
