"""The guest's serial console: recorded or live output, and input when live.

Output is a :class:`~sbtui.widgets.tail_log.TailLog` (plain text, fast appends,
bounded to ``MAX_LINES``, the newest line in view). When
``interactive`` is set, a :class:`ConsoleInput` below it sends what is typed to
the guest: the widget posts :class:`GuestConsole.InputSubmitted` and the screen
forwards it to ``LiveControl.send_console`` in an async worker.

When the console belongs to someone else (``sbtui attach``: the QEMU the
user started owns its serial port), ``note`` says so in the panel and no
input is offered.

The input takes focus only when asked (the screen's ``i`` key, or a click on
it) and gives it back on Escape: otherwise the screen's one-letter keys (``q``
quits) would type into the guest whenever focus wandered there.
"""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Static

from sbtui.widgets.tail_log import TailLog, last_lines

MAX_LINES = 20_000


class ConsoleInput(Input):
    """A line of input to the guest that is focusable only while in use."""

    BINDINGS = [
        Binding("escape", "leave", "Leave console", id="console.leave"),
        Binding("ctrl+q", "app.quit", "Quit", id="console.quit"),
    ]

    class Left(Message):
        """The user left the console input (Escape)."""

    def on_mount(self) -> None:
        self.can_focus = False

    def take_focus(self) -> None:
        self.can_focus = True
        self.focus()

    def on_mouse_down(self, event: events.MouseDown) -> None:
        if not self.can_focus:
            self.take_focus()

    def on_blur(self, event: events.Blur) -> None:
        self.can_focus = False

    def action_leave(self) -> None:
        self.can_focus = False
        self.post_message(self.Left())


class GuestConsole(Vertical):
    class InputSubmitted(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, *, interactive: bool = False, note: str | None = None,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.note = note
        self.interactive = interactive and note is None
        self.length = 0   # characters of console text shown so far

    def compose(self) -> ComposeResult:
        if self.note:
            yield Static(self.note, id="console-note", markup=False)
        yield TailLog(max_lines=MAX_LINES, id="console-log")
        if self.interactive:
            yield ConsoleInput(placeholder="i: type to the guest's console, Enter sends, Esc leaves",
                               id="console-input")

    @property
    def input_widget(self) -> ConsoleInput | None:
        found = self.query(ConsoleInput)
        return found.first() if found else None

    @property
    def log_widget(self) -> TailLog:
        return self.query_one("#console-log", TailLog)

    def set_text(self, text: str) -> None:
        log = self.log_widget
        log.clear()
        log.write(last_lines(text, MAX_LINES))
        self.length = len(text)

    def append(self, text: str) -> None:
        if text:
            self.log_widget.write(text)
            self.length += len(text)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(self.InputSubmitted(event.value))
        event.input.value = ""
