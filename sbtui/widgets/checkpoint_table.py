"""The checkpoint table: one row per checkpoint, virtual and instant at any size.

This is a Line API ``ScrollView`` rather than a ``DataTable`` on purpose:
Textual's DataTable measures every cell of every row it is given (with Rich)
and recomputes row offsets on each append, which we measured at 1.4 s for the
first paint of 10,000 rows and 0.15-0.28 s per appended row. Here rows stay
``CheckpointRow`` objects, are formatted only when visible, and appending is
O(1): 10,000 rows load and paint in a few milliseconds, and a live recording
can add rows at any rate. Keys: up/down, page up/down, home/end; Enter posts
:class:`CheckpointTable.Activated`.

A ``ws%`` column (after ``dirty``) appears once working-set sizes are known
(:meth:`CheckpointTable.set_working_sets`, from the stored ``writeset``
analysis): the share of guest RAM the interval that the checkpoint closes
wrote in any of its sub-steps, the interval whose dirty pages ``dirty``
counts. Without the analysis the table is unchanged.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from engine.api import CheckpointRow


def short_bytes(n: int) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


# (header, width, align, formatter)
COLUMNS: tuple[tuple[str, int, str, object], ...] = (
    ("#", 5, ">", lambda r: f"{r.index}"),
    ("icount", 15, ">", lambda r: f"{r.icount:,}"),
    ("guest s", 8, ">", lambda r: f"{r.guest_time_ns / 1e9:.2f}"),
    ("down", 5, ">", lambda r: f"{r.downtime_ms:.1f}"),
    ("dirty", 6, ">", lambda r: f"{r.pages_dirty}"),
    ("new", 6, ">", lambda r: f"{r.pages_new}"),
    ("stored", 7, ">", lambda r: short_bytes(r.stored_bytes)),
    ("dup in/x", 11, ">", lambda r: f"{r.dup_intra}/{r.dup_inter}"),
    ("zero", 5, ">", lambda r: f"{r.zero_pages}"),
)
TABLE_WIDTH = sum(w for _, w, _, _ in COLUMNS) + len(COLUMNS)
WS_AFTER = "dirty"              # the working-set column follows this one
WS_WIDTH = 5


def format_fraction(fraction: float) -> str:
    """``12.3%`` in at most five characters."""
    return "100%" if fraction >= 0.9995 else f"{fraction:.1%}"


def format_row(row: CheckpointRow, working_set: float | None = None, *,
               show_ws: bool = False) -> str:
    cells = []
    for name, width, align, fmt in COLUMNS:
        cells.append(f"{fmt(row):{align}{width}}"[:width])
        if show_ws and name == WS_AFTER:
            text = format_fraction(working_set) if working_set is not None else ""
            cells.append(f"{text:>{WS_WIDTH}}")
    return " ".join(cells) + " "


def format_header(show_ws: bool = False) -> str:
    cells = []
    for name, width, align, _ in COLUMNS:
        cells.append(f"{name:{align}{width}}")
        if show_ws and name == WS_AFTER:
            cells.append(f"{'ws%':>{WS_WIDTH}}")
    return " ".join(cells) + " "


class CheckpointTable(ScrollView, can_focus=True):
    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False, id="table.up"),
        Binding("down", "cursor(1)", "Down", show=False, id="table.down"),
        Binding("pageup", "page(-1)", "Page up", show=False, id="table.page_up"),
        Binding("pagedown", "page(1)", "Page down", show=False, id="table.page_down"),
        Binding("home", "jump(0)", "First", show=False, id="table.first"),
        Binding("end", "jump(-1)", "Last", show=False, id="table.last"),
        Binding("enter", "activate", "Replay from here", id="table.activate"),
    ]
    COMPONENT_CLASSES = {"checkpoint-table--header", "checkpoint-table--cursor",
                         "checkpoint-table--cursor-blur", "checkpoint-table--range",
                         "checkpoint-table--odd"}

    class Highlighted(Message):
        def __init__(self, table: CheckpointTable, index: int) -> None:
            super().__init__()
            self.table = table
            self.index = index

    class Activated(Message):
        """Enter (or a click on the highlighted row) asked for a replay."""

        def __init__(self, table: CheckpointTable, index: int) -> None:
            super().__init__()
            self.table = table
            self.index = index

    cursor: reactive[int] = reactive(0, always_update=True, repaint=False)

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.rows: list[CheckpointRow] = []
        self.range: tuple[int, int] | None = None
        self.follow = True      # keep the cursor on the newest row while live
        self.working_sets: dict[int, float] = {}    # row index -> fraction of RAM

    # -- data --------------------------------------------------------------
    def set_rows(self, rows: list[CheckpointRow]) -> None:
        self.rows = rows
        self._update_size()
        self.refresh()

    def append_rows(self, rows: list[CheckpointRow]) -> None:
        if not rows:
            return
        at_end = self.cursor >= len(self.rows) - 1     # (also when the table was empty)
        self.rows.extend(rows)
        self._update_size()
        if self.follow and at_end:
            self.cursor = len(self.rows) - 1
        else:
            self.refresh()

    def set_range(self, range_: tuple[int, int] | None) -> None:
        self.range = range_
        self.refresh()

    def set_working_sets(self, fractions: dict[int, float]) -> None:
        """Working-set size per row (the interval the row's checkpoint closes),
        as a fraction of guest RAM; empty hides the column."""
        self.working_sets = dict(fractions)
        self._update_size()
        self.refresh()

    @property
    def show_ws(self) -> bool:
        return bool(self.working_sets)

    def _update_size(self) -> None:
        width = TABLE_WIDTH + (WS_WIDTH + 1 if self.show_ws else 0)
        self.virtual_size = Size(width, len(self.rows) + 1)

    # -- cursor ------------------------------------------------------------
    def validate_cursor(self, value: int) -> int:
        return max(0, min(value, len(self.rows) - 1)) if self.rows else 0

    def watch_cursor(self, old: int, new: int) -> None:
        self._scroll_cursor_into_view(new)
        self.refresh()
        self.post_message(self.Highlighted(self, new))

    def _scroll_cursor_into_view(self, index: int, again: bool = True) -> None:
        visible = max(1, self.scrollable_content_region.height - 1)
        top = round(self.scroll_y)
        if index < top:
            self.scroll_to(y=index, animate=False, immediate=True)
        elif index >= top + visible:
            self.scroll_to(y=index - visible + 1, animate=False, immediate=True)
            if again and round(self.scroll_y) + visible <= index:
                # rows were just added: the scroll range grows with the next
                # layout, and scroll_to clamped to the old one
                self.call_after_refresh(lambda: self._scroll_cursor_into_view(self.cursor, False))

    def action_cursor(self, delta: int) -> None:
        self.cursor += delta

    def action_page(self, direction: int) -> None:
        self.cursor += direction * max(1, self.scrollable_content_region.height - 2)

    def action_jump(self, where: int) -> None:
        self.cursor = 0 if where == 0 else len(self.rows) - 1

    def action_activate(self) -> None:
        if self.rows:
            self.post_message(self.Activated(self, self.cursor))

    def on_click(self, event: events.Click) -> None:
        index = round(self.scroll_y) + event.y - 1
        if event.y >= 1 and 0 <= index < len(self.rows):
            if index == self.cursor and event.chain >= 2:
                self.action_activate()
            self.cursor = index

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    # -- rendering ---------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        scroll_x = round(self.scroll_x)
        base = self.rich_style
        if y == 0:
            header = format_header(self.show_ws)
            style = self.get_component_rich_style("checkpoint-table--header")
            return Strip([Segment(header, style)]).crop_extend(scroll_x, scroll_x + width, style)
        index = round(self.scroll_y) + y - 1
        if index >= len(self.rows):
            return Strip.blank(width, base)
        style: Style = base
        if index == self.cursor:
            style = self.get_component_rich_style(
                "checkpoint-table--cursor" if self.has_focus else "checkpoint-table--cursor-blur")
        elif self.range and self.range[0] <= index <= self.range[1]:
            style = self.get_component_rich_style("checkpoint-table--range")
        elif index % 2:
            style = self.get_component_rich_style("checkpoint-table--odd")
        text = (format_row(self.rows[index], self.working_sets.get(index), show_ws=True)
                if self.show_ws else format_row(self.rows[index]))
        return Strip([Segment(text, style)]).crop_extend(
            scroll_x, scroll_x + width, style)

    def refresh_row(self, index: int) -> None:
        y = index - round(self.scroll_y) + 1
        self.refresh(Region(0, y, self.size.width, 1))
