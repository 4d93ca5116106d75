"""A dialog that says what went wrong in the engine, in the engine's words.

Shows the error's type, the operation that failed and ``str(error)`` (which
engine errors write for a person: command, exit code, log tail). Escape, Enter
or the button closes it.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static
from textual.markup import escape

from engine.errors import SbtuiError


class ErrorDialog(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "dismiss", "Close", id="error.close"),
        Binding("enter", "dismiss", "Close", show=False, id="error.close_enter"),
    ]

    def __init__(self, error: BaseException, operation: str = "") -> None:
        super().__init__()
        self.error = error
        self.operation = operation

    def compose(self) -> ComposeResult:
        kind = type(self.error).__name__
        known = isinstance(self.error, SbtuiError)
        title = f"{'Engine error' if known else 'Unexpected error'}: {kind}"
        with Vertical(id="error-box"):
            yield Static(f"[b]{escape(title)}[/]", id="error-title")
            if self.operation:
                yield Static(f"while: {escape(self.operation)}", id="error-operation")
            with VerticalScroll(id="error-scroll"):
                yield Static(escape(str(self.error) or repr(self.error)), id="error-message")
            yield Button("Close", variant="error", id="error-close")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss()
