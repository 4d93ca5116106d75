"""Recording the demo guest (memchurn) end to end, once per module.

The guest boots, runs memchurn for a few guest seconds and powers off, which
ends the recording (so a slow, loaded machine only makes it longer). The
recording runs with checkpoint proofs in the background and with one
checkpoint deliberately stored so that it does not restore where the
recording says (``shift_icount``: its saved instruction counter is moved).
The tests then check what the recorder promises: checkpoints every interval
with increasing instruction counts, the console captured, markers placed at
the exact instruction count (checked against a replay), the bad checkpoint
detected and rebuilt so that every checkpoint restores, and the reading verbs
and the packed file on the real thing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from engine.guest import READY_LINE_PREFIX
from engine.qemu import MachineSpec
from engine.recording.events import CheckpointStored, ProofFinished
from engine.recording.format import Recording
from engine.recording.recorder import DEFAULT_ICOUNT_SHIFT, Recorder
from test_recording_support import sbtui_run, shift_icount, tagged_qemus

pytestmark = pytest.mark.qemu

INTERVAL = 4.0
CHURN_S = 20       # guest seconds of memchurn after boot; then the guest powers off
DURATION = 180.0   # only a safety net: the guest ends the recording
BAD = 1            # the checkpoint stored so that it does not restore


@dataclasses.dataclass
class Demo:
    path: Path
    summary: object
    events: list


@pytest.fixture(scope="module")
def demo(demo_guest, tmp_path_factory) -> Demo:
    path = tmp_path_factory.mktemp("record-demo") / "memchurn"
    spec = MachineSpec(memory_mib=128, kernel=str(demo_guest.kernel),
                       initrd=str(demo_guest.initrd),
                       append=demo_guest.append_for("memchurn", duration=CHURN_S))
    events: list = []
    with tagged_qemus():
        summary = asyncio.run(Recorder(path, spec, interval=INTERVAL, duration=DURATION,
                                       guest_info={"workload": "memchurn"},
                                       on_event=events.append,
                                       stream_hook=shift_icount({BAD})).run())
    return Demo(path, summary, events)


def test_checkpoints_every_interval_with_increasing_icounts(demo):
    s = demo.summary
    rec = Recording.open(demo.path)
    m = rec.manifest
    assert s.status == "complete" == m.status and m.error is None
    cps = rec.checkpoints()
    assert len(cps) == s.checkpoints
    assert len(cps) >= BAD + 2     # boot alone takes several intervals
    assert [c.index for c in cps] == list(range(len(cps)))
    assert cps[0].icount == 0
    icounts = [c.icount for c in cps]
    assert icounts == sorted(set(icounts)), "instruction counts must strictly increase"
    assert m.end_icount > icounts[-1]     # from the log: the guest powered off
    assert rec.log_path.stat().st_size > 0
    walls = [c.wall_time for c in cps]
    gaps = [b - a for a, b in zip(walls, walls[1:])]
    assert all(INTERVAL * 0.8 < g < INTERVAL * 2.5 for g in gaps), gaps
    assert all(c.downtime_ms > 0 for c in cps[1:])
    assert s.downtime_max_ms < 2000
    # Every checkpoint is in the store, the stored events agree with the log.
    stored = [e for e in demo.events if isinstance(e, CheckpointStored)]
    assert sorted(e.entry.index for e in stored) == list(range(len(cps)))
    assert s.max_lag <= 2
    # The manifest describes the machine and how to replay it.
    assert m.spec["rr"] == "record" and m.spec["icount_shift"] == DEFAULT_ICOUNT_SHIFT
    assert m.spec["machine_options"] == ["hpet=off"] and m.spec["machine"] == "q35"
    assert any("rr=replay" in a for a in m.replay_argv)
    assert m.qemu_version.startswith("10.") and m.interval_s == INTERVAL
    for role in ("kernel", "initrd"):
        g = m.guest[role]
        assert not Path(g["path"]).is_absolute()
        assert hashlib.sha256((demo.path / g["path"]).read_bytes()).hexdigest() == g["sha256"]
    assert m.stats["downtime_ms_median"] > 0


def test_console_is_captured_with_offsets(demo):
    rec = Recording.open(demo.path)
    console = rec.console_bytes()
    assert f"{READY_LINE_PREFIX} workload=memchurn".encode() in console
    assert b"memchurn: round 0 phase fill" in console
    offsets = [c.console_offset for c in rec.checkpoints()]
    assert offsets == sorted(offsets) and offsets[-1] <= len(console)
    assert sbtui_run("console", str(demo.path)).stdout == console


def test_markers_are_captured_with_exact_icounts(demo):
    rec = Recording.open(demo.path)
    markers = rec.markers()
    texts = [m.text for m in markers]
    assert texts[0] == "guest-ready workload=memchurn"
    assert "memchurn round=0 phase=fill" in texts and "memchurn round=0 phase=scan" in texts
    cps = rec.checkpoints()
    # Between checkpoints (a guest that computes, never idles) every marker is
    # exact; after the last one no later checkpoint confirms the clock.
    inside = [m for m in markers if m.icount <= cps[-1].icount]
    assert len(inside) >= 5 and all(m.exact for m in inside), [m for m in inside if not m.exact][:3]
    assert not any(m.exact for m in markers[len(inside):])
    icounts = [m.icount for m in markers]
    assert icounts == sorted(icounts)
    assert 0 < icounts[0] and icounts[-1] <= rec.manifest.end_icount
    # Guest time and instruction count agree the way the checkpoints say.
    shift = rec.manifest.spec["icount_shift"]
    for m in inside:
        k = max((c for c in cps if c.icount <= m.icount), key=lambda c: c.index)
        assert m.guest_time_ns - (m.icount << shift) == k.guest_time_ns - (k.icount << shift)
    data = json.loads(sbtui_run("markers", str(demo.path), "--json").stdout)
    assert [d["icount"] for d in data] == icounts


async def test_a_marker_is_where_a_replay_writes_it(demo):
    """Replay to the marker's instruction count: its line is not written yet; a few
    hundred instructions later the line is complete on the replay's debug port."""
    from engine.replay.session import ReplaySession
    rec = Recording.open(demo.path)
    m = next(m for m in rec.markers() if m.text == "memchurn round=0 phase=zero")
    start = max((c for c in rec.checkpoints() if c.icount <= m.icount), key=lambda c: c.index)
    line = f"@{m.guest_time_ns:016x} {m.text}\n".encode()
    with tagged_qemus():
        async with ReplaySession(rec, start) as rs:
            debugcon = rs.workdir / "debugcon.out"
            await rs.run_to(m.icount)
            at_mark = debugcon.read_bytes()
            await rs.run_to(m.icount + 40 * len(line))
            after = debugcon.read_bytes()
    assert at_mark.endswith(b"\n") and line not in at_mark
    assert after.endswith(line), after[-200:]


async def test_unrestorable_checkpoint_was_rebuilt_and_every_checkpoint_restores(demo):
    from engine.replay.session import ReplaySession
    rec = Recording.open(demo.path)
    cps = rec.checkpoints()
    proofs = [e for e in demo.events if isinstance(e, ProofFinished)]
    assert sorted({p.index for p in proofs}) == [c.index for c in cps], "every interval proven"
    assert any(p.index == BAD and p.rebuilt for p in proofs)
    bad = cps[BAD]
    assert bad.origin == "rebuilt"
    assert all(c.proof == "verified" for c in cps), [(c.index, c.proof, c.detail) for c in cps]
    assert demo.summary.proofs["failed"] == 0 and demo.summary.proofs["rebuilt"] >= 1
    # Restore each checkpoint: the replay stands exactly at its instruction count.
    with tagged_qemus():
        for cp in cps:
            async with ReplaySession(rec, cp) as rs:
                assert await rs.icount() == cp.icount


def test_checkpoints_verb_and_the_packed_recording(demo, tmp_path):
    data = json.loads(sbtui_run("checkpoints", str(demo.path), "--json").stdout)
    rows = data["checkpoints"]
    rec = Recording.open(demo.path)
    assert [r["icount"] for r in rows] == [c.icount for c in rec.checkpoints()]
    for r in rows:
        for key in ("id", "icount", "downtime_ms", "pages_dirty", "pages_new", "stored_bytes"):
            assert r[key] is not None, (key, r)
    assert rows[0]["pages_dirty"] > rows[1]["pages_dirty"] > 0
    assert data["store"]["checkpoints"] >= len(rows)
    packed = tmp_path / "demo.sbtui"
    assert sbtui_run("pack", str(demo.path), "-o", str(packed)).returncode == 0
    env = {"SBTUI_CACHE": str(tmp_path / "cache")}
    with tagged_qemus() as tag:
        res = sbtui_run("verify", str(packed), "--interval", "1", "--json", env=env, tag=tag)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    assert json.loads(res.stdout)["verified"] == 1
