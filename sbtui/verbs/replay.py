"""``sbtui replay`` and ``sbtui verify``: deterministic replays of a recording.

``replay REC --from CHECKPOINT`` restores a checkpoint into a replay QEMU and
runs it to another checkpoint, an exact instruction count, or the end of the
log; ``--console-out`` keeps exactly what the guest printed meanwhile, and
``--gdb`` leaves it paused at the start with a gdb stub for the user's own gdb.
``verify REC`` proves every interval in ``--jobs`` local processes, with the
parallel engine ``sbtui simulate`` uses (see ``engine.replay.verify``), and
shows the same progress bar on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from pathlib import Path

from engine.errors import UsageError
from engine.qemu import gdb_tcp


def open_recording(path: str):
    """A recording directory, or a packed recording file."""
    try:
        from engine.recording.pack import open_any
    except ImportError:
        from engine.recording.format import Recording
        return Recording.open(path)
    return open_any(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="replay a recording from a checkpoint",
                       description="Restore a checkpoint of a recording into a deterministic QEMU "
                                   "replay and run it forward.")
    p.add_argument("recording", metavar="REC", help="recording directory or packed file")
    p.add_argument("--from", dest="start", required=True, metavar="CHECKPOINT",
                   help="checkpoint to start from (interval index or store id)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--to", metavar="CHECKPOINT", help="run to this checkpoint's instruction count")
    target.add_argument("--icount", type=int, metavar="N", help="run to exactly this instruction count")
    target.add_argument("--end", action="store_true", help="run to the end of the recording (default)")
    p.add_argument("--console-out", metavar="FILE", type=Path,
                   help="write the console output produced during the replay to FILE")
    p.add_argument("--gdb", nargs="?", const=0, type=int, metavar="PORT",
                   help="stop at the start with a gdb stub on PORT (default: a free port) "
                        "and print the 'target remote' line")
    p.add_argument("--headless", action="store_true",
                   help="no UI: progress on stderr (the only mode until the app's replay view lands)")
    p.add_argument("--json", action="store_true", help="print a summary object on stdout")
    p.set_defaults(func=run_replay)

    v = sub.add_parser("verify", help="verify every interval of a recording",
                       description="For every interval k: restore checkpoint k, replay to checkpoint "
                                   "k+1's instruction count and compare every RAM page with it; the "
                                   "last interval replays to the end of the log.")
    v.add_argument("recording", metavar="REC", help="recording directory or packed file")
    v.add_argument("--jobs", "-j", type=int, default=1, metavar="N",
                   help="intervals replayed at once, in N local processes (default 1)")
    v.add_argument("--interval", type=int, action="append", metavar="K",
                   help="verify only interval K (repeatable)")
    v.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    v.set_defaults(func=run_verify)


def run_replay(args: argparse.Namespace) -> int:
    rec = open_recording(args.recording)
    start = rec.checkpoint(args.start)
    target_icount = None
    if args.to is not None:
        target_icount = rec.checkpoint(args.to).icount
    elif args.icount is not None:
        target_icount = args.icount
    if target_icount is not None and target_icount < start.icount:
        raise UsageError(f"the target icount {target_icount} lies before checkpoint "
                         f"{start.index} (icount {start.icount}); choose an earlier --from")
    if args.gdb is not None and not 0 <= args.gdb <= 65535:
        raise UsageError(f"--gdb: port {args.gdb} is out of range")
    return asyncio.run(_replay(rec, start, target_icount, args))


async def _replay(rec, start, target_icount, args) -> int:
    from engine.replay.session import ReplaySession

    def say(msg: str) -> None:
        print(f"replay: {msg}", file=sys.stderr, flush=True)

    gdb = None
    if args.gdb is not None:
        gdb = gdb_tcp(args.gdb or _free_port())
    summary: dict = {"from": start.index, "from_icount": start.icount}
    async with ReplaySession(rec, start, gdb=gdb, progress=say) as rs:
        say(f"checkpoint {start.index} restored at icount {start.icount} in {rs.restore_s:.2f} s")
        summary["restore_s"] = round(rs.restore_s or 0, 3)
        if gdb:
            port = gdb.rsplit(":", 1)[1]
            print(f"target remote localhost:{port}", flush=True)
            say("paused; attach gdb with the line above (gdb -ex 'set architecture i386:x86-64' "
                f"-ex 'target remote localhost:{port}'); Ctrl-C ends the replay")
            code = await rs.vm.wait_exit(timeout=10**9)
            summary["exit_code"] = code
        elif target_icount is not None:
            reached = await rs.run_to(target_icount)
            say(f"reached icount {reached}")
            summary["icount"] = reached
        else:
            code = await rs.run_to_end()
            say(f"the replay reached the end of the recording (QEMU exit code {code})")
            summary["exit_code"] = code
        console = rs.console_bytes()
        if args.console_out:
            from engine.store.fsutil import atomic_write
            atomic_write(args.console_out, console)
        summary["console_bytes"] = len(console)
    if args.json:
        print(json.dumps(summary))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from engine.replay.verify import verify_recording
    from sbtui.verbs.simulate import ProgressBar
    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
    rec = open_recording(args.recording)
    bar = ProgressBar(label="verify")
    try:
        report = verify_recording(rec, jobs=args.jobs, progress=bar, only=args.interval)
    finally:
        bar.close()
        rec.close()
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        for r in sorted(report.results, key=lambda r: r.index):
            print(f"interval {r.index:4d}  {r.status:9s}  {r.detail}")
        print(f"{report.verified} of {report.intervals} intervals verified in {report.wall_s:.1f} s"
              + (f"; failed: {', '.join(map(str, report.failed))}" if report.failed else ""))
    return 0 if not report.failed else 1
