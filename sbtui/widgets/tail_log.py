"""A ``Log`` that keeps the newest output in view: the consoles' widget.

Textual's ``Log`` drops its oldest lines past ``max_lines`` but keeps the
scroll height of the lines it dropped, so a console that outgrew its limit
scrolled past its end and showed nothing. :class:`TailLog` corrects the
height after every write, and :meth:`show` replaces the whole text, keeping
only its last ``max_lines`` lines and appending when the new text extends
what is shown (a console only grows between two stops of a replay).
Both leave the view at the end, also once the next layout has sized it.
"""

from __future__ import annotations

from textual.geometry import Size
from textual.widgets import Log


def last_lines(text: str, count: int) -> str:
    """The last ``count`` lines of ``text`` (all of it when shorter)."""
    at = len(text)
    for _ in range(count):
        at = text.rfind("\n", 0, at - 1 if at else 0)
        if at < 0:
            return text
    return text[at + 1:]


class TailLog(Log):
    def __init__(self, *, max_lines: int = 20_000, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(max_lines=max_lines, id=id, classes=classes)
        self.shown = ""     # the text given to show() last

    def write(self, data: str, scroll_end: bool | None = None) -> "TailLog":
        super().write(data, scroll_end=False)
        if self.virtual_size.height != self.line_count:
            self.virtual_size = Size(self.virtual_size.width, self.line_count)
        if self.auto_scroll if scroll_end is None else scroll_end:
            self.follow_end()
        return self

    def show(self, text: str) -> None:
        """Show ``text`` (all of a console so far), scrolled to its end."""
        if text == self.shown:
            return
        if self.shown and text.startswith(self.shown):
            self.write(text[len(self.shown):])
        else:
            self.clear()
            self.write(last_lines(text, self.max_lines or len(text)))
        self.shown = text

    def follow_end(self) -> None:
        self.scroll_end(animate=False, immediate=True, x_axis=False)
        # the first write can come before the widget has its size
        self.call_after_refresh(self.scroll_end, animate=False, immediate=True, x_axis=False)
