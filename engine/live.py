"""A guest running right now, as the facade's Session with LiveControl.

:func:`start_live_session` runs a recorder on a private asyncio loop in a
long-lived thread (QEMU is launched from that thread, so PR_SET_PDEATHSIG
lasts as long as the recording) and returns a
:class:`engine.session.RecordingSession` over the recording it fills; the
session's ``live`` is a :class:`RecorderControl`. Three recorders fit:

* :class:`engine.recording.recorder.Recorder` (record mode: ``sbtui demo``,
  ``sbtui record``);
* :class:`engine.recording.live.LiveRecorder` (``sbtui record --live``: a
  guest we start, background-snapshot checkpoints, the console is ours);
* :class:`engine.recording.live.LiveAttach` (``sbtui attach``: a QEMU the
  user started; its console is not ours, and closing detaches, leaving that
  QEMU running);
* :class:`engine.golive.GoLiveRecorder` (going live from a checkpoint,
  ``Session.go_live``: a LiveRecorder whose guest starts from the checkpoint).

Promises:

* The app's event loop never waits on the recorder's: ``RecorderControl``'s
  coroutines hand their work to the recorder's loop and await the answer.
* ``session.recording.status()`` says ``PAUSED`` while the guest is paused
  (through ``live.pause()``, or, when attached, found paused) and
  ``attached`` for ``sbtui attach``.
* ``session.close()`` ends the recording (no new checkpoint; a guest we
  started quits and, in record mode, finalizes the log, ingestion drains,
  proofs finish or are cut off after ``finish_timeout``; an attached QEMU is
  left running with its migration settings put back), then stops the loop;
  nothing of ours outlives it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from engine import api
from engine.errors import RecordingError
from engine.recording.format import Recording
from engine.session import DiskRecordingView, RecordingSession

T = TypeVar("T")


class _RecorderLoop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sbtui-recorder",
                                       daemon=True)
        self.thread.start()

    def submit(self, coro: Awaitable[T]):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            if not self.thread.is_alive():
                self.loop.close()


class RecorderControl:
    """``api.LiveControl`` over a running recorder (record mode, ``record --live`` or attach).

    ``paused``: the guest is paused as far as we know. ``attached``: the guest
    is a QEMU the user started. ``console_note``: ``None`` when the console is
    ours to type to, else why it is not (the app shows it instead of an input).
    """

    def __init__(self, recorder, loop: _RecorderLoop):
        self.recorder = recorder
        self._loop = loop
        self._paused = False

    @property
    def attached(self) -> bool:
        from engine.recording.live import LiveAttach
        return isinstance(self.recorder, LiveAttach)

    @property
    def paused(self) -> bool:
        known = getattr(self.recorder, "paused", None)   # the live modes follow QEMU's run state
        return self._paused if known is None else bool(known)

    @property
    def console_note(self) -> str | None:
        return getattr(self.recorder, "console_note", None)

    @property
    def proof_progress(self) -> tuple[int, int] | None:
        """(intervals proven, intervals to prove) of a record-mode recording;
        None for the live modes and when proofs are off. Any thread."""
        return getattr(self.recorder, "proof_progress", None)

    async def _on_recorder(self, coro: Awaitable[T]) -> T:
        return await asyncio.wrap_future(self._loop.submit(coro))

    async def pause(self) -> None:
        await self._on_recorder(self.recorder.pause())
        self._paused = True

    async def resume(self) -> None:
        await self._on_recorder(self.recorder.resume())
        self._paused = False

    async def checkpoint_now(self) -> api.CheckpointRow:
        entry = await self._on_recorder(self.recorder.checkpoint_now())
        return api.CheckpointRow(
            id=entry.store_id, index=entry.index, icount=entry.icount,
            guest_time_ns=entry.guest_time_ns, wall_time=time.time(),
            downtime_ms=entry.downtime_ms, pages_dirty=0, pages_new=0, stored_bytes=0,
            dup_intra=0, dup_inter=0, zero_pages=0)

    @property
    def stopping_text(self) -> str:
        """What ending this session does, for the screen shown meanwhile."""
        from engine.golive import GoLiveRecorder
        from engine.recording.live import LiveRecorder
        if isinstance(self.recorder, GoLiveRecorder):
            return (f"stopping the go-live VM (from checkpoint #{self.recorder.checkpoint.index}): "
                    "the checkpoint in progress is stored, then QEMU quits; its recording "
                    f"stays at {self.recorder.path}")
        if self.attached:
            return ("detaching: the checkpoint in progress is finished, QEMU's migration "
                    "settings are put back; the guest keeps running")
        if isinstance(self.recorder, LiveRecorder):
            return ("stopping the guest: the checkpoint in progress is stored, then QEMU quits")
        return ("finishing the recording: QEMU quits and writes the end of its log, the last "
                "checkpoints are stored and proven (a few seconds for each checkpoint not "
                "proven yet)")

    async def send_console(self, text: str) -> None:
        await self._on_recorder(self.recorder.send_console(text))


class LiveRecordingView(DiskRecordingView):
    """The recording view, with the run state the control knows (paused, attached)."""

    def __init__(self, rec: Recording, control: RecorderControl):
        super().__init__(rec)
        self._control = control

    def status(self) -> api.RecordingStatus:
        st = super().status()
        if st.state is api.GuestState.RUNNING and self._control.paused:
            st = dataclasses.replace(st, state=api.GuestState.PAUSED)
        if self._control.attached and st.state in (api.GuestState.RUNNING, api.GuestState.PAUSED):
            st = dataclasses.replace(st, attached=True)   # while attached, not after
        return st


class LiveRecordingSession(RecordingSession):
    """A RecordingSession whose close() also ends the recording."""

    def __init__(self, rec: Recording, control: RecorderControl, future, loop: _RecorderLoop,
                 *, name: str, finish_timeout: float, on_finish: Callable[[str], None] | None):
        super().__init__(rec, name=name, live=control)
        self._view = LiveRecordingView(rec, control)
        self._future = future
        self._rloop = loop
        self._finish_timeout = finish_timeout
        self._on_finish = on_finish or (lambda _m: None)
        self.summary: Any = None
        self.error: BaseException | None = None
        self._closing = False

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        super().close()
        control: RecorderControl = self.live
        try:
            control.recorder.stop()
            if not self._future.done():
                self._on_finish(control.stopping_text + "...")
            self.summary = self._future.result(self._finish_timeout)
        except TimeoutError:
            self._future.cancel()
            try:
                self._future.result(30)
            except BaseException:  # cancelled: the recorder cleaned up and marked it interrupted
                pass
        except BaseException as err:  # the recording failed; the CLI reports it
            self.error = err
        finally:
            self._rloop.close()


def start_live_session(recorder, *, name: str | None = None,
                       start_timeout: float = 60.0, finish_timeout: float = 600.0,
                       on_finish: Callable[[str], None] | None = None) -> LiveRecordingSession:
    """Start ``recorder`` on its own loop; return the session once the recording exists."""
    loop = _RecorderLoop()
    future = loop.submit(recorder.run())
    deadline = time.monotonic() + start_timeout
    while recorder.recording is None or recorder.vm is None:
        if future.done():
            loop.close()
            future.result()  # raises the recorder's error
            raise RecordingError("the recorder ended before the guest started")
        if time.monotonic() > deadline:
            recorder.stop()
            loop.close()
            raise RecordingError(f"the guest did not start within {start_timeout:g} s")
        time.sleep(0.05)
    rec = Recording.open(recorder.recording.path)
    return LiveRecordingSession(rec, RecorderControl(recorder, loop), future, loop,
                                name=name or Path(rec.path).name,
                                finish_timeout=finish_timeout, on_finish=on_finish)


__all__ = ["LiveRecordingSession", "RecorderControl", "start_live_session"]
