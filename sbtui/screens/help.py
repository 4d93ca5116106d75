"""``?``: what the keys do on the screen it was opened from, grouped by widget."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.markup import escape
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

INTRO = {
    "SessionScreen": "A recording: pick a checkpoint in the table or on the timeline; "
                     "the heatmap shows the pages its interval dirtied. Enter replays from it.",
    "DebuggerScreen": "A replay under the debugger. Stepping backwards restores the nearest "
                      "checkpoint and replays forward, so it is exact.",
}


def format_key(key: str) -> str:
    return (key.replace("question_mark", "?").replace("plus", "+").replace("minus", "-")
            .replace("equals_sign", "=").replace("escape", "Esc").replace("enter", "Enter"))


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,question_mark,q", "dismiss", "Close", id="help.close"),
    ]

    def __init__(self, screen: Screen) -> None:
        super().__init__()
        self.target = screen

    def compose(self) -> ComposeResult:
        groups: dict[str, list[str]] = {}
        seen: set[tuple[str, str]] = set()
        nodes = [self.target, *self.target.query("*"), self.app]
        for node in nodes:
            owner = type(node).__name__
            for cls in type(node).__mro__:
                for b in cls.__dict__.get("BINDINGS", []):
                    if not isinstance(b, Binding) or not b.description or b.system:
                        continue
                    if (owner, b.description) in seen:
                        continue
                    seen.add((owner, b.description))
                    keys = ",".join(format_key(k) for k in b.key.split(","))
                    groups.setdefault(owner, []).append(
                        f"  [b $accent]{escape(keys):>10}[/]  {escape(b.description)}")
        lines = [f"[b $primary]sbtui help[/]  [dim]{escape(INTRO.get(type(self.target).__name__, ''))}[/]", ""]
        for owner, entries in groups.items():
            lines.append(f"[b $secondary]{owner}[/]")
            lines.extend(entries)
            lines.append("")
        lines.append("[dim]Ctrl+P opens the command palette (\"replay: …\", \"vm: …\", \"theme: …\"). "
                     "Escape closes this.[/]")
        with Vertical(id="help-box"):
            with VerticalScroll():
                yield Static("\n".join(lines), id="help-text")
