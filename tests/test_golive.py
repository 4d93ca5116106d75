"""Going live: a normal VM started from a checkpoint of a real recording.

The guest must carry on from the checkpoint (memchurn printing its rounds
deterministically, as it did in the recording), the state must have lost exactly its
``replay`` section on the way, and the VM must be gone afterwards.

Recording the new run (``--record``, :class:`engine.golive.GoLiveRecorder`):
the console carries on and takes input, the new live recording gets
checkpoints and names its source, ``sbtui golive`` starts from one of its
checkpoints again (chains); the same from a checkpoint of a live recording
(``LiveRecorder`` on the tiny guest, which answers each console byte).
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil

import pytest

from engine.qemu import MachineSpec
from engine.recording.format import Recording
from engine.recording.live import LiveRecorder
from engine.golive import GoLiveRecorder
from engine.recording.format import CheckpointEntry, Manifest
from engine.session import RecordingSession
from engine.stream.migration import describe
from engine.stream.sections import copy_without
from test_recording_support import sbtui_run, tagged_qemus
from tinyguest import build_tinyguest

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


def kernel_free(data: bytes) -> list[bytes]:
    """Console lines without the kernel's timestamped ones (their times differ live)."""
    return [ln for ln in data.replace(b"\r", b"").split(b"\n") if ln and not ln.startswith(b"[")]


def test_golive_record_carries_on_records_and_chains(demo_recording, tmp_path):
    rec = Recording.open(demo_recording)
    cps = rec.checkpoints()
    cp = cps[len(cps) // 2]
    new = tmp_path / "branch"
    with tagged_qemus() as tag:
        out = sbtui_run("golive", str(demo_recording), "--from", str(cp.index), "--record", str(new),
                        "--interval", "0.5", "--duration", "60", tag=tag, timeout=180)
    assert out.returncode == 0, out.stderr.decode()
    assert f"recorded into {new}".encode() in out.stderr
    # the guest carried on from the checkpoint: memchurn's rounds, then its end
    expected = kernel_free(rec.console_bytes()[cp.console_offset:])
    assert any(b"sum=" in ln for ln in expected)
    assert kernel_free(out.stdout) == expected
    # ...and that is what the new recording's console holds
    branch = Recording.open(new)
    assert kernel_free(branch.console_bytes()) == expected
    m = json.loads((new / "recording.json").read_text())
    assert m["kind"] == "live" and m["status"] == "complete", m
    origin = m["source"]["golive"]
    assert origin["recording"] == str(demo_recording.absolute())
    assert (origin["checkpoint"], origin["store_id"], origin["icount"]) == (cp.index, cp.store_id, cp.icount)
    assert m["spec"]["icount_shift"] == rec.manifest.spec["icount_shift"]   # the state needs it
    got = branch.checkpoints()
    assert got and all(c.origin == "live" for c in got)
    assert set(branch.manifest.guest) >= {"kernel", "initrd", "system_map"}
    # the new recording opens on its own, and its checkpoints go live again (chains)
    rows = sbtui_run("checkpoints", str(new), "--json")
    assert rows.returncode == 0 and len(json.loads(rows.stdout)["checkpoints"]) == len(got)
    opened = RecordingSession(Recording.open(new))      # what `sbtui open NEWREC` shows
    try:
        assert len(opened.recording.checkpoints()) == len(got) and opened.live is None
        assert opened.recording.machine.ram_bytes == 128 << 20
        assert "memchurn: done" in opened.recording.console_text()
    finally:
        opened.close()
    with tagged_qemus() as tag:
        again = sbtui_run("golive", str(new), "--from", "0", "--duration", "60", tag=tag, timeout=180)
    assert again.returncode == 0, again.stderr.decode()
    assert b"memchurn: done rounds=3" in again.stdout


async def test_golive_recorder_takes_console_input_and_checkpoints_now(demo_recording, tmp_path):
    rec = Recording.open(demo_recording)
    cp = rec.checkpoints()[0]
    with tagged_qemus():
        job = GoLiveRecorder(rec, cp, tmp_path / "branch", interval=30.0, duration=120.0)
        run = asyncio.ensure_future(job.run())
        try:
            while job.vm is None:
                assert not run.done(), run.result()
                await asyncio.sleep(0.05)
            # at once: memchurn's rounds end in a power-off a few seconds from here
            entry = await job.checkpoint_now()
            assert entry.origin == "live" and job.rec.checkpoint(entry.index) == entry
            # no shell reads the console while memchurn runs, but the guest's tty does:
            # what is typed comes back as its echo
            await job.vm.console.wait_for("memchurn: round", timeout=60)
            await job.send_console("typed-live-1\r")
            await job.vm.console.wait_for("typed-live-1", timeout=30)
        finally:
            job.stop()
            summary = await run
    assert summary.status in ("interrupted", "complete") and summary.checkpoints >= 2
    assert b"typed-live-1" in Recording.open(tmp_path / "branch").console_bytes()


async def test_golive_from_a_live_recording_checkpoint(tmp_path):
    kernel = str(build_tinyguest(tmp_path / "tiny"))
    source = tmp_path / "live"
    with tagged_qemus():
        recorder = LiveRecorder(source, MachineSpec(memory_mib=64, kernel=kernel), interval=0.5,
                                duration=3.0)
        summary = await recorder.run()
        assert summary.status == "complete" and summary.checkpoints >= 2
        rec = Recording.open(source)
        assert rec.manifest.spec.get("icount_shift") is None    # a live recording: no -icount
        cp = rec.checkpoints()[-1]
        job = GoLiveRecorder(rec, cp, tmp_path / "branch", interval=0.5, duration=60.0)
        run = asyncio.ensure_future(job.run())
        try:
            while job.cp is None:      # started: vm is set before the checkpointer
                assert not run.done(), run.result()
                await asyncio.sleep(0.05)
            # the tiny guest answers each byte: it runs, and its console is ours
            await job.send_console("z")
            await job.vm.console.wait_for("got z", timeout=30)
            while len(job.rec.checkpoints()) < 2:
                assert not run.done(), run.result()
                await asyncio.sleep(0.1)
        finally:
            job.stop()
            await run
        branch = Recording.open(tmp_path / "branch")
        assert branch.manifest.source["golive"]["recording"] == str(source.absolute())
        assert branch.manifest.source["golive"]["kind"] == "live"
        # chains: a checkpoint of the branch goes live once more
        shutil.rmtree(source)
        job2 = GoLiveRecorder(branch, branch.checkpoints()[-1], tmp_path / "branch2", interval=5.0)
        run2 = asyncio.ensure_future(job2.run())
        try:
            while job2.vm is None:
                assert not run2.done(), run2.result()
                await asyncio.sleep(0.05)
            await job2.send_console("y")
            await job2.vm.console.wait_for("got y", timeout=30)
        finally:
            job2.stop()
            await run2
    assert b"got y" in Recording.open(tmp_path / "branch2").console_bytes()


def test_golive_record_refuses_an_existing_path_and_a_bad_checkpoint(demo_recording, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    out = sbtui_run("golive", str(demo_recording), "--from", "1", "--record", str(taken))
    assert out.returncode == 2 and b"exists" in out.stderr and str(taken).encode() in out.stderr
    out = sbtui_run("golive", str(demo_recording), "--from", "999", "--record", str(tmp_path / "new"))
    assert out.returncode == 2 and b"no checkpoint '999'" in out.stderr
    assert not (tmp_path / "new").exists()
    out = sbtui_run("golive", str(demo_recording), "--from", "1", "--interval", "1")
    assert out.returncode == 2 and b"--interval needs --record" in out.stderr


def test_golive_says_why_a_checkpoint_of_sbtui_attach_cannot_go_live(tmp_path):
    # what sbtui attach writes: the machine is the user's, only its size is known
    rec = Recording.create(tmp_path / "attached", Manifest(
        kind="live", spec={"memory_mib": 64}, qemu_version="10.0.2", interval_s=1.0, created=0.0,
        source={"qmp_socket": "/run/user/qmp.sock", "pid": 1234}))
    rec.append_checkpoint(CheckpointEntry(index=0, store_id="0000", icount=0, wall_time=0.0,
                                          guest_time_ns=0, downtime_ms=1.0, origin="live"))
    for extra in ((), ("--record", str(tmp_path / "new"))):
        out = sbtui_run("golive", str(rec.path), "--from", "0", *extra)
        assert out.returncode == 2, out.stderr
        assert b"sbtui attach" in out.stderr and b"-incoming defer" in out.stderr
    assert not (tmp_path / "new").exists()
