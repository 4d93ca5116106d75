"""The guest's serial console: recorded or live output, and input when live.

Output is a ``Log`` (plain text, fast appends, bounded to ``MAX_LINES``). When
``interactive`` is set, an ``Input`` below it sends what is typed to the guest:
the widget posts :class:`GuestConsole.InputSubmitted` and the screen forwards
it to ``LiveControl.send_console`` in an async worker.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Log

MAX_LINES = 20_000


class GuestConsole(Vertical):
    class InputSubmitted(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, *, interactive: bool = False, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.interactive = interactive
        self.length = 0   # characters of console text shown so far

    def compose(self) -> ComposeResult:
        yield Log(max_lines=MAX_LINES, id="console-log")
        if self.interactive:
            yield Input(placeholder="type to the guest's console, Enter sends", id="console-input")

    @property
    def log_widget(self) -> Log:
        return self.query_one("#console-log", Log)

    def set_text(self, text: str) -> None:
        log = self.log_widget
        log.clear()
        log.write(text)
        self.length = len(text)

    def append(self, text: str) -> None:
        if text:
            self.log_widget.write(text)
            self.length += len(text)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(self.InputSubmitted(event.value))
        event.input.value = ""
