"""``sbtui demo``: record the demo guest and watch it in the app (what ``make demo`` runs).

Builds the demo guest if needed, starts recording it (record/replay, a
checkpoint every ``--interval`` seconds) into a new recording under the cache
directory (or REC), and opens the app on the recording as it grows. Quitting
the app (q) ends the recording cleanly: QEMU quits, the last checkpoints are
stored and proven. Without a terminal, or with ``--headless``, it records with
progress lines on stderr instead (Ctrl-C ends it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from engine.errors import UsageError

WORKLOADS = ("memchurn", "compress", "idle")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="record the demo guest and watch it in the app",
                       description="Record the built-in demo guest (building it first if needed) "
                                   "and open the app on the recording as it grows; q ends it.")
    p.add_argument("recording", nargs="?", type=Path, metavar="REC",
                   help="where to keep the recording (default: a new directory under "
                        "~/.cache/sbtui/demo/)")
    p.add_argument("--workload", default="memchurn", choices=WORKLOADS,
                   help="what the guest runs (default memchurn)")
    p.add_argument("--memory", type=int, default=256, metavar="MIB", help="guest RAM (default 256)")
    p.add_argument("--interval", type=float, default=2.0, metavar="S",
                   help="seconds between checkpoints (default 2)")
    p.add_argument("--duration", type=float, metavar="S",
                   help="stop recording after S seconds (default: when you quit)")
    p.add_argument("--headless", action="store_true",
                   help="no app: progress on stderr (the default without a terminal)")
    p.add_argument("--theme", help="theme name (default: the one chosen last)")
    p.set_defaults(func=run)


def _say(msg: str) -> None:
    print(f"sbtui demo: {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from engine.guest import build_demo_guest
    from engine.paths import cache_dir
    from engine.qemu import MachineSpec

    if args.interval <= 0:
        raise UsageError(f"--interval must be a positive number of seconds, got {args.interval:g}")
    if args.duration is not None and args.duration <= 0:
        raise UsageError(f"--duration must be a positive number of seconds, got {args.duration:g}")
    if args.memory < 64:
        raise UsageError(f"--memory must be at least 64 MiB for the demo guest, got {args.memory}")
    path = args.recording or cache_dir() / "demo" / time.strftime("%Y%m%d-%H%M%S")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(f"{path}: exists and is not an empty directory; choose a new path")
    guest = build_demo_guest(progress=_say)
    # memchurn ends after three rounds by default; the demo keeps it going until you quit.
    params = {"duration": 24 * 3600} if args.workload == "memchurn" else {}
    spec = MachineSpec(memory_mib=args.memory, kernel=str(guest.kernel), initrd=str(guest.initrd),
                       append=guest.append_for(args.workload, **params))
    info = {"demo": True, "workload": args.workload}
    if guest.system_map:
        info["system_map_source"] = str(guest.system_map)  # the recorder copies it in
    headless = args.headless or not (sys.stdin.isatty() and sys.stdout.isatty())
    if headless:
        return _headless(path, spec, info, args)
    return _in_app(path, spec, info, args)


def _headless(path: Path, spec, info: dict, args: argparse.Namespace) -> int:
    from sbtui.verbs import record
    ns = argparse.Namespace(recording=path, interval=args.interval, duration=args.duration,
                            live=False, icount_shift=None, prove="background", json=False)
    _say(f"recording the demo guest ({args.workload}) into {path}; Ctrl-C ends it")
    summary = asyncio.run(record._record(ns, spec, info))
    _say(f"open it with: sbtui open {path}")
    return 130 if summary.status == "interrupted" else 0


def _in_app(path: Path, spec, info: dict, args: argparse.Namespace) -> int:
    from engine.recording.recorder import Recorder
    from sbtui.app import run_live

    recorder = Recorder(path, spec, interval=args.interval, duration=args.duration,
                        guest_info=info, prove="background")
    _say(f"starting the demo guest ({args.workload}, {args.memory} MiB, TCG) into {path}")
    s = run_live(recorder, name=f"demo: {args.workload}", theme=args.theme, on_finish=_say)
    if s is not None:
        p = s.proofs
        _say(f"{s.status}: {s.checkpoints} checkpoints in {s.wall_s:.1f} s; proofs: "
             f"{p.get('verified', 0)} verified, {p.get('failed', 0)} failed, "
             f"{p.get('unproven', 0)} unproven")
    _say(f"the recording is in {path}; open it again with: sbtui open {path}")
    return 0
