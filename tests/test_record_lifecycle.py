"""The recorder's life cycle on a second, tiny guest: console input recorded and
replayed, Ctrl-C, a QEMU that dies, an exception, a guest that does not boot, a
full disk, bad arguments. Every test proves that no QEMU outlives it.

The guest is the multiboot program of ``tinyguest.py``: it boots in
milliseconds, answers each byte typed on its console with ``got X`` and
powers off on ``q``; its "workload" is console input, unlike the demo guest's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from engine.errors import QemuDiedError, RecordingError
from engine.qemu import MachineSpec
from engine.recording.events import CheckpointStored, CheckpointTaken
from engine.recording import replaylog
from engine.recording.format import REPLAY_LOG_VERSION, Recording
from engine.recording.recorder import Recorder
from test_recording_support import (checkpoint_lines, manifest, sbtui_proc, sbtui_run,
                                    tagged_qemus, wait_until)
from tinyguest import READY, build_tinyguest

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def tiny_kernel(tmp_path_factory) -> str:
    return str(build_tinyguest(tmp_path_factory.mktemp("tinyguest")))


def tiny_spec(kernel: str) -> MachineSpec:
    return MachineSpec(memory_mib=64, kernel=kernel)


async def wait_for(predicate, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


def log_finalized(rec_path: Path) -> bool:
    with open(rec_path / "replay.log", "rb") as f:
        return int.from_bytes(f.read(4), "big") == REPLAY_LOG_VERSION


async def test_second_guest_console_input_is_recorded_and_replays(tiny_kernel, tmp_path):
    """Typed input reaches the guest, is recorded, and a replay reproduces its answers."""
    from engine.replay.session import ReplaySession
    path = tmp_path / "tiny"
    with tagged_qemus():
        rec = Recorder(path, tiny_spec(tiny_kernel), interval=0.5, prove="off")
        task = asyncio.create_task(rec.run())
        await wait_for(lambda: checkpoint_lines(path) >= 2, "two checkpoints", 30)
        await wait_for(lambda: READY.encode() in (path / "console.out").read_bytes(), "ready", 10)
        for ch in "ab":   # one at a time: the guest's UART has no FIFO
            await rec.send_console(ch)
            await wait_for(lambda: f"got {ch}".encode() in (path / "console.out").read_bytes(),
                           "the echo", 10)
        await wait_for(lambda: checkpoint_lines(path) >= 4, "two more checkpoints", 30)
        rec.stop()
        summary = await asyncio.wait_for(task, 60)
    assert summary.status == "interrupted"
    recording = Recording.open(path)
    console = recording.console_bytes()
    assert READY.encode() in console and b"got a" in console and b"got b" in console
    cps = recording.checkpoints()
    assert len(cps) == summary.checkpoints >= 4
    assert [c.index for c in cps] == list(range(len(cps)))
    assert cps[0].icount == 0
    assert all(a.icount <= b.icount for a, b in zip(cps, cps[1:]))
    assert recording.manifest.end_icount >= cps[-1].icount
    assert recording.markers() == []   # this guest writes no sbmark lines
    assert log_finalized(path)
    # A replay from the checkpoint before the input prints the answers by
    # itself: the input is in the log.
    before = max((c for c in cps if c.console_offset <= console.index(b"got a")),
                 key=lambda c: c.index)
    with tagged_qemus():
        async with ReplaySession(recording, before) as rs:
            code = await rs.run_to_end(timeout=60)
            produced = rs.console_bytes()
    assert code == 0
    assert produced == console[before.console_offset:]
    assert b"got a" in produced and b"got b" in produced


def test_ctrl_c_leaves_a_valid_interrupted_recording(tiny_kernel, tmp_path):
    path = tmp_path / "rec"
    with tagged_qemus() as tag:
        proc = sbtui_proc("record", str(path), "--kernel", tiny_kernel, "--memory", "64",
                          "--interval", "0.3", "--prove", "off", "--headless", "--json", tag=tag)
        try:
            wait_until(lambda: checkpoint_lines(path) >= 3 or proc.poll() is not None,
                       "three checkpoints", 60)
            assert proc.poll() is None, proc.stderr.read().decode(errors="replace")
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130, err.decode(errors="replace")
    summary = json.loads(out)
    m = manifest(path)
    assert m["status"] == "interrupted" == summary["status"]
    assert m["end_icount"] is not None and m["error"] is None
    assert summary["checkpoints"] >= 3
    assert b"stopping: no new checkpoints" in err
    assert err.count(b"sbtui record: checkpoint ") == summary["checkpoints"]
    assert log_finalized(path)
    scanned = replaylog.scan(path / "replay.log")
    assert scanned.complete and scanned.instructions == m["end_icount"]
    assert scanned.shutdown == "host-qmp-quit"
    assert not (path / ".reserve").exists()
    rec = Recording.open(path)
    assert rec.checkpoints()[-1].icount <= m["end_icount"]


async def test_qemu_that_dies_gives_a_clear_error_and_keeps_what_was_recorded(tiny_kernel, tmp_path):
    path = tmp_path / "rec"
    with tagged_qemus():
        rec = Recorder(path, tiny_spec(tiny_kernel), interval=0.3, prove="off")
        task = asyncio.create_task(rec.run())
        await wait_for(lambda: checkpoint_lines(path) >= 2, "two checkpoints", 30)
        os.kill(rec.vm.pid, signal.SIGKILL)
        with pytest.raises(QemuDiedError) as info:
            await asyncio.wait_for(task, 60)
    text = str(info.value)
    assert "QEMU died while recording" in text and "exit code -9" in text
    m = manifest(path)
    assert m["status"] == "failed" and "QEMU died" in m["error"]
    kept = Recording.open(path).checkpoints()
    assert len(kept) >= 2
    for cp in kept:   # every kept checkpoint is complete in the store
        assert Recording.open(path).store.checkpoint(cp.store_id).raw_bytes > 0


async def test_an_exception_mid_recording_leaves_no_qemu_and_a_failed_recording(tiny_kernel, tmp_path):
    path = tmp_path / "rec"

    def explode(event):
        if isinstance(event, CheckpointTaken) and event.index == 2:
            raise RuntimeError("boom from a callback")

    with tagged_qemus():
        with pytest.raises(RuntimeError, match="boom"):
            await Recorder(path, tiny_spec(tiny_kernel), interval=0.2, prove="off",
                           on_event=explode).run()
    m = manifest(path)
    assert m["status"] == "failed" and "boom" in m["error"]
    assert len(Recording.open(path).checkpoints()) >= 2


async def test_cancelling_the_recorder_leaves_no_qemu(tiny_kernel, tmp_path):
    path = tmp_path / "rec"
    with tagged_qemus():
        task = asyncio.create_task(Recorder(path, tiny_spec(tiny_kernel), interval=0.2,
                                            prove="off").run())
        await wait_for(lambda: checkpoint_lines(path) >= 2, "two checkpoints", 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert manifest(path)["status"] == "interrupted"


def test_a_guest_that_fails_to_boot_gives_a_clear_error(tmp_path):
    """QEMU refuses the kernel: the error says so with QEMU's own words, nothing is left."""
    path = tmp_path / "rec"
    with tagged_qemus() as tag:
        # An ELF program that is not a kernel ("without PVH ELF Note").
        res = sbtui_run("record", str(path), "--kernel", "/bin/true", "--duration", "5",
                        "--headless", tag=tag, timeout=120)
    err = res.stderr.decode(errors="replace")
    assert res.returncode == 1, err
    assert "sbtui record: error:" in err and "QEMU" in err
    assert "PVH ELF Note" in err            # QEMU's own complaint, from its log
    assert not path.exists()                # nothing was recorded, nothing is left


def test_bad_arguments_exit_2_naming_the_argument(tmp_path, tiny_kernel):
    res = sbtui_run("record", str(tmp_path / "r"), "--kernel", tiny_kernel, "--interval", "0")
    assert res.returncode == 2 and b"--interval" in res.stderr
    res = sbtui_run("record", str(tmp_path / "r"), "--kernel", str(tmp_path / "nope"))
    assert res.returncode == 2 and b"no such file" in res.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    res = sbtui_run("record", str(tmp_path / "full"), "--kernel", tiny_kernel)
    assert res.returncode == 2 and b"not an empty directory" in res.stderr


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str):
    where.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(directory: Path) -> None:
    """Write a file until the file system is full."""
    with open(directory / "filler", "wb") as f:
        chunk = b"\xa5" * (1 << 20)
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC
        with contextlib.suppress(OSError):
            f.close()


async def test_full_disk_stops_with_a_clear_error_and_keeps_the_checkpoints(tiny_kernel, tmp_path):
    with small_tmpfs(tmp_path / "small", "48m") as fs:
        path = fs / "rec"
        stored: list[int] = []

        def on_event(event):
            if isinstance(event, CheckpointStored):
                stored.append(event.entry.index)

        with tagged_qemus():
            rec = Recorder(path, tiny_spec(tiny_kernel), interval=0.3, prove="off",
                           min_free_bytes=0, on_event=on_event)
            task = asyncio.create_task(rec.run())
            await wait_for(lambda: len(stored) >= 2, "two stored checkpoints", 30)
            await asyncio.to_thread(fill, fs)
            with pytest.raises(RecordingError) as info:
                await asyncio.wait_for(task, 60)
        assert "disk is full" in str(info.value) or "disk is nearly full" in str(info.value)
        m = manifest(path)
        assert m["status"] == "failed" and "disk" in m["error"]
        kept = Recording.open(path).checkpoints()
        assert len(kept) >= 2 and [c.index for c in kept] == list(range(len(kept)))


async def test_low_disk_space_stops_before_the_disk_is_full(tiny_kernel, tmp_path):
    path = tmp_path / "rec"
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    with tagged_qemus():
        with pytest.raises(RecordingError, match="nearly full"):
            await Recorder(path, tiny_spec(tiny_kernel), interval=0.2, prove="off",
                           min_free_bytes=free * 4).run()
    assert manifest(path)["status"] == "failed"
    assert len(Recording.open(path).checkpoints()) == 1    # checkpoint 0 only


async def test_pause_resume_and_checkpoint_now_while_recording(tiny_kernel, tmp_path):
    """The app's live controls: a checkpoint on demand (returned once stored), pause and
    resume; a checkpoint of a paused guest leaves it paused."""
    path = tmp_path / "rec"
    with tagged_qemus():
        rec = Recorder(path, tiny_spec(tiny_kernel), interval=60, prove="off")
        task = asyncio.create_task(rec.run())
        await wait_for(lambda: checkpoint_lines(path) >= 1, "checkpoint 0", 30)
        first = await rec.checkpoint_now()
        second = await rec.checkpoint_now()
        assert (first.index, second.index) == (1, 2)
        assert first.store_id != second.store_id and first.icount <= second.icount
        await rec.pause()
        await rec.pause()                       # idempotent
        assert (await rec.vm.qmp("query-status"))["status"] == "paused"
        third = await rec.checkpoint_now()
        assert third.index == 3
        assert (await rec.vm.qmp("query-status"))["status"] == "paused"
        await rec.resume()
        assert (await rec.vm.qmp("query-status"))["running"]
        await rec.send_console("z")
        await wait_for(lambda: b"got z" in (path / "console.out").read_bytes(), "the echo", 10)
        rec.stop()
        summary = await asyncio.wait_for(task, 60)
    assert summary.checkpoints == 4
    assert len(summary.downtimes_ms) == 2      # the paused guest's checkpoint paused nothing
    with pytest.raises(RecordingError, match="not running"):
        await rec.checkpoint_now()


async def test_a_guest_that_powers_off_ends_a_complete_recording_with_its_end(tiny_kernel, tmp_path):
    """Power-off ends the recording as complete; the end comes from the log itself."""
    path = tmp_path / "rec"
    with tagged_qemus():
        rec = Recorder(path, tiny_spec(tiny_kernel), interval=0.3, prove="off")
        task = asyncio.create_task(rec.run())
        await wait_for(lambda: checkpoint_lines(path) >= 2, "two checkpoints", 30)
        await rec.send_console("q")          # the tiny guest powers off on 'q'
        summary = await asyncio.wait_for(task, 60)
    assert summary.status == "complete"
    m = manifest(path)
    assert m["status"] == "complete" and m["error"] is None
    scanned = replaylog.scan(path / "replay.log")
    assert scanned.complete and scanned.shutdown == "guest-shutdown"
    assert m["end_icount"] == scanned.instructions >= Recording.open(path).checkpoints()[-1].icount
    assert b"bye" in (path / "console.out").read_bytes()


async def test_scratch_of_a_recorder_killed_outright_is_removed_by_the_next(tiny_kernel, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = scratch / f"sbtui-rec-{dead.pid}-abcd"
    orphan.mkdir()
    (orphan / "vmstate.qcow2").write_bytes(b"x" * 1024)
    alive = scratch / f"sbtui-rec-{os.getpid()}-efgh"
    alive.mkdir()
    with tagged_qemus():
        await Recorder(tmp_path / "rec", tiny_spec(tiny_kernel), interval=0.2, duration=0.5,
                       prove="off", scratch_dir=scratch).run()
    assert not orphan.exists() and alive.exists()
    assert sorted(p.name for p in scratch.iterdir()) == [alive.name]   # ours went too
