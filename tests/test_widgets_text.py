"""Text that comes from the guest, gdb or the user is shown as text, never
read as markup: guest memory holds any byte (a backslash at the end of a
line of the memory view escaped the closing tag after it and the replay
stopped drawing: seen with a real kernel stack), and a breakpoint location or
a recording's name may hold brackets and backslashes too."""

from __future__ import annotations

from textual.app import App, ComposeResult

from engine.api import Breakpoint, BreakpointKind, CheckpointRow, GuestState, RecordingStatus
from sbtui.themes import FALLBACK_THEME, VARIABLE_DEFAULTS
from sbtui.widgets.breakpoints import BreakpointsView
from sbtui.widgets.memory import MemoryView
from sbtui.widgets.replay_position import ReplayPosition
from sbtui.widgets.status_bar import StatusBar

NASTY = "a[b]c[/]\\"


class PanelsApp(App):
    def get_theme_variable_defaults(self):
        return dict(VARIABLE_DEFAULTS)

    def compose(self) -> ComposeResult:
        yield MemoryView(id="memory")
        yield BreakpointsView(id="breakpoints")
        yield StatusBar(id="status")
        yield ReplayPosition([CheckpointRow("0", 0, 0, 0, 0.0, 0.0, 0, 0, 0, 0, 0, 0),
                              CheckpointRow("1", 1, 1000, 0, 0.0, 0.0, 0, 0, 0, 0, 0, 0)],
                             id="position")

    def on_mount(self):
        self.register_theme(FALLBACK_THEME)
        self.theme = FALLBACK_THEME.name


def plain(widget) -> str:
    return widget.render().plain


async def test_memory_bytes_are_text():
    app = PanelsApp()
    async with app.run_test(size=(120, 20)):
        memory = app.query_one(MemoryView)
        data = b"a" * 15 + b"\\" + b"[/]\\" + b"x" * 11 + b"\\"
        memory.show(0x1000, data, physical=False)
        lines = plain(memory).splitlines()
        assert lines[0].endswith("61 5c  │aaaaaaaaaaaaaaa\\│")
        assert lines[1].endswith("│[/]\\xxxxxxxxxxx\\│")
        memory.show(0x1000, b"", physical=False, error=f"cannot read {NASTY}")
        assert plain(memory) == f"cannot read {NASTY}"


async def test_breakpoint_locations_status_and_stops_are_text():
    app = PanelsApp()
    async with app.run_test(size=(120, 20)):
        bps = app.query_one(BreakpointsView)
        bps.show([Breakpoint(1, BreakpointKind.BREAKPOINT, NASTY, 0x1234),
                  Breakpoint(2, BreakpointKind.WATCH, "*0x1000", 0x1000, hits=3)])
        lines = plain(bps).splitlines()
        assert NASTY in lines[0] and "0x1234" in lines[0]
        assert lines[1].count("0x1000") == 1      # an address location is not repeated

        status = app.query_one(StatusBar)
        status.show_session(NASTY, RecordingStatus(GuestState.RECORDED, 5, 0, 2, 0.0, 10, 20))
        assert NASTY in plain(status)
        status.show_replay(NASTY, 1, 500, stop=f"breakpoint 1, {NASTY}")
        assert plain(status).count(NASTY) == 2
        status.show_replay("rec", 1, 500, stop="", busy=f"going to {NASTY}")
        assert f"going to {NASTY}" in plain(status)

        position = app.query_one(ReplayPosition)
        position.show(icount=500, stop=NASTY)
        assert NASTY in plain(position)
        position.show(phase=f"seeking {NASTY}", fraction=0.5)
        assert f"seeking {NASTY}" in plain(position)
