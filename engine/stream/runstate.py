"""Rewrite the run state a migration stream asks its target to enter.

``savevm`` stores the source's run state in the ``globalstate`` section
(migration/global_state.c: u32 size, then a 32-byte zero-padded name), and an
incoming migration of a paused VM moves the target straight into that state.
A snapshot taken while gdb held the VM stopped says ``debug``, and QEMU 10
aborts on that (``invalid runstate transition: 'inmigrate' -> 'debug'``).
:func:`copy_with_runstate` copies a stream and rewrites that name on the way,
so such a snapshot loads paused, which is what it was.

Streaming: memory stays at one chunk plus the pattern's length. A stream
without a ``globalstate`` section is copied unchanged.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

# FULL section header: idstr (u8 length + name), u32 instance id, u32 version id 1.
_HEADER = b"\x0bglobalstate" + struct.pack(">II", 0, 1)
_NAME_LEN = 32
CHUNK = 1 << 20


def _patch(buf: bytearray, at: int, runstate: bytes) -> None:
    """Rewrite the (size, name) fields that follow the header found at ``at``."""
    field = at + len(_HEADER)
    struct.pack_into(">I", buf, field, len(runstate) + 1)
    buf[field + 4:field + 4 + _NAME_LEN] = runstate.ljust(_NAME_LEN, b"\0")


def copy_with_runstate(src: BinaryIO, dst: BinaryIO, runstate: str = "paused") -> int:
    """Copy ``src`` to ``dst`` with the stream's saved run state set to ``runstate``.

    Returns the number of bytes copied.
    """
    name = runstate.encode()
    if len(name) >= _NAME_LEN:
        raise ValueError(f"run state name too long: {runstate!r}")
    need = len(_HEADER) + 4 + _NAME_LEN       # everything the patch touches
    pending = bytearray()
    done = False
    total = 0
    while True:
        chunk = src.read(CHUNK)
        if chunk:
            pending += chunk
        if not done:
            at = pending.find(_HEADER)
            if at >= 0 and len(pending) - at >= need:
                _patch(pending, at, name)
                done = True
            elif at >= 0 and chunk:
                continue  # the fields straddle the next read: keep it all
        if not chunk:
            dst.write(pending)
            return total + len(pending)
        # Keep a tail that could hold the start of the header.
        keep = 0 if done else min(len(pending), need - 1)
        out = pending[:len(pending) - keep]
        dst.write(out)
        total += len(out)
        del pending[:len(pending) - keep]
