"""Breakpoints and watchpoints: number, kind, enabled, hits, location."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from engine.api import Breakpoint, BreakpointKind


class BreakpointsView(Static):
    def show(self, bps: list[Breakpoint]) -> None:
        if not bps:
            self.update(Content.from_markup(
                "[dim]none yet\n b  break at the PC\n B  break at a symbol\n w  watch writes[/]"))
            return
        out = []
        for bp in bps:
            kind = "brk" if bp.kind is BreakpointKind.BREAKPOINT else bp.kind.value
            on = "[b $success]y[/]" if bp.enabled else "[b $error]n[/]"
            line = (f"[b]{bp.number:>2}[/] {kind:<6} {on} [$text-muted]{bp.hits:>3}×[/] "
                    f"[$warning]$location_{bp.number}[/]")
            if not bp.location.lstrip("*").startswith("0x"):    # a symbol: add where it is
                line += f" [$secondary]{bp.address:#x}[/]"
            out.append(line)
        # what was typed goes in as a variable, never as markup
        self.update(Content.from_markup("\n".join(out),
                                        **{f"location_{bp.number}": bp.location for bp in bps}))
