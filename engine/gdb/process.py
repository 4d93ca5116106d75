"""The one owner of a gdb process, driven through gdb/MI (``--interpreter=mi3``).

::

    with GdbProcess() as gdb:
        gdb.command("-target-select remote 127.0.0.1:1234")
        stop = gdb.execute("-exec-step-instruction", timeout=10)

Promises:

* **One owner.** ``GdbProcess`` starts gdb, reads everything it prints and
  stops it. ``launch()`` cleans up and re-raises when anything fails;
  ``shutdown(timeout)`` asks with ``-gdb-exit``, then sends SIGTERM, then
  SIGKILL to gdb's process group, and releases pipes and the reader thread in
  ``finally``. ``with`` always calls it, also on exceptions and Ctrl-C.
* **No gdb outlives its owner.** gdb runs in its own session and process group
  (a Ctrl-C in the terminal reaches only Python, whose ``with`` blocks then
  shut gdb down, instead of gdb interrupting the target by itself), and gets
  SIGKILL from the kernel when the Python process dies (``PR_SET_PDEATHSIG``).
  That signal fires when the *thread* that forked the child exits, and the app
  runs gdb from short-lived thread workers, so every gdb is forked by one
  long-lived spawner thread (:func:`spawn`), not by the caller's thread.
* **Bounded waits.** Every MI command has a timeout (``default_timeout``
  unless given). No answer in time raises :class:`GdbTimeoutError` naming the
  command and the time waited; a late answer is recognised by its token and
  dropped, so the next command is not confused by it. gdb exiting (or being
  killed) makes every waiting and later call raise :class:`GdbExitedError`
  with the exit code and the tail of gdb's output, at once rather than at the
  timeout. ``^error`` raises :class:`GdbCommandError` with gdb's message.
* **Parsed records.** Result records come back as :class:`MiResult` with the
  payload in Python types (pygdbmi's parser: dicts, lists, strings); the
  console text that came with the answer is attached. ``*stopped`` records
  are kept in order with a sequence number, so a caller can wait for "the
  next stop after this point" without racing the reader.
* **Thread-safe, blocking by design.** A reader thread owns gdb's stdout;
  commands are serialised by a lock, so callers (thread workers of the app)
  may share one instance. :meth:`interrupt` deliberately does not take that
  lock: it must work while another thread waits in :meth:`execute` for a
  ``continue`` to stop.
* gdb runs asynchronously (``mi-async on``): while the target runs gdb keeps
  reading commands, which is what makes ``-exec-interrupt`` possible.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import itertools
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from pygdbmi import gdbmiparser

from engine.errors import GdbCommandError, GdbError, GdbExitedError, GdbTimeoutError

log = logging.getLogger(__name__)

GDB_BINARY = "gdb"
DEFAULT_TIMEOUT = 10.0
TAIL_LINES = 30
_EXIT_POLL = 0.2  # s between checks whether gdb has exited while waiting
_TAIL_KEEP = 400

# Settings every session gets: no pager or questions (there is nobody to
# answer), async MI (interrupt works), no auto-loaded scripts (a vmlinux's
# vmlinux-gdb.py would run code we did not ask for) and no debuginfod
# downloads (no network here, and a hang on one would look like a timeout).
_SETTINGS = (
    "mi-async on",
    "pagination off",
    "confirm off",
    "width 0",
    "height 0",
    "auto-load off",
)
_OPTIONAL_SETTINGS = ("debuginfod enabled off",)  # gdb built without debuginfod lacks it

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


# --------------------------------------------------------------------------
# Spawning from a thread that lives as long as the interpreter
# --------------------------------------------------------------------------

class _Spawner:
    """Forks children from one daemon thread (see the module doc for why)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while True:
            fn, future = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller, not lost here
                future.set_exception(exc)

    def call(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="sbtui-spawner",
                                                daemon=True)
                self._thread.start()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((fn, future))
        return future.result()


_spawner = _Spawner()


def _pdeathsig_preexec(parent_pid: int) -> Callable[[], None]:
    prctl = _libc.prctl  # resolved before fork: the child only calls it

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl; nobody would
        # send the signal then, so go now.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def spawn(argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen(argv)`` in a new session, killed when Python dies.

    The fork happens on the long-lived spawner thread, so the child's
    ``PR_SET_PDEATHSIG`` is tied to the process's life, not to the calling
    thread's.
    """
    parent = os.getpid()
    return _spawner.call(lambda: subprocess.Popen(
        list(argv), start_new_session=True, preexec_fn=_pdeathsig_preexec(parent),
        close_fds=True, **popen_kwargs))


# --------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class MiResult:
    """A result record (``^done``, ``^running``, ``^connected``, ``^exit``)."""

    command: str
    result_class: str
    payload: dict[str, Any]
    console: tuple[str, ...] = ()      # ~ records that arrived with the answer
    log: tuple[str, ...] = ()          # & records (gdb's own messages)

    @property
    def console_text(self) -> str:
        return "".join(self.console)


@dataclass(frozen=True)
class MiStop:
    """A ``*stopped`` async record; ``seq`` counts stops since launch, from 1."""

    seq: int
    payload: dict[str, Any] = field(default_factory=dict)


def mi_quote(text: str) -> str:
    """``text`` as an MI C string (quoted, with backslash escapes)."""
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"')
               .replace("\n", "\\n").replace("\t", "\\t"))
    return f'"{escaped}"'


# --------------------------------------------------------------------------
# The owner
# --------------------------------------------------------------------------

class GdbProcess:
    """One gdb process. See the module docstring for the promises."""

    def __init__(self, gdb: str = GDB_BINARY, *, args: Sequence[str] = (),
                 default_timeout: float = DEFAULT_TIMEOUT,
                 env: dict[str, str] | None = None) -> None:
        self._gdb = gdb
        self._extra_args = tuple(args)
        self.default_timeout = default_timeout
        self._env = env
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.RLock()          # one MI conversation at a time
        self._write_lock = threading.Lock()     # whole lines on stdin
        self._cond = threading.Condition()      # guards everything below
        self._tokens = itertools.count(1)
        self._pending: dict[int, tuple[dict, list, list] | None] = {}
        self._console: list[str] = []
        self._log: list[str] = []
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_KEEP)
        self._stop_seq = 0
        self._last_stop: MiStop | None = None
        self._running = False
        self._target_gone: str | None = None
        self._eof = False
        self._exit_code: int | None = None
        self._shut = False
        self.version = ""

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> "GdbProcess":
        self.launch()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    @property
    def argv(self) -> list[str]:
        return [self._gdb, "--interpreter=mi3", "--nx", "-q", *self._extra_args]

    def launch(self, timeout: float | None = None) -> None:
        """Start gdb and apply the session settings; on failure nothing is left running."""
        if self._proc is not None:
            raise GdbError("this GdbProcess was already launched; make a new one")
        timeout = self.default_timeout if timeout is None else timeout
        env = dict(os.environ if self._env is None else self._env)
        env["LC_ALL"] = "C"           # gdb's messages in one language: we match on them
        env.pop("DEBUGINFOD_URLS", None)
        try:
            self._proc = spawn(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env=env)
        except FileNotFoundError:
            raise GdbError(f"gdb not found ({self._gdb!r}); install it "
                           f"(apt-get install gdb) or run `make setup`") from None
        except OSError as exc:
            raise GdbError(f"could not start gdb ({' '.join(self.argv)}): {exc}") from None
        try:
            self._reader = threading.Thread(target=self._read_loop, daemon=True,
                                            name=f"gdb-reader-{self._proc.pid}")
            self._reader.start()
            for setting in _SETTINGS:
                self.command(f"-gdb-set {setting}", timeout=timeout)
            for setting in _OPTIONAL_SETTINGS:
                try:
                    self.command(f"-gdb-set {setting}", timeout=timeout)
                except GdbCommandError:
                    pass
            first = self.command("-gdb-version", timeout=timeout).console_text
            self.version = first.splitlines()[0] if first else ""
        except BaseException:
            self.shutdown(timeout=2.0)
            raise

    @property
    def lock(self) -> threading.RLock:
        """The command lock: hold it to run several commands as one unit."""
        return self._lock

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and not self._eof and self._proc.poll() is None

    @property
    def running(self) -> bool:
        """True between ``^running`` and the next ``*stopped``."""
        return self._running

    @property
    def last_stop(self) -> MiStop | None:
        return self._last_stop

    @property
    def stop_seq(self) -> int:
        return self._stop_seq

    def output_tail(self, lines: int = TAIL_LINES) -> str:
        """The last ``lines`` lines gdb printed (stream records decoded)."""
        with self._cond:
            kept = list(self._tail)[-lines:]
        return "\n".join(kept)

    def shutdown(self, timeout: float = 5.0) -> None:
        """``-gdb-exit``, then SIGTERM, then SIGKILL. Idempotent; never raises GdbError.

        gdb *detaches* from a ``target remote`` on exit, and QEMU's gdbstub
        resumes the guest when gdb detaches.
        """
        proc = self._proc
        if proc is None or self._shut:
            return
        self._shut = True
        try:
            if proc.poll() is None and not self._eof:
                try:
                    self._request("-gdb-exit", timeout=max(0.1, timeout / 2))
                except GdbError:
                    pass
                if not _wait(proc, max(0.1, timeout / 2)):
                    self._signal_group(signal.SIGTERM)
                    if not _wait(proc, 1.0):
                        self._signal_group(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                self._signal_group(signal.SIGKILL)
            # Whatever gdb started (a "shell" command) dies with it.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL ignored?
                log.error("gdb pid %s did not exit after SIGKILL", proc.pid)
            for pipe in (proc.stdin, proc.stdout):
                try:
                    if pipe is not None:
                        pipe.close()
                except OSError:
                    pass
            if self._reader is not None and self._reader is not threading.current_thread():
                self._reader.join(timeout=2.0)
            with self._cond:
                self._eof = True
                self._exit_code = proc.returncode
                self._cond.notify_all()

    def kill(self) -> None:
        """SIGKILL gdb's process group at once (for emergencies; prefer shutdown)."""
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: int) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)  # own session: pgid == pid
        except ProcessLookupError:
            pass
        except PermissionError:  # pragma: no cover - not our group after all
            proc.send_signal(sig)

    # -- reading -----------------------------------------------------------

    def _read_loop(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        buf = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                self._handle_line(raw.rstrip(b"\r").decode("utf-8", "replace"))
        if buf:
            self._handle_line(buf.decode("utf-8", "replace"))
        code = None
        try:
            code = self._proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            pass  # closed its stdout but lives on; shutdown() will kill it
        with self._cond:
            self._eof = True
            self._exit_code = code
            self._cond.notify_all()

    def _handle_line(self, line: str) -> None:
        if not line or line.strip() == "(gdb)":
            return
        try:
            rec = gdbmiparser.parse_response(line)
        except Exception:  # pygdbmi raises plain exceptions on odd input
            rec = {"type": "output", "message": None, "payload": line}
        kind = rec.get("type")
        with self._cond:
            if kind in ("console", "log", "target", "output"):
                text = rec.get("payload") or ""
                if not isinstance(text, str):
                    text = str(text)
                self._tail.extend(text.rstrip("\n").split("\n") if text.strip() else [])
                if kind == "log":
                    self._log.append(text)
                else:
                    self._console.append(text)
                # Output nobody collects (async chatter) must not grow forever.
                if len(self._console) > 20000:
                    del self._console[:10000]
                if len(self._log) > 20000:
                    del self._log[:10000]
                return
            self._tail.append(line)
            if kind == "result":
                token = rec.get("token")
                if rec.get("message") == "running":
                    self._running = True
                if token in self._pending:
                    self._pending[token] = (rec, self._console, self._log)
                    self._console, self._log = [], []
                    self._cond.notify_all()
                else:
                    log.debug("dropping a late or foreign gdb answer: %s", line[:200])
            elif kind == "notify":
                message = rec.get("message")
                if message == "stopped":
                    self._stop_seq += 1
                    self._last_stop = MiStop(self._stop_seq, rec.get("payload") or {})
                    self._running = False
                    self._cond.notify_all()
                elif message == "running":
                    self._running = True
                elif message == "thread-group-exited":
                    # The remote end (QEMU) closed the connection or exited.
                    self._target_gone = line
                    self._running = False
                    self._cond.notify_all()
                elif message == "thread-group-started":
                    self._target_gone = None

    # -- commands ----------------------------------------------------------

    def _gdb_exited(self) -> bool:
        # End-of-file on gdb's stdout is the quick signal, but a child of gdb
        # (a "shell" command) can hold the pipe open after gdb died.
        if self._proc is None or self._proc.poll() is None:
            return False
        self._exit_code = self._proc.returncode
        return True

    def _exited_error(self, what: str) -> GdbExitedError:
        code = self._exit_code
        if code is None and self._proc is not None:
            code = self._proc.poll()
        return GdbExitedError(f"gdb exited {what}", exit_code=code,
                              output_tail=self.output_tail())

    def _request(self, cmd: str, timeout: float) -> MiResult:
        """Send one MI command and wait for its result record (no command lock)."""
        if self._proc is None:
            raise GdbError(f"gdb is not running (call launch() first); cannot send {cmd!r}")
        token = next(self._tokens)
        with self._cond:
            if self._eof:
                raise self._exited_error(f"before {cmd!r} could be sent")
            self._pending[token] = None
        try:
            try:
                with self._write_lock:
                    assert self._proc.stdin is not None
                    self._proc.stdin.write(f"{token}{cmd}\n".encode())
                    self._proc.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                with self._cond:
                    self._cond.wait_for(lambda: self._eof, timeout=2.0)
                raise self._exited_error(f"while {cmd!r} was sent") from None
            deadline = time.monotonic() + timeout
            with self._cond:
                while self._pending.get(token) is None:
                    if self._eof or self._gdb_exited():
                        raise self._exited_error(f"while running {cmd!r}")
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise GdbTimeoutError(
                            f"gdb did not answer {cmd!r} within {timeout:g} s",
                            command=cmd, waited=timeout)
                    self._cond.wait(min(remaining, _EXIT_POLL))
                rec, console, logs = self._pending[token]  # type: ignore[misc]
        finally:
            with self._cond:
                self._pending.pop(token, None)
        payload = rec.get("payload") or {}
        if not isinstance(payload, dict):
            payload = {"value": payload}
        if rec.get("message") == "error":
            msg = str(payload.get("msg", "")).strip() or "(no message)"
            raise GdbCommandError(f"gdb refused {cmd!r}: {msg}", command=cmd, gdb_message=msg)
        return MiResult(cmd, str(rec.get("message")), payload, tuple(console), tuple(logs))

    def command(self, cmd: str, timeout: float | None = None) -> MiResult:
        """Run one MI command (``-data-...``) and return its parsed result."""
        with self._lock:
            return self._request(cmd, self.default_timeout if timeout is None else timeout)

    def console(self, cli_command: str, timeout: float | None = None) -> str:
        """Run a CLI command through ``-interpreter-exec console``; its console text."""
        res = self.command(f"-interpreter-exec console {mi_quote(cli_command)}", timeout)
        return res.console_text

    def wait_for_stop(self, after: int, timeout: float | None,
                      command: str = "the target") -> MiStop:
        """The first ``*stopped`` with ``seq > after``; ``timeout=None`` waits for ever
        (still ending at once when gdb exits or the target goes away)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._stop_seq <= after:
                if self._eof or self._gdb_exited():
                    raise self._exited_error(f"while waiting for {command} to stop")
                if self._target_gone is not None:
                    raise GdbError(f"the target went away while waiting for {command} to "
                                   f"stop (QEMU exited or closed the gdb connection)\n"
                                   f"--- gdb output (last lines) ---\n{self.output_tail()}")
                if deadline is None:
                    self._cond.wait(_EXIT_POLL)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise GdbTimeoutError(f"{command} did not stop within {timeout:g} s",
                                          command=command, waited=timeout)
                self._cond.wait(min(remaining, _EXIT_POLL))
            # Stops cannot pile up: each needs a resume in between, and
            # resumes are serialised by the command lock.
            assert self._last_stop is not None
            return self._last_stop

    def execute(self, cmd: str, timeout: float | None = None, *,
                interrupt_on_timeout: bool = True) -> MiStop:
        """Run an execution command (``-exec-...``) and wait until the target stops.

        On timeout the target is interrupted (so gdb is usable again) and
        :class:`GdbTimeoutError` names the command and the wait. ``timeout=None``
        waits without a limit (until a stop, :meth:`interrupt` from another
        thread, gdb's exit or the target going away).
        """
        with self._lock:
            before = self._stop_seq
            self._request(cmd, self.default_timeout)  # ^running comes at once
            try:
                return self.wait_for_stop(before, timeout, command=repr(cmd))
            except GdbTimeoutError as exc:
                if not interrupt_on_timeout:
                    raise
                note = "interrupted it"
                try:
                    self.interrupt(timeout=5.0)
                except GdbError as again:
                    note = f"interrupting it failed too: {again}"
                raise GdbTimeoutError(f"{exc}; {note}", command=cmd, waited=timeout) from None

    def resume(self, cmd: str = "-exec-continue", timeout: float | None = None) -> int:
        """Start an execution command and return without waiting for the stop.

        Returns the stop sequence number to pass to :meth:`wait_for_stop`.
        """
        with self._lock:
            before = self._stop_seq
            self._request(cmd, self.default_timeout if timeout is None else timeout)
            return before

    def interrupt(self, timeout: float = 5.0) -> MiStop | None:
        """Stop a running target (``-exec-interrupt``) and wait for the stop.

        Does not take the command lock, so it works while another thread
        waits in :meth:`execute`. Returns the last stop when nothing ran.
        """
        with self._cond:
            if not self._running:
                return self._last_stop
            before = self._stop_seq
        self._request("-exec-interrupt", timeout)
        return self.wait_for_stop(before, timeout, command="-exec-interrupt")


def _wait(proc: subprocess.Popen, timeout: float) -> bool:
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False
