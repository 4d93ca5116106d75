"""The facade between the engine and its clients (the app, the CLI, scripts).

Everything the app knows about the engine is in this module: ``typing.Protocol``
classes for the objects it calls and plain frozen dataclasses for what crosses
the boundary. It imports nothing from the engine except :mod:`engine.errors`
and never imports Textual, so the engine can implement it without knowing the
app, and the app can be tested against a fake (``sbtui/fake_session.py``).

Object graph::

    Session                      one per app run; owns every process it starts
     +-- recording: RecordingView   read-only, may grow while a guest is recorded
     +-- live: LiveControl | None   only for a guest that is running now
     +-- start_replay(...) -> Debugger   a replay of one interval, under gdb
     +-- go_live(...) -> Session        a new VM from a checkpoint, recorded live

Threading contract (the app never blocks its event loop):

* **sync, cheap** - may be called on the UI loop: ``Session.name``,
  ``RecordingView.machine``, ``RecordingView.status()``, ``Debugger.icount``.
  These read state the implementation already holds in memory.
* **sync, blocking** - called from thread workers only: everything that reads
  files, hashes, talks to gdb (pygdbmi is blocking) or waits for a process:
  ``checkpoints()``, ``dirty_pages()``, ``page_marks()``, ``console_text()``,
  ``Session.start_replay()``, ``Session.go_live()`` and every ``Debugger`` method.
  Implementations must tolerate calls from any thread, but the app serializes
  the calls it makes on one ``Debugger`` (one replay worker at a time).
* **async** - awaited from async workers on the UI loop: every ``LiveControl``
  method, because QMP (``qemu.qmp``) is asyncio-native.
* **callbacks** - ``RecordingView.subscribe()`` calls its callback from any
  thread; the app only posts a message from it (``post_message`` is thread safe).
  ``ProgressCallback`` is called from the thread running the operation.

Errors: every method raises only :class:`engine.errors.SbtuiError` subclasses on
purpose (``NotFoundError`` for an unknown checkpoint, ``GdbError``/``ReplayError``
from a replay, ``QmpError`` from live control, ``RecordingError`` for a damaged
recording). Their ``str()`` is written for a person; the app shows it as is.

Units: instruction counts are guest instructions executed since the recording
started (QEMU ``-icount`` counter); times are nanoseconds of guest virtual time
(``*_ns``), Unix seconds of host wall time (``wall_time``) or milliseconds
(``*_ms``); sizes are bytes unless named ``pages`` (a page is
``MachineInfo.page_size`` bytes); page indices are offsets into the guest's main
RAM block (``pc.ram`` on x86) divided by the page size, *not* physical
addresses: ``MachineInfo.page_to_gpa`` maps one to the other.
"""

from __future__ import annotations

import enum
from array import array
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from engine.errors import SbtuiError  # noqa: F401  (named in the contracts above)

__all__ = [
    "Breakpoint", "BreakpointKind", "CheckpointRow", "Debugger", "DisasmLine",
    "Frame", "GuestState", "LiveControl", "MachineInfo", "Marker", "PageMarks",
    "AnalysisInfo", "AnalysisView", "IntervalWriteset", "SimulationProgress", "WritesetStep",
    "ProgressCallback", "RamRegion", "RecordingEvent", "RecordingStatus",
    "RecordingView", "Registers", "ReplayProgress", "Session", "StopEvent",
    "StopReason", "Unsubscribe", "decode_bits", "decode_rflags",
]


# --------------------------------------------------------------------------
# The machine and the recording
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class RamRegion:
    """A run of the main RAM block mapped at a guest physical address.

    On x86 ``pc``/``q35`` machines RAM above the PCI hole is split: offsets
    ``[0, below_4g)`` map at GPA 0 and the rest at GPA 4 GiB.
    """

    ram_offset: int      # byte offset into the RAM block
    gpa: int             # guest physical address of ram_offset
    size: int            # bytes


@dataclass(frozen=True)
class MachineInfo:
    """What was recorded: the machine, its RAM and its layout."""

    arch: str                          # "x86_64"
    machine: str                       # QEMU machine type, e.g. "pc-q35-10.0"
    cpus: int
    ram_bytes: int                     # size of the main RAM block
    page_size: int = 4096
    ram_block: str = "pc.ram"
    regions: tuple[RamRegion, ...] = ()  # empty: RAM is mapped at GPA 0 as one run
    kernel: str = ""                   # e.g. "Linux 6.6.58 (vmlinux with symbols)"

    @property
    def ram_pages(self) -> int:
        return self.ram_bytes // self.page_size

    def page_to_gpa(self, page: int) -> int:
        """Guest physical address of the first byte of RAM page ``page``."""
        offset = page * self.page_size
        if not self.regions:
            return offset
        starts = [r.ram_offset for r in self.regions]
        region = self.regions[max(0, bisect_right(starts, offset) - 1)]
        return region.gpa + (offset - region.ram_offset)


@dataclass(frozen=True)
class CheckpointRow:
    """One checkpoint, as listed in the timeline and the checkpoint table.

    A checkpoint closes an interval: ``pages_dirty`` counts the pages written
    since the previous checkpoint; ``pages_new`` those whose content the store
    had not seen (so stored), ``dup_intra`` those equal to another page of the
    same checkpoint, ``dup_inter`` those equal to a page of an earlier one,
    ``zero_pages`` those that are all zero (never stored).
    """

    id: str                 # stable store id (hex digest prefix or name)
    index: int              # 0-based position in the recording
    icount: int             # instructions executed when it was taken
    guest_time_ns: int
    wall_time: float        # host Unix time when it was taken
    downtime_ms: float      # how long the guest was paused to take it
    pages_dirty: int
    pages_new: int
    stored_bytes: int       # bytes added to the store (after compression)
    dup_intra: int
    dup_inter: int
    zero_pages: int

    @property
    def duplicates(self) -> int:
        return self.dup_intra + self.dup_inter


@dataclass(frozen=True)
class Marker:
    """A guest marker: a line the guest wrote on its marker port (``sbmark``)."""

    icount: int
    guest_time_ns: int
    text: str


@dataclass(frozen=True)
class PageMarks:
    """Optional per-checkpoint page classes, as sorted unique page indices.

    ``None`` means "not known" (the store did not keep it), which is different
    from an empty array ("none").
    """

    zero: array | None = None
    duplicate: array | None = None


class GuestState(enum.Enum):
    RECORDED = "recorded"      # a saved recording; nothing runs
    RUNNING = "running"
    PAUSED = "paused"
    REPLAYING = "replaying"
    STOPPED = "stopped"        # the guest exited or was shut down


@dataclass(frozen=True)
class RecordingStatus:
    """What the header shows. Cheap to get (held in memory)."""

    state: GuestState
    icount: int
    guest_time_ns: int
    checkpoints: int
    checkpoint_rate_hz: float   # checkpoints per wall second (0 for a saved recording)
    store_bytes: int            # bytes on disk in the store
    logical_bytes: int          # bytes the checkpoints would take without dedup/compression
    attached: bool = False      # a QEMU the user started (sbtui attach): detaching leaves it running

    @property
    def dedup_ratio(self) -> float:
        return self.logical_bytes / self.store_bytes if self.store_bytes else 1.0


@dataclass(frozen=True)
class RecordingEvent:
    """Something changed in a recording that grows.

    ``kind`` is ``"checkpoint"`` (``checkpoints()`` has new rows),
    ``"console"`` (``console_text()`` has more text), ``"marker"`` or
    ``"state"`` (``status()`` changed). Events carry no payload on purpose: the
    receiver reads what it has not seen yet, so dropped or merged events lose
    nothing.
    """

    kind: str


Unsubscribe = Callable[[], None]


@runtime_checkable
class RecordingView(Protocol):
    """Read-only view of a recording; grows while a live guest is recorded."""

    @property
    def machine(self) -> MachineInfo:
        """The recorded machine. Sync, cheap."""
        ...

    def status(self) -> RecordingStatus:
        """State, counters and store size for the header. Sync, cheap."""
        ...

    def checkpoints(self, start: int = 0) -> list[CheckpointRow]:
        """Rows for checkpoints ``start..`` in index order. Sync, blocking on
        first call (reads the recording's manifests), cheap afterwards.
        Raises ``RecordingError`` when the recording is damaged."""
        ...

    def dirty_pages(self, checkpoint_id: str) -> array:
        """Pages of the main RAM block written in the interval that this
        checkpoint closes: an ``array('I')`` (or ``'L'``/``'Q'``) of sorted,
        unique page indices. Sync, blocking (reads a manifest; may take tens of
        ms). Raises ``NotFoundError`` for an unknown id."""
        ...

    def page_marks(self, checkpoint_id: str) -> PageMarks:
        """Zero and duplicate pages among this checkpoint's dirty pages. Sync,
        blocking. Raises ``NotFoundError`` for an unknown id."""
        ...

    def markers(self) -> list[Marker]:
        """Guest markers in icount order. Sync, blocking on first call."""
        ...

    def console_text(self, start: int = 0) -> str:
        """The guest's serial output from character offset ``start``. Sync,
        blocking on first call."""
        ...

    def subscribe(self, callback: Callable[[RecordingEvent], None]) -> Unsubscribe:
        """Call ``callback`` (from any thread) whenever the recording changes.
        A saved recording never calls it. Returns a function that stops the
        calls; calling it twice is harmless."""
        ...


# --------------------------------------------------------------------------
# Analyses of a recording (parallel interval replay, engine.parallel)
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class WritesetStep:
    """One sub-step of an interval replayed by the ``writeset`` analysis."""

    icount: int                 # the sub-step ends at this instruction count
    pages: array                # main-RAM pages whose content changed in it (sorted, unique)


@dataclass(frozen=True)
class IntervalWriteset:
    """Where an interval wrote, at finer resolution than its checkpoints.

    ``steps`` split the interval ``[start_icount, end_icount)`` into runs of
    ``step_icount`` instructions (the last one shorter); the heatmap can draw
    one column per step. ``working_set`` counts the pages changed in any step:
    a restore that loaded only those would load ``working_set / ram_pages``
    of RAM. ``store_dirty`` is how many pages differ between the two
    checkpoints in the store (``None`` for the last interval).
    """

    interval: int               # index of the checkpoint the interval starts at
    start_icount: int
    end_icount: int | None      # None: the last interval, to the end of the recording
    step_icount: int
    steps: tuple[WritesetStep, ...]
    working_set: int
    ram_pages: int
    store_dirty: int | None
    verified: bool              # the replay reached the recorded end state

    @property
    def working_set_fraction(self) -> float:
        return self.working_set / self.ram_pages if self.ram_pages else 0.0


@dataclass(frozen=True)
class AnalysisInfo:
    """What is stored for one analysis of a recording (``sbtui simulate``)."""

    name: str                   # "verify", "writeset"
    intervals: int
    verified: int
    failed: tuple[int, ...]     # intervals that did not verify
    wall_s: float
    scheduler: str              # "local:2", "dask:tcp://host:8786"
    created: float              # Unix time
    stale: bool                 # the recording's checkpoints changed since


@dataclass(frozen=True)
class SimulationProgress:
    """Progress of a running simulation, for a progress bar."""

    total: int
    done: int
    running: int
    failed: int
    elapsed_s: float
    eta_s: float | None         # projected seconds left; None while unknown
    message: str = ""


@runtime_checkable
class AnalysisView(Protocol):
    """Analyses stored with a recording, and running one. A recording view
    may implement it too (``isinstance(view, AnalysisView)``); the fake does not
    have to."""

    def analyses(self) -> list[AnalysisInfo]:
        """The analyses stored with the recording. Sync, blocking (reads files)."""
        ...

    def writeset(self, checkpoint_id: str) -> IntervalWriteset | None:
        """The ``writeset`` of the interval that checkpoint ``checkpoint_id``
        closes (the interval whose dirty pages ``dirty_pages`` gives), or None
        when the analysis has not run for it. Sync, blocking.
        ``NotFoundError`` for an unknown id."""
        ...

    def writesets(self) -> list[IntervalWriteset]:
        """Every interval's ``writeset`` that is stored, the last interval
        (closed by no checkpoint) included. Sync, blocking."""
        ...

    def simulate(self, analysis: str, *, jobs: int = 1, scheduler: str | None = None,
                 progress: Callable[[SimulationProgress], None] | None = None) -> AnalysisInfo:
        """Replay every interval in parallel and run ``analysis`` on it (local
        processes, or the Dask scheduler at ``scheduler``), storing the results.
        Sync, blocking for as long as the replays take: call from a thread
        worker; ``progress`` is called from that thread."""
        ...


@runtime_checkable
class LiveControl(Protocol):
    """Control of a guest that is running now (being recorded or attached).

    Every method is a coroutine run on the app's event loop (QMP is async).
    Raises ``QmpError`` when QEMU refuses, ``QemuDiedError`` when it is gone.
    """

    async def pause(self) -> None:
        """Stop the guest's vCPUs (QMP ``stop``). Idempotent."""
        ...

    async def resume(self) -> None:
        """Resume the guest (QMP ``cont``). Idempotent."""
        ...

    async def checkpoint_now(self) -> CheckpointRow:
        """Take a checkpoint at once, ending the current interval early.
        Returns its row (also announced through ``subscribe``)."""
        ...

    async def send_console(self, text: str) -> None:
        """Type ``text`` into the guest's serial console. An implementation whose
        console belongs to someone else (``sbtui attach``) raises ``UsageError``
        and has a ``console_note`` attribute saying so (the app shows it instead
        of an input)."""
        ...


# --------------------------------------------------------------------------
# The debugger
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class ReplayProgress:
    """How far a long operation (restore, seek, reverse) has come."""

    phase: str          # "restoring pages", "replaying to icount 123", ...
    fraction: float     # 0.0 .. 1.0; negative when unknown


ProgressCallback = Callable[[ReplayProgress], None]


class StopReason(enum.Enum):
    STEP = "step"                  # a step/next/stepi/finish completed
    BREAKPOINT = "breakpoint"
    WATCHPOINT = "watchpoint"
    TARGET = "target"              # reached the icount or checkpoint asked for
    START = "start of replay"      # reversed into the interval's first instruction
    END = "end of recording"       # ran off the recorded execution
    SIGNAL = "signal"


@dataclass(frozen=True)
class StopEvent:
    """Where an execution command stopped, and why."""

    reason: StopReason
    icount: int
    pc: int
    detail: str = ""               # "breakpoint 2, do_idle", "watchpoint 3: jiffies"


Registers = dict[str, int]
"""Register name -> value. x86_64 names: rax..r15, rip, rflags (eflags),
cs ss ds es fs gs, fs_base gs_base, cr0 cr2 cr3 cr4 efer (when gdb exposes them)."""


@dataclass(frozen=True)
class DisasmLine:
    address: int
    symbol: str                 # "do_idle" ("" when unknown)
    offset: int                 # bytes from the symbol's start
    raw: bytes                  # instruction bytes
    text: str                   # "mov    %rax,0x10(%rbx)" (AT&T, as gdb prints)


@dataclass(frozen=True)
class Frame:
    level: int
    pc: int
    function: str               # "" when unknown
    file: str = ""
    line: int = 0


class BreakpointKind(enum.Enum):
    BREAKPOINT = "breakpoint"
    WATCH = "watch"             # write watchpoint
    RWATCH = "rwatch"
    AWATCH = "awatch"


@dataclass(frozen=True)
class Breakpoint:
    number: int
    kind: BreakpointKind
    location: str               # "do_idle", "*0xffffffff81001234", "jiffies"
    address: int
    enabled: bool = True
    hits: int = 0
    length: int = 0             # watchpoints: bytes watched


@runtime_checkable
class Debugger(Protocol):
    """A replay of a recording under gdb, stopped between commands.

    Every method is sync and blocking (it talks to gdb through pygdbmi) and is
    called from a thread worker; the app never issues two at once. Execution
    commands return when the guest has stopped again; long ones call
    ``progress``. They raise ``GdbError`` (gdb failed or timed out),
    ``ReplayError`` (the replay diverged or cannot go there) or
    ``UsageError`` (a bad expression or address).
    """

    @property
    def checkpoint_id(self) -> str:
        """The checkpoint the replay was started from. Sync, cheap."""
        ...

    @property
    def icount(self) -> int:
        """Instruction count where the replay stands now. Sync, cheap."""
        ...

    # -- state -------------------------------------------------------------
    def registers(self) -> Registers: ...

    def disassemble(self, address: int, count: int, before: int = 0) -> list[DisasmLine]:
        """``count`` instructions from ``address``, preceded by up to ``before``
        instructions that end at ``address`` (best effort on x86)."""
        ...

    def read_memory(self, address: int, length: int, physical: bool = False) -> bytes:
        """``length`` bytes at a virtual (current CR3) or guest physical
        address. Unreadable bytes raise ``UsageError`` naming the address."""
        ...

    def backtrace(self, limit: int = 32) -> list[Frame]: ...

    def lookup_symbol(self, name: str) -> int:
        """Address of a kernel symbol or the value of an expression
        (``"jiffies"``, ``"$rsp+8"``). ``UsageError`` when unknown."""
        ...

    def symbolize(self, address: int) -> tuple[str, int]:
        """``(symbol, offset)`` for an address; ``("", 0)`` when unknown."""
        ...

    def console_text(self, start: int = 0) -> str:
        """The replayed guest's serial output so far, from character ``start``."""
        ...

    # -- breakpoints and watchpoints ----------------------------------------
    def breakpoints(self) -> list[Breakpoint]: ...

    def add_breakpoint(self, location: str) -> Breakpoint:
        """``location`` as gdb takes it: a symbol, ``*ADDRESS``."""
        ...

    def add_watchpoint(self, expression: str, kind: BreakpointKind = BreakpointKind.WATCH) -> Breakpoint: ...

    def delete_breakpoint(self, number: int) -> None: ...

    def enable_breakpoint(self, number: int, enabled: bool) -> None: ...

    # -- execution ---------------------------------------------------------
    def step(self) -> StopEvent: ...
    def next(self) -> StopEvent: ...
    def stepi(self) -> StopEvent: ...
    def finish(self) -> StopEvent: ...

    def cont(self, progress: ProgressCallback | None = None) -> StopEvent:
        """Run forward to a breakpoint, watchpoint or the end of the recording."""
        ...

    def reverse_stepi(self) -> StopEvent:
        """Undo one instruction: afterwards registers and memory are exactly
        what they were before the last ``stepi``. At the first instruction of
        the recording it returns ``StopReason.START`` without moving."""
        ...

    def reverse_continue(self, progress: ProgressCallback | None = None) -> StopEvent:
        """Run backward to the previous breakpoint/watchpoint hit or the start."""
        ...

    def goto_icount(self, icount: int, progress: ProgressCallback | None = None) -> StopEvent:
        """Restore the nearest checkpoint at or before ``icount`` and replay to
        it. ``UsageError`` outside the recording."""
        ...

    def goto_checkpoint(self, checkpoint_id: str, progress: ProgressCallback | None = None) -> StopEvent: ...

    def close(self) -> None:
        """Stop gdb and the replaying QEMU (politely, then by force). Idempotent;
        never raises."""
        ...


@runtime_checkable
class Session(Protocol):
    """What the app is given: one recording, maybe live, and replays of it."""

    @property
    def name(self) -> str:
        """A short name for the title bar ("demo", a recording's directory)."""
        ...

    @property
    def recording(self) -> RecordingView: ...

    @property
    def live(self) -> LiveControl | None:
        """Live control, or ``None`` for a saved recording."""
        ...

    @property
    def path(self) -> str:
        """Where the recording is (a directory; the fake gives a made-up path). Sync, cheap."""
        ...

    def start_replay(self, checkpoint_id: str, progress: ProgressCallback | None = None) -> Debugger:
        """Restore ``checkpoint_id`` into a replaying QEMU under gdb and stop at
        its first instruction. Sync, blocking (seconds): call from a thread
        worker. ``NotFoundError`` for an unknown id, ``QemuError``/``GdbError``
        when a process fails (they carry the log tail)."""
        ...

    def go_live(self, checkpoint_id: str, progress: ProgressCallback | None = None) -> "Session":
        """Go live: start a normal (not replaying) VM from ``checkpoint_id``,
        recorded as a new live recording next to this one, and return that
        recording as a new session whose ``live`` controls the VM (pause,
        resume, checkpoint now, console) and whose ``path`` says where it is
        recorded. Works in any session, saved or live, and on the returned one
        too (it chains). The new session is the caller's to close (that stops
        its VM); closing this session closes it too. Sync, blocking (seconds:
        QEMU starts and the checkpoint's state loads): call from a thread
        worker; ``progress`` is called from other threads. ``NotFoundError``
        for an unknown id, ``UsageError`` when the checkpoint cannot be
        started (a checkpoint of ``sbtui attach``: the message says why),
        ``QemuError`` when QEMU fails."""
        ...

    def close(self) -> None:
        """Stop every process this session started (replays, gdb, a recorded
        guest, go-live VMs) and release files. Sync, blocking, idempotent,
        never raises."""
        ...


# --------------------------------------------------------------------------
# Helpers shared by every implementation
# --------------------------------------------------------------------------

RFLAGS_BITS: tuple[tuple[int, str], ...] = (
    (0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"),
    (9, "IF"), (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"),
    (18, "AC"), (19, "VIF"), (20, "VIP"), (21, "ID"),
)


def decode_rflags(value: int) -> list[str]:
    """Names of the flags set in ``value``, plus ``IOPL=n`` when non-zero."""
    names = [name for bit, name in RFLAGS_BITS if value >> bit & 1]
    iopl = (value >> 12) & 3
    if iopl:
        names.append(f"IOPL={iopl}")
    return names


CR0_BITS = ((0, "PE"), (1, "MP"), (2, "EM"), (3, "TS"), (4, "ET"), (5, "NE"),
            (16, "WP"), (18, "AM"), (29, "NW"), (30, "CD"), (31, "PG"))
CR4_BITS = ((0, "VME"), (1, "PVI"), (2, "TSD"), (3, "DE"), (4, "PSE"), (5, "PAE"),
            (6, "MCE"), (7, "PGE"), (8, "PCE"), (9, "OSFXSR"), (10, "OSXMMEXCPT"),
            (11, "UMIP"), (12, "LA57"), (16, "FSGSBASE"), (17, "PCIDE"),
            (18, "OSXSAVE"), (20, "SMEP"), (21, "SMAP"), (22, "PKE"))


def decode_bits(value: int, bits: Sequence[tuple[int, str]]) -> list[str]:
    """Names of the bits set in ``value`` (for cr0/cr4)."""
    return [name for bit, name in bits if value >> bit & 1]
