"""The session screen's analyses: stored writesets in the heatmap and the table, and running one.

:class:`SessionAnalysis` is a base class of ``SessionScreen`` that keeps
this logic out of the screen's module; it uses the screen's ``session``,
``recording``, ``rows`` and ``pages_key`` and its widgets. It hooks in the
way Textual dispatches messages: a handler is called for every class in the
screen's MRO that defines it, so this class's ``on_mount`` and
``on_pages_loaded`` run right after the screen's own.

What it does, when the recording view implements ``api.AnalysisView``:

* loads every stored writeset once (a thread worker), and again after a run:
  the checkpoint table gets a ``ws%`` column (row k: the interval that
  checkpoint k closes, the one whose dirty pages the row and the heatmap
  show), and the heatmap gets the selected interval's writeset
  (none for a range);
* keys: ``w`` writeset view on/off, ``[`` ``]`` previous/next sub-step
  (0 is "all sub-steps counted"), ``A`` run the writeset analysis, Escape
  cancels a run (or hides its outcome); palette: "analysis: run writeset",
  "analysis: run verify", "analysis: cancel", "heatmap: writeset …";
* runs ``simulate`` through :class:`SimulationPanel` in ``analysis_jobs``
  local processes, and only for a recording that is complete: a live one
  is still growing, so the commands say why they are not offered.
"""

from __future__ import annotations

import os

from textual import work
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Footer

from engine.api import AnalysisView, GuestState, IntervalWriteset
from sbtui.screens.base import PaletteCommand, SbtuiScreen
from sbtui.widgets.simulation_progress import SimulationPanel

ANALYSES = {
    "writeset": "pages changed per sub-step of every interval: finer heatmap, working set per interval",
    "verify": "replay every interval and compare its end with the next checkpoint",
}


def default_jobs() -> int:
    """Replays at once: one per core this process may use, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:       # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


class WritesetsLoaded(Message):
    """The stored writesets were read (all intervals that have one)."""

    def __init__(self, writesets: list[IntervalWriteset]) -> None:
        super().__init__()
        self.writesets = writesets


class SessionAnalysis(SbtuiScreen):
    """See the module docstring."""

    BINDINGS = [
        Binding("w", "toggle_writeset", "Writeset view", show=False, id="analysis.writeset_view"),
        Binding("left_square_bracket", "writeset_step(-1)", "Previous sub-step", show=False,
                id="analysis.previous_step"),
        Binding("right_square_bracket", "writeset_step(1)", "Next sub-step", show=False,
                id="analysis.next_step"),
        Binding("A", "run_analysis('writeset')", "Run writeset analysis", show=False,
                id="analysis.run_writeset"),
        Binding("escape", "cancel_simulation", "Cancel simulation", show=False,
                id="analysis.cancel"),
    ]

    analysis_jobs: int = default_jobs()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.writesets: dict[int, IntervalWriteset] = {}

    # -- what is possible ---------------------------------------------------------
    @property
    def analysis_view(self) -> AnalysisView | None:
        view = self.recording    # type: ignore[attr-defined]
        return view if isinstance(view, AnalysisView) else None

    def analysis_unavailable(self) -> str | None:
        """Why no analysis can run on this session now, or None."""
        if self.analysis_view is None:
            return "this session's recording keeps no analyses"
        live = self.session.live is not None   # type: ignore[attr-defined]
        state = self.recording.status().state   # type: ignore[attr-defined]
        if live or state not in (GuestState.RECORDED, GuestState.STOPPED):
            return ("the recording is still growing: its intervals can be replayed "
                    "once the recording ends")
        return None

    @property
    def simulation_panel(self) -> SimulationPanel:
        return self.query_one(SimulationPanel)

    # -- hooks (Textual calls these after the screen's own handlers) ----------------
    def on_mount(self) -> None:
        panel = SimulationPanel(id="simulation")
        footers = self.query(Footer)
        if footers:
            self.mount(panel, before=footers.first())
        else:
            self.mount(panel)
        if self.analysis_view is not None:
            self.load_writesets()

    def on_pages_loaded(self, message) -> None:
        if message.key == self.pages_key:      # type: ignore[attr-defined]
            self._apply_writeset()

    @work(thread=True, exclusive=True, group="writesets", exit_on_error=False,
          description="reading the stored writesets")
    def load_writesets(self) -> None:
        view = self.analysis_view
        if view is not None:
            self.post_message(WritesetsLoaded(view.writesets()))

    def on_writesets_loaded(self, message: WritesetsLoaded) -> None:
        from sbtui.widgets.checkpoint_table import CheckpointTable
        self.writesets = {w.interval: w for w in message.writesets}
        table = self.query_one(CheckpointTable)
        table.set_working_sets({w.interval + 1: w.working_set_fraction for w in message.writesets})
        # the ws% column makes the table wider than the left column's usual 80
        self.set_class(table.show_ws, "-ws")
        self._apply_writeset()

    def selected_writeset(self) -> IntervalWriteset | None:
        """The writeset of the interval the heatmap shows (None for a range)."""
        key = getattr(self, "pages_key", ())
        if len(key) != 2 or key[0] != key[1] or key[1] < 1:
            return None
        return self.writesets.get(key[1] - 1)   # row k closes interval k-1

    def _apply_writeset(self) -> None:
        from sbtui.widgets.heatmap import Heatmap
        self.query_one(Heatmap).set_writeset(self.selected_writeset())

    def on_simulation_panel_finished(self, message: SimulationPanel.Finished) -> None:
        if message.info is not None:
            failed = len(message.info.failed)
            self.notify(f"analysis {message.info.name}: {message.info.verified} of "
                        f"{message.info.intervals} intervals verified"
                        + (f", {failed} failed" if failed else "")
                        + ("; w shows the writeset in the heatmap" if message.info.name == "writeset" else ""),
                        severity="warning" if failed else "information")
            if message.info.name == "writeset":
                self.load_writesets()
        elif message.cancelled:
            self.notify(f"analysis {message.analysis} cancelled", severity="warning")

    # -- actions -----------------------------------------------------------------
    def action_toggle_writeset(self) -> None:
        from sbtui.widgets.heatmap import Heatmap
        heatmap = self.query_one(Heatmap)
        heatmap.action_toggle_writeset()
        if heatmap.ws_mode and heatmap.writeset is None:
            self._say_why_no_writeset()

    def action_writeset_step(self, delta: int) -> None:
        from sbtui.widgets.heatmap import Heatmap
        heatmap = self.query_one(Heatmap)
        heatmap.action_writeset_step(delta)
        if heatmap.writeset is None:
            self._say_why_no_writeset()

    def _say_why_no_writeset(self) -> None:
        if self.analysis_view is None:
            why = "this session's recording keeps no analyses"
        elif not self.writesets:
            why = "no writeset analysis is stored: run it with A (or 'analysis: run writeset')"
        elif len(getattr(self, "pages_key", ())) == 2 and self.pages_key[0] != self.pages_key[1]:  # type: ignore[attr-defined]
            why = "a range of intervals has no sub-steps: select one interval"
        else:
            why = "no writeset is stored for this interval"
        self.notify(why, severity="warning", timeout=4)

    def action_run_analysis(self, analysis: str) -> None:
        why = self.analysis_unavailable()
        if why:
            self.notify(f"analysis: run {analysis} is not offered: {why}", severity="warning")
            return
        panel = self.simulation_panel
        if panel.running:
            self.notify(f"analysis {panel.analysis} is still running (Esc cancels it)",
                        severity="warning")
            return
        panel.start(self.analysis_view, analysis, jobs=self.analysis_jobs)

    def action_cancel_simulation(self) -> None:
        panel = self.simulation_panel
        if not panel.cancel():
            panel.dismiss()

    def analysis_palette_commands(self) -> list[PaletteCommand]:
        """The "analysis: …" commands (``sbtui/commands.py`` lists them)."""
        if self.analysis_view is None:
            return []
        why = self.analysis_unavailable()
        cmds = []
        for name, what in ANALYSES.items():
            help = (f"not offered: {why}" if why else
                    f"{what} ({self.analysis_jobs} local process{'es' if self.analysis_jobs != 1 else ''})")
            cmds.append(PaletteCommand(f"analysis: run {name}", help,
                                       lambda name=name: self.action_run_analysis(name)))
        if self.simulation_panel.running:
            cmds.append(PaletteCommand("analysis: cancel", "stop the running simulation (Esc)",
                                       self.action_cancel_simulation))
        cmds += [
            PaletteCommand("heatmap: writeset view", "dirty pages / where the interval wrote, "
                           "sub-step by sub-step (w)", self.action_toggle_writeset),
            PaletteCommand("heatmap: next writeset sub-step", "(])", lambda: self.action_writeset_step(1)),
            PaletteCommand("heatmap: previous writeset sub-step", "([)",
                           lambda: self.action_writeset_step(-1)),
        ]
        return cmds
