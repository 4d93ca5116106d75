"""The checkpoint table and the timeline stay instant with 10,000 checkpoints,
and show what the rows say."""

from __future__ import annotations

from textual.app import App, ComposeResult

from sbtui.fake_session import FakeSession
from sbtui.themes import FALLBACK_THEME, VARIABLE_DEFAULTS
from sbtui.widgets.checkpoint_table import CheckpointTable, format_row
from sbtui.widgets.timeline import BAR_ROWS, Timeline

SESSION = FakeSession(10_000)
ROWS = SESSION.recording.checkpoints()


class TableApp(App):
    CSS_PATH = "../sbtui/sbtui.tcss"

    def get_theme_variable_defaults(self):
        return dict(VARIABLE_DEFAULTS)

    def compose(self) -> ComposeResult:
        yield Timeline(id="timeline")
        yield CheckpointTable(id="checkpoints")

    def on_mount(self):
        self.register_theme(FALLBACK_THEME)
        self.theme = FALLBACK_THEME.name
        self.activated: list[int] = []

    def on_checkpoint_table_activated(self, message: CheckpointTable.Activated) -> None:
        self.activated.append(message.index)


async def test_ten_thousand_rows_format_only_what_is_visible(monkeypatch):
    """What keeps 10,000 rows instant: loading, painting and appending format
    only the rows on screen, never all of them (timings: benchmarks/bench_ui.py)."""
    import sbtui.widgets.checkpoint_table as module
    formatted = []
    real = module.format_row

    def counting(row, *args, **kwargs):
        formatted.append(row)
        return real(row, *args, **kwargs)

    monkeypatch.setattr(module, "format_row", counting)
    app = TableApp()
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one(CheckpointTable)
        table.set_rows(list(ROWS[:9_999]))
        await pilot.pause()
        height = table.size.height
        assert 0 < len(formatted) <= 3 * height, len(formatted)
        table.cursor = 9_998
        await pilot.pause()
        formatted.clear()
        table.append_rows([ROWS[9_999]])
        await pilot.pause()
        assert len(formatted) <= 3 * height, len(formatted)
        assert table.cursor == 9_999          # follows the newest row
        assert table.scroll_y > 9_900
        lines = [table.render_line(y).text for y in range(table.size.height)]
        assert lines[0].split()[:2] == ["#", "icount"]
        assert real(ROWS[9_999]).strip() in [line.strip() for line in lines]


async def test_keys_move_the_cursor_and_enter_activates():
    app = TableApp()
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one(CheckpointTable)
        table.set_rows(list(ROWS[:500]))
        table.focus()
        await pilot.press("down", "down", "pagedown")
        assert table.cursor > 2
        await pilot.press("end")
        assert table.cursor == 499
        await pilot.press("home", "down", "enter")
        await pilot.pause()
        assert table.cursor == 1
        assert app.activated == [1]


async def test_timeline_bins_keep_the_peak_of_each_column():
    app = TableApp()
    async with app.run_test(size=(100, 40)) as pilot:
        timeline = app.query_one(Timeline)
        timeline.set_rows(list(ROWS))
        bins = timeline.bins()
        assert len(bins) == timeline.size.width
        n, w = len(ROWS), timeline.size.width
        peak_col = max(range(n), key=lambda i: ROWS[i].pages_dirty) * w // n
        assert bins[peak_col] == max(bins) == 1.0
        # one binning pass per change of rows, however many lines are drawn
        # (timings: benchmarks/bench_ui.py)
        values = []
        real_value = timeline._value
        timeline._value = lambda row: values.append(row) or real_value(row)
        timeline.set_rows(list(ROWS))
        for _ in range(3):
            for y in range(timeline.size.height):
                timeline.render_line(y)
        assert len(values) == n
        del timeline._value
        timeline.select(5000)
        await pilot.pause()
        assert timeline.index_at(timeline.column_of(5000)) in range(5000 - n // w, 5000 + n // w + 1)


async def test_a_growing_table_keeps_the_newest_row_in_view():
    """A live recording appends rows one by one; the cursor follows the newest
    and the table scrolls so that it stays on screen."""
    app = TableApp()
    async with app.run_test(size=(120, 20)) as pilot:
        table = app.query_one(CheckpointTable)
        table.set_rows([])
        table.append_rows(list(ROWS[:2]))       # the first rows can come together
        await pilot.pause()
        assert table.cursor == 1
        for row in ROWS[2:40]:
            table.append_rows([row])
            await pilot.pause()
            visible = table.scrollable_content_region.height - 1
            assert table.cursor == row.index
            assert table.scroll_y <= table.cursor < table.scroll_y + visible, (
                table.cursor, table.scroll_y, visible)


async def test_a_few_checkpoints_spread_across_the_whole_timeline():
    app = TableApp()
    async with app.run_test(size=(100, 40)) as pilot:
        timeline = app.query_one(Timeline)
        rows = list(ROWS[:7])
        timeline.set_rows(rows)
        await pilot.pause()
        w = timeline.size.width
        k, gap = timeline.spread()
        assert k == w // 7 and gap == 1
        bins = timeline.bins()
        assert w - 7 < len(bins) <= w
        for i in range(7):
            bar = bins[i * k:(i + 1) * k]
            assert bar[:k - gap] == [bar[0]] * (k - gap) and bar[0] > 0
            assert bar[k - gap:] == [0.0] * gap
            assert timeline.index_at(timeline.column_of(i) + k // 2) == i
        timeline.select(3)
        await pilot.pause()
        selected = timeline.get_component_rich_style("timeline--selected")
        top = timeline.render_line(BAR_ROWS - 1)
        columns = []
        x = 0
        for seg in top:
            if seg.style == selected:
                columns += range(x, x + len(seg.text))
            x += len(seg.text)
        assert columns == list(range(3 * k, 4 * k - gap))
