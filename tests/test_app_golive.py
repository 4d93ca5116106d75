"""Going live in the app: ``L`` on a checkpoint opens a live session screen on a new VM.

* fake session: the progress box shows while the VM starts, then the live
  screen (its recording's path on screen, checkpoints growing, console
  input going to the new VM, q typed there goes to the guest); Esc or q
  stops that VM and comes back to the screen it came from, and q there still
  quits; going live again from the go-live screen chains; Ctrl+Q on a
  go-live screen stops every go-live VM; a failure shows the error dialog
  and leaves the session screen as it was; ``sbtui attach`` sessions do not
  offer L;
* a real saved recording (``demo_recording``, memchurn): L opens the live
  screen on a real go-live VM, its checkpoints appear, c adds one, Esc comes
  back to the original screen and no QEMU of that go-live is left; the new
  recording sits next to the source and names it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from sbtui.app import SbtuiApp
from sbtui.fake_session import FakeSession
from sbtui.screens.error_dialog import ErrorDialog
from sbtui.screens.golive import GoingLiveScreen, GoLiveSessionScreen
from sbtui.screens.session import SessionScreen
from sbtui.widgets.checkpoint_table import CheckpointTable

SIZE = (160, 48)


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SBTUI_CONFIG_DIR", str(tmp_path / "config"))


async def wait_for(pilot, condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.02)


def console_lines(screen) -> str:
    return "\n".join(screen.query_one("#console-log").lines)


async def test_fake_l_opens_a_live_screen_and_escape_stops_it_and_comes_back():
    session = FakeSession(30, latency=0.5, live_interval=0.2)
    app = SbtuiApp(session)
    async with app.run_test(size=SIZE) as pilot:
        origin = app.screen
        await wait_for(pilot, lambda: origin.rows, what="rows")
        assert origin.check_action("go_live", ()) is True       # offered on a saved recording
        await pilot.press("down", "down", "L")
        await wait_for(pilot, lambda: isinstance(app.screen, GoingLiveScreen), what="progress box")
        await wait_for(pilot, lambda: "loading checkpoint #2" in str(
            app.screen.query_one("#golive-phase").render()), what="progress phase")
        await wait_for(pilot, lambda: isinstance(app.screen, GoLiveSessionScreen), what="live screen")
        live = app.screen
        [child] = session.golive_sessions
        assert live.session is child and live.row.index == 2
        await wait_for(pilot, lambda: live.is_mounted and live.query_one("#checkpoints")
                       .border_subtitle == f"recording into {child.path}", what="the path on screen")
        assert child.path.endswith("fake-golive-2")
        await wait_for(pilot, lambda: len(live.rows) >= 3, what="the new VM's checkpoints")
        await wait_for(pilot, lambda: "went live from checkpoint #2" in console_lines(live),
                       what="the new VM's console")
        # the console is the new VM's; q typed there goes to the guest, not away
        await pilot.press("i", "q", "enter")
        await wait_for(pilot, lambda: child.live.sent == ["q\n"], what="console input")
        assert app.screen is live
        await pilot.press("escape")          # leaves the console input
        assert isinstance(app.focused, CheckpointTable) and app.screen is live
        await pilot.press("escape")          # leaves the go-live screen, stopping its VM
        await wait_for(pilot, lambda: app.screen is origin, what="back to the original screen")
        assert child.closed and not session.closed and app.is_running
        # q on a go-live screen comes back too
        await pilot.press("L")
        await wait_for(pilot, lambda: isinstance(app.screen, GoLiveSessionScreen), what="live again")
        second = session.golive_sessions[1]
        await pilot.press("q")
        await wait_for(pilot, lambda: app.screen is origin and second.closed, what="q comes back")
        assert app.is_running
        await pilot.press("q")               # on the original screen, q quits
        await wait_for(pilot, lambda: session.closed, what="the app quits")
    assert app.return_code == 0


async def test_fake_go_live_chains_and_ctrl_q_stops_every_go_live_vm():
    session = FakeSession(20, live_interval=0.2)
    app = SbtuiApp(session)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.screen.rows, what="rows")
        await pilot.press("L")
        await wait_for(pilot, lambda: isinstance(app.screen, GoLiveSessionScreen), what="live screen")
        first = app.screen
        await wait_for(pilot, lambda: first.rows, what="rows of the first go-live")
        await pilot.press("L")               # from a checkpoint of the go-live recording
        await wait_for(pilot, lambda: isinstance(app.screen, GoLiveSessionScreen)
                       and app.screen is not first, what="the chained live screen")
        [child] = session.golive_sessions
        [grandchild] = child.golive_sessions
        assert app.screen.session is grandchild
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is first, what="back to the first go-live")
        assert grandchild.closed and not child.closed
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: session.closed, what="quit")
    assert child.closed


async def test_fake_go_live_failure_shows_the_error_and_stays():
    session = FakeSession(20, fail_golive=True)
    app = SbtuiApp(session)
    async with app.run_test(size=SIZE) as pilot:
        origin = app.screen
        await wait_for(pilot, lambda: origin.rows, what="rows")
        await pilot.press("L")
        await wait_for(pilot, lambda: isinstance(app.screen, ErrorDialog), what="error dialog")
        assert "cannot go live" in str(app.screen.query_one("#error-message").render())
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is origin, what="back to the session")
        assert not session.golive_sessions and app.is_running


async def test_attach_sessions_do_not_offer_go_live():
    session = FakeSession(20, live=True)
    session.live.attached = True            # what RecorderControl says for sbtui attach
    app = SbtuiApp(session)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.screen.rows, what="rows")
            assert app.screen.check_action("go_live", ()) is False
            assert app.screen.check_action("checkpoint_now", ()) is True
    finally:
        session.close()


@pytest.mark.qemu
async def test_real_recording_l_goes_live_and_escape_leaves_no_qemu(demo_recording, tmp_path):
    from engine.recording.format import Recording
    from engine.session import RecordingSession
    from procs import qemu_processes
    from test_recording_support import tagged_qemus

    # a copy (hard links): the go-live recording lands next to it, not next to the fixture
    source = tmp_path / "memchurn"
    shutil.copytree(demo_recording, source, copy_function=os.link)
    session = RecordingSession(Recording.open(source))
    app = SbtuiApp(session)
    with tagged_qemus() as tag:
        async with app.run_test(size=SIZE) as pilot:
            origin = app.screen
            await wait_for(pilot, lambda: origin.rows, what="rows")
            await pilot.press("L")
            await wait_for(pilot, lambda: isinstance(app.screen, GoLiveSessionScreen), timeout=180,
                           what="the go-live screen")
            live = app.screen
            assert qemu_processes(tag), "no go-live QEMU is running"
            await wait_for(pilot, lambda: live.rows, timeout=60, what="the first live checkpoint")
            count = len(live.rows)
            await pilot.press("c")
            await wait_for(pilot, lambda: len(live.rows) > count, timeout=60, what="checkpoint now")
            new = live.session.path
            assert live.query_one("#checkpoints").border_subtitle == f"recording into {new}"
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is origin, timeout=120, what="back")
            # the go-live VM is gone while the app runs on
            assert not qemu_processes(tag), "the go-live QEMU outlived its screen"
            assert app.is_running and isinstance(app.screen, SessionScreen)
            # quitting the app while a go-live VM runs stops it (tagged_qemus checks)
            await pilot.press("L")
            await wait_for(pilot, lambda: isinstance(app.screen, GoLiveSessionScreen), timeout=180,
                           what="the second go-live screen")
            await pilot.press("ctrl+q")
            await wait_for(pilot, lambda: not app.is_running, timeout=120, what="the app quits")
    # the new recording: next to the copy, named after it, saying where it came from
    made = Path(new)
    assert made.parent == tmp_path and made.name.startswith("memchurn-golive-0-")
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("memchurn-golive-0-")]) == 2
    m = json.loads((made / "recording.json").read_text())
    assert m["kind"] == "live" and m["status"] in ("interrupted", "complete")
    assert m["source"]["golive"]["recording"] == str(source) and m["source"]["golive"]["checkpoint"] == 0
    assert len(Recording.open(made).checkpoints()) >= count + 1
