"""The command palette: every action by area ("replay: step back", "vm: pause",
"theme: light"), from the screen it was opened on and from the app."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from sbtui.screens.base import PaletteCommand, SbtuiScreen


class SbtuiCommands(Provider):
    def _commands(self) -> list[PaletteCommand]:
        screen = self.screen
        cmds: list[PaletteCommand] = []
        if isinstance(screen, SbtuiScreen):
            cmds.extend(screen.palette_commands())
        if hasattr(screen, "analysis_palette_commands"):   # the session screen's analyses
            cmds.extend(screen.analysis_palette_commands())
        cmds.extend(self.app.palette_commands())  # type: ignore[attr-defined]
        return cmds

    async def discover(self) -> Hits:
        for cmd in self._commands():
            yield DiscoveryHit(cmd.name, cmd.run, help=cmd.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for cmd in self._commands():
            score = matcher.match(cmd.name)
            if score > 0:
                yield Hit(score, matcher.highlight(cmd.name), cmd.run, help=cmd.help)
