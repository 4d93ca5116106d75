"""Snapshot tests at 160x48 of the screens the README shows, from the same
scenarios as ``python -m sbtui.screenshots`` (fixed fake session, no clock),
and of the session and debugger screens on an 80x24 terminal.
Update the baselines with ``pytest tests/test_app_snapshots.py --snapshot-update``
after looking at the new SVGs."""

from __future__ import annotations

import pytest

from sbtui.screenshots import SCENARIOS, SIZE


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SBTUI_CONFIG_DIR", str(tmp_path / "config"))


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_screen_looks_as_approved(snap_compare, name):
    factory, scenario = SCENARIOS[name]
    assert snap_compare(factory(), run_before=scenario, terminal_size=SIZE)


SMALL = (80, 24)      # the default terminal (and what CI reports)


@pytest.mark.parametrize("name", ["session", "debugger"])
def test_screen_on_80x24_looks_as_approved(snap_compare, name):
    factory, scenario = SCENARIOS[name]
    assert snap_compare(factory(), run_before=scenario, terminal_size=SMALL)
