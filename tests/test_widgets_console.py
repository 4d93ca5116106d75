"""The consoles follow their newest output: a console shown whole, grown line
by line, or longer than the lines it keeps, has its last line on the bottom
row of the panel (Textual's Log alone scrolled past the end once it dropped
lines, and showed an empty panel)."""

from __future__ import annotations

from textual.app import App, ComposeResult

from sbtui.themes import FALLBACK_THEME, VARIABLE_DEFAULTS
from sbtui.widgets.tail_log import TailLog, last_lines


class LogApp(App):
    CSS = "TailLog { height: 10; }"

    def get_theme_variable_defaults(self):
        return dict(VARIABLE_DEFAULTS)

    def compose(self) -> ComposeResult:
        yield TailLog(max_lines=100, id="log")

    def on_mount(self):
        self.register_theme(FALLBACK_THEME)
        self.theme = FALLBACK_THEME.name


def console(lines: int) -> str:
    return "".join(f"[{i:6}] line {i}\r\n" for i in range(lines))


def bottom_text(log: TailLog) -> list[str]:
    """What the panel shows, top to bottom, without trailing blank rows."""
    rows = [log.render_line(y).text.rstrip() for y in range(log.size.height)]
    while rows and not rows[-1]:
        rows.pop()
    return rows


def test_last_lines():
    assert last_lines("a\nb\nc\n", 2) == "b\nc\n"
    assert last_lines("a\nb\nc", 2) == "b\nc"
    assert last_lines("a\nb\n", 5) == "a\nb\n"
    assert last_lines("", 3) == ""


async def test_a_console_shown_whole_starts_at_its_newest_line():
    app = LogApp()
    async with app.run_test(size=(60, 12)) as pilot:
        log = app.query_one(TailLog)
        log.show(console(40))
        await pilot.pause()
        assert bottom_text(log)[-1].endswith("line 39")
        assert log.scroll_y == log.max_scroll_y > 0


async def test_a_console_longer_than_its_limit_still_shows_its_end():
    app = LogApp()
    async with app.run_test(size=(60, 12)) as pilot:
        log = app.query_one(TailLog)
        log.show(console(250))
        await pilot.pause()
        assert bottom_text(log)[-1].endswith("line 249")
        assert log.virtual_size.height == log.line_count <= 101
        for n in range(251, 400, 7):                  # grows past the limit again
            log.show(console(n))
            await pilot.pause()
            assert bottom_text(log)[-1].endswith(f"line {n - 1}"), bottom_text(log)


async def test_a_console_that_grows_is_appended_and_one_that_changes_is_replaced():
    app = LogApp()
    async with app.run_test(size=(60, 12)) as pilot:
        log = app.query_one(TailLog)
        log.show(console(30))
        await pilot.pause()
        first_lines = list(log.lines)
        log.show(console(31))
        await pilot.pause()
        assert list(log.lines)[:30] == first_lines[:30]
        assert bottom_text(log)[-1].endswith("line 30")
        log.show("another replay\r\n")               # went back to an earlier checkpoint
        await pilot.pause()
        assert bottom_text(log) == ["another replay"]
