"""The migration-stream codec on streams QEMU 10 itself wrote.

Proves, against real ``savevm`` / ``migrate`` / ``background-snapshot``
output on ``pc`` and ``q35`` with several RAM sizes: the split hands out the
guest's memory, reassembly is byte-identical, the reassembled stream loads in
a fresh QEMU (``-incoming defer`` + ``migrate-incoming file:``) with the same
registers and memory, the skeleton of a 1 GiB guest stays small, and cuts
through real device state raise TruncatedStreamError.

Streams are made once per session (``streams.cached_*``) and shared.
"""

from __future__ import annotations

import io
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.errors import TruncatedStreamError
from engine.stream.migration import assemble_stream, describe, split_stream
from engine.stream.qcow2 import open_vmstate
from streams import (
    BLOB_ADDR,
    Qemu,
    VmSpec,
    cached_migrate,
    cached_savevm,
    incoming_vm,
    live_qemu_pids,
    pmemsave,
    qemu_available,
)

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(not qemu_available(), reason="qemu-system-x86_64 / qemu-img not installed"),
]

SAVEVM_CASES = [("q35", 64), ("pc", 64), ("pc", 200), ("q35", 200), ("pc", 1024), ("q35", 1024)]


def vmstate(image, name) -> bytes:
    with open_vmstate(image, name) as f:
        return f.read()


def split_and_assemble(data: bytes):
    sp = split_stream(io.BytesIO(data))
    recs = list(sp.pages())
    by_index = {r.index: r.data for r in recs}
    out = io.BytesIO()
    n = assemble_stream(sp.skeleton, lambda i, b, o: by_index[i], out)
    assert n == len(data)
    return out.getvalue(), sp, recs


def ram_image(recs, block: str, size: int) -> bytearray:
    """Guest RAM as the stream leaves it (later records win), for comparing to the blob."""
    mem = bytearray(size)
    for r in recs:
        if r.block == block and r.offset < size:
            mem[r.offset:r.offset + 4096] = r.data if r.data is not None else bytes(4096)
    return mem


def assert_loaded_vm_matches(tmp, spec, stream_path, registers: str, blob: bytes | None):
    with incoming_vm(tmp, spec, stream_path) as vm:
        status = vm.cmd("query-status")["status"]
        assert status in ("paused", "postmigrate", "prelaunch"), status
        if registers:
            assert vm.cmd("human-monitor-command", **{"command-line": "info registers"}) == registers
        if blob is not None:
            assert pmemsave(vm, tmp, BLOB_ADDR, len(blob)) == blob


@pytest.fixture(scope="session")
def demo_memchurn(demo_guest):
    """Two savevm snapshots of the demo guest running memchurn (made once per session)."""
    g = demo_guest
    return cached_savevm(machine="q35", memory_mib=128, kernel=g.kernel, initrd=g.initrd,
                         append=g.append_for("memchurn", mem=32, duration=600), blob_mib=0,
                         snapshots=2, interval_s=1.0, ready="sbtui-guest: ready", name="memchurn")


@pytest.mark.parametrize("machine,memory_mib", SAVEVM_CASES, ids=[f"{m}-{s}M" for m, s in SAVEVM_CASES])
def test_savevm_stream_round_trips_byte_identical(machine, memory_mib):
    img = cached_savevm(machine=machine, memory_mib=memory_mib, blob_mib=4, seed=memory_mib)
    data = vmstate(img.image, "snap0")
    out, sp, recs = split_and_assemble(data)
    assert out == data
    assert sp.machine.startswith("pc-q35-" if machine == "q35" else "pc-i440fx-")
    ram = next(b for b in sp.blocks if b.name == "pc.ram")
    assert ram.length == memory_mib << 20
    # Every guest page is in the stream once (savevm of a paused VM is one pass),
    # and the blob the loader device put into RAM comes out of the split intact.
    assert sum(1 for r in recs if r.block == "pc.ram") == memory_mib * 256
    mem = ram_image(recs, "pc.ram", BLOB_ADDR + len(img.blob_data))
    assert bytes(mem[BLOB_ADDR:]) == img.blob_data


class _RunsFromSplit:
    """A run source answering from a split's runs (zero counts and pages)."""

    def __init__(self, runs):
        self.runs_by_index = {r.index: r for r in runs}
        self.records = {}
        for r in runs:
            for k in range(r.count):
                self.records[r.index + k] = None if r.zero else r.page(k)

    def __call__(self, index, block, offset):
        raise AssertionError("asked per page")

    def runs(self, index, block, offset, count):
        out = []
        for i in range(index, index + count):
            d = self.records[i]
            if d is None and out and isinstance(out[-1], int):
                out[-1] += 1
            else:
                out.append(1 if d is None else d)
        return out


@pytest.mark.parametrize("machine,memory_mib", SAVEVM_CASES, ids=[f"{m}-{s}M" for m, s in SAVEVM_CASES])
def test_savevm_stream_splits_into_runs_and_reassembles_from_runs_byte_identical(machine, memory_mib):
    img = cached_savevm(machine=machine, memory_mib=memory_mib, blob_mib=4, seed=memory_mib)
    data = vmstate(img.image, "snap0")
    by_pages = split_stream(io.BytesIO(data))
    recs = list(by_pages.pages())
    sp = split_stream(io.BytesIO(data))
    runs = list(sp.runs())
    assert sp.skeleton == by_pages.skeleton
    expanded = [r for run in runs for r in run.records()]
    assert expanded == recs
    # the fast path is per run: a guest's RAM is long runs of zero or data pages
    assert len(runs) < len(recs) // 8
    out = io.BytesIO()
    assert assemble_stream(sp.skeleton, _RunsFromSplit(runs), out) == len(data)
    assert out.getvalue() == data


def test_demo_guest_stream_reassembles_from_runs_byte_identical(demo_memchurn):
    for name in demo_memchurn.names:
        data = vmstate(demo_memchurn.image, name)
        sp = split_stream(io.BytesIO(data))
        runs = list(sp.runs())
        out = io.BytesIO()
        assemble_stream(sp.skeleton, _RunsFromSplit(runs), out)
        assert out.getvalue() == data


def test_skeleton_of_a_1gib_guest_is_dominated_by_device_state():
    img = cached_savevm(machine="q35", memory_mib=1024, blob_mib=4, seed=1024)
    data = vmstate(img.image, "snap0")
    sp = split_stream(io.BytesIO(data))
    n = sum(1 for _ in sp.pages())
    assert n >= 262144
    opaque = sum(s.length for s in describe(io.BytesIO(data))
                 if s.type in ("FULL", "VMDESCRIPTION", "CONFIGURATION"))
    # Everything else (runs, section headers, block list) must stay tiny.
    assert len(sp.skeleton) - opaque < 8192, (len(sp.skeleton), opaque)
    assert len(sp.skeleton) < 256 * 1024


@pytest.mark.parametrize("machine,memory_mib", [("q35", 200), ("pc", 1024)])
def test_reassembled_savevm_stream_loads_with_same_registers_and_memory(machine, memory_mib, tmp_path):
    img = cached_savevm(machine=machine, memory_mib=memory_mib, blob_mib=4, seed=memory_mib)
    out, _, _ = split_and_assemble(vmstate(img.image, "snap0"))
    path = tmp_path / "reassembled.mig"
    path.write_bytes(out)
    assert_loaded_vm_matches(tmp_path, img.spec, path, img.registers["snap0"], img.blob_data)


def test_migrate_to_file_stream_round_trips_and_loads(tmp_path):
    mig = cached_migrate(machine="q35", memory_mib=128, blob_mib=8)
    data = mig.path.read_bytes()
    out, _, recs = split_and_assemble(data)
    assert out == data
    assert any(s.type == "COMMAND" for s in describe(io.BytesIO(data)))
    path = tmp_path / "reassembled.mig"
    path.write_bytes(out)
    assert_loaded_vm_matches(tmp_path, mig.spec, path, mig.registers, mig.blob_data)


def test_background_snapshot_stream_round_trips_and_loads(tmp_path):
    mig = cached_migrate(machine="q35,hpet=off", memory_mib=256, blob_mib=32, background=True,
                         run_s=0.2, name="bg")
    data = mig.path.read_bytes()
    out, sp, recs = split_and_assemble(data)
    assert out == data
    # The VM kept running while its RAM was written: the snapshot is of the
    # start, and the blob (never written by the BIOS) must be intact.
    mem = ram_image(recs, "pc.ram", BLOB_ADDR + len(mig.blob_data))
    assert bytes(mem[BLOB_ADDR:]) == mig.blob_data
    path = tmp_path / "reassembled.mig"
    path.write_bytes(out)
    assert_loaded_vm_matches(tmp_path, mig.spec, path, "", mig.blob_data)


def test_demo_guest_running_memchurn_round_trips_and_loads(demo_memchurn, tmp_path):
    img = demo_memchurn
    results = []
    for name in img.names:
        data = vmstate(img.image, name)
        out, sp, recs = split_and_assemble(data)
        assert out == data
        nonzero = sum(1 for r in recs if r.data is not None)
        assert nonzero > 2000, nonzero      # a booted Linux with a churning workload
        results.append((out, {(r.block, r.offset): r.data for r in recs}))
    # The guest ran between the snapshots: their RAM differs.
    pages0, pages1 = results[0][1], results[1][1]
    assert sum(1 for k, v in pages1.items() if pages0.get(k) != v) > 100
    path = tmp_path / "reassembled.mig"
    path.write_bytes(results[1][0])
    assert_loaded_vm_matches(tmp_path, img.spec, path, img.registers[img.names[1]], None)


def test_cuts_through_real_device_state_raise_truncated_stream_error():
    # A small guest without the blob keeps each of the ~200 parses short.
    img = cached_savevm(machine="q35", memory_mib=16, blob_mib=0)
    data = vmstate(img.image, "snap0")
    infos = describe(io.BytesIO(data))
    eof = next(s for s in infos if s.type == "EOF")
    rng = random.Random(7)
    cuts = set()
    for s in infos:
        for d in (-1, 0, 1, 5, 6, 9, 13, 17):  # around every element's header and footer
            cuts.add(s.offset + d)
            cuts.add(s.offset + s.length - d)
    first_full = next(s.offset for s in infos if s.type == "FULL")
    cuts |= {rng.randrange(first_full, eof.offset) for _ in range(40)}   # inside device state
    cuts |= {rng.randrange(0, first_full) for _ in range(10)}            # inside RAM
    cuts = sorted(c for c in cuts if 0 <= c < len(data) and c != eof.offset + 1)
    assert len(cuts) > 150
    for cut in cuts:
        sp = split_stream(io.BytesIO(data[:cut]))
        with pytest.raises(TruncatedStreamError):
            for _ in sp.pages():
                pass


_CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
from streams import Qemu, VmSpec
with Qemu(VmSpec(memory_mib=16).argv() + ["-S"], Path({tmp!r})) as vm:
    print(vm.proc.pid, flush=True)
    time.sleep(120)
"""


def _gone(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_helper_qemu_dies_with_ctrl_c_or_a_killed_parent(tmp_path, sig):
    child = subprocess.Popen([sys.executable, "-c", _CHILD.format(
        tests=str(Path(__file__).parent), tmp=str(tmp_path))], stdout=subprocess.PIPE, text=True)
    try:
        qemu_pid = int(child.stdout.readline())
        assert not _gone(qemu_pid)
        child.send_signal(sig)
        child.wait(30)
        deadline = time.monotonic() + 15
        while not _gone(qemu_pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # the kernel delivering PDEATHSIG; bounded
        assert _gone(qemu_pid)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_helper_qemu_ends_when_the_with_block_raises(tmp_path):
    with pytest.raises(RuntimeError):
        with Qemu(VmSpec(memory_mib=16).argv() + ["-S"], tmp_path) as vm:
            pid = vm.proc.pid
            raise RuntimeError("boom")
    assert _gone(pid)


def test_no_qemu_outlives_the_helpers():
    # Runs after the tests above in this module: every helper must have ended its QEMU.
    deadline = time.monotonic() + 10
    while live_qemu_pids() and time.monotonic() < deadline:
        time.sleep(0.05)  # zombies being reaped; bounded
    assert live_qemu_pids() == set()
