"""The one owner of a QEMU process: launch, QMP, console, events, log, shutdown.

::

    async with QemuProcess(spec) as vm:
        await vm.console.wait_for("login:", timeout=30)
        status = await vm.qmp("query-status")
        await vm.hmp("savevm c1")

Promises:

* QEMU runs in a private 0700 directory (a fresh temporary one unless
  ``workdir`` is given; a temporary one is removed afterwards). Its stdout and
  stderr (including ``-d`` logging) go to ``log_path``; error messages carry
  the log's tail.
* QMP and the serial console reach QEMU over socket pairs handed to it as file
  descriptors, so there is no socket path to race on and an exiting QEMU shows
  up as end-of-file at once. The console is the same kind of chardev in record
  and replay runs.
* The launch is bounded (``launch_timeout``): a QEMU that exits or does not
  answer QMP in time raises :class:`QemuLaunchError` with its command line,
  exit code and log tail, and nothing is left running.
* QEMU runs in its own session (Ctrl-C in a terminal reaches only us, so our
  shutdown is not raced) and gets SIGKILL when the thread that launched it
  exits (``PR_SET_PDEATHSIG``), so it cannot outlive a Python killed hard.
  Launch it from a thread that lives as long as it (normally the event loop's).
* Once QEMU has exited on its own, every call raises :class:`QemuDiedError`
  (exit code, log tail) instead of hanging; a QMP error raises
  :class:`QmpError` naming the command.
* ``shutdown(timeout)`` asks with QMP ``quit``, then SIGTERM, then SIGKILL,
  and releases everything in ``finally``; ``async with`` always calls it, also
  on exceptions and cancellation.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

from qemu.qmp import EventListener, ExecInterruptedError, ExecuteError, QMPClient
from qemu.qmp.error import QMPError

from engine.errors import QemuDiedError, QemuError, QemuLaunchError, QemuTimeoutError, QmpError
from engine.qemu.binaries import find_qemu
from engine.qemu.console import Console
from engine.qemu.machine import MachineSpec

log = logging.getLogger(__name__)

# Tests set this so they can find their own QEMU processes by command line
# while other people's QEMUs run on the same machine.
TAG_ENV = "SBTUI_QEMU_TAG"
NAME_PREFIX = "sbtui-"
QMP_CHARDEV_ID = "sbtui-qmp"
LOG_TAIL_LINES = 25

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: SIGKILL from the kernel when the parent dies (any child we
    start, not only QEMU, must not outlive us)."""
    prctl = _libc.prctl  # looked up before fork: nothing to resolve in the child

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody sends
        # the signal, so leave now.
        if os.getppid() != parent_pid:
            os._exit(127)
    return preexec


def process_name() -> str:
    """A unique ``-name`` for a new QEMU, carrying ``$SBTUI_QEMU_TAG`` when set."""
    tag = os.environ.get(TAG_ENV)
    unique = uuid.uuid4().hex[:12]
    return f"{NAME_PREFIX}{tag}-{unique}" if tag else f"{NAME_PREFIX}{unique}"


def read_log_tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


class EventStream:
    """QMP events of one QEMU, from the moment ``listen()`` was entered.

    ``get()`` waits for the next event (bounded by ``timeout``); iteration
    ends when QEMU is gone and every queued event was handed out.
    """

    def __init__(self, owner: "QemuProcess", listener: EventListener):
        self._owner = owner
        self._listener = listener

    async def get(self, timeout: float | None = None) -> dict[str, Any]:
        if not self._listener.empty():
            return dict(await self._listener.get())
        exited = self._owner._exited
        if exited is None or exited.done():
            raise self._owner._died("QEMU exited; no more events")
        getter = asyncio.ensure_future(self._listener.get())
        try:
            done, _ = await asyncio.wait({getter, exited}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter in done:
            return dict(getter.result())
        if exited.done():
            raise self._owner._died("QEMU exited while waiting for an event")
        wanted = ", ".join(sorted(self._listener.names)) or "(any)"
        raise QemuTimeoutError(f"no QMP event {wanted} within {timeout:g} s")

    def __aiter__(self) -> "EventStream":
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            return await self.get()
        except QemuDiedError:
            raise StopAsyncIteration from None


class QemuProcess:
    """Launches and owns one QEMU. Use ``async with`` (or ``launch``/``shutdown``)."""

    def __init__(self, spec: MachineSpec, *, workdir: str | Path | None = None,
                 log_path: str | Path | None = None, console_path: str | Path | None = None,
                 qemu_binary: str | None = None, name: str | None = None,
                 launch_timeout: float = 30.0):
        self.spec = spec
        self.name = name or process_name()
        self.launch_timeout = launch_timeout
        self._qemu_binary = qemu_binary
        self._workdir_arg = Path(workdir) if workdir is not None else None
        self._log_arg = Path(log_path) if log_path is not None else None
        self._console_arg = Path(console_path) if console_path is not None else None
        self.workdir: Path | None = None
        self.log_path: Path | None = None
        self.argv: list[str] = []
        self.launch_seconds: float | None = None
        self.console: Console | None = None  # set by launch()
        self.events_seen: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        self._own_workdir = False
        self._proc: asyncio.subprocess.Process | None = None
        self._exited: asyncio.Future[int] | None = None
        self._client: QMPClient | None = None
        self._tasks: list[asyncio.Task] = []
        self._callbacks: list[Callable[[dict[str, Any]], None]] = []
        self._fd_lock = asyncio.Lock()
        self._closing = False
        self._closed = False

    # -- context manager --------------------------------------------------

    async def __aenter__(self) -> "QemuProcess":
        await self.launch()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.shutdown()
        except BaseException:
            self.kill()
            raise

    # -- facts ------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        """QEMU's exit code once it has exited (negative: killed by that signal)."""
        if self._exited is not None and self._exited.done():
            return self._exited.result()
        return None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self.returncode is None

    @property
    def qmp_client(self) -> QMPClient:
        """The raw ``qemu.qmp`` client, for what this class does not wrap."""
        if self._client is None:
            raise QemuError("QEMU is not launched")
        return self._client

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return read_log_tail(self.log_path, lines)

    def _died(self, message: str) -> QemuDiedError:
        return QemuDiedError(message, argv=self.argv, exit_code=self.returncode,
                             log_tail=self.log_tail())

    def _check_usable(self, what: str) -> None:
        if self._proc is None or self._closed:
            raise QemuError(f"{what}: QEMU is not running (not launched or already shut down)")
        if self.returncode is not None:
            raise self._died(f"{what}: QEMU has exited")

    # -- launch -----------------------------------------------------------

    async def launch(self) -> None:
        """Start QEMU and connect QMP and the console; bounded by ``launch_timeout``."""
        if self._proc is not None:
            raise QemuError("this QemuProcess was already launched")
        binary = find_qemu(self._qemu_binary)
        self._make_workdir()
        assert self.workdir is not None
        self.log_path = self._log_arg or self.workdir / "qemu.log"
        console_path = self._console_arg or self.workdir / "console.log"

        qmp_ours, qmp_theirs = socket.socketpair()
        con_ours, con_theirs = socket.socketpair()
        argv = self.spec.argv(binary, console=f"socket,fd={con_theirs.fileno()}")
        argv[1:1] = ["-name", self.name]
        argv += ["-chardev", f"socket,id={QMP_CHARDEV_ID},fd={qmp_theirs.fileno()}",
                 "-mon", f"chardev={QMP_CHARDEV_ID},mode=control"]
        self.argv = argv
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            with open(self.log_path, "ab") as logf:
                logf.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
                logf.flush()
                self._proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                    cwd=self.workdir, pass_fds=(qmp_theirs.fileno(), con_theirs.fileno()),
                    start_new_session=True, preexec_fn=die_with_parent(os.getpid()))
        except OSError as err:
            qmp_ours.close()
            con_ours.close()
            self._remove_workdir()
            raise QemuLaunchError(f"cannot start QEMU: {err}", argv=argv) from err
        finally:
            # QEMU holds its own copies; ours must go or its exit would not
            # show up as end-of-file.
            qmp_theirs.close()
            con_theirs.close()

        self._exited = loop.create_future()
        self._tasks.append(asyncio.create_task(self._watch_exit(), name=f"{self.name}-wait"))
        try:
            await self._connect_qmp(qmp_ours)
            self.console = Console(con_ours, capture_path=console_path, exited=self._exited,
                                   died_error=self._died)
            con_ours = None
            await self.console.start()
            self._tasks.append(asyncio.create_task(self._pump_events(), name=f"{self.name}-events"))
        except BaseException:
            if con_ours is not None:
                con_ours.close()
            await self._teardown()
            raise
        self.launch_seconds = time.monotonic() - started
        log.debug("%s: QMP ready after %.3f s (pid %d)", self.name, self.launch_seconds, self.pid)

    def _make_workdir(self) -> None:
        if self._workdir_arg is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="sbtui-qemu-"))  # mode 0700
            self._own_workdir = True
        else:
            self.workdir = self._workdir_arg
            self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)

    async def _connect_qmp(self, sock: socket.socket) -> None:
        assert self._exited is not None
        self._client = QMPClient(self.name)
        connect = asyncio.ensure_future(self._client.connect(sock))
        try:
            done, _ = await asyncio.wait({connect, self._exited}, timeout=self.launch_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            connect.cancel()
            raise
        if connect in done and connect.exception() is None:
            return
        if connect not in done:
            connect.cancel()
            with contextlib.suppress(BaseException):
                await connect
        else:
            # The handshake failed; QEMU is usually exiting: give it a moment
            # so the error can carry its exit code.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exited), 5.0)
        if self._exited.done():
            raise QemuLaunchError("QEMU exited before its monitor was ready", argv=self.argv,
                                  exit_code=self.returncode, log_tail=self.log_tail())
        if connect.done() and not connect.cancelled() and connect.exception() is not None:
            raise QemuLaunchError(f"QMP handshake with QEMU failed: {connect.exception()}",
                                  argv=self.argv, log_tail=self.log_tail())
        raise QemuLaunchError(f"QEMU's monitor did not answer within {self.launch_timeout:g} s",
                              argv=self.argv, log_tail=self.log_tail())

    async def _watch_exit(self) -> None:
        assert self._proc is not None and self._exited is not None
        code = await self._proc.wait()
        if not self._exited.done():
            self._exited.set_result(code)
        if not self._closing:
            log.info("%s: QEMU exited with code %s while in use", self.name, code)

    async def _pump_events(self) -> None:
        # Drains the client's default listener (it would otherwise queue every
        # event forever) into a bounded history and the callbacks.
        assert self._client is not None
        async for event in self._client.events:
            record = dict(event)
            self.events_seen.append(record)
            for callback in list(self._callbacks):
                try:
                    callback(record)
                except Exception:  # a broken callback must not stop the pump
                    log.exception("%s: event callback %r failed", self.name, callback)

    # -- QMP --------------------------------------------------------------

    async def qmp(self, command: str, arguments: Mapping[str, Any] | None = None, *,
                  timeout: float | None = None) -> Any:
        """Run a QMP command and return its ``return`` value.

        Raises :class:`QmpError` when QEMU answers with an error,
        :class:`QemuDiedError` when QEMU exits first, and
        :class:`QemuTimeoutError` when ``timeout`` passes without an answer.
        """
        self._check_usable(f"QMP {command}")
        assert self._client is not None and self._exited is not None
        task = asyncio.ensure_future(self._client.execute(command, arguments))
        try:
            done, _ = await asyncio.wait({task, self._exited}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        if task in done:
            try:
                return task.result()
            except ExecuteError as err:
                raise QmpError(f"QMP command '{command}' failed: {err.error_class}: {err}") from err
            except (ExecInterruptedError, QMPError, EOFError, OSError) as err:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._exited), 5.0)
                if self._exited.done():
                    raise self._died(f"QEMU exited during QMP command '{command}'") from err
                raise QemuError(f"QMP command '{command}': connection to QEMU lost: {err}",
                                argv=self.argv, log_tail=self.log_tail()) from err
        task.cancel()
        if self._exited.done():
            raise self._died(f"QEMU exited during QMP command '{command}'")
        raise QemuTimeoutError(f"QMP command '{command}' got no answer within {timeout:g} s",
                               log_tail=self.log_tail())

    async def hmp(self, command_line: str, *, timeout: float | None = None,
                  check: bool = True) -> str:
        """Run a human-monitor command and return its text output.

        HMP reports failures as text; with ``check`` an output starting with
        ``Error`` raises :class:`QmpError`.
        """
        out = await self.qmp("human-monitor-command", {"command-line": command_line},
                             timeout=timeout)
        text = str(out)
        if check and text.lstrip().lower().startswith("error"):
            raise QmpError(f"HMP command '{command_line}' failed: {text.strip()}")
        return text

    async def send_fd(self, fd: int, name: str, *, timeout: float | None = 10.0) -> None:
        """Hand ``fd`` to QEMU as ``name`` (QMP ``getfd``, SCM_RIGHTS). Does not close ``fd``.

        Then e.g. ``migrate-incoming`` with ``uri="fd:NAME"`` uses it.
        """
        self._check_usable("send_fd")
        assert self._client is not None
        # QEMU keeps only the most recently received descriptor until getfd
        # takes it, so one fd transfer at a time.
        async with self._fd_lock:
            try:
                self._client.send_fd_scm(fd)
            except (OSError, QMPError) as err:
                if self.returncode is not None:
                    raise self._died(f"send_fd {name}: QEMU has exited") from err
                raise QemuError(f"passing file descriptor {fd} as '{name}' failed: {err}") from err
            await self.qmp("getfd", {"fdname": name}, timeout=timeout)

    # -- events -----------------------------------------------------------

    @contextlib.contextmanager
    def listen(self, *names: str):
        """Collect events (all, or those named) while the block runs.

        Enter it before the command that causes the event::

            with vm.listen("STOP") as events:
                await vm.qmp("stop")
                await events.get(timeout=5)
        """
        self._check_usable("listen")
        assert self._client is not None
        listener = EventListener(names or None)
        self._client.register_listener(listener)
        try:
            yield EventStream(self, listener)
        finally:
            with contextlib.suppress(Exception):
                self._client.remove_listener(listener)

    def add_event_callback(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call ``callback(event)`` for every QMP event, on the event loop."""
        self._callbacks.append(callback)

    def remove_event_callback(self, callback: Callable[[dict[str, Any]], None]) -> None:
        with contextlib.suppress(ValueError):
            self._callbacks.remove(callback)

    # -- ending -----------------------------------------------------------

    async def wait_exit(self, timeout: float) -> int:
        """Wait until QEMU exits on its own (e.g. a replay reaching the end of its log)."""
        if self._exited is None:
            raise QemuError("QEMU is not launched")
        try:
            return await asyncio.wait_for(asyncio.shield(self._exited), timeout)
        except asyncio.TimeoutError:
            raise QemuTimeoutError(f"QEMU did not exit within {timeout:g} s",
                                   argv=self.argv, log_tail=self.log_tail()) from None

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Stop QEMU: QMP ``quit``, then SIGTERM, then SIGKILL; release everything."""
        if self._proc is None or self._closed:
            return
        self._closing = True
        try:
            if self.returncode is None and self._client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._client.execute("quit"), min(3.0, timeout))
            if not await self._wait_exited(timeout):
                log.warning("%s: no exit %g s after 'quit'; sending SIGTERM", self.name, timeout)
                self._signal(signal.SIGTERM)
                if not await self._wait_exited(3.0):
                    log.warning("%s: no exit after SIGTERM; sending SIGKILL", self.name)
                    self._signal(signal.SIGKILL)
                    await self._wait_exited(10.0)
        finally:
            await self._teardown()

    def kill(self) -> None:
        """SIGKILL QEMU now, without waiting (for emergencies and ``finally`` paths)."""
        if self.returncode is None:
            self._signal(signal.SIGKILL)
        if not self._closed:
            self._remove_workdir()

    async def _wait_exited(self, timeout: float) -> bool:
        assert self._exited is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._exited), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def _signal(self, sig: int) -> None:
        if self._proc is None or (self._exited is not None and self._exited.done()):
            return
        # Its own process group (start_new_session), so helpers it spawned go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    async def _teardown(self) -> None:
        """Release everything; kills QEMU if it still runs. Idempotent."""
        if self._closed:
            return
        self._closing = True
        try:
            if self._proc is not None and self._exited is not None and not self._exited.done():
                self._signal(signal.SIGKILL)
                if not await self._wait_exited(10.0):
                    log.error("%s: QEMU pid %d did not exit after SIGKILL", self.name, self._proc.pid)
            if self._client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._client.disconnect(), 5.0)
            if self.console is not None:
                with contextlib.suppress(Exception):
                    await self.console.close()
            for task in self._tasks:
                if not task.done():
                    task.cancel()
            for task in self._tasks:
                with contextlib.suppress(BaseException):
                    await task
        finally:
            self._closed = True
            self._remove_workdir()

    def _remove_workdir(self) -> None:
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self._own_workdir = False
