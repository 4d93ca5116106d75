"""A reader for QEMU 10's record/replay log (``replay.log``), version 0xe0200c.

:func:`scan` walks the log's events and adds up the instructions it records,
which gives the instruction count at which the recording ends (also when the
guest powered off and nobody could ask QEMU), and whether the log is
complete (it ends with ``EVENT_END`` and carries its version word).

The format (QEMU 10.0: replay/replay-internal.h, replay*.c): a 12-byte
header (big-endian u32 version, written only when QEMU exits, and a u64),
then events, each one byte of kind followed by its data, integers
big-endian, arrays as a u32 length and the bytes:

* ``INSTRUCTION`` (0): u32 instructions executed since the previous event;
* ``INTERRUPT`` (1), ``EXCEPTION`` (2), ``SHUTDOWN + cause`` (10..21),
  ``CHECKPOINT + n`` (30..38), ``END`` (39): no data;
* ``ASYNC + kind`` (3..9): BH and BH_ONESHOT and BLOCK a u64 id; CHAR_READ a
  u8 device and an array; NET a u8 device, u32 flags, array; INPUT_SYNC
  nothing; INPUT a keyboard/mouse event (refused here: the machines sbtui
  records have no input devices);
* ``CHAR_WRITE`` (22): u32 result, u32 offset; ``CHAR_READ_ALL`` (23): an
  array; ``CHAR_READ_ALL_ERROR`` (24): u32; ``RANDOM`` (27): u32, array;
* ``CLOCK + kind`` (28, 29): u64 value; audio (25, 26) is refused.

Everything read is untrusted: lengths are bounds-checked against the file,
and an unknown event raises :class:`~engine.errors.RecordingError` naming its
offset.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from engine.errors import RecordingError

VERSION = 0xE0200C
HEADER = 12

EVENT_INSTRUCTION = 0
EVENT_INTERRUPT = 1
EVENT_EXCEPTION = 2
EVENT_ASYNC = 3
ASYNC_BH, ASYNC_BH_ONESHOT, ASYNC_INPUT, ASYNC_INPUT_SYNC, ASYNC_CHAR_READ, ASYNC_BLOCK, \
    ASYNC_NET = range(7)
EVENT_SHUTDOWN = 10
EVENT_SHUTDOWN_LAST = 21
EVENT_CHAR_WRITE = 22
EVENT_CHAR_READ_ALL = 23
EVENT_CHAR_READ_ALL_ERROR = 24
EVENT_AUDIO_OUT = 25
EVENT_AUDIO_IN = 26
EVENT_RANDOM = 27
EVENT_CLOCK = 28
EVENT_CLOCK_LAST = 29
EVENT_CHECKPOINT = 30
EVENT_CHECKPOINT_LAST = 38
EVENT_END = 39
SHUTDOWN_CAUSES = ("none", "host-error", "host-qmp-quit", "host-qmp-system-reset", "host-signal",
                   "host-ui", "guest-shutdown", "guest-reset", "guest-panic", "subsystem-reset",
                   "snapshot-load")


@dataclass(frozen=True)
class LogScan:
    instructions: int          # instructions recorded up to the last complete event
    events: int
    checkpoints: int           # CHECKPOINT events: a turn of QEMU's loops each (clock warps)
    complete: bool             # EVENT_END seen and the version word written
    finalized: bool            # the version word is there (QEMU exited normally)
    shutdown: str | None       # the first shutdown cause recorded, if any
    bytes_scanned: int


class _Truncated(Exception):
    pass


def scan(path: str | os.PathLike) -> LogScan:
    """Walk the log at ``path``; a log still being written scans up to its last whole event."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RecordingError(f"{path}: cannot read the replay log: {err}") from err
    if len(data) < HEADER:
        raise RecordingError(f"{path}: not a replay log ({len(data)} bytes, shorter than its header)")
    version = struct.unpack_from(">I", data, 0)[0]
    if version not in (0, VERSION):
        raise RecordingError(f"{path}: replay log version {version:#x}; this sbtui reads "
                             f"{VERSION:#x} (QEMU 10)")
    pos = HEADER
    end = len(data)
    instructions = events = checkpoints = 0
    shutdown = None
    ended = False
    u32 = struct.Struct(">I").unpack_from

    def need(n: int) -> None:
        if pos + n > end:
            raise _Truncated

    try:
        while pos < end:
            start = pos
            kind = data[pos]
            pos += 1
            if kind == EVENT_INSTRUCTION:
                need(4)
                n = u32(data, pos)[0]
                pos += 4
                instructions += n
            elif EVENT_CHECKPOINT <= kind <= EVENT_CHECKPOINT_LAST:
                checkpoints += 1
            elif kind in (EVENT_INTERRUPT, EVENT_EXCEPTION):
                pass
            elif EVENT_SHUTDOWN <= kind <= EVENT_SHUTDOWN_LAST:
                if shutdown is None:
                    cause = kind - EVENT_SHUTDOWN
                    shutdown = SHUTDOWN_CAUSES[cause] if cause < len(SHUTDOWN_CAUSES) else str(cause)
            elif kind == EVENT_END:
                ended = True
                events += 1
                break
            elif EVENT_ASYNC <= kind < EVENT_SHUTDOWN:
                sub = kind - EVENT_ASYNC
                if sub in (ASYNC_BH, ASYNC_BH_ONESHOT, ASYNC_BLOCK):
                    need(8)
                    pos += 8
                elif sub == ASYNC_INPUT_SYNC:
                    pass
                elif sub == ASYNC_CHAR_READ:
                    need(1 + 4)
                    size = u32(data, pos + 1)[0]
                    pos += 5
                    need(size)
                    pos += size
                elif sub == ASYNC_NET:
                    need(1 + 4 + 4)
                    size = u32(data, pos + 5)[0]
                    pos += 9
                    need(size)
                    pos += size
                else:
                    raise RecordingError(f"{path}: offset {start}: input-device events are not "
                                         "read by this scanner")
            elif kind == EVENT_CHAR_WRITE:
                need(8)
                pos += 8
            elif kind == EVENT_CHAR_READ_ALL:
                need(4)
                size = u32(data, pos)[0]
                pos += 4
                need(size)
                pos += size
            elif kind == EVENT_CHAR_READ_ALL_ERROR:
                need(4)
                pos += 4
            elif kind == EVENT_RANDOM:
                need(8)
                size = u32(data, pos + 4)[0]
                pos += 8
                need(size)
                pos += size
            elif EVENT_CLOCK <= kind <= EVENT_CLOCK_LAST:
                need(8)
                pos += 8
            else:
                raise RecordingError(f"{path}: offset {start}: unknown replay event {kind} "
                                     "(audio devices, or a log of another QEMU version)")
            events += 1
    except _Truncated:
        pos = start   # a torn last event: everything before it counts
    return LogScan(instructions=instructions, events=events, checkpoints=checkpoints,
                   complete=ended and version == VERSION, finalized=version == VERSION, shutdown=shutdown, bytes_scanned=pos)
