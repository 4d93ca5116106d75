"""What keeps a live checkpoint's pause short: settings set once, huge pages collapsed back
between checkpoints (engine/recording/thp.py), and the STOP/RESUME pause kept per checkpoint.
"""

from __future__ import annotations

import errno
import mmap
import os
import time

import pytest

from engine.qemu import MachineSpec, QemuProcess
from engine.recording.format import Manifest, Recording
from engine.recording.live import LiveCheckpointer
from engine.recording.thp import HugePageCollapser, guest_ram_ranges
from test_recording_support import tagged_qemus
from tinyguest import READY, build_tinyguest

SMAPS = """\
00400000-00500000 r-xp 00000000 08:01 123 /usr/bin/qemu-system-x86_64
Size:               1024 kB
THPeligible:    0
7f0000100000-7f0020300000 rw-p 00000000 00:00 0
Size:             526336 kB
AnonHugePages:         0 kB
THPeligible:    1
7f0030000000-7f0070000000 rw-p 00000000 00:00 0
Size:            1048576 kB
THPeligible:    0
7f0080000000-7f0080100000 rw-p 00000000 00:00 0
Size:               1024 kB
THPeligible:    1
7f0090000000-7f00b0000000 rw-p 00000000 00:01 77 /memfd:guest (deleted)
Size:             524288 kB
THPeligible:    1
"""


def _recording(tmp_path) -> Recording:
    return Recording.create(tmp_path / "rec", Manifest(kind="live", spec={}, qemu_version="10.0.2",
                                                       interval_s=1.0, created=time.time()))


def test_guest_ram_is_the_large_thp_eligible_anonymous_mappings_aligned_to_huge_pages():
    # Not code (r-xp), not the 1 GiB mapping without THP (TCG's code buffer),
    # not a small one, not a file/memfd mapping; the start rounded up to 2 MiB.
    assert guest_ram_ranges(0, smaps=SMAPS) == [(0x7f0000200000, 0x7f0020200000)]


@pytest.mark.parametrize("err", [errno.EPERM, errno.EINVAL, errno.ENOSYS])
def test_a_refused_collapse_switches_the_collapser_off_with_a_reason(err):
    calls = []

    def refuse(_pidfd, lo, hi):
        calls.append((lo, hi))
        return -err

    c = HugePageCollapser(os.getpid(), syscall=refuse)
    region = mmap.mmap(-1, 64 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(mmap.MADV_HUGEPAGE)
    try:
        assert c.collapse() is None
        assert not c.available and c.reason
        if err == errno.EPERM:
            assert "CAP_SYS_NICE" in c.reason
        n = len(calls)
        assert n >= 1
        assert c.collapse() is None and len(calls) == n     # never tried again
    finally:
        c.close()
        region.close()


def test_a_busy_collapse_is_tried_again_next_time():
    calls = []

    def busy(_pidfd, lo, hi):
        calls.append((lo, hi))
        return -errno.EAGAIN

    c = HugePageCollapser(os.getpid(), syscall=busy)
    region = mmap.mmap(-1, 64 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(mmap.MADV_HUGEPAGE)
    try:
        assert c.collapse() is not None and c.available
        first = len(calls)
        assert first >= 1
        assert c.collapse() is not None and len(calls) == 2 * first
    finally:
        c.close()
        region.close()


def test_no_pid_means_no_collapse():
    c = HugePageCollapser(None)
    assert not c.available and "unknown" in c.reason and c.collapse() is None


def _anon_huge_kib(pid: int, lo: int, hi: int) -> int:
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                a, b = (int(x, 16) for x in head.split("-"))
                inside = a < hi and b > lo
            elif head == "AnonHugePages:" and inside:
                total += int(line.split()[1])
    return total


class _Proxy:
    """A QEMU target that counts the QMP commands sent through it."""

    def __init__(self, vm: QemuProcess):
        self.vm = vm
        self.pid = vm.pid
        self.commands: list[str] = []

    async def qmp(self, command, arguments=None, **kw):
        self.commands.append(command)
        return await self.vm.qmp(command, arguments, **kw)

    async def send_fd(self, fd, name):
        return await self.vm.send_fd(fd, name)

    def listen(self, *names):
        return self.vm.listen(*names)


class _FakeTarget:
    pid = 12345

    async def qmp(self, command, arguments=None, **kw):
        return {"query-migrate": {}, "query-migrate-capabilities": [],
                "query-migrate-parameters": {"max-bandwidth": 1}}.get(command, {})


async def test_huge_page_collapse_is_off_by_default_for_a_qemu_we_did_not_start(tmp_path):
    cp = LiveCheckpointer(_FakeTarget(), _recording(tmp_path), t0=0.0)
    await cp.prepare()
    assert cp.collapser is None
    cp2 = LiveCheckpointer(_FakeTarget(), _recording(tmp_path / "b"), t0=0.0,
                           collapse_huge_pages=True)
    await cp2.prepare()
    assert cp2.collapser is not None and cp2.collapser.pid == 12345


@pytest.mark.qemu
async def test_settings_set_once_survive_several_checkpoints_and_huge_pages_come_back(tmp_path):
    kernel = str(build_tinyguest(tmp_path / "tinyguest"))
    rec = _recording(tmp_path)
    with tagged_qemus():
        async with QemuProcess(MachineSpec(memory_mib=64, kernel=kernel)) as vm:
            await vm.console.wait_for(READY, timeout=10)
            target = _Proxy(vm)
            cp = LiveCheckpointer(target, rec, t0=time.monotonic(), collapse_huge_pages=True)
            await cp.prepare()
            prepared = list(target.commands)
            for k in range(3):
                await cp.take(k)
            per_checkpoint = target.commands[len(prepared):]
            # Capabilities and bandwidth were set in prepare only, and still hold.
            assert prepared.count("migrate-set-capabilities") == 1
            assert prepared.count("migrate-set-parameters") == 1
            assert not any(c.startswith("migrate-set-") for c in per_checkpoint)
            caps = {c["capability"]: c["state"] for c in await vm.qmp("query-migrate-capabilities")}
            assert caps["background-snapshot"] is True
            params = await vm.qmp("query-migrate-parameters")
            assert params["max-bandwidth"] == 64 << 30
            # The pause from QEMU's STOP/RESUME events, one per checkpoint.
            assert len(cp.pauses_ms) == 3
            assert all(p is not None and 0 <= p < 60_000 for p in cp.pauses_ms)
            assert [e.index for e in rec.checkpoints()] == [0, 1, 2]
            collapser = cp.collapser
            assert collapser is not None
            ranges = guest_ram_ranges(vm.pid) if collapser.available else []
            await cp.restore()           # waits for the last collapse
            if collapser.available:
                assert len(cp.collapse_s) == 3
                # The snapshots split guest RAM into 4 KiB pages; it is huge again.
                lo, hi = ranges[0]
                assert _anon_huge_kib(vm.pid, lo, hi) >= ((hi - lo) >> 10) // 2
            else:
                assert collapser.reason and cp.collapse_s == []
            caps = {c["capability"]: c["state"] for c in await vm.qmp("query-migrate-capabilities")}
            assert caps["background-snapshot"] is False
