"""copy_with_runstate: the saved run state is rewritten wherever chunk borders fall."""

from __future__ import annotations

import io
import struct

import pytest

from engine.stream import runstate
from engine.stream.runstate import _HEADER, copy_with_runstate


def _stream(state: bytes) -> bytes:
    section = _HEADER + struct.pack(">I", len(state) + 1) + state.ljust(32, b"\0") + b"\x00\x01"
    return b"QEVM" + bytes(range(200)) + section + b"\x7e" + bytes(300)


@pytest.mark.parametrize("chunk", [1, 3, 7, 16, 64, 1 << 20])
def test_debug_becomes_paused_across_chunk_borders(monkeypatch, chunk):
    monkeypatch.setattr(runstate, "CHUNK", chunk)
    out = io.BytesIO()
    n = copy_with_runstate(io.BytesIO(_stream(b"debug")), out)
    assert out.getvalue() == _stream(b"paused")
    assert n == len(_stream(b"paused"))


def test_a_stream_without_global_state_is_copied_unchanged(monkeypatch):
    monkeypatch.setattr(runstate, "CHUNK", 5)
    data = b"QEVM" + bytes(range(256)) * 3
    out = io.BytesIO()
    assert copy_with_runstate(io.BytesIO(data), out) == len(data)
    assert out.getvalue() == data
