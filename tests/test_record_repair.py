"""The recorder keeps every checkpoint consistent with the deterministic replay.

A record-mode snapshot can hold RAM that the replay does not reproduce at its
instruction count (seen on this machine: the snapshot reported at icount N
held the effect of instruction N+1). Here one checkpoint's RAM is changed on
its way into the store (the recorder's fault-injection hook), so the proof of
the interval before it diverges; the recorder must replace that checkpoint by
the replay's own state, and the finished recording must verify everywhere.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import BinaryIO

import pytest

from engine.qemu import MachineSpec
from engine.recording.format import Recording
from engine.recording.recorder import Recorder
from engine.stream.migration import split_stream
from test_recording_support import sbtui_run, tagged_qemus

pytestmark = pytest.mark.qemu

BAD = 2


def change_a_page(indices: set[int]):
    """A ``stream_hook`` that flips one byte of the first data page of pc.ram in
    the checkpoints in ``indices`` (the stream stays well-formed)."""

    def hook(index: int, src: BinaryIO) -> BinaryIO:
        if index not in indices:
            return src
        data = bytearray(src.read())
        page = next(r.data for r in split_stream(io.BytesIO(bytes(data))).pages()
                    if r.data is not None and r.block == "pc.ram")
        at = data.find(page)
        assert at > 0
        data[at] ^= 0xFF
        return io.BytesIO(bytes(data))
    return hook


def test_a_checkpoint_that_differs_from_the_replay_is_replaced(demo_guest, tmp_path):
    path = tmp_path / "rec"
    spec = MachineSpec(memory_mib=128, kernel=str(demo_guest.kernel), initrd=str(demo_guest.initrd),
                       append=demo_guest.append_for("memchurn", duration=600))
    with tagged_qemus() as tag:
        summary = asyncio.run(Recorder(path, spec, interval=2.0, duration=9.0,
                                       stream_hook=change_a_page({BAD})).run())
        assert summary.status == "complete"
        rec = Recording.open(path)
        cps = rec.checkpoints()
        assert cps[BAD].origin == "rebuilt"
        # The proof of the interval before it says what happened.
        assert f"checkpoint {BAD} replaced" in cps[BAD - 1].detail
        assert "differed: 1 of" in cps[BAD - 1].detail
        assert all(cp.proof == "verified" for cp in cps), [(c.index, c.proof, c.detail) for c in cps]
        out = sbtui_run("verify", str(path), "--json", "--jobs", "2",
                        "--interval", str(BAD - 1), "--interval", str(BAD), tag=tag)
    assert out.returncode == 0, out.stderr.decode()
    assert json.loads(out.stdout)["failed"] == []
