"""Load a migration stream into a QEMU started with ``-incoming defer``.

:func:`load_stream` hands QEMU the read end of a pipe (QMP ``getfd`` over the
socket, SCM_RIGHTS), starts ``migrate-incoming fd:``, and runs ``feed(dst)``
in a thread to write the stream into the other end: no temporary file, no
shell command. It returns when QEMU reports the migration completed.

Errors: when ``feed`` fails (a damaged store, say), its error is raised, not
the one QEMU gives for the stream breaking off; a refused stream raises
:class:`QemuError` with QEMU's reason and log tail; a QEMU that dies raises
:class:`QemuDiedError`; ``timeout`` bounds it all. The feeding thread is
joined before any of these is raised.

:class:`Prefetch` starts a feed early (before QEMU is up) into a bounded
in-memory buffer, so producing the stream overlaps QEMU's start; it is
passed to :func:`load_stream` in place of the feed.

Waiting: QEMU sends MIGRATION events only with the ``events`` migration
capability on (it is off by default, and without it the wait fell back to
polling ``query-migrate`` once a second, which cost a whole second per
restore), so it is switched on before ``migrate-incoming``. ``query-migrate``
is still asked when no event came for a while, as a safety net.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import io
import logging
import os
import threading
import time
from typing import BinaryIO, Callable

from engine.errors import QemuError, QemuTimeoutError
from engine.qemu.process import QemuProcess

log = logging.getLogger(__name__)

FD_NAME = "sbtui-incoming"
# The pipe's capacity. The default 64 KiB makes writer and QEMU take turns
# every 64 KiB; 1 MiB (the unprivileged maximum, /proc/sys/fs/pipe-max-size)
# lets each run longer per wake-up.
PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
# Without an event for this long, ask query-migrate (a safety net only).
POLL_FALLBACK_S = 1.0
# How much of a stream a Prefetch holds before its producer waits: more than
# is made while QEMU starts (about 0.1 s), bounded for big guests.
PREFETCH_BYTES = 64 << 20
PREFETCH_CHUNK = 1 << 20


def _widen(fd: int) -> None:
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass  # a lower pipe-max-size: the default size works, a little slower


async def load_stream(vm: QemuProcess, feed: Callable[[BinaryIO], object], *,
                      what: str = "the state", timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    rfd, wfd = os.pipe()
    _widen(wfd)
    try:
        await vm.send_fd(rfd, FD_NAME)
        await vm.qmp("migrate-set-capabilities",
                     {"capabilities": [{"capability": "events", "state": True}]})
    except BaseException:
        os.close(wfd)
        raise
    finally:
        os.close(rfd)
    failure: list[BaseException] = []
    fed: list[float] = []

    def write() -> None:
        try:
            with os.fdopen(wfd, "wb", buffering=1 << 20) as dst:
                feed(dst)
            fed.append(time.monotonic())
        except BrokenPipeError:
            pass  # QEMU gave up reading: its own error says why
        except BaseException as err:  # noqa: BLE001 - reported below
            failure.append(err)

    writer = threading.Thread(target=write, name="sbtui-incoming-feed", daemon=True)
    try:
        with vm.listen("MIGRATION") as events:
            await vm.qmp("migrate-incoming", {"uri": f"fd:{FD_NAME}"})
            writer.start()
            status = await _wait(vm, events, what, timeout)
    except BaseException:
        # QEMU quits when its incoming stream breaks off; if our side broke
        # it, that is the error to report. On a timeout or cancellation the
        # caller shuts QEMU down, which ends the writer with EPIPE.
        if writer.ident is None:
            os.close(wfd)
        else:
            # A live QEMU that stopped reading would keep a writer blocked
            # until the caller shuts it down: wait for that one only briefly.
            await asyncio.to_thread(writer.join, 1.0 if vm.alive else 30.0)
        if failure:
            raise failure[0] from None
        raise
    await asyncio.to_thread(writer.join, 30)
    if failure:
        raise failure[0]
    if status != "completed":
        info = await vm.qmp("query-migrate")
        raise QemuError(f"QEMU refused {what}: {info.get('error-desc', status)}",
                        argv=vm.argv, log_tail=vm.log_tail())
    done = time.monotonic()
    log.debug("loaded %s in %.3f s (stream written after %.3f s)", what, done - t0,
              (fed[0] if fed else done) - t0)


async def _wait(vm: QemuProcess, events, what: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    status = ""
    while status not in ("completed", "failed"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise QemuTimeoutError(f"loading {what} did not finish within {timeout:g} s",
                                   argv=vm.argv, log_tail=vm.log_tail())
        try:
            ev = await events.get(timeout=min(left, POLL_FALLBACK_S))
            status = ev.get("data", {}).get("status", "")
        except QemuTimeoutError:
            info = await vm.qmp("query-migrate")
            status = info.get("status", status)
    return status


class PrefetchCancelled(Exception):
    """Raised inside a prefetching feed's writes once the prefetch was cancelled."""


class Prefetch:
    """``feed(dst)`` run from now on in a thread, into a bounded buffer.

    Call the instance as a feed (``prefetch(dst)``, what :func:`load_stream`
    does): it writes what was produced so far, then the rest as it comes,
    and raises the feed's own error, if any, after the bytes before it. The
    producer waits while ``limit`` bytes are held. :meth:`cancel` (always
    call it, e.g. in ``finally``) stops the producer, whose next write raises
    :class:`PrefetchCancelled`, and waits for its thread; so does a
    consumer that stops early (an exception from ``dst``).
    """

    def __init__(self, feed: Callable[[BinaryIO], object], *, limit: int = PREFETCH_BYTES,
                 name: str = "sbtui-stream-prefetch"):
        self._feed = feed
        self._limit = limit
        self._cond = threading.Condition()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._held = 0
        self._done = False
        self._cancelled = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def failed(self) -> bool:
        """The feed has already raised (its error is :attr:`error`)."""
        with self._cond:
            return self._done and self.error is not None

    def _run(self) -> None:
        try:
            with io.BufferedWriter(_ChunkSink(self), buffer_size=PREFETCH_CHUNK) as dst:
                self._feed(dst)
        except PrefetchCancelled:
            pass
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            self.error = err
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _put(self, chunk: bytes) -> None:
        with self._cond:
            while self._held >= self._limit and not self._cancelled:
                self._cond.wait()
            if self._cancelled:
                raise PrefetchCancelled("the stream is no longer wanted")
            self._chunks.append(chunk)
            self._held += len(chunk)
            self._cond.notify_all()

    def __call__(self, dst: BinaryIO) -> None:
        try:
            while True:
                with self._cond:
                    while not self._chunks and not self._done:
                        self._cond.wait()
                    if not self._chunks:
                        break
                    chunk = self._chunks.popleft()
                    self._held -= len(chunk)
                    self._cond.notify_all()
                dst.write(chunk)
        except BaseException:
            self.cancel()
            raise
        self._thread.join()
        if self.error is not None:
            raise self.error

    def cancel(self, timeout: float = 30.0) -> None:
        """Stop the producer and wait (bounded) for its thread; idempotent."""
        with self._cond:
            self._cancelled = True
            self._chunks.clear()
            self._held = 0
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


class _ChunkSink(io.RawIOBase):
    def __init__(self, owner: Prefetch):
        self._owner = owner

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        chunk = bytes(data)   # the caller reuses its buffer
        self._owner._put(chunk)
        return len(chunk)
