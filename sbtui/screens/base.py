"""What every sbtui screen shares: worker failures go to the app's one
handler, and a screen lists its palette commands next to its bindings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from textual.screen import Screen
from textual.worker import Worker, WorkerState


@dataclass(frozen=True)
class PaletteCommand:
    name: str            # "replay: step back" (area: verb)
    help: str
    run: Callable[[], object]


class SbtuiScreen(Screen):
    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state is WorkerState.ERROR:
            self.app.worker_failed(event.worker, self)  # type: ignore[attr-defined]

    def worker_failure_handled(self, worker: Worker) -> None:
        """Called after the error dialog closed; screens may clean up here."""

    def palette_commands(self) -> list[PaletteCommand]:
        return []
