"""The ``sbtui`` command: parses arguments and hands each verb to its module.

Each verb lives in ``sbtui/verbs/<name>.py`` with ``register(subparsers)``,
which adds its parser and sets ``func(args) -> int`` as the default. Errors
from the engine (:class:`engine.errors.SbtuiError`) end the command with their
message and exit code 1; bad arguments exit 2 with argparse's message, which
names the argument. Ctrl-C exits 130 after the verb's own clean-up ran.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from engine.errors import SbtuiError, UsageError
from sbtui import __version__

# Verb modules, in the order --help lists them.
VERB_MODULES = (
    "sbtui.verbs.demo",
    "sbtui.verbs.guest",
    "sbtui.verbs.doctor",
    "sbtui.verbs.store",
    "sbtui.verbs.replay",
    "sbtui.verbs.golive",
    "sbtui.verbs.open",
    "sbtui.verbs.record",
    "sbtui.verbs.attach",
    "sbtui.verbs.recording",
    "sbtui.verbs.simulate",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbtui",
        description="A time-travel debugger for whole virtual machines: record a QEMU guest "
                    "with periodic checkpoints, then replay and debug any interval.",
    )
    parser.add_argument("--version", action="version", version=f"sbtui {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for name in VERB_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        parser.exit(2, f"sbtui {args.verb}: error: {err}\n")
    except SbtuiError as err:
        print(f"sbtui {args.verb}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sbtui {args.verb}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
