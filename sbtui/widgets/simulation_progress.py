"""The simulation panel: runs ``AnalysisView.simulate`` off the UI loop and shows its progress.

One line with a progress bar and the engine's counts (intervals done,
running, failed, the projected finish), and one line with the latest event,
or when the run is over its outcome: how many intervals verified, and the
numbers of those that failed. Hidden until a run starts; Escape (the
screen's binding calls :meth:`SimulationPanel.cancel`) cancels a run, or
hides the outcome.

Promises:

* ``simulate`` runs in a thread worker; its progress callback only posts a
  :class:`SimulationPanel.Progressed` message, and those collapse in the
  queue (``can_replace``), so a fast engine cannot flood the UI.
* Cancelling: the engine takes no cancel argument, but every scheduler stops
  its jobs when the progress callback raises (``engine/parallel/simulate.py``
  documents it; the local scheduler interrupts its worker processes, the
  Dask scheduler cancels its futures) and nothing is stored. So
  :meth:`cancel` makes the next progress call raise :class:`SimulationCancelled`;
  progress comes at least about once a second while intervals run, so a
  cancel takes effect within about a second plus the time the replays need
  to shut down.
* Every run ends with one :class:`SimulationPanel.Finished` message (it
  bubbles to the screen): with the stored ``AnalysisInfo``, or
  ``cancelled``, or the ``error``. An error also goes to the app's one
  handler for failed workers (an error dialog).
* Nothing outlives the panel: when it is unmounted (the app quits) a running
  simulation is cancelled and waited for (:data:`STOP_S` at most), so its
  replay processes are gone when the app is.
"""

from __future__ import annotations

import threading

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Label, ProgressBar, Static
from textual.worker import Worker, WorkerState

from engine.api import AnalysisInfo, AnalysisView, SimulationProgress

STOP_S = 60.0      # a cancelled run: the next progress report, then SIGINT to the replays


class SimulationCancelled(Exception):
    """Raised from the progress callback to stop a simulation the user cancelled."""


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "…"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def format_intervals(indices: tuple[int, ...] | list[int], limit: int = 12) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


class SimulationPanel(Vertical):
    """See the module docstring. Styles: sbtui.tcss."""

    class Progressed(Message):
        """The running simulation made progress (collapses in the queue)."""

        def __init__(self, progress: SimulationProgress) -> None:
            super().__init__()
            self.progress = progress

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, SimulationPanel.Progressed)

    class Finished(Message):
        """A run ended: stored (``info``), ``cancelled``, or failed (``error``)."""

        def __init__(self, analysis: str, info: AnalysisInfo | None = None, *,
                     cancelled: bool = False, error: BaseException | None = None) -> None:
            super().__init__()
            self.analysis = analysis
            self.info = info
            self.cancelled = cancelled
            self.error = error

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.analysis = ""
        self.state = "idle"         # idle | running | cancelling | done | cancelled | failed
        self.progress: SimulationProgress | None = None
        self.info: AnalysisInfo | None = None
        self._cancel = threading.Event()
        self._idle = threading.Event()     # no simulate() call in progress
        self._idle.set()

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Label("", id="sim-title")
            yield ProgressBar(total=None, show_eta=False, id="sim-bar")
            yield Static("", id="sim-counts")
        yield Static("", id="sim-detail", markup=False)

    # -- control --------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.state in ("running", "cancelling")

    def start(self, view: AnalysisView, analysis: str, *, jobs: int = 1,
              scheduler: str | None = None) -> None:
        """Run ``analysis`` over every interval (the caller checked that it may)."""
        if self.running:
            raise RuntimeError("a simulation is already running")
        self.analysis = analysis
        self.state = "running"
        self.progress = None
        self.info = None
        self._cancel.clear()
        self._idle.clear()
        where = scheduler or f"{jobs} local process{'es' if jobs != 1 else ''}"
        self._show(title=f"analysis: {analysis}", counts="starting…",
                   detail=f"replaying every interval in {where}; Esc cancels")
        self.query_one(ProgressBar).update(total=None, progress=0)
        self._run(view, analysis, jobs, scheduler)

    def cancel(self) -> bool:
        """Ask a running simulation to stop; False when none runs."""
        if not self.running:
            return False
        self._cancel.set()
        self.state = "cancelling"
        self.query_one("#sim-detail", Static).update(
            "cancelling: the running replays are stopped at the next progress report…")
        return True

    def stop(self, timeout: float = STOP_S) -> bool:
        """Cancel a running simulation and wait until it has stopped (from the
        UI loop: it blocks). True when nothing runs any more."""
        self._cancel.set()
        return self._idle.wait(timeout)

    def on_unmount(self) -> None:
        self.stop()

    def dismiss(self) -> None:
        """Hide the outcome of a finished run."""
        if not self.running:
            self.state = "idle"
            self.set_class(False, "-visible")

    # -- the worker -------------------------------------------------------------
    def _run(self, view: AnalysisView, analysis: str, jobs: int, scheduler: str | None) -> None:
        self.run_worker(lambda: self._simulate(view, analysis, jobs, scheduler), thread=True,
                        group="simulation", exclusive=True, exit_on_error=False,
                        description=f"analysis: run {analysis}")

    def _simulate(self, view: AnalysisView, analysis: str, jobs: int, scheduler: str | None) -> None:
        cancel = self._cancel

        def progress(p: SimulationProgress) -> None:    # the worker's thread
            if cancel.is_set():
                raise SimulationCancelled(f"{analysis}: cancelled after {p.done} of {p.total} intervals")
            self.post_message(self.Progressed(p))

        try:
            info = view.simulate(analysis, jobs=jobs, scheduler=scheduler, progress=progress)
        except SimulationCancelled:
            self.post_message(self.Finished(analysis, cancelled=True))
            return
        except BaseException as err:
            self.post_message(self.Finished(analysis, error=err))
            raise       # to the app's handler: an error dialog
        finally:
            self._idle.set()
        self.post_message(self.Finished(analysis, info))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        # Worker messages do not bubble: hand failures to the app's one handler.
        if event.state is WorkerState.ERROR:
            self.app.worker_failed(event.worker, self.screen)  # type: ignore[attr-defined]

    # -- display ----------------------------------------------------------------
    def _show(self, *, title: str | None = None, counts: str | None = None,
              detail: str | None = None, outcome: str | None = None) -> None:
        self.set_class(True, "-visible")
        for cls in ("-done", "-failed"):
            self.set_class(outcome == cls, cls)
        if title is not None:
            self.query_one("#sim-title", Label).update(title)
        if counts is not None:
            self.query_one("#sim-counts", Static).update(counts)
        if detail is not None:
            self.query_one("#sim-detail", Static).update(detail)

    def on_simulation_panel_progressed(self, message: Progressed) -> None:
        if not self.running:
            return      # a late report of a run that already ended
        p = self.progress = message.progress
        self.query_one(ProgressBar).update(total=max(1, p.total), progress=p.done)
        counts = (f"{p.done}/{p.total} done · {p.running} running · {p.failed} failed · "
                  f"{format_seconds(p.elapsed_s)} elapsed · eta {format_seconds(p.eta_s)}")
        self._show(counts=counts,
                   detail=None if self.state == "cancelling" else (p.message or None))

    def on_simulation_panel_finished(self, message: Finished) -> None:
        p = self.progress
        if message.cancelled:
            self.state = "cancelled"
            done = f" after {p.done} of {p.total} intervals" if p else ""
            self._show(title=f"analysis: {message.analysis} cancelled", outcome="-failed",
                       detail=f"cancelled{done}; nothing was stored (Esc hides this)")
            return
        if message.error is not None:
            self.state = "failed"
            self._show(title=f"analysis: {message.analysis} failed", outcome="-failed",
                       detail=f"{message.error} (Esc hides this)")
            return
        info = self.info = message.info
        assert info is not None
        self.query_one(ProgressBar).update(total=max(1, info.intervals), progress=info.intervals)
        counts = (f"{info.verified}/{info.intervals} verified in {format_seconds(info.wall_s)} "
                  f"on {info.scheduler}")
        if info.failed:
            self.state = "failed"
            self._show(title=f"analysis: {info.name} done", counts=counts, outcome="-failed",
                       detail=(f"{len(info.failed)} failed: interval{'s' if len(info.failed) > 1 else ''} "
                               f"{format_intervals(info.failed)} (Esc hides this)"))
        else:
            self.state = "done"
            self._show(title=f"analysis: {info.name} done", counts=counts, outcome="-done",
                       detail="every interval verified; the results are stored with the "
                              "recording (Esc hides this)")
