"""``sbtui open REC``: the app on a saved recording.

Recordings are not written yet (the recorder lands with the engine), so a real
path ends with a clear error instead of a crash. ``--fake`` (hidden) opens the
app on :class:`sbtui.fake_session.FakeSession` so the UI can be tried now;
``--fake-live`` makes that session grow as if a guest were being recorded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.errors import RecordingError, UsageError


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
        path = Path(args.recording)
        if not path.exists():
            raise UsageError(f"{path}: no such recording")
        raise RecordingError(f"{path}: recordings are not supported yet "
                             "(the recorder is still being built; try 'sbtui open --fake')")
    from sbtui.app import SbtuiApp
    app = SbtuiApp(session, theme=args.theme)
    try:
        app.run()
    finally:
        session.close()
    return 0
