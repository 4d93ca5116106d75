"""Verbs whose names are reserved for features still being built.

Each one parses ``--help`` and then says plainly that it is not available yet
and which issue brings it, instead of pretending to work. A verb leaves this
list when its own module under ``sbtui/verbs/`` registers it.
"""

from __future__ import annotations

import argparse

from engine.errors import SbtuiError

# verb -> (one-line help, issue that brings it)
RESERVED = {
    "open": ("open a recording in the app", 6),
}


class NotYetAvailable(SbtuiError):
    pass


def register(sub: argparse._SubParsersAction) -> None:
    for verb, (text, issue) in RESERVED.items():
        if verb in sub.choices:
            continue
        p = sub.add_parser(verb, help=f"{text} (not available yet)",
                           description=f"{text}. Not available yet: issue #{issue} brings it.")
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(func=_unavailable(verb, issue))


def _unavailable(verb: str, issue: int):
    def run(args: argparse.Namespace) -> int:
        raise NotYetAvailable(f"'sbtui {verb}' is not available yet (issue #{issue} brings it)")
    return run
