"""The session screen: a recording (saved or growing live) at a glance.

Header, timeline strip, checkpoint table, guest console and the dirty-page
heatmap of the selected interval (or of a range of intervals). Below
``WIDE`` columns the table and console take the whole width and ``h`` shows the
heatmap in their place; below ``TALL`` rows the console shrinks so the table
keeps at least five rows (breakpoint classes on the screen, the CSS in
``sbtui.tcss`` does the rest). Reading the
recording and dirty pages happens in thread workers; live control (pause,
resume, checkpoint now, console input) in async workers; going live in
sbtui/screens/golive.py. Engine
callbacks for a live recording only post payload-free messages that collapse
in the queue; handlers then read what is new from the recording view.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from itertools import chain
from threading import Lock

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer
from textual.worker import get_current_worker

from engine.api import CheckpointRow, GuestState, RecordingEvent, Session
from sbtui.messages import (
    CheckpointsLoaded, CheckpointStored, ConsoleOutput, GuestStateChanged, HeatLayer, PagesLoaded,
)
from sbtui.screens.base import PaletteCommand, SbtuiScreen
from sbtui.screens.session_analysis import SessionAnalysis
from sbtui.widgets.checkpoint_table import CheckpointTable
from sbtui.widgets.console import ConsoleInput, GuestConsole
from sbtui.widgets.heatmap import Heatmap
from sbtui.widgets.status_bar import StatusBar
from sbtui.widgets.timeline import Timeline

WIDE = 136                # table (86 with ws%) + console beside the heatmap (min 48)
TALL = 36                 # rows for the full-height console
MAX_RANGE = 1000          # intervals merged for a range heatmap
PAGE_CACHE = 64           # dirty-page arrays kept in memory


class SessionScreen(SessionAnalysis, SbtuiScreen):   # analyses: see session_analysis.py
    AUTO_FOCUS = "#checkpoints"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (WIDE, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (TALL, "-tall")]
    BINDINGS = [
        Binding("q", "quit", "Quit", id="session.quit"),
        Binding("enter", "replay", "Replay", id="session.replay"),
        Binding("h", "toggle_heatmap", "Heatmap", id="session.heatmap"),
        Binding("r", "toggle_range", "Range", id="session.range"),
        Binding("m", "toggle_metric", "Dirty/stored", id="session.metric"),
        Binding("p", "pause_resume", "Pause/resume", id="vm.pause"),
        Binding("c", "checkpoint_now", "Checkpoint now", id="vm.checkpoint"),
        Binding("L", "go_live", "Go live", id="vm.go_live"),
        Binding("i", "console_input", "Type to console", id="vm.console_input"),
    ]
    LIVE_ACTIONS = {"pause_resume", "checkpoint_now", "console_input"}

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self.recording = session.recording
        self.rows: list[CheckpointRow] = []
        self.selected = 0
        self.range_anchor: int | None = None
        self.pages_key: tuple = ()
        self._cache: OrderedDict[str, tuple] = OrderedDict()
        self._cache_lock = Lock()
        self._unsubscribe = None

    # -- layout --------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield Timeline(id="timeline")
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield CheckpointTable(id="checkpoints")
                yield GuestConsole(interactive=self.session.live is not None, id="console",
                                   note=getattr(self.session.live, "console_note", None))
            yield Heatmap(self.recording.machine, id="heatmap")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#timeline").border_title = "timeline"
        self.query_one("#checkpoints").border_title = "checkpoints"
        self.query_one("#console").border_title = "console" + (" (live)" if self.session.live else "")
        machine = self.recording.machine
        heatmap = self.query_one(Heatmap)
        heatmap.border_title = "dirty pages"
        heatmap.border_subtitle = (f"{machine.ram_block} {machine.ram_pages:,} pages "
                                   f"({machine.ram_bytes >> 20:,} MiB)")
        self.update_status()
        self._unsubscribe = self.recording.subscribe(self._on_recording_event)
        self.query_one(CheckpointTable).focus()
        self.load_recording()

    def on_unmount(self) -> None:
        if self._unsubscribe:
            self._unsubscribe()

    def on_resize(self) -> None:
        # h is offered only when narrow; later, once Screen's own resize
        # handler has set the breakpoint classes
        self.call_later(self.refresh_bindings)

    @property
    def narrow(self) -> bool:
        return self.has_class("-narrow")

    # -- engine -> messages --------------------------------------------------
    def _on_recording_event(self, event: RecordingEvent) -> None:
        # any thread: only post (thread safe); the handlers read what is new
        message = {"checkpoint": CheckpointStored, "console": ConsoleOutput,
                   "state": GuestStateChanged, "marker": CheckpointStored}.get(event.kind)
        if message:
            self.post_message(message())

    @work(thread=True, group="recording", exit_on_error=False)
    def load_recording(self) -> None:
        rows = self.recording.checkpoints()
        markers = self.recording.markers()
        console = self.recording.console_text()
        self.post_message(CheckpointsLoaded(rows, markers, console))

    def on_checkpoints_loaded(self, message: CheckpointsLoaded) -> None:
        self.rows = list(message.rows)
        table = self.query_one(CheckpointTable)
        table.set_rows(self.rows)
        self.query_one(Timeline).set_rows(self.rows, message.markers)
        self.query_one(GuestConsole).set_text(message.console)
        live = self.session.live is not None
        table.cursor = len(self.rows) - 1 if live and self.rows else 0
        self._update_titles()
        self.update_status()

    def on_checkpoint_stored(self, message: CheckpointStored) -> None:
        new = self.recording.checkpoints(len(self.rows))
        if new:
            table = self.query_one(CheckpointTable)
            table.append_rows(new)          # extends self.rows (the same list)
            self.query_one(Timeline).set_rows(self.rows, self.recording.markers())
            self._update_titles()
        self.update_status()

    def on_console_output(self, message: ConsoleOutput) -> None:
        console = self.query_one(GuestConsole)
        console.append(self.recording.console_text(console.length))

    def on_guest_state_changed(self, message: GuestStateChanged) -> None:
        self.update_status()
        self.refresh_bindings()

    def update_status(self) -> None:
        self.query_one(StatusBar).show_session(self.session.name, self.recording.status())

    def _update_titles(self) -> None:
        table = self.query_one(CheckpointTable)
        table.border_title = f"checkpoints ({len(self.rows):,})"
        if self.rows:
            row = self.rows[self.selected]
            self.query_one(Timeline).border_subtitle = (
                f"#{row.index}  icount {row.icount:,}  t={row.guest_time_ns / 1e9:.3f}s  "
                f"dirty {row.pages_dirty:,}  stored {row.stored_bytes:,} B")

    # -- selection -----------------------------------------------------------
    @on(CheckpointTable.Highlighted)
    def _highlighted(self, event: CheckpointTable.Highlighted) -> None:
        if not self.rows:
            return
        self.selected = event.index
        range_ = self.selected_range()
        self.query_one(Timeline).select(self.selected, range_)
        self.query_one(CheckpointTable).set_range(range_)
        self._update_titles()
        self.request_pages()

    @on(Timeline.Selected)
    def _timeline_selected(self, event: Timeline.Selected) -> None:
        self.query_one(CheckpointTable).cursor = event.index

    @on(CheckpointTable.Activated)
    def _activated(self, event: CheckpointTable.Activated) -> None:
        event.stop()
        self.action_replay()

    def select(self, index: int) -> None:
        self.query_one(CheckpointTable).cursor = index

    def selected_range(self) -> tuple[int, int] | None:
        if self.range_anchor is None:
            return None
        return (min(self.range_anchor, self.selected), max(self.range_anchor, self.selected))

    def request_pages(self) -> None:
        range_ = self.selected_range()
        lo, hi = range_ if range_ else (self.selected, self.selected)
        if hi - lo + 1 > MAX_RANGE:
            lo = hi - MAX_RANGE + 1
            self.notify(f"showing the last {MAX_RANGE} intervals of the range", severity="warning")
        key = (lo, hi)
        if key == self.pages_key:
            return
        self.pages_key = key
        ids = [self.rows[i].id for i in range(lo, hi + 1)]
        self.load_pages(key, ids)

    def _fetch(self, checkpoint_id: str) -> tuple:
        with self._cache_lock:
            hit = self._cache.get(checkpoint_id)
            if hit is not None:
                self._cache.move_to_end(checkpoint_id)
                return hit
        entry = (self.recording.dirty_pages(checkpoint_id), self.recording.page_marks(checkpoint_id))
        with self._cache_lock:
            self._cache[checkpoint_id] = entry
            while len(self._cache) > PAGE_CACHE:
                self._cache.popitem(last=False)
        return entry

    @work(thread=True, exclusive=True, group="pages", exit_on_error=False)
    def load_pages(self, key: tuple, ids: list[str]) -> None:
        worker = get_current_worker()
        if len(ids) == 1:
            dirty, marks = self._fetch(ids[0])
            layer = HeatLayer(dirty, 1, marks.zero, marks.duplicate, f"interval #{key[0]}")
        else:
            arrays = []
            for cid in ids:
                if worker.is_cancelled:
                    return
                arrays.append(self._fetch(cid)[0])
            # timsort merges the already sorted runs in O(n log k)
            merged = array(arrays[0].typecode if arrays else "I", sorted(chain.from_iterable(arrays)))
            layer = HeatLayer(merged, len(ids), None, None, f"intervals #{key[0]}–#{key[1]}")
        if not worker.is_cancelled:
            self.post_message(PagesLoaded(key, layer))

    def on_pages_loaded(self, message: PagesLoaded) -> None:
        if message.key != self.pages_key:
            return      # the selection moved on while this was loading
        heatmap = self.query_one(Heatmap)
        heatmap.set_layer(message.layer)
        heatmap.border_title = f"dirty pages · {message.layer.label}"

    # -- actions -------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in self.LIVE_ACTIONS and self.session.live is None:
            return False
        if action == "console_input" and getattr(self.session.live, "console_note", None):
            return False    # the console is not ours (sbtui attach)
        if action == "go_live" and getattr(self.session.live, "attached", False):
            return False    # sbtui attach: the machine is the user's, unknown to sbtui
        if action == "toggle_heatmap" and not self.narrow:
            return False    # side by side already: nothing to toggle
        if action == "quit" and isinstance(self.focused, ConsoleInput):
            return False    # q is typed to the guest there; Ctrl+Q still quits
        return True

    async def action_quit(self) -> None:
        await self.app.action_quit()

    def action_console_input(self) -> None:
        console_input = self.query_one(GuestConsole).input_widget
        if console_input is not None:
            console_input.take_focus()

    @on(ConsoleInput.Left)
    def _console_left(self, event: ConsoleInput.Left) -> None:
        self.query_one(CheckpointTable).focus()

    def action_replay(self) -> None:
        if not self.rows:
            return
        from sbtui.screens.debugger import DebuggerScreen
        self.app.push_screen(DebuggerScreen(self.session, self.rows[self.selected], self.rows))

    def action_toggle_range(self) -> None:
        if self.range_anchor is None:
            self.range_anchor = self.selected
            self.notify(f"range from #{self.selected}: move the selection to extend it, r to clear",
                        timeout=3)
        else:
            self.range_anchor = None
        self._highlighted(CheckpointTable.Highlighted(self.query_one(CheckpointTable), self.selected))

    def action_toggle_heatmap(self) -> None:
        """Narrow terminals: show the heatmap instead of table + console, or back."""
        shown = not self.has_class("show-heatmap")
        self.set_class(shown, "show-heatmap")
        # the hidden panel cannot keep the focus; hand it to the one now shown
        (self.query_one(Heatmap) if shown else self.query_one(CheckpointTable)).focus()

    def action_toggle_metric(self) -> None:
        timeline = self.query_one(Timeline)
        timeline.metric = "stored" if timeline.metric == "dirty" else "dirty"

    def action_pause_resume(self) -> None:
        live = self.session.live
        if live is None:
            return
        paused = self.recording.status().state is GuestState.PAUSED
        self.vm_call("vm: resume" if paused else "vm: pause", live.resume if paused else live.pause)

    def action_checkpoint_now(self) -> None:
        if self.session.live:
            self.vm_call("vm: checkpoint now", self.session.live.checkpoint_now)

    def action_go_live(self) -> None:
        """A new VM from the selected checkpoint, recorded live, on its own screen
        (sbtui/screens/golive.py); Esc there stops it and comes back here."""
        if self.rows:
            from sbtui.screens.golive import go_live
            go_live(self, self.rows[self.selected])

    @on(GuestConsole.InputSubmitted)
    def _console_input(self, event: GuestConsole.InputSubmitted) -> None:
        if self.session.live:
            text = event.text + "\n"
            self.vm_call("vm: console input", lambda: self.session.live.send_console(text))

    def vm_call(self, what: str, call) -> None:
        self._vm_worker(what, call)

    @work(group="vm", exit_on_error=False, description="vm")
    async def _vm_worker(self, what: str, call) -> None:
        await call()
        self.update_status()
        self.refresh_bindings()

    def palette_commands(self) -> list[PaletteCommand]:
        heatmap = self.query_one(Heatmap)
        cmds = [
            PaletteCommand("checkpoint: replay from the selected checkpoint",
                           "restore it and open the debugger", self.action_replay),
            PaletteCommand("checkpoint: first", "select the first checkpoint", lambda: self.select(0)),
            PaletteCommand("checkpoint: last", "select the newest checkpoint",
                           lambda: self.select(len(self.rows) - 1)),
            PaletteCommand("checkpoint: select range", "start or clear a range of intervals",
                           self.action_toggle_range),
            PaletteCommand("timeline: dirty pages / stored bytes", "switch what the strip shows",
                           self.action_toggle_metric),
        ]
        if self.check_action("go_live", ()):
            cmds.append(PaletteCommand("checkpoint: go live from the selected checkpoint",
                                       "start it as a new VM, recorded live", self.action_go_live))
        if self.narrow:
            cmds.append(PaletteCommand("heatmap: show / hide", "in place of the table and console "
                                       "(narrow terminal)", self.action_toggle_heatmap))
        cmds += [
            PaletteCommand("heatmap: zoom in", "fewer pages per cell", lambda: heatmap.action_zoom(1)),
            PaletteCommand("heatmap: zoom out", "more pages per cell", lambda: heatmap.action_zoom(-1)),
            PaletteCommand("heatmap: fit", "all of RAM at once", heatmap.action_fit),
            PaletteCommand("heatmap: zero and duplicate marks", "show or hide them",
                           heatmap.action_toggle_marks),
        ]
        if self.session.live:
            cmds += [
                PaletteCommand("vm: pause", "stop the guest's vCPUs",
                               lambda: self.vm_call("vm: pause", self.session.live.pause)),
                PaletteCommand("vm: resume", "continue the guest",
                               lambda: self.vm_call("vm: resume", self.session.live.resume)),
                PaletteCommand("vm: checkpoint now", "end the interval now", self.action_checkpoint_now),
                PaletteCommand("vm: type to the console", "focus the console input (Esc leaves it)",
                               self.action_console_input),
            ]
        return cmds
