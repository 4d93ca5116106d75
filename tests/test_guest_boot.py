"""The demo guest boots under TCG and each workload does what it promises.

All boots of this module start together in one module fixture (the workloads
are finite with the parameters used here, so each guest powers itself off)
and run side by side on the machine's cores; each test then checks one
guest's console and debug-console output. The host-side checks run the
guest's own static binaries, taken out of the initramfs, to show that the
workloads are deterministic: the same arguments give the same checksums
inside and outside the guest.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.guest import MARK_LINE_PREFIX, READY_LINE_PREFIX
from engine.guest.boot import DemoBoot
from engine.guest.builder import find_busybox
from engine.guest.cpio import read_initramfs
from tests.procs import assert_no_qemu, new_tag

pytestmark = pytest.mark.qemu

BOOT_TIMEOUT = 90.0  # per guest, from launch to power-off, on a busy 2-core machine
BOOTS = {
    # name: (workload or None for a raw command line, params)
    "memchurn": ("memchurn", {"mem": 16}),
    "compress": ("compress", {"duration": 1}),
    "idle": ("idle", {"duration": 2}),
    "unknown": (None, {}),
}


@dataclass
class Boot:
    name: str
    append: str
    console: str
    debugcon: str
    exit_code: int | None
    ready_after: float | None
    qemu_name: str


@pytest.fixture(scope="module")
def boots(demo_guest, tmp_path_factory) -> dict[str, Boot]:
    vms: dict[str, DemoBoot] = {}
    appends: dict[str, str] = {}
    ready_at: dict[str, float] = {}
    try:
        for name, (workload, params) in BOOTS.items():
            if workload is None:
                append = demo_guest.append_for("idle").replace("sbtui.workload=idle",
                                                                "sbtui.workload=nope")
            else:
                append = demo_guest.append_for(workload, **params)
            appends[name] = append
            vms[name] = DemoBoot(demo_guest.kernel, demo_guest.initrd, append,
                                 tmp_path_factory.mktemp(f"boot-{name}")).launch()
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline and any(vm.exit_code() is None for vm in vms.values()):
            for name, vm in vms.items():
                if name not in ready_at and READY_LINE_PREFIX in vm.console_text():
                    ready_at[name] = time.monotonic() - vm.started_at
            time.sleep(0.05)
        results = {}
        for name, vm in vms.items():
            results[name] = Boot(name, appends[name], vm.console_text(), vm.debugcon_text(),
                                 vm.exit_code(), ready_at.get(name), vm.name)
        return results
    finally:
        for vm in vms.values():
            vm.shutdown()


def lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def check_ready_and_poweroff(boot: Boot, workload: str) -> None:
    assert boot.ready_after is not None, f"no ready line:\n{boot.console[-2000:]}"
    assert lines(boot.console, READY_LINE_PREFIX) == [f"sbtui-guest: ready workload={workload}"]
    assert f"sbtui-guest: finished workload={workload} status=0" in boot.console, boot.console[-2000:]
    assert boot.exit_code == 0, "the guest should power off, which ends QEMU with 0"


def console_marks(boot: Boot) -> list[str]:
    return [line[len(MARK_LINE_PREFIX):] for line in lines(boot.console, MARK_LINE_PREFIX)]


def debugcon_marks(boot: Boot) -> list[str]:
    """Lines on the debug console from the guest's first mark on (the firmware logs before)."""
    # sbmark prefixes each line with "@" and the guest's TSC in 16 hex digits
    # (engine/recording/markers.py); the text follows after a space.
    out = [re.sub(r"^@[0-9a-f]{16} ", "", line) for line in boot.debugcon.splitlines()]
    first = next(i for i, line in enumerate(out) if line.startswith("guest-ready "))
    return out[first:]


@pytest.fixture(scope="module")
def sbtool(demo_guest, tmp_path_factory) -> Path:
    """The guest's static sbtool binary, taken out of the initramfs, to run on the host."""
    entry = next(e for e in read_initramfs(demo_guest.initrd) if e.name == "bin/sbtool")
    path = tmp_path_factory.mktemp("sbtool") / "sbtool"
    path.write_bytes(entry.data)
    path.chmod(stat.S_IRWXU)
    return path


def host_env() -> dict[str, str]:
    # Without SBTUI_GUEST=1 the tools never touch I/O port 0x402 on the host.
    return {k: v for k, v in os.environ.items() if k != "SBTUI_GUEST"}


def test_memchurn_reaches_ready_runs_its_phases_and_powers_off(boots):
    boot = boots["memchurn"]
    check_ready_and_poweroff(boot, "memchurn")
    progress = lines(boot.console, "memchurn: ")
    phases = [re.match(r"memchurn: round (\d+) phase (\w+)", p) for p in progress]
    assert [(m.group(1), m.group(2)) for m in phases if m] == [
        (str(r), ph) for r in range(3) for ph in ("fill", "dup", "zero", "stride", "scan")]
    assert progress[0] == "memchurn: start mem=16MiB pages=4096"
    assert progress[-1].startswith("memchurn: done rounds=3 sum=")


def test_memchurn_marks_reach_the_debug_console_port(boots):
    boot = boots["memchurn"]
    marks = console_marks(boot)
    assert marks[0] == "guest-ready workload=memchurn"
    assert "memchurn round=0 phase=fill" in marks and "memchurn round=2 phase=scan" in marks
    assert len(marks) == 1 + 3 * 5
    assert debugcon_marks(boot) == marks  # port 0x402 got exactly what the console echoed


def test_memchurn_is_deterministic_inside_and_outside_the_guest(boots, sbtool):
    guest = lines(boots["memchurn"].console, "memchurn: ")
    host = subprocess.run([str(sbtool), "memchurn", "-m", "16"], capture_output=True, text=True,
                          env=host_env(), check=True, timeout=60).stdout
    assert lines(host, "memchurn: ") == guest
    assert len(lines(host, MARK_LINE_PREFIX)) == 15


def test_compress_runs_iterations_with_marks_and_matches_the_host(boots, sbtool, tmp_path):
    boot = boots["compress"]
    check_ready_and_poweroff(boot, "compress")
    iters = lines(boot.console, "compress: iter ")
    assert iters, boot.console[-2000:]
    m = re.fullmatch(r"compress: iter 0 bytes=1048576 bzip2=(\d+) gzip=(\d+) md5=([0-9a-f]{32}) ok",
                     iters[0])
    assert m, iters[0]
    assert lines(boot.console, "compress: done iterations=")
    marks = console_marks(boot)
    assert marks[:3] == ["guest-ready workload=compress", "compress iter=0 begin",
                         "compress iter=0 end"]
    assert debugcon_marks(boot) == marks

    data = tmp_path / "in"
    with open(data, "wb") as f:
        subprocess.run([str(sbtool), "sbgen", "0", "1048576"], stdout=f, check=True, timeout=60)
    assert hashlib.md5(data.read_bytes()).hexdigest() == m.group(3)
    bz = subprocess.run([str(find_busybox()), "bzip2", "-9", "-c", str(data)],
                        capture_output=True, check=True, timeout=60).stdout
    assert len(bz) == int(m.group(1))  # the same busybox, the same input: the same output


def test_idle_prints_heartbeats_and_ends_after_its_duration(boots):
    boot = boots["idle"]
    check_ready_and_poweroff(boot, "idle")
    beats = lines(boot.console, "idle: heartbeat ")
    assert beats[0] == "idle: heartbeat 0"
    assert beats == [f"idle: heartbeat {i}" for i in range(len(beats))]
    assert console_marks(boot) == ["guest-ready workload=idle"]


def test_unknown_workload_is_reported_by_the_guest_which_powers_off(boots):
    boot = boots["unknown"]
    assert READY_LINE_PREFIX not in boot.console
    err = lines(boot.console, "sbtui-guest: error: ")
    assert err and err[0].startswith("sbtui-guest: error: unknown workload 'nope' (known: ")
    assert "memchurn" in err[0]
    assert boot.exit_code == 0


def test_boot_to_ready_is_bounded_and_no_qemu_is_left(boots):
    for boot in boots.values():
        assert_no_qemu(boot.qemu_name)
    times = {n: b.ready_after for n, b in boots.items() if b.ready_after is not None}
    assert len(times) == 3
    # Four guests shared two cores here; one alone is ready in about 4-6 s.
    assert max(times.values()) < 60, times


def test_cli_boot_streams_the_console_and_ctrl_c_stops_qemu(demo_guest, tmp_path):
    tag = new_tag()
    env = {**os.environ, "SBTUI_QEMU_TAG": tag, "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "out"
    with open(out, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "sbtui", "guest", "boot", "-w", "idle"],
                                stdout=f, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while "idle: heartbeat 0" not in out.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        assert "sbtui-guest: ready workload=idle" in out.read_text()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
        assert b"interrupted" in proc.stderr.read()
        assert_no_qemu(tag, timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert_no_qemu(tag, timeout=5)
