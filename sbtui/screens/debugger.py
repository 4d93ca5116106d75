"""The debugger screen: a replay started from a checkpoint, under gdb.

Registers, disassembly around the PC, backtrace, breakpoints, memory (hex and
ASCII, virtual or physical), the replay's console and where the replay stands.
Every debugger call runs in one thread worker at a time (``group="replay"``):
the command, then a fresh :class:`~sbtui.messages.DebugSnapshot` read in the
same worker, posted as ``ReplayStopped``. Long operations post
``ReplayProgressed``; a key pressed while one runs is refused with a notice
instead of queueing behind it. Escape closes the replay in the background and
goes back to the session screen.

The layout follows the terminal (breakpoint classes on the screen, CSS in
``sbtui.tcss``): from ``WIDE`` columns every panel is shown at once; below it
the disassembly keeps at least 60 columns and one detail panel (memory, stack
= backtrace and breakpoints, the replay's console, and below ``MEDIUM`` the
registers too) is shown under it, ``t`` shows the next one. Below ``TALL``
rows the lower panels shrink.
"""

from __future__ import annotations

from collections.abc import Callable

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer
from textual.worker import Worker, WorkerState

from engine.api import (
    BreakpointKind, CheckpointRow, Debugger, ReplayProgress, Session, StopEvent, StopReason,
)
from engine.errors import SbtuiError, UsageError
from sbtui.messages import DebugSnapshot, ReplayProgressed, ReplayStarted, ReplayStopped
from sbtui.screens.base import PaletteCommand, SbtuiScreen
from sbtui.screens.prompt import PromptScreen
from sbtui.widgets.backtrace import BacktraceView
from sbtui.widgets.breakpoints import BreakpointsView
from sbtui.widgets.disassembly import DisassemblyView
from sbtui.widgets.memory import BYTES_PER_LINE, MemoryView
from sbtui.widgets.registers import RegistersPanel, RegistersView
from sbtui.widgets.replay_position import ReplayPosition
from sbtui.widgets.status_bar import StatusBar
from sbtui.widgets.tail_log import TailLog

WIDE = 150       # registers (50) + disassembly (>= 60) + backtrace/breakpoints (38)
MEDIUM = 110     # registers (50) + disassembly (>= 60)
TALL = 45        # rows for 15-row lower panels with every register above them
PANELS = ("registers", "memory", "stack", "console")   # what t cycles through

Op = Callable[[Debugger, Callable[[ReplayProgress], None]], StopEvent | None]


def parse_int(text: str) -> int:
    cleaned = text.strip().replace(",", "").replace("_", "")
    try:
        return int(cleaned, 0)
    except ValueError:
        raise UsageError(f"not a number: {text!r}") from None


class DebuggerScreen(SbtuiScreen):
    AUTO_FOCUS = "#replay-console"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (MEDIUM, "-medium"), (WIDE, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (TALL, "-tall")]
    BINDINGS = [
        Binding("escape", "back", "Back", id="replay.back"),
        Binding("t", "next_panel", "Panel", id="replay.next_panel"),
        Binding("s", "step('step')", "Step", id="replay.step"),
        Binding("n", "step('next')", "Next", id="replay.next"),
        Binding("i", "step('stepi')", "Stepi", id="replay.stepi"),
        Binding("f", "step('finish')", "Finish", id="replay.finish"),
        Binding("c", "step('cont')", "Continue", id="replay.continue"),
        Binding("I", "step('reverse_stepi')", "Step back", id="replay.reverse_stepi"),
        Binding("C", "step('reverse_continue')", "Rev-cont", id="replay.reverse_continue"),
        Binding("g", "goto_icount", "Go to icount", id="replay.goto_icount"),
        Binding("k", "goto_checkpoint", "Go to ckpt", id="replay.goto_checkpoint"),
        Binding("b", "toggle_breakpoint", "Break at PC", id="replay.break_pc"),
        Binding("B", "add_breakpoint", "Break at…", show=False, id="replay.break_at"),
        Binding("w", "add_watchpoint", "Watch…", id="replay.watch"),
        Binding("D", "delete_breakpoint", "Delete bp…", show=False, id="replay.delete_breakpoint"),
        Binding("m", "memory_goto", "Memory…", id="replay.memory_goto"),
        Binding("o", "memory_follow", "Follow ptr", show=False, id="replay.memory_follow"),
        Binding("v", "memory_space", "Virt/phys", show=False, id="replay.memory_space"),
        Binding("left_square_bracket", "memory_scroll(-1)", "Memory up", show=False,
                id="replay.memory_up"),
        Binding("right_square_bracket", "memory_scroll(1)", "Memory down", show=False,
                id="replay.memory_down"),
    ]

    STEP_LABELS = {
        "step": "step", "next": "next", "stepi": "stepi", "finish": "finish",
        "cont": "continue", "reverse_stepi": "reverse-stepi", "reverse_continue": "reverse-continue",
    }

    def __init__(self, session: Session, checkpoint: CheckpointRow, rows: list[CheckpointRow]) -> None:
        super().__init__()
        self.session = session
        self.checkpoint = checkpoint
        self.rows = rows
        self.debugger: Debugger | None = None
        self.snapshot: DebugSnapshot | None = None
        self.busy = ""
        self.memory_address: int | None = None     # None: follow rsp
        self.memory_physical = False
        self.last_stop = ""
        self.closing = False
        self.panel = ""          # the detail panel chosen with t ("": the default)

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        with Horizontal(id="dbg-top"):
            # disassembly first: below MEDIUM the registers go under it (the
            # CSS docks them left when there is room beside it)
            yield DisassemblyView(id="disassembly")
            yield RegistersPanel(id="registers")
            with Vertical(id="dbg-side"):
                yield BacktraceView(id="backtrace")
                yield BreakpointsView(id="breakpoints")
        with Horizontal(id="dbg-bottom"):
            yield MemoryView(id="memory")
            yield TailLog(id="replay-console", max_lines=5000)
        yield ReplayPosition(self.rows, id="position")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        titles = {"registers": "registers", "disassembly": "disassembly", "backtrace": "backtrace",
                  "breakpoints": "breakpoints", "memory": "memory", "replay-console": "console (replay)"}
        for wid, title in titles.items():
            self.query_one(f"#{wid}").border_title = title
        self.update_status()
        self._show_panel()
        self.run_op(f"restoring checkpoint #{self.checkpoint.index}", self._start)

    # -- layout --------------------------------------------------------------
    def on_resize(self) -> None:
        # after Screen's own resize handler has set the breakpoint classes
        self.call_later(self._show_panel)

    def panels(self) -> tuple[str, ...]:
        """The detail panels shown one at a time at this size (none when wide)."""
        if self.has_class("-wide"):
            return ()
        return PANELS if self.has_class("-narrow") else PANELS[1:]

    def shown_panel(self) -> str:
        panels = self.panels()
        if not panels:
            return ""
        return self.panel if self.panel in panels else panels[0]

    def _show_panel(self) -> None:
        shown = self.shown_panel()
        self.set_class(bool(shown), "one-panel")
        for name in PANELS:
            self.set_class(name == shown, f"show-{name}")
        hint = "t: next panel" if shown else ""
        for wid in ("registers", "memory", "backtrace", "replay-console"):
            self.query_one(f"#{wid}").border_subtitle = hint
        self.call_after_refresh(self._keep_focus_visible)
        self.refresh_bindings()

    def _keep_focus_visible(self) -> None:
        # a panel that went away cannot keep the focus: give it to one shown
        # (the console, or the registers so the arrows scroll them)
        def displayed(widget) -> bool:
            return all(node.display for node in widget.ancestors_with_self if node is not self.app)
        if self.focused is not None and displayed(self.focused):
            return
        for wid in ("#replay-console", "#registers"):
            widget = self.query_one(wid)
            if displayed(widget):
                widget.focus()
                return
        self.set_focus(None)

    def action_next_panel(self) -> None:
        panels = self.panels()
        if not panels:
            return
        self.panel = panels[(panels.index(self.shown_panel()) + 1) % len(panels)]
        self._show_panel()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "next_panel" and not self.panels():
            return False    # wide: every panel is on screen
        return True

    # -- the one worker ------------------------------------------------------
    def _start(self, _: Debugger | None, progress) -> None:
        dbg = self.session.start_replay(self.checkpoint.id, progress)
        if self.closing:          # Escape was pressed while restoring
            dbg.close()
            return None
        self.debugger = dbg
        self.post_message(ReplayStarted(dbg))
        return None

    def run_op(self, label: str, op: Op) -> bool:
        if self.busy:
            self.notify(f"busy: {self.busy}", severity="warning", timeout=2)
            return False
        if op != self._start and self.debugger is None:
            self.notify("the replay is not ready yet", severity="warning", timeout=2)
            return False
        self.busy = label
        self.query_one(ReplayPosition).show(phase=label, fraction=-1.0)
        self.update_status()
        self._op_worker(label, op)
        return True

    @work(thread=True, group="replay", exit_on_error=False)
    def _op_worker(self, label: str, op: Op) -> None:
        def progress(p: ReplayProgress) -> None:
            self.post_message(ReplayProgressed(p.phase, p.fraction))
        stop = op(self.debugger, progress)
        dbg = self.debugger
        if dbg is not None and not self.closing:
            self.post_message(ReplayStopped(self.read_snapshot(dbg, stop)))

    def read_snapshot(self, dbg: Debugger, stop: StopEvent | None) -> DebugSnapshot:
        """Everything the screen shows, read from the debugger (thread worker)."""
        regs = dbg.registers()
        pc = regs.get("rip", 0)
        height = max(8, self.query_one(DisassemblyView).size.height)
        before = min(8, height // 3)
        disasm = dbg.disassemble(pc, height - before, before=before)
        frames = dbg.backtrace()
        bps = dbg.breakpoints()
        address = self.memory_address if self.memory_address is not None else regs.get("rsp", 0)
        # at least 16 lines: a panel hidden now (narrow terminal) has no size,
        # and one shown later lays out the same bytes at its width
        rows = max(16, self.query_one(MemoryView).size.height)
        memory, error = b"", ""
        try:
            memory = dbg.read_memory(address, rows * BYTES_PER_LINE, self.memory_physical)
        except SbtuiError as err:
            error = str(err)
        symbol, offset = dbg.symbolize(pc)
        return DebugSnapshot(
            icount=dbg.icount, registers=regs, disassembly=disasm, backtrace=frames,
            breakpoints=bps, memory_address=address, memory_physical=self.memory_physical,
            memory=memory, memory_error=error, console=dbg.console_text(), stop=stop,
            symbols={pc: f"{symbol}+{offset}" if symbol else ""})

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "replay" and event.state in (
                WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            self.busy = ""
            self.query_one(ReplayPosition).show(phase="", fraction=-1.0, stop=self.last_stop)
            self.update_status()
        # (Textual also calls SbtuiScreen's handler: it walks the MRO, so no super())

    def worker_failure_handled(self, worker: Worker) -> None:
        if self.debugger is None:
            # the replay never started: nothing to show here (once the dialog is gone)
            self.app.call_later(self._leave_if_not_started)

    def _leave_if_not_started(self) -> None:
        if self.debugger is None and self.app.screen is self:
            self.dismiss()

    # -- messages ------------------------------------------------------------
    def on_replay_started(self, message: ReplayStarted) -> None:
        self.app.track_debugger(message.debugger)  # type: ignore[attr-defined]

    def on_replay_progressed(self, message: ReplayProgressed) -> None:
        if self.busy:
            self.query_one(ReplayPosition).show(phase=message.phase, fraction=message.fraction)

    def on_replay_stopped(self, message: ReplayStopped) -> None:
        snap = message.snapshot
        self.snapshot = snap
        pc = snap.registers.get("rip", 0)
        self.query_one(RegistersView).show(snap.registers, snap.symbols.get(pc, ""))
        disasm = self.query_one(DisassemblyView)
        bp_addresses = {b.address for b in snap.breakpoints if b.kind is BreakpointKind.BREAKPOINT}
        disasm.show(snap.disassembly, pc, bp_addresses, raw=disasm.size.width >= 110)
        self.query_one(BacktraceView).show(snap.backtrace)
        self.query_one(BreakpointsView).show(snap.breakpoints)
        memory = self.query_one(MemoryView)
        memory.show(snap.memory_address, snap.memory, snap.memory_physical, snap.memory_error)
        space = "physical" if snap.memory_physical else "virtual"
        follow = " = $rsp" if self.memory_address is None else ""
        memory.border_title = f"memory · {space} {snap.memory_address:#x}{follow}"
        self.query_one("#replay-console", TailLog).show(snap.console)
        if snap.stop is not None:
            stop = snap.stop
            self.last_stop = (f"{stop.reason.value}: {stop.detail}" if stop.detail else stop.reason.value)
            if stop.reason in (StopReason.END, StopReason.START):
                self.notify(f"reached the {stop.reason.value}", timeout=3)
        self.query_one(ReplayPosition).show(icount=snap.icount, stop=self.last_stop)
        self.update_status()

    def update_status(self) -> None:
        icount = self.snapshot.icount if self.snapshot else self.checkpoint.icount
        self.query_one(StatusBar).show_replay(self.session.name, self.checkpoint.index, icount,
                                              self.last_stop, self.busy)

    # -- actions -------------------------------------------------------------
    def action_step(self, command: str) -> None:
        label = self.STEP_LABELS[command]
        def op(dbg: Debugger, progress) -> StopEvent:
            method = getattr(dbg, command)
            if command in ("cont", "reverse_continue"):
                return method(progress)
            return method()
        self.run_op(label, op)

    def action_back(self) -> None:
        self.closing = True
        dbg, self.debugger = self.debugger, None
        if dbg is not None:
            self.app.close_debugger(dbg)  # type: ignore[attr-defined]
        self.dismiss()

    def _prompt(self, title: str, placeholder: str, then: Callable[[str], None]) -> None:
        def done(value: str | None) -> None:
            if value:
                then(value)
        self.app.push_screen(PromptScreen(title, placeholder), done)

    def action_goto_icount(self) -> None:
        def go(text: str) -> None:
            target = parse_int(text)
            self.run_op(f"seeking to icount {target:,}", lambda d, p: d.goto_icount(target, p))
        self._prompt("Go to instruction count", f"e.g. {self.checkpoint.icount + 1000:,}", self._guard(go))

    def action_goto_checkpoint(self) -> None:
        def go(text: str) -> None:
            key = text.strip().lstrip("#")
            row = next((r for r in self.rows if r.id == key), None)
            if row is None:
                index = parse_int(key)
                if not 0 <= index < len(self.rows):
                    raise UsageError(f"no checkpoint #{index} (0..{len(self.rows) - 1})")
                row = self.rows[index]
            self.run_op(f"going to checkpoint #{row.index}", lambda d, p: d.goto_checkpoint(row.id, p))
        self._prompt("Go to checkpoint (index or id)", f"e.g. #{self.checkpoint.index + 1}", self._guard(go))

    def _guard(self, fn: Callable[[str], None]) -> Callable[[str], None]:
        def run(text: str) -> None:
            try:
                fn(text)
            except SbtuiError as err:
                self.app.show_error(err, "reading what was typed")  # type: ignore[attr-defined]
        return run

    def action_toggle_breakpoint(self) -> None:
        if not self.snapshot:
            return
        pc = self.snapshot.registers.get("rip", 0)
        existing = [b for b in self.snapshot.breakpoints
                    if b.kind is BreakpointKind.BREAKPOINT and b.address == pc]
        def op(dbg: Debugger, progress) -> None:
            if existing:
                for b in existing:
                    dbg.delete_breakpoint(b.number)
            else:
                dbg.add_breakpoint(f"*{pc:#x}")
        self.run_op("breakpoint", op)

    def action_add_breakpoint(self) -> None:
        self._prompt("Break at (symbol or *address)", "e.g. do_timer",
                     lambda loc: self.run_op("breakpoint", lambda d, p: d.add_breakpoint(loc) and None))

    def action_add_watchpoint(self) -> None:
        self._prompt("Watch writes to (symbol or address)", "e.g. jiffies",
                     lambda expr: self.run_op("watchpoint", lambda d, p: d.add_watchpoint(expr) and None))

    def action_delete_breakpoint(self) -> None:
        def go(text: str) -> None:
            number = parse_int(text)
            self.run_op("delete breakpoint", lambda d, p: d.delete_breakpoint(number))
        self._prompt("Delete breakpoint number", "e.g. 1", self._guard(go))

    def action_memory_goto(self) -> None:
        def go(text: str) -> None:
            def op(dbg: Debugger, progress) -> None:
                self.memory_address = dbg.lookup_symbol(text)
            self.run_op("memory", op)
        self._prompt("Memory at (address, symbol or $register)", "e.g. linux_banner, $rsp, 0xffff888000000000", go)

    def action_memory_follow(self) -> None:
        snap = self.snapshot
        if not snap or len(snap.memory) < 8:
            return
        target = int.from_bytes(snap.memory[:8], "little")
        self.memory_address = target
        self.run_op("memory", lambda d, p: None)

    def action_memory_space(self) -> None:
        self.memory_physical = not self.memory_physical
        if self.snapshot:
            self.memory_address = self.snapshot.memory_address
        self.run_op("memory", lambda d, p: None)

    def action_memory_scroll(self, direction: int) -> None:
        if self.snapshot:
            step = self.query_one(MemoryView).bytes_per_line * 8
            self.memory_address = self.snapshot.memory_address + direction * step
            self.run_op("memory", lambda d, p: None)

    def palette_commands(self) -> list[PaletteCommand]:
        def step(cmd: str) -> Callable[[], None]:
            return lambda: self.action_step(cmd)
        return [
            PaletteCommand("replay: step", "one source line, into calls", step("step")),
            PaletteCommand("replay: next", "one source line, over calls", step("next")),
            PaletteCommand("replay: step instruction", "one instruction (stepi)", step("stepi")),
            PaletteCommand("replay: finish", "run until this function returns", step("finish")),
            PaletteCommand("replay: continue", "run to a breakpoint or the end", step("cont")),
            PaletteCommand("replay: step back", "undo one instruction (reverse-stepi)",
                           step("reverse_stepi")),
            PaletteCommand("replay: reverse continue", "run backwards to a breakpoint",
                           step("reverse_continue")),
            PaletteCommand("replay: go to icount…", "seek to an instruction count", self.action_goto_icount),
            PaletteCommand("replay: go to checkpoint…", "seek to a checkpoint", self.action_goto_checkpoint),
            PaletteCommand("replay: back to the recording", "close this replay", self.action_back),
            PaletteCommand("breakpoint: toggle at PC", "", self.action_toggle_breakpoint),
            PaletteCommand("breakpoint: add…", "at a symbol or *address", self.action_add_breakpoint),
            PaletteCommand("breakpoint: delete…", "by number", self.action_delete_breakpoint),
            PaletteCommand("watchpoint: add…", "stop after writes to an address", self.action_add_watchpoint),
            *([PaletteCommand("panel: show the next one", "/".join(self.panels()) + " (t)",
                              self.action_next_panel)] if self.panels() else []),
            PaletteCommand("memory: go to…", "address, symbol or $register", self.action_memory_goto),
            PaletteCommand("memory: follow pointer", "jump to the first qword shown", self.action_memory_follow),
            PaletteCommand("memory: virtual / physical", "switch address space", self.action_memory_space),
        ]
