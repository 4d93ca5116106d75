"""QemuProcess against a real QEMU (TCG): launch, QMP, console, events, fds, and clean ends.

The guest is the tiny multiboot program from ``tinyguest.py`` (boots in well
under a second), so each test can afford a VM of its own.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.errors import QemuDiedError, QemuLaunchError, QemuTimeoutError, QmpError
from engine.qemu import MachineSpec, QemuProcess
from procs import assert_no_qemu, new_tag, qemu_processes, wait_for_qemu
from tinyguest import MARKER, READY, build_tinyguest

pytestmark = pytest.mark.qemu
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_kernel(tmp_path_factory) -> str:
    return str(build_tinyguest(tmp_path_factory.mktemp("tinyguest")))


@pytest.fixture
def spec(tiny_kernel) -> MachineSpec:
    return MachineSpec(memory_mib=64, kernel=tiny_kernel)


async def test_launch_qmp_shutdown_leaves_no_qemu(spec):
    t0 = time.monotonic()
    vm = QemuProcess(spec)
    async with vm:
        assert qemu_processes(vm.name), "QEMU should run under its -name marker"
        status = await vm.qmp("query-status")
        assert status["status"] == "running"
        workdir = vm.workdir
        assert workdir is not None and (workdir.stat().st_mode & 0o777) == 0o700
        t_shutdown = time.monotonic()
    shutdown_s = time.monotonic() - t_shutdown
    print(f"\nlaunch-to-QMP {vm.launch_seconds:.3f} s, shutdown {shutdown_s:.3f} s, "
          f"total {time.monotonic() - t0:.3f} s")
    assert vm.returncode == 0  # 'quit' worked: no signal was needed
    assert not workdir.exists()
    assert_no_qemu(vm.name, timeout=0.5)


async def test_exception_inside_async_with_leaves_no_qemu(spec):
    vm = QemuProcess(spec)
    with pytest.raises(RuntimeError, match="boom"):
        async with vm:
            await vm.qmp("query-status")
            raise RuntimeError("boom")
    assert_no_qemu(vm.name, timeout=0.5)


async def test_cancelled_task_leaves_no_qemu(spec):
    vm = QemuProcess(spec)
    started = asyncio.Event()

    async def user():
        async with vm:
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(user())
    await asyncio.wait_for(started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_no_qemu(vm.name, timeout=0.5)


async def test_bad_argument_raises_launch_error_with_log_tail(spec):
    vm = QemuProcess(spec.replace(extra_args=("-no-such-option",)))
    with pytest.raises(QemuLaunchError) as info:
        await vm.launch()
    err = info.value
    assert err.exit_code == 1
    assert "-no-such-option" in err.log_tail
    assert "invalid option" in str(err)          # QEMU's own words, from the log tail
    assert "exit code 1" in str(err)
    assert "-no-such-option" in err.argv
    assert_no_qemu(vm.name, timeout=0.5)
    assert not vm.workdir.exists()


async def test_missing_kernel_is_a_launch_error_naming_the_file(spec, tmp_path):
    missing = tmp_path / "no-such-vmlinuz"
    with pytest.raises(QemuLaunchError) as info:
        async with QemuProcess(spec.replace(kernel=str(missing))):
            pass
    assert str(missing) in str(info.value)


async def test_killed_qemu_raises_died_on_next_command_not_a_hang(spec):
    async with QemuProcess(spec) as vm:
        await vm.console.wait_for(READY, timeout=20)
        os.kill(vm.pid, signal.SIGKILL)
        with pytest.raises(QemuDiedError) as info:
            await asyncio.wait_for(vm.qmp("query-status"), 10)
        assert info.value.exit_code == -signal.SIGKILL
        assert "query-status" in str(info.value)
        with pytest.raises(QemuDiedError):
            await asyncio.wait_for(vm.console.wait_for("never printed", timeout=60), 10)
        with pytest.raises(QemuDiedError):
            await vm.hmp("info status")
    assert_no_qemu(vm.name, timeout=0.5)


async def test_qmp_error_names_the_command(spec):
    async with QemuProcess(spec) as vm:
        with pytest.raises(QmpError, match="no-such-command.*CommandNotFound"):
            await vm.qmp("no-such-command")
        with pytest.raises(QmpError, match="'stop'.*|x-no-arg"):
            await vm.qmp("stop", {"x-no-arg": 1})
        with pytest.raises(QmpError, match="HMP command 'savevm s1' failed"):
            await vm.hmp("savevm s1")  # no qcow2 attached for VM state
        assert "VM status: running" in await vm.hmp("info status")
        # The connection survives errors.
        assert (await vm.qmp("query-status"))["running"] is True


async def test_console_wait_for_send_and_guest_reaction(spec, tmp_path):
    debugcon = tmp_path / "debugcon.log"
    capture = tmp_path / "console.log"
    async with QemuProcess(spec.replace(debugcon_path=str(debugcon)),
                           console_path=capture) as vm:
        con = vm.console
        m = await con.wait_for(READY, timeout=20)
        assert con.cursor == m.end()
        await con.send("a")
        m = await con.wait_for(re.compile(r"got (\w)"), timeout=10)
        assert m.group(1) == b"a"
        await con.send(b"bc")
        await con.wait_for("got c", timeout=10)
        # The cursor moved past "got c": an old text is not found again.
        t0 = time.monotonic()
        with pytest.raises(QemuTimeoutError) as info:
            await con.wait_for("got a", timeout=0.5)
        assert time.monotonic() - t0 < 5
        assert "got c" in str(info.value)            # the message shows the console's tail
        assert (await con.wait_for("got a", timeout=1, start=0)).start() == m.start()
        assert MARKER in debugcon.read_text(errors="replace")
    assert vm.console.output.startswith(READY.encode())
    assert capture.read_bytes() == vm.console.output


async def test_events_via_listener_callbacks_and_guest_shutdown(spec):
    seen = []
    async with QemuProcess(spec) as vm:
        vm.add_event_callback(lambda ev: seen.append(ev["event"]))
        await vm.console.wait_for(READY, timeout=20)
        with vm.listen("STOP", "RESUME") as events:
            await vm.qmp("stop")
            assert (await events.get(timeout=10))["event"] == "STOP"
            await vm.qmp("cont")
            assert (await events.get(timeout=10))["event"] == "RESUME"
            with pytest.raises(QemuTimeoutError):
                await events.get(timeout=0.2)
        with vm.listen("SHUTDOWN") as events:
            await vm.console.send("q")  # the guest powers off
            ev = await events.get(timeout=10)
            assert ev["data"]["reason"] == "guest-shutdown"
            assert await vm.wait_exit(10) == 0
            # Iteration ends once QEMU is gone and the queue is empty.
            assert [e async for e in events] == []
        with pytest.raises(QemuDiedError, match="exit code 0"):
            await vm.qmp("query-status")
    assert seen[:3] == ["STOP", "RESUME", "SHUTDOWN"]
    assert [e["event"] for e in vm.events_seen][:3] == ["STOP", "RESUME", "SHUTDOWN"]


async def test_send_fd_streams_a_live_vm_into_an_incoming_one(spec):
    """The replay path: a migration stream handed over as ``fd:NAME`` on both ends."""
    async with QemuProcess(spec) as src, QemuProcess(spec.replace(incoming_defer=True)) as dst:
        await src.console.wait_for(READY, timeout=20)
        await src.console.send("a")
        await src.console.wait_for("got a", timeout=10)
        r, w = os.pipe()
        try:
            await dst.send_fd(r, "stream-in")
            await src.send_fd(w, "stream-out")
        finally:
            os.close(r)
            os.close(w)
        await src.qmp("migrate-set-parameters", {"max-bandwidth": 1 << 34})
        await dst.qmp("migrate-set-capabilities",
                      {"capabilities": [{"capability": "events", "state": True}]})
        with dst.listen("MIGRATION") as events:
            await dst.qmp("migrate-incoming", {"uri": "fd:stream-in"})
            await src.qmp("migrate", {"uri": "fd:stream-out"})
            while (await events.get(timeout=30))["data"]["status"] != "completed":
                pass
        await dst.qmp("cont")
        await dst.console.send("z")
        await dst.console.wait_for("got z", timeout=10)
        with pytest.raises(QmpError, match="getfd"):
            await dst.qmp("getfd", {"fdname": "nothing-sent"})


_CHILD = textwrap.dedent("""
    import asyncio, sys
    from engine.qemu import MachineSpec, QemuProcess

    async def main():
        vm = QemuProcess(MachineSpec(memory_mib=64, kernel={kernel!r}), log_path={log!r})
        try:
            async with vm:
                await vm.console.wait_for("tinyguest: ready", timeout=30)
                print("READY", vm.name, flush=True)
                await asyncio.Event().wait()
        finally:
            print("QEMU-EXIT", vm.returncode, flush=True)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        sys.exit(130)
""")


def _start_child(tiny_kernel: str, tag: str, log: Path) -> subprocess.Popen:
    code = _CHILD.format(kernel=tiny_kernel, log=str(log))
    env = dict(os.environ, SBTUI_QEMU_TAG=tag, PYTHONPATH=str(REPO))
    # Its own process group, like a command in a terminal: killpg plays Ctrl-C.
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                             start_new_session=True)
    line = child.stdout.readline()  # bounded by the child's own 30 s wait_for
    if not line.startswith("READY"):
        child.kill()
        raise AssertionError(f"child did not start: {line!r} {child.stderr.read()}")
    return child


def test_ctrl_c_to_driver_process_group_shuts_qemu_down_cleanly(tiny_kernel, tmp_path):
    tag = new_tag()
    log = tmp_path / "qemu.log"
    child = _start_child(tiny_kernel, tag, log)
    try:
        assert len(wait_for_qemu(tag)) == 1
        os.killpg(child.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        out, err = child.communicate(timeout=30)
        assert child.returncode == 130, err
        assert "INTERRUPTED" in out
        # QEMU left through our 'quit' (exit 0), not through the SIGINT.
        assert "QEMU-EXIT 0" in out, out
        assert "terminating on signal" not in log.read_text()
        assert_no_qemu(tag, timeout=0.5)  # gone before the driver exited
    finally:
        child.kill()
        child.communicate(timeout=10)


def test_sigkill_of_python_parent_kills_qemu(tiny_kernel, tmp_path):
    tag = new_tag()
    child = _start_child(tiny_kernel, tag, tmp_path / "qemu.log")
    try:
        assert len(wait_for_qemu(tag)) == 1
        child.kill()
        child.communicate(timeout=10)
        assert_no_qemu(tag, timeout=5)  # PR_SET_PDEATHSIG
    finally:
        child.kill()
        child.communicate(timeout=10)
