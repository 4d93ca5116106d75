"""Pilot tests of the session screen's analyses on the fake session: the
heatmap's writeset view and its sub-steps, the working-set column, running
an analysis with a progress panel (results appear, failures are named,
Escape cancels, a live session is refused with the reason), and a snapshot
of the heatmap showing a writeset sub-step."""

from __future__ import annotations

import time

import pytest
from textual.app import App, ComposeResult

from sbtui.app import SbtuiApp
from sbtui.fake_session import FakeSession
from sbtui.screens.session import SessionScreen
from sbtui.themes import FALLBACK_THEME, VARIABLE_DEFAULTS
from sbtui.widgets.checkpoint_table import CheckpointTable, format_fraction
from sbtui.widgets.heatmap import Heatmap
from sbtui.widgets.simulation_progress import SimulationPanel

SIZE = (160, 48)
SMALL = dict(ram_pages=1 << 16)        # 256 MiB: writesets of every interval in milliseconds


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SBTUI_CONFIG_DIR", str(tmp_path / "config"))


async def wait_for(pilot, condition, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.02)


def line_text(widget, y: int) -> str:
    return "".join(seg.text for seg in widget.render_line(y))


async def select_row(pilot, screen, index: int) -> Heatmap:
    heatmap = screen.query_one(Heatmap)
    await wait_for(pilot, lambda: screen.rows, what="rows")
    screen.select(index)
    await wait_for(pilot, lambda: heatmap.dirty_heat.label == f"interval #{index}",
                   what=f"the dirty pages of #{index}")
    return heatmap


async def test_writeset_view_and_sub_steps_change_the_heatmaps_pages():
    session = FakeSession(60, analyses=("writeset",), **SMALL)
    rec = session.recording
    app = SbtuiApp(session)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.writesets, what="stored writesets")
        heatmap = await select_row(pilot, screen, 20)
        dirty = list(heatmap.heat.dirty)
        ws = rec.writeset(screen.rows[20].id)
        assert ws is not None and ws.interval == 19 and len(ws.steps) == 16

        await pilot.press("w")
        await wait_for(pilot, lambda: heatmap.showing_writeset, what="the writeset view")
        # sub-step 0 counts, per page, the sub-steps that changed it
        assert heatmap.heat.intervals == 16
        assert sorted(set(heatmap.heat.dirty)) == dirty
        assert len(heatmap.heat.dirty) == sum(len(s.pages) for s in ws.steps)

        seen = []
        for k in (1, 2, 3):
            await pilot.press("right_square_bracket")
            assert heatmap.ws_step == k
            assert list(heatmap.heat.dirty) == list(ws.steps[k - 1].pages)
            legend = line_text(heatmap, heatmap.grid_rows + 1)
            start = ws.steps[k - 2].icount if k > 1 else ws.start_icount
            assert f"sub-step {k}/16 · icount {start:,}–{ws.steps[k - 1].icount:,}" in legend, legend
            seen.append(tuple(heatmap.heat.dirty))
        assert len(set(seen)) == 3          # each sub-step wrote elsewhere
        await pilot.press("left_square_bracket")
        assert list(heatmap.heat.dirty) == list(ws.steps[1].pages)
        assert f"ws {ws.working_set:,} pages" in line_text(heatmap, heatmap.grid_rows + 2)

        # the next interval keeps the view and the sub-step, with its own pages
        await pilot.press("down")
        nxt = rec.writeset(screen.rows[21].id)
        await wait_for(pilot, lambda: heatmap.writeset is not None and heatmap.writeset.interval == 20,
                       what="the writeset of #21")
        assert list(heatmap.heat.dirty) == list(nxt.steps[1].pages)

        await pilot.press("w")
        assert not heatmap.showing_writeset
        assert list(heatmap.heat.dirty) == list(rec.dirty_pages(screen.rows[21].id))


async def test_a_range_or_a_recording_without_writesets_says_why_there_is_no_writeset():
    app = SbtuiApp(FakeSession(30, **SMALL))
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        heatmap = await select_row(pilot, screen, 5)
        await pilot.press("w")
        await pilot.pause()
        assert heatmap.ws_mode and not heatmap.showing_writeset
        assert "no writeset here" in line_text(heatmap, heatmap.grid_rows + 1)
        assert any("run it with A" in n.message for n in app._notifications)
        # the dirty pages stay on show
        assert list(heatmap.heat.dirty) == list(screen.recording.dirty_pages(screen.rows[5].id))


async def test_the_working_set_column_appears_only_with_the_analysis():
    session = FakeSession(40, analyses=("writeset",), **SMALL)
    app = SbtuiApp(session)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        table = screen.query_one(CheckpointTable)
        await wait_for(pilot, lambda: table.working_sets, what="the working sets")
        rows = screen.rows
        assert 0 not in table.working_sets          # checkpoint 0 closes no interval
        for k in (1, 12, 39):
            ws = session.recording.writeset(rows[k].id)
            assert table.working_sets[k] == ws.working_set_fraction
        assert "ws%" in line_text(table, 0)
        table.cursor = 12
        await pilot.pause()
        row_line = next(line_text(table, y) for y in range(1, table.size.height)
                        if line_text(table, y).lstrip().startswith("12 "))
        assert format_fraction(table.working_sets[12]) in row_line

    app = SbtuiApp(FakeSession(40, **SMALL))
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one(CheckpointTable)
        await wait_for(pilot, lambda: app.screen.rows, what="rows")
        await pilot.pause(0.2)
        assert not table.working_sets and "ws%" not in line_text(table, 0)


async def run_from_palette(pilot, app, name: str) -> None:
    await pilot.press("ctrl+p")
    await pilot.pause()
    await pilot.press(*name)
    await pilot.pause(0.3)
    await pilot.press("enter")


async def test_running_writeset_shows_progress_then_the_results(monkeypatch):
    session = FakeSession(60, latency=0.5, **SMALL)
    app = SbtuiApp(session)
    seen = []
    real = SimulationPanel.on_simulation_panel_progressed

    def record(panel, message):          # what the panel was given to show
        seen.append(message.progress)
        real(panel, message)
    monkeypatch.setattr(SimulationPanel, "on_simulation_panel_progressed", record)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        table = screen.query_one(CheckpointTable)
        await wait_for(pilot, lambda: screen.rows, what="rows")
        panel = screen.query_one(SimulationPanel)
        assert not panel.has_class("-visible") and panel.region.height == 0
        await run_from_palette(pilot, app, "analysis: run writeset")
        await wait_for(pilot, lambda: panel.state != "idle", what="the run to start")
        assert panel.has_class("-visible") and panel.region.height >= 2
        await wait_for(pilot, lambda: panel.state == "done", what="the run to end")
        await wait_for(pilot, lambda: table.working_sets, what="the working sets")
        assert len(table.working_sets) == 59
        assert [a.name for a in session.recording.analyses()] == ["writeset"]
        last = seen[-1]
        assert (last.done, last.total, last.running, last.failed, last.eta_s) == (59, 59, 0, 0, 0.0)
        assert all(0 <= p.done <= p.total == 59 for p in seen)
        bar = panel.query_one("#sim-bar")
        assert bar.progress == bar.total == 59
        assert "59/59 verified" in str(panel.query_one("#sim-counts").render())
        # the heatmap can show it at once
        await pilot.press("down", "w")
        await wait_for(pilot, lambda: screen.query_one(Heatmap).showing_writeset, what="writeset view")
        await pilot.press("escape")      # hides the outcome
        assert not panel.has_class("-visible")


async def test_failed_intervals_are_named():
    app = SbtuiApp(FakeSession(60, fail_intervals=(3, 17), **SMALL))
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.rows, what="rows")
        panel = screen.query_one(SimulationPanel)
        await run_from_palette(pilot, app, "analysis: run verify")
        await wait_for(pilot, lambda: panel.state == "failed", what="the run to end with failures")
        detail = str(panel.query_one("#sim-detail").render())
        assert "2 failed: intervals 3, 17" in detail, detail
        assert "57/59 verified" in str(panel.query_one("#sim-counts").render())
        assert panel.has_class("-failed")
        assert any("2 failed" in n.message for n in app._notifications)


async def test_escape_cancels_a_running_simulation_and_nothing_is_stored():
    session = FakeSession(60, latency=30.0, **SMALL)     # 1.5 s per round: it will not finish
    app = SbtuiApp(session)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.rows, what="rows")
        panel = screen.query_one(SimulationPanel)
        await pilot.press("A")
        await wait_for(pilot, lambda: panel.progress is not None, what="the first progress report")
        await pilot.press("escape")
        assert panel.state == "cancelling"
        await wait_for(pilot, lambda: panel.state == "cancelled", what="the run to stop")
        assert panel.progress.done < panel.progress.total
        assert "nothing was stored" in str(panel.query_one("#sim-detail").render())
        assert session.recording.analyses() == []
        assert not screen.query_one(CheckpointTable).working_sets


async def test_a_live_session_is_not_offered_a_simulation_and_says_why():
    session = FakeSession(30, live=True, live_interval=5.0, **SMALL)
    app = SbtuiApp(session)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.rows, what="rows")
        await pilot.press("A")
        await pilot.pause()
        assert screen.query_one(SimulationPanel).state == "idle"
        assert any("still growing" in n.message for n in app._notifications)
        help_ = {c.name: c.help for c in screen.analysis_palette_commands()}
        assert help_["analysis: run writeset"].startswith("not offered: the recording is still growing")


# -- snapshot ----------------------------------------------------------------------

class WritesetHeatmapApp(App):
    """The heatmap alone (the session screen's layout is not what this shows)."""

    CSS_PATH = "../sbtui/sbtui.tcss"

    def get_theme_variable_defaults(self):
        return dict(VARIABLE_DEFAULTS)

    def compose(self) -> ComposeResult:
        rec = FakeSession(60, analyses=("writeset",), **SMALL).recording
        self.rec = rec
        yield Heatmap(rec.machine, id="heatmap")

    def on_mount(self):
        self.register_theme(FALLBACK_THEME)
        self.theme = FALLBACK_THEME.name


def test_heatmap_in_writeset_mode_looks_as_approved(snap_compare):
    from sbtui.messages import HeatLayer

    async def show_sub_step(pilot):
        app = pilot.app
        heatmap = app.query_one(Heatmap)
        row = app.rec.checkpoints()[20]
        heatmap.set_layer(HeatLayer(app.rec.dirty_pages(row.id), label="interval #20"))
        heatmap.set_writeset(app.rec.writeset(row.id))
        heatmap.ws_mode = True
        for _ in range(5):
            heatmap.action_writeset_step(1)
        heatmap.focus()
        await pilot.pause()

    assert snap_compare(WritesetHeatmapApp(), run_before=show_sub_step, terminal_size=(100, 30))


async def test_quitting_during_a_simulation_stops_it_first():
    session = FakeSession(60, latency=30.0, **SMALL)
    app = SbtuiApp(session)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.rows, what="rows")
        panel = screen.query_one(SimulationPanel)
        await pilot.press("A")
        await wait_for(pilot, lambda: panel.progress is not None, what="the first progress report")
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, what="the app to exit")
    assert panel._idle.is_set(), "the simulation outlived the app"
    assert session.recording.analyses() == [] and session.closed
