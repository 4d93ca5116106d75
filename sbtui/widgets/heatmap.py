"""The dirty-page heatmap: guest RAM as a grid, one cell per range of pages.

Rows are contiguous runs of the RAM block, labelled with the guest physical
address of their first page (so the PCI hole shows as a jump). A cell covers
``pages_per_cell`` pages, a power of two from "everything fits" down to one
page; its colour is the share of those pages that were dirty (times the number
of intervals when a range of intervals is shown). The last two lines are the
legend and the cursor's address range and counts.

Redraw cost does not depend on RAM size: counts are taken per visible cell with
``bisect`` on the sorted page array (C speed), so a 4 GiB guest (1,048,576
pages) redraws in a few milliseconds. Strips are cached per visible row and
rebuilt only for the rows that change (cursor moves touch two rows).

Writeset view (:meth:`set_writeset`, the ``writeset`` analysis): when the
interval shown has a stored writeset and the view is on (:attr:`ws_mode`),
the grid shows where the interval wrote at finer resolution instead of its
dirty pages: sub-step N of M (the pages whose content changed in it), or
sub-step 0, "all", which counts for each cell how many sub-steps changed its
pages (the shape of a range of intervals, with sub-steps for intervals). The
legend names the sub-step and its instruction-count range; the info line
gives the interval's working set.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from dataclasses import dataclass
from itertools import chain

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.color import Color
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

from engine.api import IntervalWriteset, MachineInfo
from sbtui.messages import HeatLayer

LEVELS = 8                 # colour steps for a non-empty cell
LABEL_WIDTH = 14           # "0x0_0000_0000" column plus a space
MARK_ZERO, MARK_DUP = 1, 2
MARK_GLYPHS = {0: " ", MARK_ZERO: "·", MARK_DUP: "=", MARK_ZERO | MARK_DUP: "≡"}
EMPTY = array("I")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def count_ranges(pages: array, bounds: range) -> list[int]:
    """How many entries of sorted ``pages`` fall in each [b, b+step) of ``bounds``."""
    out = []
    lo = bisect_left(pages, bounds.start)
    for b in bounds:
        hi = bisect_left(pages, b + bounds.step, lo)
        out.append(hi - lo)
        lo = hi
    return out


@dataclass(frozen=True)
class CursorInfo:
    first_page: int
    last_page: int
    gpa_start: int
    gpa_end: int             # inclusive
    dirty: int
    zero: int | None
    duplicate: int | None
    pages: int
    intervals: int


class Heatmap(Widget, can_focus=True):
    """See the module docstring. Set data with :meth:`set_layer`."""

    BINDINGS = [
        Binding("up", "move(0, -1)", "Up", show=False, id="heatmap.up"),
        Binding("down", "move(0, 1)", "Down", show=False, id="heatmap.down"),
        Binding("left", "move(-1, 0)", "Left", show=False, id="heatmap.left"),
        Binding("right", "move(1, 0)", "Right", show=False, id="heatmap.right"),
        Binding("pageup", "page(-1)", "Page up", show=False, id="heatmap.page_up"),
        Binding("pagedown", "page(1)", "Page down", show=False, id="heatmap.page_down"),
        Binding("home", "jump(0)", "First page", show=False, id="heatmap.home"),
        Binding("end", "jump(-1)", "Last page", show=False, id="heatmap.end"),
        Binding("plus,equals_sign", "zoom(1)", "Zoom in", id="heatmap.zoom_in"),
        Binding("minus", "zoom(-1)", "Zoom out", id="heatmap.zoom_out"),
        Binding("0", "fit", "Fit", show=False, id="heatmap.fit"),
        Binding("z", "toggle_marks", "Zero/dup marks", id="heatmap.marks"),
    ]

    COMPONENT_CLASSES = {
        "heatmap--empty", "heatmap--low", "heatmap--mid", "heatmap--high",
        "heatmap--label", "heatmap--cursor", "heatmap--cursor-blur", "heatmap--ruler",
        "heatmap--hole", "heatmap--info", "heatmap--mark",
    }

    class CursorMoved(Message):
        """The cursor moved or the data under it changed."""

        def __init__(self, heatmap: Heatmap, info: CursorInfo) -> None:
            super().__init__()
            self.heatmap = heatmap
            self.info = info

    show_marks: reactive[bool] = reactive(False)
    ws_mode: reactive[bool] = reactive(False)        # show the writeset when there is one
    zoom_level: reactive[int] = reactive(0)          # 0 = fit; k = fit / 2**k pages per cell

    def __init__(self, machine: MachineInfo, *, name: str | None = None,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.machine = machine
        self.pages = machine.ram_pages
        self.heat = HeatLayer(EMPTY)        # what is drawn
        self.dirty_heat = self.heat         # the interval's dirty pages (set_layer)
        self.writeset: IntervalWriteset | None = None
        self.ws_step = 0                    # 0: all sub-steps counted; k: sub-step k of M
        self._ws_layers: dict[tuple[int, int], HeatLayer] = {}
        self.cursor_page = 0
        self.top_row = 0
        self._strips: dict[int, Strip] = {}     # visible row -> strip
        self._palette: list[Style] | None = None
        self._mark_styles: list[Style] = []

    # -- geometry ----------------------------------------------------------
    @property
    def columns(self) -> int:
        usable = max(16, self.size.width - LABEL_WIDTH)
        return max(16, usable // 16 * 16)

    @property
    def grid_rows(self) -> int:
        """Visible rows of cells: the height less the ruler and two legend lines."""
        return max(1, self.size.height - 3)

    @property
    def fit_pages_per_cell(self) -> int:
        need = -(-self.pages // (self.columns * self.grid_rows))
        ppc = 1
        while ppc < need:
            ppc *= 2
        return ppc

    @property
    def pages_per_cell(self) -> int:
        return max(1, self.fit_pages_per_cell >> self.zoom_level)

    @property
    def max_zoom(self) -> int:
        return self.fit_pages_per_cell.bit_length() - 1

    @property
    def total_rows(self) -> int:
        return -(-self.pages // (self.pages_per_cell * self.columns))

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return container.height

    # -- data --------------------------------------------------------------
    def set_layer(self, layer: HeatLayer) -> None:
        """The dirty pages of the interval (or range) selected."""
        self.dirty_heat = layer
        self._show()

    def set_writeset(self, writeset: IntervalWriteset | None) -> None:
        """The writeset of the interval shown, or None (none stored, or a range)."""
        if writeset is self.writeset:
            return
        self.writeset = writeset
        self._ws_layers.clear()
        if writeset is not None:
            self.ws_step = min(self.ws_step, len(writeset.steps))
        self._show()

    @property
    def showing_writeset(self) -> bool:
        return self.ws_mode and self.writeset is not None

    def _show(self) -> None:
        self.heat = self._writeset_layer() if self.showing_writeset else self.dirty_heat
        self._invalidate()
        self._post_cursor()

    def _writeset_layer(self) -> HeatLayer:
        ws = self.writeset
        assert ws is not None
        key = (ws.interval, self.ws_step)
        layer = self._ws_layers.get(key)
        if layer is None:
            m = len(ws.steps)
            if self.ws_step == 0:
                merged = sorted(chain.from_iterable(s.pages for s in ws.steps))
                layer = HeatLayer(array("I", merged), max(1, m), label=f"writeset, all {m} sub-steps")
            else:
                layer = HeatLayer(ws.steps[self.ws_step - 1].pages, 1,
                                  label=f"writeset sub-step {self.ws_step}/{m}")
            self._ws_layers[key] = layer
        return layer

    def step_range(self) -> tuple[int, int | None]:
        """Instruction counts ``[start, end)`` of the sub-step shown (all of them for 0)."""
        ws = self.writeset
        if ws is None:
            return (0, None)
        if self.ws_step == 0:
            return (ws.start_icount, ws.end_icount)
        k = self.ws_step - 1
        start = ws.steps[k - 1].icount if k else ws.start_icount
        end = ws.steps[k].icount
        return (start, end if end >= 0 else ws.end_icount)

    def watch_ws_mode(self) -> None:
        self._show()

    def _invalidate(self) -> None:
        self._strips.clear()
        self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._palette = None
        self._strips.clear()

    def on_resize(self, event: events.Resize) -> None:
        self.zoom_level = min(self.zoom_level, self.max_zoom)
        self._scroll_to_cursor()
        self._invalidate()

    def watch_zoom_level(self) -> None:
        self._scroll_to_cursor()
        self._invalidate()
        self._post_cursor()

    def watch_show_marks(self) -> None:
        self._invalidate()

    def on_focus(self) -> None:
        self._invalidate()

    def on_blur(self) -> None:
        self._invalidate()

    # -- colours -----------------------------------------------------------
    def _build_palette(self) -> list[Style]:
        def bg(name: str) -> Color:
            return self.get_component_styles(name).background
        empty, low, mid, high = (bg(f"heatmap--{n}") for n in ("empty", "low", "mid", "high"))
        colors = [empty]
        for k in range(1, LEVELS + 1):
            t = (k - 1) / (LEVELS - 1)
            colors.append(low.blend(mid, t * 2) if t <= 0.5 else mid.blend(high, (t - 0.5) * 2))
        mark = self.get_component_styles("heatmap--mark").color
        palette = []
        for c in colors:
            fg = mark if c.brightness < 0.55 else Color(0, 0, 0)
            palette.append(Style(bgcolor=c.rich_color, color=fg.rich_color))
        return palette

    @property
    def palette(self) -> list[Style]:
        if self._palette is None:
            self._palette = self._build_palette()
        return self._palette

    def level(self, count: int, pages: int) -> int:
        if count <= 0:
            return 0
        capacity = pages * max(1, self.heat.intervals)
        return min(LEVELS, 1 + (count * LEVELS - 1) // capacity) if capacity else 0

    # -- rendering ---------------------------------------------------------
    def _row_counts(self, row: int) -> tuple[list[int], list[int], int]:
        """Dirty counts and mark bits for each cell of absolute row ``row``."""
        ppc, cols = self.pages_per_cell, self.columns
        first = row * cols * ppc
        bounds = range(first, first + cols * ppc, ppc)
        dirty = count_ranges(self.heat.dirty, bounds)
        marks = [0] * cols
        if self.show_marks:
            for bit, arr in ((MARK_ZERO, self.heat.zero), (MARK_DUP, self.heat.duplicate)):
                if arr:
                    for i, n in enumerate(count_ranges(arr, bounds)):
                        if n:
                            marks[i] |= bit
        return dirty, marks, first

    def _render_row(self, y: int) -> Strip:
        row = self.top_row + y
        cols, ppc = self.columns, self.pages_per_cell
        base = self.rich_style
        label_style = base + self.get_component_rich_style("heatmap--label", partial=True)
        first = row * cols * ppc
        if first >= self.pages:
            return Strip.blank(self.size.width, base)
        gpa = self.machine.page_to_gpa(first)
        segments = [Segment(f"{gpa:#013_x} ", label_style)]
        dirty, marks, _ = self._row_counts(row)
        palette = self.palette
        hole = self.get_component_rich_style("heatmap--hole")
        cursor_cell = (self.cursor_page // ppc) - row * cols
        cursor_style = self.get_component_rich_style(
            "heatmap--cursor" if self.has_focus else "heatmap--cursor-blur")
        run_style: Style | None = None
        run_text: list[str] = []
        for i in range(cols):
            start = first + i * ppc
            if start >= self.pages:
                style, glyph = hole, " "
            else:
                pages = min(ppc, self.pages - start)
                style = palette[self.level(dirty[i], pages)]
                glyph = MARK_GLYPHS[marks[i]]
                if i == cursor_cell:
                    style, glyph = cursor_style, "◆" if dirty[i] else "◇"
            if style is not run_style:
                if run_text:
                    segments.append(Segment("".join(run_text), run_style))
                run_style, run_text = style, []
            run_text.append(glyph)
        if run_text:
            segments.append(Segment("".join(run_text), run_style))
        return Strip(segments).adjust_cell_length(self.size.width, base)

    def _render_ruler(self) -> Strip:
        cols, ppc = self.columns, self.pages_per_cell
        style = self.rich_style + self.get_component_rich_style("heatmap--ruler", partial=True)
        parts = [f"{human_bytes(ppc * self.machine.page_size)}/cell".ljust(LABEL_WIDTH)]
        for c in range(0, cols, 16):
            parts.append(f"+{c * ppc * self.machine.page_size:#x}"[:15].ljust(16))
        return Strip([Segment("".join(parts), style)]).adjust_cell_length(self.size.width, self.rich_style)

    def _render_legend(self) -> Strip:
        base = self.rich_style
        info = self.get_component_rich_style("heatmap--info", partial=True)
        n = max(1, self.heat.intervals)
        if self.showing_writeset:
            m = len(self.writeset.steps)
            start, end = self.step_range()
            span = f"icount {start:,}–{end:,}" if end is not None else f"icount {start:,}–end"
            # most telling first: a narrow heatmap cuts the end of the line
            if self.ws_step == 0:
                scale = f"all {m} sub-steps · {span} · 1..100% of {m} sub-steps × pages"
            else:
                scale = f"sub-step {self.ws_step}/{m} · {span} · 1..100% of pages changed"
        else:
            scale = "of pages dirty" if n == 1 else f"of {n} intervals × pages"
            if self.ws_mode:
                scale += " · no writeset here"
        text = f" {scale}" if self.showing_writeset else f" 1..100% {scale}"
        # the colour scale gives way (narrower swatches, no "clean" label)
        # before the text that says what is shown is cut
        wide = 7 + 3 + 2 * LEVELS + len(text) <= self.size.width
        swatch = "  " if wide else " "
        segs = [Segment(" clean " if wide else " ", base + info),
                Segment(swatch, self.palette[0]), Segment(" ", base)]
        for k in range(1, LEVELS + 1):
            segs.append(Segment(swatch, self.palette[k]))
        segs.append(Segment(text, base + info))
        if self.show_marks:
            segs.append(Segment("  ·zero =dup ≡both", base + info))
        else:
            segs.append(Segment("  z: marks", base + info))
        segs.append(Segment(f"  zoom {self.zoom_level}/{self.max_zoom}", base + info))
        return Strip(segs).adjust_cell_length(self.size.width, base)

    def _render_cursor_info(self) -> Strip:
        base = self.rich_style
        info = self.cursor_info()
        what = "dirty"
        if self.showing_writeset:
            what = "changed" if self.ws_step else "sub-steps×pages"
        text = (f" ▸ {info.gpa_start:#x}–{info.gpa_end:#x}  pages {info.first_page:#x}"
                f"–{info.last_page:#x} ({info.pages})  {what} {info.dirty}")
        if info.zero is not None:
            text += f"  zero {info.zero}"
        if info.duplicate is not None:
            text += f"  dup {info.duplicate}"
        if self.showing_writeset:
            ws = self.writeset
            text += f"  · ws {ws.working_set:,} pages ({ws.working_set_fraction:.1%} of RAM)"
        style = base + self.get_component_rich_style("heatmap--label", partial=True)
        return Strip([Segment(text, style)]).adjust_cell_length(self.size.width, base)

    def render_line(self, y: int) -> Strip:
        rows = self.grid_rows
        if y == 0:
            return self._render_ruler()
        if y == rows + 1:
            return self._render_legend()
        if y == rows + 2:
            return self._render_cursor_info()
        if y > rows + 2:
            return Strip.blank(self.size.width, self.rich_style)
        strip = self._strips.get(y - 1)
        if strip is None:
            strip = self._strips[y - 1] = self._render_row(y - 1)
        return strip

    def redraw_all(self) -> list[Strip]:
        """Render every line from scratch (what a full refresh costs; benchmarks use it)."""
        self._strips.clear()
        self._palette = None
        return [self.render_line(y) for y in range(self.size.height)]

    # -- cursor ------------------------------------------------------------
    def cursor_info(self) -> CursorInfo:
        ppc = self.pages_per_cell
        first = self.cursor_page // ppc * ppc
        last = min(first + ppc, self.pages) - 1
        def count(arr: array | None) -> int | None:
            if arr is None:
                return None
            return bisect_left(arr, last + 1) - bisect_left(arr, first)
        return CursorInfo(
            first_page=first, last_page=last,
            gpa_start=self.machine.page_to_gpa(first),
            gpa_end=self.machine.page_to_gpa(last) + self.machine.page_size - 1,
            dirty=count(self.heat.dirty) or 0, zero=count(self.heat.zero),
            duplicate=count(self.heat.duplicate), pages=last - first + 1,
            intervals=self.heat.intervals)

    def _post_cursor(self) -> None:
        if self.is_mounted:
            self.post_message(self.CursorMoved(self, self.cursor_info()))

    def _scroll_to_cursor(self) -> bool:
        row = self.cursor_page // (self.pages_per_cell * self.columns)
        old = self.top_row
        if row < self.top_row:
            self.top_row = row
        elif row >= self.top_row + self.grid_rows:
            self.top_row = row - self.grid_rows + 1
        self.top_row = max(0, min(self.top_row, max(0, self.total_rows - self.grid_rows)))
        return old != self.top_row

    def set_cursor_page(self, page: int) -> None:
        page = max(0, min(self.pages - 1, page))
        ppc, cols = self.pages_per_cell, self.columns
        old_y = self.cursor_page // (ppc * cols) - self.top_row
        self.cursor_page = page
        if self._scroll_to_cursor():
            self._invalidate()
        else:
            new_y = page // (ppc * cols) - self.top_row
            for y in {old_y, new_y}:
                self._strips.pop(y, None)
                self.refresh_line(y + 1)
            self.refresh_line(self.grid_rows + 2)
        self._post_cursor()

    def refresh_line(self, y: int) -> None:
        self.refresh(Region(0, y, self.size.width, 1))

    def action_move(self, dx: int, dy: int) -> None:
        ppc = self.pages_per_cell
        self.set_cursor_page(self.cursor_page // ppc * ppc + (dx + dy * self.columns) * ppc)

    def action_page(self, direction: int) -> None:
        self.action_move(0, direction * max(1, self.grid_rows - 1))

    def action_jump(self, where: int) -> None:
        self.set_cursor_page(0 if where == 0 else self.pages - 1)

    def action_zoom(self, step: int) -> None:
        self.zoom_level = max(0, min(self.max_zoom, self.zoom_level + step))

    def action_fit(self) -> None:
        self.zoom_level = 0

    def action_toggle_marks(self) -> None:
        self.show_marks = not self.show_marks

    def action_toggle_writeset(self) -> None:
        self.ws_mode = not self.ws_mode

    def action_writeset_step(self, delta: int) -> None:
        """Move through the sub-steps (0, "all", then 1..M, wrapping); turns
        the writeset view on."""
        if self.writeset is None:
            self.ws_mode = True
            return
        self.ws_step = (self.ws_step + delta) % (len(self.writeset.steps) + 1)
        if self.ws_mode:
            self._show()
        else:
            self.ws_mode = True

    # -- mouse -------------------------------------------------------------
    def on_click(self, event: events.Click) -> None:
        x, y = event.x - LABEL_WIDTH, event.y - 1
        if 0 <= x < self.columns and 0 <= y < self.grid_rows:
            ppc = self.pages_per_cell
            self.set_cursor_page(((self.top_row + y) * self.columns + x) * ppc)

    def _scroll_rows(self, n: int) -> None:
        top = max(0, min(self.top_row + n, max(0, self.total_rows - self.grid_rows)))
        if top != self.top_row:
            self.top_row = top
            self._invalidate()

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        self._scroll_rows(3)
        event.stop()

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        self._scroll_rows(-3)
        event.stop()
