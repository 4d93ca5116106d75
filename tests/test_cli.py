"""The command line: --version, --help on every verb and subverb, and errors
that name the argument that was wrong (exit 2), without starting anything."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from sbtui import __version__
from sbtui.cli import build_parser, main


def _verbs() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"sbtui {__version__}"


def test_every_verb_and_subverb_has_help(capsys):
    verbs = _verbs()
    for name in ("demo", "guest", "doctor", "record", "attach", "checkpoints", "console",
                 "markers", "pack", "open", "replay", "verify", "golive", "simulate", "store"):
        assert name in verbs, name
    for name, parser in verbs.items():
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0, name
        assert "usage: sbtui " + name in capsys.readouterr().out
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices:
                    with pytest.raises(SystemExit) as exc:
                        main([name, sub, "--help"])
                    assert exc.value.code == 0, (name, sub)
                    capsys.readouterr()


@pytest.mark.parametrize("argv, named", [
    (["replay", "rec"], "--from"),
    (["replay", "rec", "--from", "1", "--icount", "many"], "--icount"),
    (["verify", "rec", "--jobs", "two"], "--jobs"),
    (["demo", "--workload", "nope"], "--workload"),
    (["record", "rec", "--interval", "soon"], "--interval"),
    (["nosuchverb"], "nosuchverb"),
])
def test_bad_arguments_are_named(capsys, argv, named):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert named in capsys.readouterr().err


def test_errors_from_the_engine_name_the_path(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sbtui", "verify", str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "missing: no such recording" in out.stderr
