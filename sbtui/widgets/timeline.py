"""The timeline strip: every checkpoint of the recording, left to right.

Three rows of eighth-blocks show size per interval (dirty pages or stored
bytes, log scale) with one column per bin of checkpoints (the bin's maximum,
so a spike is never averaged away), or, when there are fewer checkpoints than
columns, an equal run of columns per checkpoint across the whole width; a row of ``▲`` marks guest markers; an axis
row gives the first and last checkpoints. The selected checkpoint and the
selected range are highlighted. Binning is one pass over the rows, redone only
when rows are added, the width or the metric changes: 10,000 checkpoints cost
a few milliseconds.
"""

from __future__ import annotations

import math
from bisect import bisect_right

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

from engine.api import CheckpointRow, Marker

BLOCKS = " ▁▂▃▄▅▆▇█"
BAR_ROWS = 3


class Timeline(Widget, can_focus=True):
    BINDINGS = [
        Binding("left", "move(-1)", "Previous", show=False, id="timeline.previous"),
        Binding("right", "move(1)", "Next", show=False, id="timeline.next"),
        Binding("shift+left", "move(-10)", "Back 10", show=False, id="timeline.back10"),
        Binding("shift+right", "move(10)", "Forward 10", show=False, id="timeline.forward10"),
        Binding("home", "jump(0)", "First", show=False, id="timeline.first"),
        Binding("end", "jump(-1)", "Last", show=False, id="timeline.last"),
    ]
    COMPONENT_CLASSES = {"timeline--bar", "timeline--selected", "timeline--range",
                         "timeline--marker", "timeline--axis"}

    class Selected(Message):
        """The user picked a checkpoint on the strip."""

        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    metric: reactive[str] = reactive("dirty")     # "dirty" or "stored"

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.rows: list[CheckpointRow] = []
        self.markers: list[Marker] = []
        self.selected = 0
        self.range: tuple[int, int] | None = None
        self._bins: list[float] | None = None     # per column, 0..1
        self._bin_width = 0

    def set_rows(self, rows: list[CheckpointRow], markers: list[Marker] | None = None) -> None:
        self.rows = rows
        if markers is not None:
            self.markers = markers
        self._bins = None
        self.refresh()

    def select(self, index: int, range_: tuple[int, int] | None = None) -> None:
        self.selected = index
        self.range = range_
        self.refresh()

    def watch_metric(self) -> None:
        self._bins = None
        self.refresh()

    # -- binning -----------------------------------------------------------
    def _value(self, row: CheckpointRow) -> int:
        return row.pages_dirty if self.metric == "dirty" else row.stored_bytes

    def spread(self) -> tuple[int, int]:
        """``(columns, gap)`` per checkpoint when each has its own run of
        columns (fewer checkpoints than columns); ``(0, 0)`` when binned."""
        n, w = len(self.rows), max(1, self.size.width)
        if n == 0 or n > w:
            return 0, 0
        k = w // n
        return k, (1 if k >= 4 else 0)

    def column_of(self, index: int) -> int:
        n, w = len(self.rows), max(1, self.size.width)
        k, _ = self.spread()
        return index * k if k else index * w // n

    def index_at(self, column: int) -> int:
        n, w = len(self.rows), max(1, self.size.width)
        k, _ = self.spread()
        if k:
            return min(n - 1, column // k)
        return min(n - 1, (column * n + w - 1) // w)

    def bins(self) -> list[float]:
        w = max(1, self.size.width)
        if self._bins is not None and self._bin_width == w:
            return self._bins
        n = len(self.rows)
        cols = min(n, w)
        peaks = [0] * cols
        if n:
            value = self._value
            if n > w:
                for i, row in enumerate(self.rows):
                    c = i * w // n
                    v = value(row)
                    if v > peaks[c]:
                        peaks[c] = v
            else:
                peaks = [value(r) for r in self.rows]
        # log scale between the smallest and largest non-zero bins, so quiet
        # intervals stay visible next to a burst that is 1000 times larger
        nonzero = [v for v in peaks if v > 0]
        lo = math.log(min(nonzero)) if nonzero else 0.0
        span = (math.log(max(nonzero)) - lo) if nonzero else 0.0
        bins = [0.0 if v <= 0 else 0.1 + 0.9 * ((math.log(v) - lo) / span if span else 1.0)
                for v in peaks]
        k, gap = self.spread()
        if k > 1:
            bins = [b if j < k - gap else 0.0 for b in bins for j in range(k)]
        self._bins = bins
        self._bin_width = w
        return self._bins

    # -- rendering ---------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        w = self.size.width
        base = self.rich_style
        if not self.rows:
            text = " waiting for the first checkpoint…" if y == 1 else ""
            return Strip([Segment(text, base)]).adjust_cell_length(w, base)
        bins = self.bins()
        bar = self.get_component_rich_style("timeline--bar")
        sel = self.get_component_rich_style("timeline--selected")
        rng = self.get_component_rich_style("timeline--range")
        k, gap = self.spread()
        if k:
            # each checkpoint owns columns [i*k, i*k + k - gap)
            def owner(c: int) -> int:
                return c // k if c % k < k - gap else -1
            sel_col = self.selected
            lo_col, hi_col = self.range if self.range else (-1, -1)
        else:
            def owner(c: int) -> int:
                return c
            sel_col = self.column_of(self.selected)
            lo_col = hi_col = -1
            if self.range:
                lo_col, hi_col = self.column_of(self.range[0]), self.column_of(self.range[1])
        def style_for(c: int, normal: Style) -> Style:
            o = owner(c)
            if o < 0:
                return normal
            if o == sel_col:
                return sel
            if lo_col <= o <= hi_col:
                return rng
            return normal
        if y < BAR_ROWS:
            floor = (BAR_ROWS - 1 - y) * 8
            cells = []
            for c, v in enumerate(bins):
                level = round(v * 8 * BAR_ROWS)
                cells.append(BLOCKS[max(0, min(8, level - floor))])
            return self._runs(cells, style_for, bar, w)
        if y == BAR_ROWS:
            mark = self.get_component_rich_style("timeline--marker")
            cells = [" "] * len(bins)
            icounts = [r.icount for r in self.rows]
            for m in self.markers:
                i = min(len(self.rows) - 1, bisect_right(icounts, m.icount))
                c = self.column_of(i) + (k - gap) // 2
                if c < len(cells):
                    cells[c] = "▲"
            return self._runs(cells, style_for, mark, w)
        if y == BAR_ROWS + 1:
            axis = self.get_component_rich_style("timeline--axis")
            left = "#0"
            right = f"#{len(self.rows) - 1}"
            metric = "dirty pages" if self.metric == "dirty" else "stored bytes"
            mid = f"{metric} per interval (log)  ·  {len(self.rows):,} checkpoints"
            gap = max(1, w - len(left) - len(right))
            text = left + mid.center(gap) + right
            return Strip([Segment(text[:w], axis)]).adjust_cell_length(w, base)
        return Strip.blank(w, base)

    def _runs(self, cells: list[str], style_for, normal: Style, w: int) -> Strip:
        segments: list[Segment] = []
        run: list[str] = []
        run_style = None
        for c, ch in enumerate(cells):
            st = style_for(c, normal)
            if st is not run_style and run:
                segments.append(Segment("".join(run), run_style))
                run = []
            run_style = st
            run.append(ch)
        if run:
            segments.append(Segment("".join(run), run_style))
        return Strip(segments).adjust_cell_length(w, self.rich_style)

    # -- input -------------------------------------------------------------
    def action_move(self, delta: int) -> None:
        if self.rows:
            self.post_message(self.Selected(max(0, min(len(self.rows) - 1, self.selected + delta))))

    def action_jump(self, where: int) -> None:
        if self.rows:
            self.post_message(self.Selected(0 if where == 0 else len(self.rows) - 1))

    def on_click(self, event: events.Click) -> None:
        if self.rows:
            self.post_message(self.Selected(self.index_at(event.x)))

    def on_resize(self) -> None:
        self._bins = None
