"""Where the replay stands on the recording, and progress of long operations.

Line 1: a bar across the recording (by checkpoint index) with the current
interval marked, the interval number and its icount span. Line 2: the phase
and progress of a running operation (restore, seek, reverse), or the last stop.
"""

from __future__ import annotations

from bisect import bisect_right

from textual.content import Content
from textual.widgets import Static

from engine.api import CheckpointRow


def interval_of(rows: list[CheckpointRow], icount: int) -> int:
    """Index of the interval holding ``icount`` (the one its next checkpoint closes)."""
    icounts = [r.icount for r in rows]
    return min(len(rows) - 1, bisect_right(icounts, icount - 1)) if rows else 0


class ReplayPosition(Static):

    def __init__(self, rows: list[CheckpointRow], *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.rows = rows
        self._icounts = [r.icount for r in rows]
        self.icount = 0
        self.phase = ""
        self.fraction = -1.0
        self.stop = ""

    def show(self, icount: int | None = None, phase: str | None = None,
             fraction: float | None = None, stop: str | None = None) -> None:
        if icount is not None:
            self.icount = icount
        if phase is not None:
            self.phase = phase
        if fraction is not None:
            self.fraction = fraction
        if stop is not None:
            self.stop = stop
        self.update(self._render())

    def _render(self) -> Content:
        width = max(20, self.size.width - 2)
        n = len(self.rows)
        k = min(n - 1, bisect_right(self._icounts, self.icount - 1)) if n else 0
        lo = self.rows[k - 1].icount if k > 0 else 0
        hi = self.rows[k].icount if n else 0
        line1 = (f"interval [b]#{k}[/] of {n:,}  [$text-muted]icount {lo:,} .. {hi:,}[/]  "
                 f"now [b $accent]{self.icount:,}[/]")
        if self.stop and not self.phase:
            line1 += "  [$text-muted]· $stop_text[/]"
        if self.phase:
            frac = self.fraction
            label = f" {self.phase} " + (f"{frac * 100:3.0f}% " if frac >= 0 else "… ")
            cells = max(10, width - len(label))
            done = int(max(0.0, min(1.0, frac)) * cells) if frac >= 0 else 0
            line2 = (f"[b $warning]$phase_text[/][$warning]{'█' * done}[/]"
                     f"[$panel-lighten-2]{'░' * (cells - done)}[/]")
        else:
            pos = min(width - 1, k * width // max(1, n))
            line2 = (f"[$panel-lighten-2]{'─' * pos}[/][b $accent]◆[/]"
                     f"[$panel-lighten-2]{'─' * (width - pos - 1)}[/]")
        return Content.from_markup(line1 + "\n" + line2, stop_text=self.stop,
                                   phase_text=label if self.phase else "")
