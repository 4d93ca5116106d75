"""Load a migration stream into a QEMU started with ``-incoming defer``.

:func:`load_stream` hands QEMU the read end of a pipe (QMP ``getfd`` over the
socket, SCM_RIGHTS), starts ``migrate-incoming fd:``, and runs ``feed(dst)``
in a thread to write the stream into the other end: no temporary file, no
shell command. It returns when QEMU reports the migration completed.

Errors: when ``feed`` fails (a damaged store, say), its error is raised, not
the one QEMU gives for the stream breaking off; a refused stream raises
:class:`QemuError` with QEMU's reason and log tail; ``timeout`` bounds it all.
QEMU's MIGRATION events are the fast path; ``query-migrate`` is polled as
well, since the completion event is not always seen.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import BinaryIO, Callable

from engine.errors import QemuError, QemuTimeoutError
from engine.qemu.process import QemuProcess

FD_NAME = "sbtui-incoming"


async def load_stream(vm: QemuProcess, feed: Callable[[BinaryIO], object], *,
                      what: str = "the state", timeout: float = 120.0) -> None:
    rfd, wfd = os.pipe()
    try:
        await vm.send_fd(rfd, FD_NAME)
    except BaseException:
        os.close(wfd)
        raise
    finally:
        os.close(rfd)
    failure: list[BaseException] = []

    def write() -> None:
        try:
            with os.fdopen(wfd, "wb", buffering=1 << 20) as dst:
                feed(dst)
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
    except QemuError:
        # QEMU quits when its incoming stream breaks off; if our side broke
        # it, that is the error to report.
        if writer.ident is not None:
            await asyncio.to_thread(writer.join, 30)
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


async def _wait(vm: QemuProcess, events, what: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    status = ""
    while status not in ("completed", "failed"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise QemuTimeoutError(f"loading {what} did not finish within {timeout:g} s",
                                   argv=vm.argv, log_tail=vm.log_tail())
        try:
            ev = await events.get(timeout=min(left, 1.0))
            status = ev.get("data", {}).get("status", "")
        except QemuTimeoutError:
            info = await vm.qmp("query-migrate")
            status = info.get("status", status)
    return status
