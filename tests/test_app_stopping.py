"""The stopping screen after q on a live recording counts the proofs still
running and projects the time left (a recording's last intervals can take a
while to prove; the screen must not look frozen)."""

from __future__ import annotations

from textual.widgets import Static

from sbtui.app import SbtuiApp
from sbtui.fake_session import FakeSession
from sbtui.screens.stopping import StoppingScreen


async def test_the_stopping_screen_counts_proofs_and_projects_the_time_left(monkeypatch):
    session = FakeSession(20, live=True, live_interval=60)
    progress = {"now": (3, 10)}
    monkeypatch.setattr(type(session.live), "proof_progress",
                        property(lambda self: progress["now"]), raising=False)
    clock = {"t": 100.0}
    monkeypatch.setattr("sbtui.screens.stopping.monotonic", lambda: clock["t"])
    app = SbtuiApp(session)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            app.push_screen(StoppingScreen(live=True, replays=0))
            await pilot.pause()
            line = app.screen.query_one("#stopping-progress", Static)
            assert str(line.render()) == "proofs: 3 of 10 intervals proven"
            clock["t"], progress["now"] = 110.0, (5, 10)     # 2 proofs in 10 s: 5 left, 25 s
            app.screen.update_progress()
            assert str(line.render()) == "proofs: 5 of 10 intervals proven · about 25 s left"
            progress["now"] = (10, 10)
            app.screen.update_progress()
            assert str(line.render()) == "proofs: 10 of 10 intervals proven"
    finally:
        session.close()


async def test_without_proofs_the_stopping_screen_shows_no_count():
    session = FakeSession(20, live=True, live_interval=60)     # its control has no proofs
    app = SbtuiApp(session)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            app.push_screen(StoppingScreen(live=True, replays=0))
            await pilot.pause()
            assert str(app.screen.query_one("#stopping-progress", Static).render()) == ""
    finally:
        session.close()
