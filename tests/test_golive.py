"""Going live: a normal VM started from a checkpoint of a real recording.

The guest must carry on from the checkpoint (memchurn printing its rounds
deterministically, as it did in the recording), the state must have lost exactly its
``replay`` section on the way, and the VM must be gone afterwards.
"""

from __future__ import annotations

import io

import pytest

from engine.recording.format import Recording
from engine.stream.migration import describe
from engine.stream.sections import copy_without
from test_recording_support import sbtui_run, tagged_qemus

pytestmark = pytest.mark.qemu


def test_copy_without_drops_only_the_replay_section(demo_recording):
    rec = Recording.open(demo_recording)
    raw = io.BytesIO()
    rec.store.export_stream(rec.checkpoints()[1].store_id, raw)
    raw.seek(0)
    before = describe(raw)
    raw.seek(0)
    out = io.BytesIO()
    assert copy_without(raw, out, ["replay"]) == ["replay"]
    out.seek(0)
    after = describe(out)
    assert [s.idstr for s in before if s.idstr != "replay"] == [s.idstr for s in after]
    assert len(raw.getvalue()) - len(out.getvalue()) == next(s.length for s in before
                                                             if s.idstr == "replay")


def test_golive_carries_on_from_a_checkpoint(demo_recording):
    rec = Recording.open(demo_recording)
    cps = rec.checkpoints()
    total = len(rec.console_bytes())
    cp = [c for c in cps if c.console_offset <= total - 400][-1]
    with tagged_qemus() as tag:
        out = sbtui_run("golive", str(demo_recording), "--from", str(cp.index),
                        "--duration", "40", tag=tag, timeout=120)
    assert out.returncode == 0, out.stderr.decode()

    def lines(data: bytes) -> list[bytes]:
        # Kernel lines carry timestamps, which differ once the VM runs freely.
        return [ln for ln in data.replace(b"\r", b"").split(b"\n") if ln and not ln.startswith(b"[")]

    # memchurn is deterministic: from the checkpoint on, the live VM computes
    # and prints what the recorded guest did (same phases, same checksums).
    expected = lines(rec.console_bytes()[cp.console_offset:])
    got = lines(out.stdout)
    assert any(b"sum=" in ln for ln in expected)
    assert got == expected


def test_golive_names_a_missing_checkpoint(demo_recording):
    out = sbtui_run("golive", str(demo_recording), "--from", "999")
    assert out.returncode == 2 and b"no checkpoint '999'" in out.stderr
