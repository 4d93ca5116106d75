"""Going live from a checkpoint in the app: ``L`` on the session screen.

:func:`go_live` shows :class:`GoingLiveScreen` (a progress box) while
``Session.go_live`` starts the VM in a thread worker (the UI never waits on
it), then opens :class:`GoLiveSessionScreen` on the new live session: the
session screen (the one ``sbtui record --live`` shows: console to type to,
``p`` pause/resume, ``c`` checkpoint now, and ``L`` again, which chains) with
the new recording's path on screen. ``Esc`` or ``q`` there stops that VM
(:class:`GoLiveStoppingScreen` says so while it stops) and returns to the
screen it came from; ``Ctrl+Q`` quits the app, which stops every go-live VM
through the original session's ``close``. A failure to go live goes to the
app's error dialog.
"""

from __future__ import annotations

import asyncio

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import LoadingIndicator, ProgressBar, Static
from textual.worker import Worker, WorkerState

from engine.api import CheckpointRow, ReplayProgress, Session
from sbtui.messages import ReplayProgressed
from sbtui.screens.session import SessionScreen
from sbtui.widgets.console import ConsoleInput




def go_live(screen: SessionScreen, row: CheckpointRow) -> None:
    """Go live from ``row`` of ``screen``'s session; the new screen opens when the VM runs."""
    origin = screen.session

    def opened(session: Session | None) -> None:
        if session is not None:
            screen.app.push_screen(GoLiveSessionScreen(session, origin, row))

    screen.app.push_screen(GoingLiveScreen(origin, row), opened)


class GoingLiveScreen(ModalScreen["Session | None"]):
    """Progress while checkpoint ``row`` goes live; dismissed with the new session,
    or with ``None`` when it failed (the error dialog follows)."""


    def __init__(self, session: Session, row: CheckpointRow) -> None:
        super().__init__()
        self.session = session
        self.row = row

    def compose(self) -> ComposeResult:
        with Vertical(id="golive-box"):
            yield Static(f"[b $primary]Going live from checkpoint #{self.row.index}…[/]\n\n"
                         "a new VM (no replay) starts from it and is recorded live next to "
                         "this recording", id="golive-text")
            yield Static("starting QEMU", id="golive-phase")
            yield ProgressBar(total=None, show_eta=False, id="golive-progress")

    def on_mount(self) -> None:
        self._start()

    @work(thread=True, exit_on_error=False, group="golive", description="vm: go live")
    def _start(self) -> Session:
        def progress(p: ReplayProgress) -> None:
            self.post_message(ReplayProgressed(p.phase, p.fraction))   # thread safe; collapses
        return self.session.go_live(self.row.id, progress)

    def on_replay_progressed(self, message: ReplayProgressed) -> None:
        self.query_one("#golive-phase", Static).update(message.phase)
        bar = self.query_one(ProgressBar)
        if message.fraction < 0:
            bar.update(total=None)
        else:
            bar.update(total=100, progress=round(message.fraction * 100))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "golive":
            return
        if event.state is WorkerState.SUCCESS:
            self.dismiss(event.worker.result)
        elif event.state is WorkerState.ERROR:
            self.dismiss(None)
            if not getattr(self.app, "_quitting", False):   # quitting stopped it on purpose
                self.app.worker_failed(event.worker)  # type: ignore[attr-defined]


class GoLiveStoppingScreen(ModalScreen[None]):
    """What Esc/q on a go-live screen shows while its VM stops; keys do nothing here."""


    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical(id="golive-stopping-box"):
            yield Static("[b $primary]Stopping the go-live VM…[/]", id="golive-stopping-title")
            yield Static(self.text, id="golive-stopping-text", markup=False)
            yield LoadingIndicator()


class GoLiveSessionScreen(SessionScreen):
    """The session screen on a go-live VM; leaving it (Esc, q) stops that VM.

    ``origin`` is the session it went live from; ``row`` the checkpoint.
    """

    BINDINGS = [
        Binding("escape", "leave", "Stop VM, back", id="golive.leave"),
        Binding("q", "leave_q", "Stop VM, back", id="golive.quit", show=False),
    ]

    def __init__(self, session: Session, origin: Session, row: CheckpointRow) -> None:
        super().__init__(session)
        self.origin = origin
        self.row = row
        self._leaving = False

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#checkpoints").border_subtitle = f"recording into {self.session.path}"
        self.notify(f"live from checkpoint #{self.row.index} of {self.origin.name}; recording "
                    f"into {self.session.path}. Esc stops it and goes back.", timeout=8)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "leave_q" and isinstance(self.focused, ConsoleInput):
            return False    # q is typed to the guest there
        if action in ("leave", "leave_q"):
            return not self._leaving
        return super().check_action(action, parameters)

    async def action_leave_q(self) -> None:
        await self.action_leave()

    async def action_leave(self) -> None:
        if self._leaving:
            return
        self._leaving = True
        said = getattr(self.session.live, "stopping_text", None) or "stopping the go-live VM"
        stopping = GoLiveStoppingScreen(said)
        await self.app.push_screen(stopping)
        try:
            await asyncio.to_thread(self.session.close)   # stops QEMU: blocking, off the UI loop
        finally:
            await stopping.dismiss()
            self.dismiss()      # not awaited: this is our own handler
