"""Which bytes of a recording's replay log one interval needs, and a sparse copy of them.

QEMU saves its replay position with every snapshot: the ``replay`` device
section (replay/replay-snapshot.c, ``vmstate_replay`` version 3) holds
``file_offset``, the log position at the moment of the snapshot, and a
replay that loads the snapshot ``fseek``s there (``replay_post_load``). So
interval k reads the log from checkpoint k's offset to checkpoint k+1's, and
a worker can be given just those bytes, written at their own offsets into a
sparse file: holes cost nothing and are never read.

What is shipped for interval k (:func:`slice_ranges`):

* the 12-byte header plus the first :data:`HEAD` bytes, which a replay QEMU
  reads when it starts (before the checkpoint is loaded and the position
  moves); the recorder's checkpoint 0 sits about 200 bytes in;
* ``[offset(k), offset(k+1) + MARGIN)``: the interval's events, plus a margin
  because QEMU reads the next event's header as soon as it finishes one, and
  stdio reads ahead; for the last interval everything to the end of the log.

Promises:

* :func:`replay_state` parses the section out of a migration stream with the
  stream codec (:func:`engine.stream.migration.describe`), and checks that its
  ``current_icount`` is the checkpoint's instruction count (seen equal in
  every snapshot, qemu-facts.md). :func:`log_offsets` reads the same section
  out of the store's skeleton of each checkpoint (the non-page bytes, a few
  hundred KB) instead of exporting whole streams, and falls back to the
  stream when the skeleton does not hold it in the expected form.
* A sparse copy (:func:`write_sparse`) has the log's full size and the
  shipped bytes at their offsets; the version word is set even when the
  recording's log lacks it (QEMU writes it only at exit).
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from engine.errors import RecordingError, StreamError
from engine.recording.format import REPLAY_LOG_HEADER, REPLAY_LOG_VERSION, CheckpointEntry, Recording

HEAD = 64 * 1024
MARGIN = 64 * 1024

# vmstate_replay v3 fields, big-endian as VMSTATE writes them: cached_clock[2]
# (int64), current_icount (u64), instruction_count (i32), current_event (u32),
# data_kind (u32), has_unread_data (bool), file_offset, block_request_id,
# read_event_id (u64).
_BODY = struct.Struct(">qqQiIIBQQQ")
_IDSTR = b"replay"
_VERSION = 3
# FULL section header: type, be32 section id, u8 length + idstr, be32 instance, be32 version.
_HEADER_LEN = 1 + 4 + 1 + len(_IDSTR) + 4 + 4
_PATTERN = bytes([len(_IDSTR)]) + _IDSTR + struct.pack(">II", 0, _VERSION)


@dataclass(frozen=True)
class ReplayState:
    """QEMU's saved replay position (the fields sbtui uses)."""

    current_icount: int
    file_offset: int
    data_kind: int
    has_unread_data: bool


def _parse_body(body: bytes) -> ReplayState:
    (_c0, _c1, icount, _ic, _ev, kind, unread, offset, _blk, _read) = _BODY.unpack(body[:_BODY.size])
    return ReplayState(current_icount=icount, file_offset=offset, data_kind=kind,
                       has_unread_data=bool(unread))


def replay_state(stream: bytes) -> ReplayState:
    """The ``replay`` section of a migration stream (a checkpoint's state)."""
    from engine.stream.migration import describe
    for info in describe(io.BytesIO(stream)):
        if info.type == "FULL" and info.idstr == "replay":
            if info.version != _VERSION:
                raise StreamError(f"replay section version {info.version}, this sbtui reads "
                                  f"version {_VERSION}", offset=info.offset)
            start = info.offset + _HEADER_LEN
            return _parse_body(stream[start:start + _BODY.size])
    raise StreamError("the stream has no 'replay' section (not taken in record or replay mode)")


def _state_from_skeleton(skeleton: bytes) -> ReplayState | None:
    """The section found in a store skeleton's verbatim device-state bytes, or None."""
    pos = skeleton.find(_PATTERN)
    while pos >= 0:
        head = pos - 5
        body = pos + len(_PATTERN)
        foot = body + _BODY.size
        if (head >= 0 and skeleton[head] == 0x04 and foot + 5 <= len(skeleton)
                and skeleton[foot] == 0x7E and skeleton[foot + 1:foot + 5] == skeleton[head + 1:head + 5]):
            return _parse_body(skeleton[body:foot])
        pos = skeleton.find(_PATTERN, pos + 1)
    return None


def checkpoint_state(rec: Recording, cp: CheckpointEntry) -> ReplayState:
    """Checkpoint ``cp``'s replay position, read from the store."""
    store = rec.store
    state = None
    try:
        # The skeleton is the stream minus its pages: parsing it costs
        # milliseconds, exporting the whole stream a few hundred.
        from engine.store import manifest as mf
        state = _state_from_skeleton(mf.read_skeleton(store._manifest(cp.store_id)))
    except (AttributeError, ImportError):
        state = None
    if state is None or state.current_icount != cp.icount:
        buf = io.BytesIO()
        store.export_stream(cp.store_id, buf)
        state = replay_state(buf.getvalue())
    if state.current_icount != cp.icount:
        raise RecordingError(f"{rec.path}: checkpoint {cp.index} ({cp.store_id}) holds replay "
                             f"position icount {state.current_icount}, but the recording says "
                             f"{cp.icount}")
    return state


def log_offsets(rec: Recording) -> dict[int, int]:
    """Replay-log offset of every checkpoint, by interval index."""
    return {cp.index: checkpoint_state(rec, cp).file_offset for cp in rec.checkpoints()}


def slice_ranges(offsets: dict[int, int], index: int, log_size: int) -> list[tuple[int, int]]:
    """Byte ranges ``[start, end)`` of the log that interval ``index`` reads."""
    start = offsets[index]
    later = [offsets[i] for i in offsets if i > index]
    end = log_size if not later else min(min(later) + MARGIN, log_size)
    if not REPLAY_LOG_HEADER <= start <= log_size:
        raise RecordingError(f"checkpoint {index}'s replay-log offset {start} lies outside the "
                             f"log ({log_size} bytes)")
    ranges = [(0, min(HEAD, log_size)), (start, max(start, end))]
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for a, b in ranges:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        elif b > a:
            merged.append((a, b))
    return merged


def read_pieces(log_path: Path, ranges: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
    """The bytes of ``ranges``, with the version word set in the header."""
    pieces = []
    with open(log_path, "rb") as f:
        for a, b in ranges:
            f.seek(a)
            data = f.read(b - a)
            if len(data) != b - a:
                raise RecordingError(f"{log_path}: the replay log ends at {a + len(data)}, "
                                     f"expected at least {b} bytes")
            if a == 0 and len(data) >= 4:
                data = REPLAY_LOG_VERSION.to_bytes(4, "big") + data[4:]
            pieces.append((a, data))
    return pieces


def write_sparse(path: Path, pieces: list[tuple[int, bytes]], size: int) -> None:
    """A file of ``size`` bytes holding ``pieces`` at their offsets, holes elsewhere."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        for offset, data in pieces:
            if offset < 0 or offset + len(data) > size:
                raise RecordingError(f"a replay-log piece at {offset} (+{len(data)}) lies "
                                     f"outside the log's {size} bytes")
            os.pwrite(fd, data, offset)
    finally:
        os.close(fd)
