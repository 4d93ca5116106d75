"""The guest's serial console as a two-way channel the engine owns.

:class:`Console` reads COM1's bytes from a connected stream socket (the other
end is QEMU's ``-chardev socket,fd=N``), keeps all of them in an append-only
buffer (and, optionally, a capture file), and writes input to the guest.

``wait_for`` works like expect: it searches from a cursor that each successful
match moves past the match, returns the ``re.Match`` over the captured bytes,
and raises :class:`QemuTimeoutError` (with the console's last lines) when the
text does not appear in time, or the owner's "QEMU died" error when QEMU exits
first. It never waits longer than its timeout.
"""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from typing import Callable

from engine.errors import QemuError, QemuTimeoutError

Pattern = str | bytes | re.Pattern
_TAIL_BYTES = 2000


class Console:
    """COM1 of one QEMU process. Created and closed by :class:`QemuProcess`."""

    def __init__(self, sock: socket.socket, *, capture_path: Path | None,
                 exited: "asyncio.Future[int]", died_error: Callable[[str], QemuError]):
        self._sock = sock
        self._capture_path = capture_path
        self._capture = open(capture_path, "ab", buffering=0) if capture_path else None
        self._exited = exited
        self._died_error = died_error
        self._buf = bytearray()
        self._cursor = 0
        self._changed = asyncio.Event()
        self._eof = False
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(sock=self._sock)
        self._task = asyncio.create_task(self._pump(), name="qemu-console-reader")

    async def _pump(self) -> None:
        assert self._reader is not None
        try:
            while True:
                chunk = await self._reader.read(65536)
                if not chunk:
                    break
                self._buf += chunk
                if self._capture is not None:
                    self._capture.write(chunk)
                self._changed.set()
        except (ConnectionError, OSError):
            pass
        finally:
            self._eof = True
            self._changed.set()

    # -- reading ----------------------------------------------------------

    @property
    def output(self) -> bytes:
        """Every byte the guest wrote to the console so far."""
        return bytes(self._buf)

    @property
    def text(self) -> str:
        return self._buf.decode("utf-8", "replace")

    @property
    def cursor(self) -> int:
        """Where the next ``wait_for`` starts searching (an offset into ``output``)."""
        return self._cursor

    @property
    def capture_path(self) -> Path | None:
        return self._capture_path

    def tail(self, nbytes: int = _TAIL_BYTES) -> str:
        return self._buf[-nbytes:].decode("utf-8", "replace")

    async def wait_for(self, pattern: Pattern, timeout: float, *,
                       start: int | None = None) -> re.Match:
        """Wait until ``pattern`` appears at or after ``start`` (default: the cursor).

        ``pattern`` is literal text (``str``/``bytes``) or a compiled regex
        (``str`` regexes are compiled over UTF-8 bytes). Moves the cursor to
        the end of the match and returns it.
        """
        regex = _compile(pattern)
        pos = self._cursor if start is None else start
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            m = regex.search(self._buf, pos)
            if m is not None:
                self._cursor = m.end()
                return m
            if self._exited.done() and self._eof:
                raise self._died_error(
                    f"QEMU exited while waiting for {_show(pattern)} on the console; "
                    f"last console output:\n{self.tail()}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise QemuTimeoutError(
                    f"{_show(pattern)} did not appear on the console within {timeout:g} s; "
                    f"last console output:\n{self.tail() or '(nothing)'}")
            self._changed.clear()
            waiters = [asyncio.ensure_future(self._changed.wait())]
            if not self._exited.done():
                waiters.append(self._exited)  # type: ignore[arg-type]
            done, pending = await asyncio.wait(waiters, timeout=remaining,
                                               return_when=asyncio.FIRST_COMPLETED)
            waiters[0].cancel()
            if self._exited.done() and not self._eof:
                # The socket may still hold the last bytes QEMU wrote: read them
                # before deciding the text never came.
                await self._wait_eof(1.0)

    async def _wait_eof(self, timeout: float) -> None:
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except asyncio.TimeoutError:
                pass

    # -- writing ----------------------------------------------------------

    async def send(self, data: bytes | str) -> None:
        """Write ``data`` to the guest's COM1 (ignored by QEMU in replay mode)."""
        if isinstance(data, str):
            data = data.encode()
        if self._writer is None or self._exited.done():
            raise self._died_error("QEMU exited; cannot write to its console")
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError) as err:
            raise self._died_error(f"writing to the console failed: {err}") from err

    # -- end --------------------------------------------------------------

    async def close(self) -> None:
        """Stop reading (after QEMU is gone, so the last bytes are kept)."""
        await self._wait_eof(1.0)
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        else:
            self._sock.close()
        if self._capture is not None:
            self._capture.close()
            self._capture = None


def _compile(pattern: Pattern) -> re.Pattern:
    if isinstance(pattern, re.Pattern):
        if isinstance(pattern.pattern, str):
            return re.compile(pattern.pattern.encode(), pattern.flags & ~re.UNICODE)
        return pattern
    if isinstance(pattern, str):
        pattern = pattern.encode()
    return re.compile(re.escape(pattern))


def _show(pattern: Pattern) -> str:
    if isinstance(pattern, re.Pattern):
        return f"regex {pattern.pattern!r}"
    return repr(pattern)
