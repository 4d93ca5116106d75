"""The app's layout follows the terminal's size (Textual breakpoint classes).

Pilot tests on the fake session at 80x24 (the default terminal, and CI's),
100x30, 120x30 and the 160x48 of the snapshots: the checkpoint table keeps
at least five rows, the heatmap is one key away when it does not fit beside
the table, the disassembly keeps at least 60 columns, every debugger panel is
reachable with ``t``, the memory view fits its hex and ASCII to the width, and
the registers that do not fit can be scrolled to.
"""

from __future__ import annotations

import re
import time

import pytest

from sbtui.app import SbtuiApp
from sbtui.fake_session import FakeSession
from sbtui.screens.debugger import PANELS, DebuggerScreen
from sbtui.screens.session import SessionScreen
from sbtui.widgets.checkpoint_table import CheckpointTable
from sbtui.widgets.console import GuestConsole
from sbtui.widgets.heatmap import Heatmap
from sbtui.widgets.memory import MemoryView, line_width
from sbtui.widgets.registers import GPRS, RegistersPanel, RegistersView

SMALL = [(80, 24), (100, 30)]


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SBTUI_CONFIG_DIR", str(tmp_path / "config"))


async def wait_for(pilot, condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.02)


async def session_ready(pilot, app) -> SessionScreen:
    await wait_for(pilot, lambda: isinstance(app.screen, SessionScreen) and app.screen.rows, what="rows")
    heatmap = app.screen.query_one(Heatmap)
    await wait_for(pilot, lambda: heatmap.heat.label == "interval #0", what="the first heatmap")
    await pilot.pause()
    return app.screen


async def debugger_ready(pilot, app) -> DebuggerScreen:
    await session_ready(pilot, app)
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, DebuggerScreen) and app.screen.snapshot,
                   what="the replay's registers")
    await pilot.pause()
    return app.screen


def shown(widget) -> bool:
    """On screen: displayed, with its ancestors, and given some room."""
    return widget.display and all(a.display for a in widget.ancestors_with_self
                                  if hasattr(a, "display")) and widget.region.area > 0


def palette_names(screen) -> list[str]:
    return [cmd.name for cmd in screen.palette_commands()]


def footer_keys(screen) -> set[str]:
    return {b.binding.action for b in screen.active_bindings.values() if b.enabled}


# -- session screen ----------------------------------------------------------
@pytest.mark.parametrize("size", SMALL)
async def test_small_session_keeps_five_table_rows_and_the_heatmap_one_key_away(size):
    app = SbtuiApp(FakeSession(300))
    async with app.run_test(size=size) as pilot:
        screen = await session_ready(pilot, app)
        assert screen.has_class("-narrow") and screen.has_class("-short")
        table, heatmap = screen.query_one(CheckpointTable), screen.query_one(Heatmap)
        console = screen.query_one(GuestConsole)
        assert shown(table) and shown(console) and not shown(heatmap)
        assert table.region.width == size[0]              # the whole width
        # frame (2) and header (1) aside, at least five checkpoints are visible
        assert table.region.height - 3 >= 5
        assert console.region.height == 7
        assert "toggle_heatmap" in footer_keys(screen)
        assert "heatmap: show / hide" in palette_names(screen)

        await pilot.press("h")
        await pilot.pause()
        assert shown(heatmap) and not shown(table) and not shown(console)
        assert heatmap.region.width == size[0]
        assert app.focused is heatmap                      # its keys work at once
        await pilot.press("down")                          # and it has the selected interval
        assert heatmap.heat.label == "interval #0" and len(heatmap.heat.dirty) > 0

        await pilot.press("h")
        await pilot.pause()
        assert shown(table) and shown(console) and not shown(heatmap)
        assert app.focused is table


async def test_wide_session_shows_table_and_heatmap_side_by_side_and_offers_no_toggle():
    app = SbtuiApp(FakeSession(300))
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await session_ready(pilot, app)
        table, heatmap = screen.query_one(CheckpointTable), screen.query_one(Heatmap)
        assert shown(table) and shown(heatmap)
        assert heatmap.region.x >= table.region.right
        assert screen.query_one(GuestConsole).region.height == 13
        assert "toggle_heatmap" not in footer_keys(screen)
        assert "heatmap: show / hide" not in palette_names(screen)

        await pilot.resize_terminal(80, 24)
        await wait_for(pilot, lambda: screen.has_class("-narrow"), what="the narrow layout")
        await pilot.pause()
        assert not shown(heatmap) and table.region.width == 80
        assert "toggle_heatmap" in footer_keys(screen)


# -- debugger screen ---------------------------------------------------------
@pytest.mark.parametrize("size", SMALL)
async def test_narrow_debugger_keeps_60_disassembly_columns_and_cycles_the_panels(size):
    app = SbtuiApp(FakeSession(300))
    async with app.run_test(size=size) as pilot:
        screen = await debugger_ready(pilot, app)
        assert screen.has_class("-narrow")
        disasm = screen.query_one("#disassembly")
        assert shown(disasm) and disasm.region.width >= 60
        panel = {"registers": screen.query_one(RegistersPanel),
                 "memory": screen.query_one(MemoryView),
                 "stack": screen.query_one("#backtrace"),
                 "console": screen.query_one("#replay-console")}
        assert "next_panel" in footer_keys(screen)
        assert "panel: show the next one" in palette_names(screen)

        seen = []
        for _ in PANELS:
            visible = [name for name, widget in panel.items() if shown(widget)]
            assert len(visible) == 1, visible
            seen.append(visible[0])
            # the panel sits under the disassembly, across the whole width
            assert panel[visible[0]].region.y >= disasm.region.bottom
            assert disasm.region.width >= 60
            await pilot.press("t")
            await pilot.pause()
        assert seen == list(PANELS)                        # registers first, then each once
        assert shown(panel["registers"])                   # and round again


@pytest.mark.parametrize("size", SMALL)
async def test_small_registers_show_every_gpr_and_scroll_to_the_rest(size):
    app = SbtuiApp(FakeSession(300))
    async with app.run_test(size=size) as pilot:
        screen = await debugger_ready(pilot, app)
        frame, regs = screen.query_one(RegistersPanel), screen.query_one(RegistersView)
        lines = str(regs.render()).splitlines()
        # three or four columns: all sixteen GPRs in the first six lines
        top = "\n".join(lines[:6])
        assert all(re.search(rf"\b{name} +0x", top) for name in GPRS)
        assert all(len(line) <= regs.content_region.width for line in lines)
        assert frame.max_scroll_y > 0                      # the rest is there, scrolled to
        assert app.focused is frame                        # the arrows scroll it
        await pilot.press("end")
        await pilot.pause()
        assert frame.scroll_y == frame.max_scroll_y
        assert "efer" in lines[-1]


@pytest.mark.parametrize("size, per_line", [((80, 24), 8), ((100, 30), 16), ((120, 30), 16)])
async def test_memory_fits_hex_and_ascii_to_its_width(size, per_line):
    app = SbtuiApp(FakeSession(300))
    async with app.run_test(size=size) as pilot:
        screen = await debugger_ready(pilot, app)
        while screen.shown_panel() != "memory":
            await pilot.press("t")
        await pilot.pause()
        memory = screen.query_one(MemoryView)
        assert shown(memory) and memory.bytes_per_line == per_line
        lines = str(memory.render()).splitlines()
        assert lines and all(len(line) == line_width(per_line) <= memory.content_region.width
                             for line in lines)
        assert all(line.endswith("│") for line in lines)  # the ASCII column is whole
        address = screen.snapshot.memory_address
        assert lines[1].startswith(f"{address + per_line:016x}")


async def test_medium_debugger_keeps_registers_beside_the_disassembly():
    app = SbtuiApp(FakeSession(300))
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await debugger_ready(pilot, app)
        assert screen.has_class("-medium")
        regs, disasm = screen.query_one(RegistersPanel), screen.query_one("#disassembly")
        assert shown(regs) and regs.region.width == 50 and regs.region.right <= disasm.region.x
        assert disasm.region.width >= 60
        assert screen.panels() == PANELS[1:]               # registers are not one of them
        assert shown(screen.query_one(MemoryView))


async def test_wide_debugger_shows_every_panel_and_offers_no_panel_key():
    app = SbtuiApp(FakeSession(300))
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await debugger_ready(pilot, app)
        for wid in ("#registers", "#disassembly", "#backtrace", "#breakpoints", "#memory",
                    "#replay-console"):
            assert shown(screen.query_one(wid)), wid
        assert screen.query_one("#disassembly").region.width >= 60
        assert "next_panel" not in footer_keys(screen)
        assert "panel: show the next one" not in palette_names(screen)
        assert screen.query_one(RegistersPanel).max_scroll_y == 0   # all of it fits
