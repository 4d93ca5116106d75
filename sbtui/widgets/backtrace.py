"""The backtrace: one frame per line, innermost first, as gdb's ``bt``."""

from __future__ import annotations

from textual.content import Content
from textual.markup import escape
from textual.widgets import Static

from engine.api import Frame


class BacktraceView(Static):
    def show(self, frames: list[Frame]) -> None:
        out = []
        width = min(22, max((len(f.function) for f in frames), default=2))
        for f in frames:
            where = f"{f.file}:{f.line}" if f.file else f"{f.pc:#x}"
            out.append(f"[$text-muted]#{f.level:<2}[/] [b $warning]{escape(f.function or '??'):<{width}}[/] "
                       f"[$secondary]{escape(where)}[/]")
        self.update(Content.from_markup("\n".join(out) if out else "[dim]no frames[/]"))
