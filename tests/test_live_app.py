"""Live mode in the app: ``sbtui attach`` and ``sbtui record --live`` as live sessions.

* engine: :class:`engine.recording.live.LiveAttach` under
  :func:`engine.live.start_live_session` on a QEMU the test started: periodic
  checkpoints, checkpoint now, pause and resume (seen by QEMU itself, over
  the test's own QMP monitor: the attach uses a second ``-qmp`` socket),
  none taken while paused; the console is not ours; closing detaches, puts
  the migration settings back, and leaves the guest running (or paused, when
  the user paused it: then the detach note says so); no thread of ours is
  left. The same for ``LiveRecorder`` (its console is ours; closing stops
  the guest);
* app: a Pilot test on a real attach session: checkpoints appear, c adds
  one, p pauses and resumes (status bar and QEMU agree), the console panel
  says whose console it is, q detaches and the guest runs on;
* tmux end to end: ``sbtui attach`` in a terminal (checkpoints appear, q
  detaches, the user's QEMU runs on, sbtui is gone) and ``sbtui record
  --live`` (checkpoints appear, q stops it, nothing is left running).

The guest is the tiny multiboot program (``tinyguest.py``): it answers each
console byte with ``got X``, so "the guest runs" is checked by talking to it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
import time

import pytest

from engine.api import GuestState
from engine.errors import UsageError
from engine.live import start_live_session
from engine.qemu import MachineSpec, QemuProcess
from engine.recording.format import Recording
from engine.recording.live import LiveAttach, LiveRecorder
from sbtui.app import SbtuiApp
from sbtui.screens.session import SessionScreen
from sbtui.widgets.checkpoint_table import CheckpointTable
from sbtui.widgets.status_bar import StatusBar
from test_recording_support import manifest, tagged_qemus
from tinyguest import READY, build_tinyguest

pytestmark = pytest.mark.qemu

INTERVAL = 0.5


@pytest.fixture(scope="module")
def tiny_kernel(tmp_path_factory) -> str:
    return str(build_tinyguest(tmp_path_factory.mktemp("tinyguest")))


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SBTUI_CONFIG_DIR", str(tmp_path / "config"))


def users_qemu(kernel: str, sock) -> QemuProcess:
    """The QEMU "the user" started: the test talks to it over its own QMP monitor,
    sbtui attaches to the second one at ``sock``."""
    spec = MachineSpec(memory_mib=64, kernel=kernel,
                       extra_args=("-qmp", f"unix:{sock},server=on,wait=off"))
    return QemuProcess(spec)


async def talk(vm: QemuProcess, ch: str) -> None:
    await vm.console.send(ch)
    await vm.console.wait_for(f"got {ch}", timeout=10)


async def run_state(vm: QemuProcess) -> str:
    return (await vm.qmp("query-status"))["status"]


async def wait_until(condition, what: str, timeout: float = 60.0):
    """Bounded wait on a condition that may block (it runs in a thread)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(condition)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.1)


def recorder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sbtui-recorder" and t.is_alive()]


def count(session) -> int:
    return len(session.recording.checkpoints())


async def test_attach_session_checkpoints_pauses_resumes_and_detaches_leaving_the_guest_running(
        tiny_kernel, tmp_path):
    sock, rec_path = tmp_path / "qmp.sock", tmp_path / "live"
    with tagged_qemus():
        async with users_qemu(tiny_kernel, sock) as vm:
            await vm.console.wait_for(READY, timeout=10)
            caps_before = await vm.qmp("query-migrate-capabilities")
            bw_before = (await vm.qmp("query-migrate-parameters"))["max-bandwidth"]
            session = await asyncio.to_thread(
                start_live_session, LiveAttach(sock, rec_path, interval=INTERVAL))
            try:
                live = session.live
                st = session.recording.status()
                assert st.attached and st.state is GuestState.RUNNING
                await wait_until(lambda: count(session) >= 2, "two periodic checkpoints")
                # checkpoint now
                before = count(session)
                row = await live.checkpoint_now()
                assert count(session) == before + 1 and row.index == before
                # pause: QEMU says so, the header says so, no periodic checkpoint meanwhile
                await live.pause()
                assert await run_state(vm) == "paused"
                assert session.recording.status().state is GuestState.PAUSED
                paused_at = count(session)
                await asyncio.sleep(4 * INTERVAL)
                assert count(session) == paused_at
                # a checkpoint asked for while paused is taken, and the guest stays paused
                await live.checkpoint_now()
                assert count(session) == paused_at + 1
                assert await run_state(vm) == "paused"
                # resume: QEMU runs, the guest answers, periodic checkpoints go on
                await live.resume()
                assert await run_state(vm) == "running"
                assert session.recording.status().state is GuestState.RUNNING
                await talk(vm, "a")
                await wait_until(lambda: count(session) >= paused_at + 2, "a checkpoint after resume")
                # the console and going live are not ours to offer
                assert "QEMU you started" in live.console_note
                with pytest.raises(UsageError, match="QEMU you started"):
                    await live.send_console("x")
                with pytest.raises(UsageError, match="sbtui attach"):
                    await asyncio.to_thread(session.go_live, row.id)
                assert not list(tmp_path.glob("live-golive-*")), "a refused go-live left a directory"
            finally:
                await asyncio.to_thread(session.close)
            assert session.error is None
            assert session.summary.status == "interrupted"
            assert not recorder_threads(), "the recorder's loop thread outlived the session"
            # detached: the guest runs on, answers, and QEMU's settings are as before
            assert await run_state(vm) == "running"
            await talk(vm, "b")
            assert await vm.qmp("query-migrate-capabilities") == caps_before
            assert (await vm.qmp("query-migrate-parameters"))["max-bandwidth"] == bw_before
            assert vm.alive
    m = manifest(rec_path)
    assert m["kind"] == "live" and m["status"] == "interrupted" and m["error"] is None
    cps = Recording.open(rec_path).checkpoints()
    assert [c.index for c in cps] == list(range(len(cps))) and len(cps) >= 5


async def test_detaching_from_a_guest_the_user_paused_leaves_it_paused_and_says_so(
        tiny_kernel, tmp_path):
    sock = tmp_path / "qmp.sock"
    with tagged_qemus():
        async with users_qemu(tiny_kernel, sock) as vm:
            await vm.console.wait_for(READY, timeout=10)
            job = LiveAttach(sock, tmp_path / "live", interval=INTERVAL)
            session = await asyncio.to_thread(start_live_session, job)
            try:
                await wait_until(lambda: count(session) >= 1, "the first checkpoint")
                await session.live.pause()
            finally:
                await asyncio.to_thread(session.close)
            assert session.error is None
            assert await run_state(vm) == "paused"
            assert "stays paused, as you left it" in job.detach_note
            await vm.qmp("cont")
            await talk(vm, "c")


async def test_record_live_session_types_to_its_console_pauses_and_stops_the_guest(
        tiny_kernel, tmp_path, monkeypatch):
    rec_path = tmp_path / "live"
    with tagged_qemus():
        spec = MachineSpec(memory_mib=64, kernel=tiny_kernel)
        recorder = LiveRecorder(rec_path, spec, interval=INTERVAL)
        session = await asyncio.to_thread(start_live_session, recorder)
        try:
            live = session.live
            assert live.console_note is None
            assert not session.recording.status().attached
            await wait_until(lambda: count(session) >= 2, "two periodic checkpoints")
            await wait_until(lambda: READY in session.recording.console_text(), "the guest's banner")
            await live.send_console("z")
            await wait_until(lambda: "got z" in session.recording.console_text(), "the answer to z")
            await live.pause()
            # QEMU's QMP client lives on the recorder's loop: ask it there
            status = await asyncio.wrap_future(session._rloop.submit(recorder.vm.qmp("query-status")))
            assert status["status"] == "paused"
            assert session.recording.status().state is GuestState.PAUSED
            await live.resume()
            assert session.recording.status().state is GuestState.RUNNING
            before = count(session)
            await live.checkpoint_now()
            assert count(session) == before + 1
        finally:
            await asyncio.to_thread(session.close)
        assert session.error is None and session.summary.status == "interrupted"
        assert not recorder_threads()
    # tagged_qemus: the guest's QEMU is gone
    assert manifest(rec_path)["status"] == "interrupted"


def status_text(screen) -> str:
    return str(screen.query_one(StatusBar).render())


async def test_app_on_an_attach_session_shows_checkpoints_pause_and_resume(tiny_kernel, tmp_path):
    sock = tmp_path / "qmp.sock"
    with tagged_qemus():
        async with users_qemu(tiny_kernel, sock) as vm:
            await vm.console.wait_for(READY, timeout=10)
            session = await asyncio.to_thread(
                start_live_session, LiveAttach(sock, tmp_path / "live", interval=1.0))
            app = SbtuiApp(session)
            try:
                async with app.run_test(size=(160, 48)) as pilot:
                    screen = app.screen
                    assert isinstance(screen, SessionScreen)

                    async def until(condition, what, timeout=30.0):
                        deadline = time.monotonic() + timeout
                        while not condition():
                            assert time.monotonic() < deadline, f"timed out waiting for {what}"
                            await pilot.pause(0.1)

                    table = screen.query_one(CheckpointTable)
                    await until(lambda: len(screen.rows) >= 1, "the first checkpoint in the table")
                    assert "attached" in status_text(screen) and "running" in status_text(screen)
                    note = str(screen.query_one("#console-note").render())
                    assert "belongs to the QEMU you started" in note
                    assert not screen.query("#console-input")     # typing is not offered
                    # c: a checkpoint now
                    n = len(screen.rows)
                    await pilot.press("c")
                    await until(lambda: len(screen.rows) > n, "the checkpoint taken with c")
                    # p: paused, in the header and for QEMU
                    await pilot.press("p")
                    await until(lambda: "paused" in status_text(screen), "'paused' in the header")
                    assert await run_state(vm) == "paused"
                    assert "attached" in status_text(screen)
                    # p again: running
                    await pilot.press("p")
                    await until(lambda: "running" in status_text(screen), "'running' in the header")
                    assert await run_state(vm) == "running"
                    assert table.border_title.startswith("checkpoints (")
                    await pilot.press("q")
                    await until(lambda: not app.is_running, "the app to exit", timeout=60)
            finally:
                await asyncio.to_thread(session.close)   # idempotent; the app closed it on q
            assert session.error is None
            assert not recorder_threads()
            assert await run_state(vm) == "running"
            await talk(vm, "d")


# -- end to end in a terminal ---------------------------------------------------------

def _tmux_ready() -> bool:
    from test_app_e2e_tmux import SBTUI
    return shutil.which("tmux") is not None and SBTUI.exists()


needs_tmux = pytest.mark.skipif(not _tmux_ready(), reason="tmux or .venv/bin/sbtui missing")
COUNTED = re.compile(r"checkpoints \([1-9]")


@needs_tmux
async def test_attach_in_a_terminal_shows_checkpoints_and_q_detaches_leaving_the_guest_running(
        tiny_kernel, tmp_path):
    from test_app_e2e_tmux import Terminal, alive, checkpoint_count
    sock, rec_path = tmp_path / "qmp.sock", tmp_path / "live"
    with tagged_qemus() as tag:
        async with users_qemu(tiny_kernel, sock) as vm:
            await vm.console.wait_for(READY, timeout=10)
            term = await asyncio.to_thread(Terminal, tmp_path, "attach", str(sock), str(rec_path),
                                           "--interval", "1", tag=tag)
            try:
                # one wait per thing: a capture can catch the screen half drawn
                screen = await asyncio.to_thread(term.wait, COUNTED, 60)
                first = checkpoint_count(screen)
                await asyncio.to_thread(term.wait, "attached · running", 10)
                await asyncio.to_thread(term.wait, "console belongs to", 10)
                screen = await asyncio.to_thread(term.wait, "Checkpoint now", 10)   # the footer
                assert "Type to console" not in screen             # not offered: not ours
                await asyncio.to_thread(term.wait, re.compile(rf"checkpoints \((?!{first}\))\d"), 60)
                term.keys("p")
                await asyncio.to_thread(term.wait, "attached · paused", 30)
                assert await run_state(vm) == "paused"
                term.keys("p")
                await asyncio.to_thread(term.wait, "attached · running", 30)
                assert await run_state(vm) == "running"
                term.keys("q")
                await asyncio.to_thread(term.wait_exit, 60)
                after = await asyncio.to_thread(term.wait, "the guest runs on", 10)
                assert "detached;" in after
            finally:
                await asyncio.to_thread(term.close)
            assert not alive(term.pid)
            # the user's QEMU runs on and answers
            assert vm.alive and await run_state(vm) == "running"
            await talk(vm, "e")
    m = manifest(rec_path)
    assert m["status"] == "interrupted" and m["error"] is None, (m["status"], m["error"])
    assert len(Recording.open(rec_path).checkpoints()) >= 2


@needs_tmux
def test_record_live_in_a_terminal_shows_checkpoints_and_q_stops_it(tiny_kernel, tmp_path):
    from procs import assert_no_qemu, new_tag
    from test_app_e2e_tmux import Terminal, alive
    tag = new_tag()
    rec_path = tmp_path / "live"
    term = Terminal(tmp_path, "record", str(rec_path), "--live", "--kernel", tiny_kernel,
                    "--memory", "64", "--interval", "1", tag=tag, env={"SBTUI_ACCEL": "tcg"})
    try:
        term.wait(COUNTED, 60)
        # one wait per thing: a capture can catch the screen half drawn
        term.wait("console (live)", 10)
        term.wait("Type to console", 10)                       # the console is ours
        screen = term.wait(READY, 30)                          # the guest's own console, shown
        assert "attached" not in screen
        term.keys("q")
        term.wait_exit(60)
    finally:
        term.close()
    assert not alive(term.pid)
    assert_no_qemu(tag)
    m = manifest(rec_path)
    assert m["kind"] == "live" and m["status"] == "interrupted" and m["error"] is None
