"""``sbtui open REC``: the app on a recording (a directory or a packed file).

The app gets an :class:`engine.session.RecordingSession`; a recording that a
recorder is still filling grows on screen. ``--fake`` (hidden) opens the app
on :class:`sbtui.fake_session.FakeSession`, for trying the UI without QEMU;
``--fake-live`` makes that session grow as if a guest were being recorded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("open", help="open a recording in the app",
                       description="Open a recording (a directory or a packed file) in the app.")
    p.add_argument("recording", nargs="?", metavar="REC", help="recording directory or packed file")
    p.add_argument("--theme", help="theme name (default: the one chosen last)")
    p.add_argument("--fake", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--fake-live", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--fake-checkpoints", type=int, default=2000, help=argparse.SUPPRESS)
    p.add_argument("--fake-latency", type=float, default=0.3, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.fake or args.fake_live:
        from sbtui.fake_session import FakeSession
        session = FakeSession(args.fake_checkpoints, live=args.fake_live,
                              latency=max(0.0, args.fake_latency),
                              name="fake (live)" if args.fake_live else "fake")
    else:
        if not args.recording:
            raise UsageError("give a recording to open (REC)")
        from engine.session import RecordingSession
        from sbtui.verbs.replay import open_recording
        rec = open_recording(args.recording)
        session = RecordingSession(rec, name=Path(args.recording).name)
    from sbtui.app import SbtuiApp
    app = SbtuiApp(session, theme=args.theme)
    try:
        app.run()
    finally:
        session.close()
    return 0
