"""Messages the app's workers and engine callbacks post, named for what happened.

Workers run engine calls off the UI loop and report back with these (posting
is thread safe). Messages that can arrive at a high rate carry no payload that
would be lost by merging, and collapse in the queue (``can_replace``): the
handler reads what it has not seen yet from the engine's in-memory state.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

from textual.message import Message

from engine.api import (
    Breakpoint, CheckpointRow, Debugger, DisasmLine, Frame, Marker, Registers, StopEvent,
)


class CheckpointsLoaded(Message):
    """The recording's checkpoints and markers were read (first load)."""

    def __init__(self, rows: list[CheckpointRow], markers: list[Marker], console: str) -> None:
        super().__init__()
        self.rows = rows
        self.markers = markers
        self.console = console


class CheckpointStored(Message):
    """A live recording stored one or more new checkpoints."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, CheckpointStored)


class ConsoleOutput(Message):
    """The guest wrote to its serial console (read it with ``console_text``)."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ConsoleOutput)


class GuestStateChanged(Message):
    """The guest was paused, resumed, or stopped (read ``status()``)."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, GuestStateChanged)


@dataclass(frozen=True)
class HeatLayer:
    """What the heatmap shows: dirty page indices (sorted; repeated once per
    interval that dirtied the page when ``intervals`` > 1) and optional marks."""

    dirty: array
    intervals: int = 1
    zero: array | None = None
    duplicate: array | None = None
    label: str = ""


class PagesLoaded(Message):
    """Dirty pages for the selected checkpoint (or range) were read."""

    def __init__(self, key: tuple, layer: HeatLayer) -> None:
        super().__init__()
        self.key = key
        self.layer = layer


class ReplayProgressed(Message):
    """A long replay operation (restore, seek, reverse) made progress."""

    def __init__(self, phase: str, fraction: float) -> None:
        super().__init__()
        self.phase = phase
        self.fraction = fraction

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ReplayProgressed)


class ReplayStarted(Message):
    """A replay was restored from a checkpoint and is ready under the debugger."""

    def __init__(self, debugger: Debugger) -> None:
        super().__init__()
        self.debugger = debugger


@dataclass(frozen=True)
class DebugSnapshot:
    """Everything the debugger screen shows, read in one worker after a stop."""

    icount: int
    registers: Registers
    disassembly: list[DisasmLine]
    backtrace: list[Frame]
    breakpoints: list[Breakpoint]
    memory_address: int
    memory_physical: bool
    memory: bytes
    memory_error: str = ""
    console: str = ""
    stop: StopEvent | None = None
    symbols: dict[int, str] = field(default_factory=dict)


class ReplayStopped(Message):
    """The replay stopped (after start, a step, a continue, a seek...)."""

    def __init__(self, snapshot: DebugSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class ReplayClosed(Message):
    """The replay's processes were stopped."""
