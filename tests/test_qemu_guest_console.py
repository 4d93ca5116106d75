"""The console channel with real guests: the demo guest's ready line and tty echo,
and a record/replay pair whose consoles match byte for byte."""

from __future__ import annotations

import re
import time

import pytest

from engine.guest import READY_LINE_PREFIX
from engine.qemu import MachineSpec, QemuProcess
from procs import assert_no_qemu
from tinyguest import MARKER, READY, build_tinyguest

pytestmark = pytest.mark.qemu


async def test_demo_guest_ready_line_and_console_input_echoed_by_the_guest(demo_guest):
    spec = MachineSpec(kernel=str(demo_guest.kernel), initrd=str(demo_guest.initrd),
                       append=demo_guest.append_for("idle"))
    t0 = time.monotonic()
    async with QemuProcess(spec) as vm:
        # The whole line, not just its start: the rest may still be in flight.
        m = await vm.console.wait_for(re.compile(re.escape(READY_LINE_PREFIX) + r" ([^\r\n]+)\r*\n"),
                                      timeout=90)
        print(f"\ndemo guest ready {time.monotonic() - t0:.1f} s after launch")
        assert m.group(1) == b"workload=idle"
        # Nobody reads ttyS0 in this guest, but its tty layer echoes what
        # arrives: the byte went in through our channel and came back out.
        await vm.console.send("sbtui-echo-$((6*7))\r")
        await vm.console.wait_for("sbtui-echo-$((6*7))", timeout=20)
    assert_no_qemu(vm.name, timeout=0.5)


async def test_record_and_replay_consoles_match_and_replay_ignores_input(tmp_path):
    kernel = str(build_tinyguest(tmp_path / "guest"))
    spec = MachineSpec(memory_mib=64, kernel=kernel, icount_shift=3, rr="record",
                       rrfile=str(tmp_path / "replay.bin"),
                       debugcon_path=str(tmp_path / "debugcon-record.log"))
    async with QemuProcess(spec) as rec:
        await rec.console.wait_for(READY, timeout=20)
        for ch in "xyz":
            await rec.console.send(ch)
            await rec.console.wait_for(f"got {ch}", timeout=10)
        assert (await rec.qmp("query-replay"))["mode"] == "record"
        await rec.console.send("q")  # the guest powers off: the recording ends
        assert await rec.wait_exit(20) == 0
    recorded = rec.console.output
    assert recorded.endswith(b"got z\r\nbye\r\n")

    replay_spec = spec.with_rr("replay").replace(
        debugcon_path=str(tmp_path / "debugcon-replay.log"))
    async with QemuProcess(replay_spec) as rep:
        assert (await rep.qmp("query-replay"))["mode"] == "play"
        await rep.console.send("abc")  # replay takes input from the log only
        assert await rep.wait_exit(60) == 0  # replay ends at the end of the log
    assert rep.console.output == recorded
    assert MARKER in (tmp_path / "debugcon-replay.log").read_text(errors="replace")
