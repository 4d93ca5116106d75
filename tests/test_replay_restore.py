"""The quick restore path of a replay (issue #5): what it shares and how it fails.

Proven here:

* the VM-state image template (:mod:`engine.qemu.vmstate`): threads and
  processes that need it at the same moment each get a whole, valid qcow2,
  identical to what ``qemu-img create`` makes; qemu-img runs once per process;
  a broken cached template is ignored and replaced;
* work directories of killed sessions are removed, live ones kept;
* :class:`~engine.qemu.incoming.Prefetch` hands on every byte in order, then
  the feed's own error; cancelling it, or a consumer that stops early, ends
  its producer even while it waits for room;
* gdb started in the background (``GdbDebugger.start_launch``): a failed
  start is raised by the next call, and ``close`` leaves no gdb;
* on the demo recording, against real QEMU and gdb: a restore with gdb
  started beside it attaches and reads the checkpoint's registers, and a
  snapshot works right after the restore and after gdb stepped (the VM-state
  image is activated only for savevm); a QEMU that dies while the state
  streams in, and a stream QEMU refuses, each raise a clear error and leave
  no QEMU, no feeding thread and no work directory behind.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.errors import GdbError, IntegrityError, QemuDiedError, QemuError, QemuLaunchError
from engine.gdb import GdbDebugger
from engine.gdb.process import GdbProcess
from engine.qemu import find_qemu_img, gdb_tcp
from engine.qemu.incoming import Prefetch
from engine.recording.format import Recording
from engine.qemu import vmstate
from engine.replay.session import WORKDIR_PREFIX, ReplaySession, remove_orphaned_workdirs
from test_recording_support import tagged_qemus

REPO = Path(__file__).resolve().parents[1]


def _qemu_img_image(path: Path) -> bytes:
    vmstate.create_image(path)
    return path.read_bytes()


def _check(path: Path) -> None:
    out = subprocess.run([find_qemu_img(), "check", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture
def fresh_template(tmp_path, monkeypatch):
    """An empty per-user cache and no in-memory template."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SBTUI_CACHE", str(cache))
    monkeypatch.setattr(vmstate, "_memo", {})
    return cache


def test_threads_needing_the_template_at_once_share_one_qemu_img_run(fresh_template, tmp_path,
                                                                    monkeypatch):
    runs = []
    real = vmstate._create

    def counting(qemu_img):
        runs.append(qemu_img)
        return real(qemu_img)

    monkeypatch.setattr(vmstate, "_create", counting)
    start = threading.Barrier(8)
    errors = []

    def make(i):
        try:
            start.wait(10)
            vmstate.vmstate_image(tmp_path / f"img-{i}.qcow2")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=make, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(runs) == 1
    reference = _qemu_img_image(tmp_path / "reference.qcow2")
    for i in range(8):
        assert (tmp_path / f"img-{i}.qcow2").read_bytes() == reference
    _check(tmp_path / "img-0.qcow2")
    # Written sparse: the 6 MiB image holds three metadata blocks.
    assert os.stat(tmp_path / "img-0.qcow2").st_blocks * 512 < len(reference)


def test_processes_publishing_the_template_at_once_never_see_half_a_file(fresh_template, tmp_path):
    script = ("import sys; from pathlib import Path; from engine.qemu.vmstate import vmstate_image; "
              "vmstate_image(Path(sys.argv[1]))")
    env = {**os.environ, "SBTUI_CACHE": str(fresh_template), "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"p-{i}.qcow2")],
                              env=env, stderr=subprocess.PIPE) for i in range(6)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    reference = _qemu_img_image(tmp_path / "reference.qcow2")
    for i in range(6):
        assert (tmp_path / f"p-{i}.qcow2").read_bytes() == reference
    cached = list(fresh_template.glob("vmstate-template-*.qcow2"))
    assert len(cached) == 1 and cached[0].read_bytes() == reference
    assert not list(fresh_template.glob(".vmstate-template-*"))  # no temporary file left


def test_a_broken_cached_template_is_replaced(fresh_template, tmp_path):
    vmstate.vmstate_image(tmp_path / "first.qcow2")
    (cached,) = fresh_template.glob("vmstate-template-*.qcow2")
    good = cached.read_bytes()
    cached.write_bytes(b"not a qcow2 image at all" * 100)
    vmstate._memo.clear()
    vmstate.vmstate_image(tmp_path / "second.qcow2")
    assert (tmp_path / "second.qcow2").read_bytes() == good
    assert cached.read_bytes() == good
    _check(tmp_path / "second.qcow2")


def test_work_directories_of_dead_sessions_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = tmp_path / f"{WORKDIR_PREFIX}{dead.pid}-abc"
    mine = tmp_path / f"{WORKDIR_PREFIX}{os.getpid()}-def"
    parent = tmp_path / f"{WORKDIR_PREFIX}{os.getppid()}-ghi"
    other = tmp_path / "sbtui-job-1-x"
    for d in (gone, mine, parent, other):
        (d / "qemu").mkdir(parents=True)
    remove_orphaned_workdirs(tmp_path)
    assert not gone.exists()
    assert mine.exists() and parent.exists() and other.exists()


def test_a_background_gdb_start_that_fails_is_raised_by_connect_and_leaves_nothing():
    dbg = GdbDebugger()
    dbg.gdb = GdbProcess("/nonexistent/gdb-for-sbtui-tests")
    dbg.start_launch()
    with pytest.raises(GdbError, match="gdb not found"):
        dbg.connect("127.0.0.1:1")
    dbg.close()
    assert dbg.gdb.pid is None


@pytest.mark.gdb
def test_close_right_after_a_background_start_leaves_no_gdb():
    dbg = GdbDebugger()
    dbg.start_launch()
    dbg.close()   # waits for the start, then shuts gdb down
    pid = dbg.gdb.pid
    assert pid is not None
    assert dbg.gdb.returncode is not None
    assert not Path(f"/proc/{pid}").exists() or \
        Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"



def _pieces(n: int, size: int = 3000) -> list[bytes]:
    return [bytes([i % 251]) * size for i in range(n)]


def test_prefetch_hands_on_every_byte_in_order_then_the_feeds_error():
    pieces = _pieces(2000)   # ~6 MB, more than the limit below: the producer must wait

    def feed(dst):
        for p in pieces:
            dst.write(p)
        raise IntegrityError("damaged page", checkpoint="c1")

    prefetch = Prefetch(feed, limit=1 << 20)
    out = io.BytesIO()
    with pytest.raises(IntegrityError, match="damaged page"):
        prefetch(out)
    assert out.getvalue() == b"".join(pieces)
    prefetch.cancel()


def test_prefetch_cancel_stops_a_producer_waiting_for_room():
    started = threading.Event()
    written = []

    def feed(dst):
        started.set()
        for p in _pieces(10_000):
            dst.write(p)
            written.append(len(p))

    prefetch = Prefetch(feed, limit=1 << 20)
    assert started.wait(10)
    prefetch.cancel(timeout=10)
    assert not prefetch._thread.is_alive()
    assert prefetch.error is None           # cancelling is not the feed failing
    assert sum(written) < 4 << 20           # it stopped at the limit, not at the end


def test_a_consumer_that_stops_early_cancels_the_producer():
    class Broken(io.RawIOBase):
        def writable(self):
            return True

        def write(self, data):
            raise BrokenPipeError("QEMU went away")

    prefetch = Prefetch(lambda dst: [dst.write(p) for p in _pieces(10_000)], limit=1 << 20)
    with pytest.raises(BrokenPipeError):
        prefetch(Broken())
    prefetch._thread.join(10)
    assert not prefetch._thread.is_alive()


# -- against real QEMU ----------------------------------------------------------


@pytest.fixture(scope="module")
def rec(demo_recording):
    return Recording.open(demo_recording)


def _feed_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.is_alive()
            and t.name in ("sbtui-incoming-feed", "sbtui-stream-prefetch")]


@pytest.mark.qemu
async def test_qemu_writes_no_guest_ram_before_a_stream_loads(rec):
    """The restore writes the RAM file while QEMU starts (session module doc):
    QEMU 10 must leave a file-backed RAM alone from its start until a stream
    loads. A replay QEMU on a RAM file full of 0xA5 changes none of it."""
    import tempfile
    from engine.qemu import QemuProcess
    work = Path(tempfile.mkdtemp(prefix="sbtui-test-ram-", dir=vmstate.scratch_base()))
    try:
        ram = work / "ram"
        mib = rec.machine_spec().memory_mib
        chunk = b"\xa5" * (1 << 20)
        with open(ram, "wb") as f:
            for _ in range(mib):
                f.write(chunk)
        spec = rec.machine_spec().with_rr("replay").replace(
            rrfile=str(rec.replay_log(work)), incoming_defer=True, paused=True,
            debugcon_path=str(work / "debugcon.out")).with_memory_file(ram)
        with tagged_qemus():
            async with QemuProcess(spec, workdir=work / "qemu") as vm:
                assert (await vm.qmp("query-status"))["status"] == "inmigrate"
                with open(ram, "rb") as f:
                    for i in range(mib):
                        assert f.read(1 << 20) == chunk, f"QEMU wrote into guest RAM MiB {i}"
    finally:
        import shutil
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.qemu
async def test_a_restore_from_the_store_puts_guest_ram_in_its_file(rec):
    """The checkpoint's RAM pages reach QEMU through the RAM file, not the pipe."""
    cp = rec.checkpoints()[2]
    pm = rec.store.page_map(cp.store_id)
    with tagged_qemus():
        async with ReplaySession(rec, cp) as rs:
            assert await rs.icount() == cp.icount
            ram = (rs.workdir / "ram").read_bytes()
    assert len(ram) == rec.machine_spec().memory_mib << 20
    data = zero = 0
    for p in range(len(ram) // 4096):
        e = pm.get("pc.ram", p)
        got = ram[p * 4096:(p + 1) * 4096]
        if e is None:
            assert got == bytes(4096), p
            zero += 1
        else:
            assert got == rec.store.read_page(e), p
            data += 1
    assert data > 1000 and zero > 1000, (data, zero)


@pytest.mark.qemu
@pytest.mark.gdb
async def test_restore_with_gdb_started_beside_it_attaches_and_snapshots_work(rec):
    from engine.debugger import _free_port
    cp = rec.checkpoints()[2]
    port = _free_port()
    with tagged_qemus():
        gdb = GdbDebugger()
        try:
            gdb.start_launch()
            async with ReplaySession(rec, cp, gdb=gdb_tcp(port)) as rs:
                assert set(rs.timings) >= {"QEMU start until QMP ready", "restore in all"}
                assert await rs.icount() == cp.icount
                gdb.connect(f"127.0.0.1:{port}")
                regs = gdb.registers()
                assert regs["rip"] != 0 and regs["cr3"] != 0
                # Right after the restore, before any 'cont': the image was
                # never activated by the restore itself.
                with await rs.snapshot() as stream:
                    assert stream.read(4) == b"QEVM"
                gdb.stepi()   # a gdb resume does not activate block nodes either
                with await rs.snapshot() as stream:
                    assert stream.read(4) == b"QEVM"
                workdir = rs.workdir
        finally:
            gdb.close()
    assert workdir is not None and not workdir.exists()


@pytest.mark.qemu
@pytest.mark.parametrize("when", ["starting", "streaming"])
async def test_qemu_dying_during_the_restore_is_a_clear_error_and_leaves_nothing(rec, when):
    """The stream is produced from the start, beside QEMU's start-up, so QEMU
    can die in either phase while the feed runs."""
    cp = rec.checkpoints()[1]
    holder: dict[str, ReplaySession] = {}

    def source(dst):
        rec.store.export_stream(cp.store_id, _KillOnTheWay(dst, holder["rs"], when))

    with tagged_qemus():
        rs = ReplaySession(rec, cp, source=source)
        holder["rs"] = rs
        with pytest.raises((QemuDiedError, QemuLaunchError)) as info:
            async with rs:
                pass
    assert "exit" in str(info.value) and info.value.exit_code == -9
    if when == "streaming":
        assert isinstance(info.value, QemuDiedError)
    assert rs.vm is None
    assert rs.workdir is not None and not rs.workdir.exists()
    assert not _feed_threads()


def _kill_qemu_when(rs: ReplaySession, when: str, timeout: float = 60.0) -> None:
    """SIGKILL the session's QEMU once it runs ("starting") or once it reported
    the incoming migration active ("streaming"); bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        vm = rs.vm
        if vm is not None and vm.pid is not None:
            if when == "starting" or any(
                    e.get("event") == "MIGRATION" and e.get("data", {}).get("status") == "active"
                    for e in list(vm.events_seen)):
                os.kill(vm.pid, 9)
                return
        time.sleep(0.002)
    raise AssertionError(f"QEMU never got to {when} within {timeout:g} s")


@pytest.mark.qemu
async def test_a_stream_qemu_refuses_is_a_clear_error_and_leaves_nothing(rec):
    cp = rec.checkpoints()[1]

    def source(dst):
        dst.write(b"QEVM\x00\x00\x00\x03" + b"\x07" + b"\xff" * 4096)

    with tagged_qemus():
        rs = ReplaySession(rec, cp, source=source)
        with pytest.raises(QemuError) as info:
            async with rs:
                pass
    # QEMU names the problem in its log; the error carries the log's tail.
    assert info.value.log_tail
    assert rs.workdir is not None and not rs.workdir.exists()
    assert not _feed_threads()


class _KillOnTheWay:
    """Passes the stream on; at the first write ("starting") or once 2 MiB
    went through and reached QEMU ("streaming"), kills the session's QEMU."""

    def __init__(self, dst, rs: ReplaySession, when: str):
        self.dst, self.rs, self.when = dst, rs, when
        self.count = 0
        self.done = False

    def write(self, data) -> int:
        if not self.done and self.when == "starting":
            self.done = True
            _kill_qemu_when(self.rs, "starting")
        n = self.dst.write(data)
        self.count += len(data)
        if not self.done and self.count >= 2 << 20:
            self.done = True
            self.dst.flush()   # QEMU reports the migration active once bytes arrive
            _kill_qemu_when(self.rs, "streaming")
        return n

    def flush(self) -> None:
        self.dst.flush()
