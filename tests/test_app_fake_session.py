"""The fake engine session keeps the facade's promises the app relies on:
sorted unique dirty pages that match the rows, and exact reverse execution."""

from __future__ import annotations

from engine.api import Debugger, RecordingView, Session
from sbtui.fake_session import FakeSession


def test_fake_session_implements_the_facade():
    session = FakeSession(50)
    assert isinstance(session, Session)
    assert isinstance(session.recording, RecordingView)
    dbg = session.start_replay(session.recording.checkpoints()[3].id)
    assert isinstance(dbg, Debugger)
    session.close()


def test_dirty_pages_are_sorted_unique_and_counted_in_the_rows():
    session = FakeSession(400)
    for row in session.recording.checkpoints()[::37]:
        pages = session.recording.dirty_pages(row.id)
        assert len(pages) == row.pages_dirty
        assert all(a < b for a, b in zip(pages, pages[1:]))
        assert pages[-1] < session.recording.machine.ram_pages
        marks = session.recording.page_marks(row.id)
        assert len(marks.zero) == row.zero_pages


def test_stepping_forward_then_back_restores_every_state():
    session = FakeSession(100)
    dbg = session.start_replay(session.recording.checkpoints()[10].id)
    states = []
    for _ in range(300):
        states.append((dbg.icount, dbg.registers(), dbg.backtrace(), dbg.read_memory(0xFFFFFFFF82A05000, 8)))
        dbg.stepi()
    for expected in reversed(states):
        dbg.reverse_stepi()
        assert (dbg.icount, dbg.registers(), dbg.backtrace(),
                dbg.read_memory(0xFFFFFFFF82A05000, 8)) == expected
