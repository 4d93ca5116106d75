"""Live checkpoints: ``sbtui attach`` to a QEMU the test started, ``sbtui record --live``,
and a live checkpoint started as a new VM ("go live from here").

The guest is the tiny multiboot program (``tinyguest.py``): it answers each
console byte with ``got X``, so "the guest still runs" is checked by talking
to it, not only by asking QEMU.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading

import pytest

from engine.qemu import MachineSpec, QemuProcess
from engine.qemu.process import TAG_ENV
from engine.recording.format import Recording
from test_recording_support import REPO, manifest, tagged_qemus
from tinyguest import READY, build_tinyguest

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def tiny_kernel(tmp_path_factory) -> str:
    return str(build_tinyguest(tmp_path_factory.mktemp("tinyguest")))


async def sbtui_async(*args: str, tag: str, env: dict | None = None, timeout: float = 120):
    """The ``sbtui`` command as a child, awaited (the test's own QEMU keeps running meanwhile)."""
    full = {**os.environ, TAG_ENV: tag, **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sbtui", *args, cwd=REPO, env=full,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out, err


async def talk(vm: QemuProcess, ch: str) -> None:
    await vm.console.send(ch)
    await vm.console.wait_for(f"got {ch}", timeout=10)


async def test_attach_takes_live_checkpoints_and_detaches_leaving_the_guest_running(
        tiny_kernel, tmp_path):
    sock = tmp_path / "qmp.sock"
    rec_path = tmp_path / "live"
    with tagged_qemus() as tag:
        spec = MachineSpec(memory_mib=64, kernel=tiny_kernel,
                           extra_args=("-qmp", f"unix:{sock},server=on,wait=off"))
        async with QemuProcess(spec) as vm:
            await vm.console.wait_for(READY, timeout=10)
            await talk(vm, "a")
            caps_before = await vm.qmp("query-migrate-capabilities")
            bw_before = (await vm.qmp("query-migrate-parameters"))["max-bandwidth"]
            code, out, err = await sbtui_async("attach", str(sock), str(rec_path), "--count", "3",
                                               "--interval", "0.3", "--json", tag=tag)
            assert code == 0, err.decode(errors="replace")
            assert b"sbtui attach: detached" in err and b"sbtui record:" not in err
            # Detached: the guest runs on, answers, and QEMU's settings are as before.
            assert (await vm.qmp("query-status"))["status"] == "running"
            await talk(vm, "b")
            assert await vm.qmp("query-migrate-capabilities") == caps_before
            assert (await vm.qmp("query-migrate-parameters"))["max-bandwidth"] == bw_before
            # Attaching again adds to the same live recording.
            code, out2, err2 = await sbtui_async("attach", str(sock), str(rec_path), "--count", "1",
                                                 "--json", tag=tag)
            assert code == 0, err2.decode(errors="replace")
            await talk(vm, "c")
            assert vm.alive
    summary = json.loads(out)
    assert summary["kind"] == "live" and summary["checkpoints"] == 3
    assert summary["downtime_ms_median"] is not None
    assert b"detached" in err and b"the guest runs on" in err
    m = manifest(rec_path)
    assert m["kind"] == "live" and m["status"] == "complete"
    assert m["source"]["pid"] and any("qemu-system" in a for a in m["source"]["argv"][:1])
    cps = Recording.open(rec_path).checkpoints()
    assert [c.index for c in cps] == [0, 1, 2, 3]
    assert all(c.origin == "live" and c.icount == 0 for c in cps)


async def test_a_live_checkpoint_starts_as_a_new_vm(tiny_kernel, tmp_path):
    """'Go live from here': a new QEMU loads the checkpoint and the guest carries on."""
    sock = tmp_path / "qmp.sock"
    rec_path = tmp_path / "live"
    with tagged_qemus() as tag:
        spec = MachineSpec(memory_mib=64, kernel=tiny_kernel,
                           extra_args=("-qmp", f"unix:{sock},server=on,wait=off"))
        async with QemuProcess(spec) as vm:
            await vm.console.wait_for(READY, timeout=10)
            await talk(vm, "x")
            code, _out, err = await sbtui_async("attach", str(sock), str(rec_path), "--count", "1",
                                                tag=tag)
            assert code == 0, err.decode(errors="replace")
        rec = Recording.open(rec_path)
        cp = rec.checkpoints()[0]
        new = MachineSpec(memory_mib=64, kernel=tiny_kernel, incoming_defer=True)
        async with QemuProcess(new) as vm2:
            rfd, wfd = os.pipe()
            try:
                await vm2.send_fd(rfd, "ck")
            finally:
                os.close(rfd)

            def feed():
                with os.fdopen(wfd, "wb") as dst:
                    rec.store.export_stream(cp.store_id, dst)
            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
            await vm2.qmp("migrate-incoming", {"uri": "fd:ck"})
            status = ""
            for _ in range(600):        # bounded: 60 s
                status = (await vm2.qmp("query-migrate")).get("status", "")
                if status in ("completed", "failed"):
                    break
                await asyncio.sleep(0.1)
            await asyncio.to_thread(feeder.join, 30)
            assert status == "completed"
            await vm2.qmp("cont")
            # The restored guest is the one that was running: it answers, and 'q' powers it off.
            await talk(vm2, "y")
            await vm2.console.send("q")
            await vm2.console.wait_for("bye", timeout=10)
            assert await vm2.wait_exit(10) == 0


@pytest.mark.parametrize("kind", ["missing", "regular-file", "no-listener"])
async def test_attach_to_a_bad_qmp_path_gives_a_clear_error(kind, tmp_path):
    path = tmp_path / "qmp.sock"
    if kind == "regular-file":
        path.write_text("not a socket")
    elif kind == "no-listener":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()          # the path stays, nobody listens
    with tagged_qemus() as tag:
        code, out, err = await sbtui_async("attach", str(path), str(tmp_path / "rec"), tag=tag,
                                           timeout=60)
    text = err.decode(errors="replace")
    assert code == 2, text
    assert f"cannot attach to {path}" in text and "-qmp unix:" in text
    expected = {"missing": "no such file", "regular-file": "not a UNIX socket",
                "no-listener": "nobody is listening"}[kind]
    assert expected in text
    assert not (tmp_path / "rec").exists()


async def test_record_live_starts_the_guest_and_checkpoints_it(tiny_kernel, tmp_path):
    rec_path = tmp_path / "live"
    with tagged_qemus() as tag:
        code, out, err = await sbtui_async("record", str(rec_path), "--live", "--kernel", tiny_kernel,
                                           "--memory", "64", "--interval", "0.3", "--duration", "2",
                                           "--headless", "--json", tag=tag,
                                           env={"SBTUI_ACCEL": "tcg"})
    assert code == 0, err.decode(errors="replace")
    summary = json.loads(out)
    assert summary["kind"] == "live" and summary["status"] == "complete"
    rec = Recording.open(rec_path)
    assert rec.manifest.kind == "live" and rec.manifest.spec.get("rr") is None
    cps = rec.checkpoints()
    assert len(cps) == summary["checkpoints"] >= 2
    assert all(c.origin == "live" for c in cps)
    assert READY.encode() in rec.console_bytes()
    with pytest.raises(Exception, match="live recording has no replay log"):
        rec.replay_log(tmp_path)
