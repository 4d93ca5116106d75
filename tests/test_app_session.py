"""Pilot tests of the app on the fake engine session: selection drives the
heatmap, Enter opens a replay, stepping is reversible, engine errors reach a
dialog, the theme choice persists, and quitting closes the session."""

from __future__ import annotations

import json
import time

import pytest

from textual.command import CommandList

from engine.api import GuestState, StopReason
from sbtui.app import SbtuiApp
from sbtui.fake_session import KERNEL, FakeSession
from sbtui.screens.debugger import DebuggerScreen
from sbtui.screens.error_dialog import ErrorDialog
from sbtui.screens.help import HelpScreen
from sbtui.screens.session import SessionScreen
from sbtui.widgets.checkpoint_table import CheckpointTable
from sbtui.widgets.heatmap import Heatmap
from sbtui.widgets.registers import RegistersView

SIZE = (160, 48)


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SBTUI_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config"


async def wait_for(pilot, condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.02)


async def open_debugger(pilot, app):
    await wait_for(pilot, lambda: app.screen.query(CheckpointTable) and app.screen.rows, what="rows")
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, DebuggerScreen) and app.screen.snapshot,
                   what="registers of the replay")
    return app.screen


async def test_selecting_a_checkpoint_moves_the_heatmap():
    session = FakeSession(300)
    app = SbtuiApp(session)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, SessionScreen)
        heatmap = screen.query_one(Heatmap)
        await wait_for(pilot, lambda: heatmap.heat.label == "interval #0", what="first heatmap")
        first = heatmap.heat.dirty
        for _ in range(5):
            await pilot.press("down")
        rows = session.recording.checkpoints()
        await wait_for(pilot, lambda: heatmap.heat.label == "interval #5", what="heatmap of #5")
        assert screen.selected == 5
        assert list(heatmap.heat.dirty) == list(session.recording.dirty_pages(rows[5].id))
        assert list(heatmap.heat.dirty) != list(first)
        assert heatmap.cursor_info().intervals == 1


async def test_range_selection_sums_intervals():
    session = FakeSession(300)
    app = SbtuiApp(session)
    async with app.run_test(size=SIZE) as pilot:
        heatmap = app.screen.query_one(Heatmap)
        await wait_for(pilot, lambda: heatmap.heat.label == "interval #0")
        await pilot.press("r", "down", "down", "down")
        await wait_for(pilot, lambda: heatmap.heat.intervals == 4, what="range of 4 intervals")
        rows = session.recording.checkpoints()
        expected = sum(len(session.recording.dirty_pages(rows[i].id)) for i in range(4))
        assert len(heatmap.heat.dirty) == expected
        assert heatmap.heat.label == "intervals #0–#3"


async def test_enter_opens_the_debugger_with_registers():
    session = FakeSession(300)
    app = SbtuiApp(session)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.screen.rows)
        app.screen.query_one(CheckpointTable).cursor = 42
        screen = await open_debugger(pilot, app)
        row = session.recording.checkpoints()[42]
        assert screen.checkpoint.index == 42
        assert screen.snapshot.icount == row.icount
        regs = screen.query_one(RegistersView)
        text = str(regs.render_registers())
        assert "rip" in text and f"{screen.snapshot.registers['rip']:#018x}" in text
        assert screen.snapshot.registers == session._debuggers[0].registers()


async def test_stepi_then_reverse_stepi_gives_back_the_same_registers():
    app = SbtuiApp(FakeSession(300))
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_debugger(pilot, app)
        before = dict(screen.snapshot.registers)
        start = screen.snapshot.icount
        await pilot.press("i")
        await wait_for(pilot, lambda: screen.snapshot.icount == start + 1, what="stepi")
        stepped = dict(screen.snapshot.registers)
        assert stepped != before
        assert stepped["rip"] != before["rip"]
        assert screen.query_one(RegistersView).changed()    # highlighted
        await pilot.press("I")
        await wait_for(pilot, lambda: screen.snapshot.icount == start, what="reverse-stepi")
        assert screen.snapshot.registers == before


async def test_breakpoint_continue_and_reverse_continue():
    app = SbtuiApp(FakeSession(300))
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_debugger(pilot, app)
        await pilot.press("B")
        await wait_for(pilot, lambda: app.screen.query("#prompt-input"), what="prompt")
        await pilot.press(*"do_timer", "enter")
        await wait_for(pilot, lambda: screen.snapshot.breakpoints, what="breakpoint listed")
        await pilot.press("c")
        await wait_for(pilot, lambda: screen.snapshot.stop and
                       screen.snapshot.stop.reason is StopReason.BREAKPOINT, what="breakpoint hit")
        first_hit = screen.snapshot.icount
        assert screen.snapshot.registers["rip"] == KERNEL.symbols["do_timer"]
        await pilot.press("c")
        await wait_for(pilot, lambda: screen.snapshot.icount > first_hit, what="second hit")
        assert screen.snapshot.icount - first_hit == KERNEL.period
        await pilot.press("C")
        await wait_for(pilot, lambda: screen.snapshot.icount == first_hit, what="reverse-continue")


async def test_engine_error_shows_the_error_dialog_and_returns():
    app = SbtuiApp(FakeSession(100, fail_replay=True))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.screen.rows)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ErrorDialog), what="error dialog")
        dialog = app.screen
        assert "ReplayError" in str(dialog.query_one("#error-title").render())
        assert "diverged" in str(dialog.query_one("#error-message").render())
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, SessionScreen), what="back to session")


async def test_bad_icount_reports_the_engine_error():
    app = SbtuiApp(FakeSession(100))
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_debugger(pilot, app)
        await pilot.press("g")
        await wait_for(pilot, lambda: app.screen.query("#prompt-input"))
        await pilot.press(*"999999999999999999", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ErrorDialog), what="error dialog")
        assert "outside the recording" in str(app.screen.query_one("#error-message").render())
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen and not screen.busy)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, SessionScreen))


async def test_theme_switch_from_the_palette_is_remembered(config_dir):
    app = SbtuiApp(FakeSession(50))
    async with app.run_test(size=SIZE) as pilot:
        assert app.theme == "sbtui-dark"
        await pilot.press("ctrl+p")
        await pilot.press(*"theme: light")
        await wait_for(pilot, lambda: app.screen.query(CommandList)
                       and app.screen.query_one(CommandList).option_count > 0, what="palette hits")
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.theme == "sbtui-light", what="light theme")
        await wait_for(pilot, lambda: (config_dir / "settings.json").exists(), what="settings file")
    assert json.loads((config_dir / "settings.json").read_text())["theme"] == "sbtui-light"
    again = SbtuiApp(FakeSession(10))
    async with again.run_test(size=SIZE):
        assert again.theme == "sbtui-light"


async def test_help_lists_the_keys_of_the_screen():
    app = SbtuiApp(FakeSession(50))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        text = str(app.screen.query_one("#help-text").render())
        assert "Replay" in text and "Zoom in" in text
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, SessionScreen))


async def test_q_quits_and_stops_everything_the_app_started():
    session = FakeSession(100)
    app = SbtuiApp(session)
    async with app.run_test(size=SIZE) as pilot:
        await open_debugger(pilot, app)
        dbg = session._debuggers[0]
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, SessionScreen))
        await open_debugger(pilot, app)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, SessionScreen))
        await pilot.press("q")
        await wait_for(pilot, lambda: session.closed, what="session closed")
    assert session.closed
    assert all(d._closed for d in session._debuggers) and dbg._closed
    assert app.return_code == 0


async def test_live_session_grows_and_takes_vm_commands():
    session = FakeSession(40, live=True, live_interval=0.05)
    app = SbtuiApp(session)
    try:
        async with app.run_test(size=SIZE) as pilot:
            screen = app.screen
            await wait_for(pilot, lambda: len(screen.rows) > 45, what="new live checkpoints")
            table = screen.query_one(CheckpointTable)
            await wait_for(pilot, lambda: table.cursor == len(screen.rows) - 1, what="follow newest")
            table.focus()
            await pilot.press("p")
            await wait_for(pilot, lambda: session.recording.status().state is GuestState.PAUSED)
            count = len(screen.rows)
            await pilot.press("c")
            await wait_for(pilot, lambda: len(screen.rows) == count + 1, what="checkpoint now")
            await pilot.press("i")
            await pilot.press(*"uname -a", "enter")
            await wait_for(pilot, lambda: session.live.sent == ["uname -a\n"], what="console input")
            await wait_for(pilot, lambda: "# uname -a" in "\n".join(
                screen.query_one("#console-log").lines), what="echo in console")
    finally:
        session.close()


async def test_vm_commands_are_hidden_for_a_saved_recording():
    app = SbtuiApp(FakeSession(20))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.screen.rows)
        assert app.screen.check_action("pause_resume", ()) is False
        names = [c.name for c in app.screen.palette_commands()]
        assert not any(n.startswith("vm:") for n in names)


async def test_live_q_quits_and_the_console_input_takes_focus_only_when_asked():
    """In a live session q quits from the session screen: the console input is
    not focused until the user presses i (or clicks it), q typed there goes to
    the guest, Escape gives the keys back to the screen."""
    session = FakeSession(40, live=True, live_interval=0.5)
    app = SbtuiApp(session)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.rows, what="rows")
        console_input = screen.query_one("#console-input")
        assert isinstance(app.focused, CheckpointTable)
        await pilot.press("tab", "tab", "tab", "tab")
        assert app.focused is not console_input       # not even by Tab
        await pilot.click("#console-input")
        assert app.focused is console_input           # a click takes it
        await pilot.press("escape")
        assert isinstance(app.focused, CheckpointTable)
        await pilot.press("i")
        assert app.focused is console_input
        footer_keys = {key for key, active in screen.active_bindings.items() if active.enabled}
        assert "q" not in footer_keys                 # the footer does not offer it here
        await pilot.press("q", "enter")
        await wait_for(pilot, lambda: session.live.sent == ["q\n"], what="q sent to the guest")
        assert not session.closed and app.is_running
        await pilot.press("escape")
        assert isinstance(app.focused, CheckpointTable)
        await pilot.press("q")
        await wait_for(pilot, lambda: session.closed, what="session closed")
    assert app.return_code == 0
