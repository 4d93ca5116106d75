"""The sbtui app: given an engine :class:`~engine.api.Session`, shows it.

Small on purpose: it loads the themes, remembers the chosen one, opens the
session screen, owns the one handler for failed workers (an error dialog that
quotes the engine's error) and shuts everything down on quit: every debugger
it opened and the session, off the event loop, before exiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.worker import Worker

from engine.api import Debugger, Session
from sbtui.commands import SbtuiCommands
from sbtui.screens.base import PaletteCommand
from sbtui.screens.error_dialog import ErrorDialog
from sbtui.screens.help import HelpScreen
from sbtui.screens.session import SessionScreen
from sbtui.screens.stopping import StoppingScreen
from sbtui.themes import (
    DEFAULT_THEME, VARIABLE_DEFAULTS, load_themes, remember_theme, remembered_theme,
)

# Failures that are expected and harmless get a notification, not a dialog.
HARMLESS: tuple[type[BaseException], ...] = ()


class SbtuiApp(App[None]):
    CSS_PATH = "sbtui.tcss"
    TITLE = "sbtui"
    COMMANDS = App.COMMANDS | {SbtuiCommands}
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True, id="app.quit"),
        Binding("question_mark", "help", "Help", id="app.help"),
    ]

    def __init__(self, session: Session, *, theme: str | None = None,
                 themes_dir: Path | None = None) -> None:
        super().__init__()
        self.session = session
        self.debuggers: list[Debugger] = []
        self._shut_down = False
        self._quitting = False
        themes, self.theme_problems = load_themes(themes_dir)
        self.sbtui_themes = [t.name for t in themes]
        for t in themes:
            self.register_theme(t)
        wanted = theme or remembered_theme() or DEFAULT_THEME
        self.theme = wanted if wanted in self.available_themes else DEFAULT_THEME

    def get_theme_variable_defaults(self) -> dict[str, str]:
        return dict(VARIABLE_DEFAULTS)

    def on_mount(self) -> None:
        self.theme_changed_signal.subscribe(self, lambda theme: remember_theme(theme.name))
        for problem in self.theme_problems:
            self.notify(problem, title="theme file skipped", severity="warning", timeout=8)
        self.push_screen(SessionScreen(self.session))

    # -- errors --------------------------------------------------------------
    def worker_failed(self, worker: Worker, screen: Screen | None = None) -> None:
        """The one place failed workers end up (screens forward theirs here)."""
        error = worker.error or RuntimeError("worker failed")
        what = worker.description or worker.name
        if isinstance(error, HARMLESS):
            self.notify(str(error), severity="warning")
            return
        def closed(_: object = None) -> None:
            if screen is not None and hasattr(screen, "worker_failure_handled"):
                screen.worker_failure_handled(worker)
        self.show_error(error, what, closed)

    def show_error(self, error: BaseException, operation: str = "", callback=None) -> None:
        self.push_screen(ErrorDialog(error, operation), callback)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        from textual.worker import WorkerState
        if event.state is WorkerState.ERROR:
            self.worker_failed(event.worker)

    # -- debuggers and shutdown ----------------------------------------------
    def track_debugger(self, debugger: Debugger) -> None:
        self.debuggers.append(debugger)

    def close_debugger(self, debugger: Debugger) -> None:
        if debugger in self.debuggers:
            self.debuggers.remove(debugger)
        self.run_worker(lambda: debugger.close(), thread=True, group="close",
                        description="closing the replay")

    def shutdown(self) -> None:
        """Stop every debugger and the session. Blocking; idempotent."""
        if self._shut_down:
            return
        self._shut_down = True
        for dbg in self.debuggers:
            try:
                dbg.close()
            except Exception:   # close() must not raise; if it does, keep stopping the rest
                pass
        self.debuggers.clear()
        self.session.close()

    async def action_quit(self) -> None:
        if self._quitting:
            return
        self._quitting = True
        self.push_screen(StoppingScreen(self.session.live is not None, len(self.debuggers)))
        await asyncio.to_thread(self.shutdown)
        self.exit()

    def on_unmount(self) -> None:
        self.shutdown()     # also after Ctrl+C or an exception

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    # -- palette -------------------------------------------------------------
    def set_theme(self, name: str) -> None:
        self.theme = name

    def palette_commands(self) -> list[PaletteCommand]:
        cmds = []
        for name in self.sbtui_themes:
            short = name.removeprefix("sbtui-")
            cmds.append(PaletteCommand(f"theme: {short}", f"switch to the {short} theme",
                                       lambda name=name: self.set_theme(name)))
        cmds.append(PaletteCommand("app: help", "keys of this screen", self.action_help))
        cmds.append(PaletteCommand("app: quit", "stop every qemu and gdb, and exit", self.action_quit))
        return cmds

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        # our own "theme: ..." and "app: quit" replace Textual's generic entries
        for cmd in super().get_system_commands(screen):
            if cmd.title not in ("Quit",):
                yield cmd


def run_live(recorder, *, on_finish, name: str | None = None, theme: str | None = None):
    """The app on a recording that ``recorder`` makes as it runs (``sbtui demo``,
    ``record`` and ``attach`` on a terminal): until q, which ends the recording
    (or detaches). Returns the recorder's summary (None when it was cancelled);
    raises what ended the recording when it failed."""
    from engine.live import start_live_session
    session = start_live_session(recorder, name=name, on_finish=on_finish)
    try:
        SbtuiApp(session, theme=theme).run()
    finally:
        session.close()
    if session.error is not None:
        raise session.error
    return session.summary
