"""What the app shows after q while it stops what it started.

Stopping a replay takes a moment (gdb and QEMU are asked politely first);
ending a live recording can take longer: QEMU finishes its log and the last
checkpoints are stored and proven before the recording is complete. The
screen says so, with a spinner, until the app exits; keys do nothing here
(a second q must not start a second shutdown). While a recording's last
intervals are proven it counts them (``proof_progress`` of the session's live
control) and projects the time left from the rate seen since q.
"""

from __future__ import annotations

from time import monotonic

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import LoadingIndicator, Static


class StoppingScreen(ModalScreen[None]):
    def __init__(self, live: bool, replays: int) -> None:
        super().__init__()
        self.live = live
        self.replays = replays

    def compose(self) -> ComposeResult:
        lines = ["[b $primary]Stopping…[/]", ""]
        if self.replays:
            lines.append(f"closing {self.replays} replay{'s' if self.replays > 1 else ''} "
                         "(gdb and QEMU)")
        if self.live:
            # the session knows what ending it does (finish a recording, stop a guest, detach)
            live = getattr(getattr(self.app, "session", None), "live", None)
            said = getattr(live, "stopping_text", None)
            lines.append(said or "finishing the recording: QEMU quits and writes the end of its "
                         "log, the last checkpoints are stored and proven (a few seconds for "
                         "each checkpoint not proven yet)")
        if not self.replays and not self.live:
            lines.append("closing the recording")
        with Vertical(id="stopping-box"):
            yield Static("\n".join(lines), id="stopping-text")
            yield Static("", id="stopping-progress")
            yield LoadingIndicator(id="stopping-spinner")

    def on_mount(self) -> None:
        self._first: tuple[float, int] | None = None    # (time, proven) when first seen
        self.update_progress()
        self.set_interval(0.5, self.update_progress)

    def update_progress(self) -> None:
        live = getattr(getattr(self.app, "session", None), "live", None) if self.live else None
        progress = getattr(live, "proof_progress", None)
        if not progress or not progress[1]:
            return
        proven, total = progress
        now = monotonic()
        if self._first is None:
            self._first = (now, proven)
        text = f"proofs: {proven} of {total} intervals proven"
        t0, p0 = self._first
        if proven > p0 and proven < total:
            left = (total - proven) * (now - t0) / (proven - p0)
            text += f" · about {left:.0f} s left"
        self.query_one("#stopping-progress", Static).update(text)
