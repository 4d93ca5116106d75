"""Live checkpoints: a running guest, no record/replay, checkpoints by ``background-snapshot``.

Two ways in:

* :class:`LiveAttach` (``sbtui attach``; :func:`attach` runs one to its end)
  connects to a QEMU someone else started with
  ``-qmp unix:PATH,server=on,wait=off`` (:class:`AttachedQemu`), takes
  checkpoints into a live recording, and detaches: it never quits that VM,
  changes its run state only when asked (``pause``/``resume``), and puts back
  the migration capabilities and parameters it changed.
* :class:`LiveRecorder` (``sbtui record --live``) starts the guest itself
  (KVM when the probe boot works, TCG otherwise) and checkpoints it the same way.

Both keep one schedule (:class:`_LiveSchedule`): a checkpoint every interval,
one at once on ``checkpoint_now``, none while the guest is paused, ``stop``
from any thread; :mod:`engine.live` puts them behind the app's LiveControl.

How a live checkpoint is taken (:class:`LiveCheckpointer`, facts in
shared/notes/qemu-facts.md): ``migrate-set-capabilities background-snapshot``
and a raised ``max-bandwidth`` once; then per checkpoint a pipe whose write
end goes to QEMU over the QMP socket (``getfd``, SCM_RIGHTS) and
``migrate fd:NAME``. QEMU write-protects guest RAM (userfaultfd), resumes the
guest after a pause of a few milliseconds and streams the state of that
moment while the guest runs; a thread imports the pipe's read end into the
store as the bytes arrive (pages may come in any order and twice: the store
keeps the last). The downtime is QEMU's own ``downtime`` figure; the
STOP-to-RESUME time of QEMU's events is kept beside it (``pauses_ms``). Most
of the pause is QEMU write-protecting guest RAM; between checkpoints of a QEMU
we started, guest RAM is collapsed back into huge pages so that step stays
short (engine/recording/thp.py says why).

Live checkpoints have no instruction count (``icount`` 0) and cannot be
replayed instruction by instruction; they can be opened, inspected and
started as a new VM. Their recording has ``kind = "live"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from qemu.qmp import EventListener, ExecuteError, QMPClient
from qemu.qmp.error import QMPError

from engine.errors import (QemuDiedError, QemuError, QemuTimeoutError, QmpError, RecordingError,
                           SbtuiError, UsageError)
from engine.qemu import MachineSpec, QemuProcess, find_qemu, qemu_version
from engine.recording.events import (CheckpointStored, CheckpointTaken, RecordingStarted,
                                     RecordSummary)
from engine.recording.format import CheckpointEntry, Manifest, Recording
from engine.recording.thp import HugePageCollapser

MAX_BANDWIDTH = 64 << 30        # bytes/s: "unlimited" (the default 32 MiB/s made a snapshot take 10 s)
MIGRATION_TIMEOUT = 300.0
EventCallback = Callable[[object], None]


# -- a QEMU we did not start ---------------------------------------------------

class _Events:
    def __init__(self, listener: EventListener):
        self._listener = listener

    async def get(self, timeout: float | None = None) -> dict[str, Any]:
        try:
            return dict(await asyncio.wait_for(self._listener.get(), timeout))
        except asyncio.TimeoutError:
            raise QemuTimeoutError(f"no QMP event within {timeout:g} s") from None


class AttachedQemu:
    """A QMP connection to a QEMU someone else started. Closing it only disconnects."""

    def __init__(self, socket_path: str | Path, *, timeout: float = 10.0):
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        self.peer_pid: int | None = None
        self._client: QMPClient | None = None

    async def __aenter__(self) -> "AttachedQemu":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _bad(self, why: str) -> UsageError:
        return UsageError(f"cannot attach to {self.socket_path}: {why}. Start QEMU with "
                          f"'-qmp unix:{self.socket_path},server=on,wait=off' and give that path")

    async def connect(self) -> None:
        path = self.socket_path
        if not path.exists():
            raise self._bad("no such file")
        if not path.is_socket():
            raise self._bad("not a UNIX socket")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, str(path)),
                                   self.timeout)
        except (OSError, asyncio.TimeoutError) as err:
            sock.close()
            why = "nobody is listening on it (is QEMU still running?)" \
                if isinstance(err, ConnectionRefusedError) else f"connecting failed ({err or 'timeout'})"
            raise self._bad(why) from None
        with contextlib.suppress(OSError):
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            self.peer_pid = struct.unpack("3i", creds)[0]
        client = QMPClient(f"sbtui-attach-{os.getpid()}")
        try:
            await asyncio.wait_for(client.connect(sock), self.timeout)
        except (QMPError, OSError, asyncio.TimeoutError) as err:
            with contextlib.suppress(Exception):
                await client.disconnect()
            sock.close()
            why = str(err) or f"no greeting within {self.timeout:g} s"
            raise self._bad(f"it does not speak QMP ({why})") from None
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 5.0)

    @property
    def alive(self) -> bool:
        return self._client is not None and self._client.runstate.name == "RUNNING"

    def command_line(self) -> list[str]:
        """QEMU's argv from /proc when it runs on this machine (for the manifest)."""
        if self.peer_pid is None:
            return []
        try:
            raw = Path(f"/proc/{self.peer_pid}/cmdline").read_bytes()
        except OSError:
            return []
        return [a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0")]

    async def qmp(self, command: str, arguments: Mapping[str, Any] | None = None, *,
                  timeout: float | None = 30.0) -> Any:
        if self._client is None:
            raise QemuError(f"QMP {command}: not attached")
        try:
            return await asyncio.wait_for(self._client.execute(command, arguments), timeout)
        except ExecuteError as err:
            raise QmpError(f"QMP command '{command}' failed: {err.error_class}: {err}") from err
        except asyncio.TimeoutError:
            raise QemuTimeoutError(f"QMP command '{command}' got no answer within {timeout:g} s") from None
        except (QMPError, EOFError, OSError) as err:
            raise QemuDiedError(f"QMP command '{command}': the connection to QEMU at "
                                f"{self.socket_path} was lost ({err})") from err

    async def send_fd(self, fd: int, name: str) -> None:
        if self._client is None:
            raise QemuError("send_fd: not attached")
        try:
            self._client.send_fd_scm(fd)
        except (OSError, QMPError) as err:
            raise QemuError(f"passing a file descriptor to QEMU failed: {err}") from err
        await self.qmp("getfd", {"fdname": name})

    @contextlib.contextmanager
    def listen(self, *names: str):
        if self._client is None:
            raise QemuError("listen: not attached")
        listener = EventListener(names or None)
        self._client.register_listener(listener)
        try:
            yield _Events(listener)
        finally:
            with contextlib.suppress(Exception):
                self._client.remove_listener(listener)


# -- taking live checkpoints -------------------------------------------------------

class LiveCheckpointer:
    """Background-snapshot checkpoints of one QEMU (QemuProcess or AttachedQemu) into a recording."""

    def __init__(self, target, rec: Recording, *, t0: float, on_event: EventCallback | None = None,
                 collapse_huge_pages: bool | None = None):
        self.target = target
        self.rec = rec
        self.t0 = t0                      # monotonic time of the recording's start
        self.on_event = on_event or (lambda _e: None)
        self.entries: list[CheckpointEntry] = []
        self.downtimes_ms: list[float] = []
        self.ingest_s: list[float] = []
        self.stored_bytes = 0
        self.raw_bytes = 0
        self._saved_caps: list[dict] | None = None
        self._saved_bandwidth: int | None = None
        self._prepared = False
        # Huge pages back between checkpoints (engine/recording/thp.py): None
        # means on for a QEMU we started, off for one we attached to (its
        # memory is the user's: collapsing makes all of guest RAM resident).
        self.collapse_huge_pages = collapse_huge_pages
        self.collapser: HugePageCollapser | None = None
        self.collapse_s: list[float] = []
        self._collapsing: asyncio.Future | None = None
        # The guest's pause per checkpoint from QEMU's STOP and RESUME events
        # (microsecond timestamps; QEMU's 'downtime' counts whole milliseconds
        # and includes waiting for the vCPU to notice the stop request).
        self.pauses_ms: list[float | None] = []

    async def prepare(self) -> None:
        """Switch on background-snapshot and raise the bandwidth (remembering the old values)."""
        t = self.target
        info = await t.qmp("query-migrate")
        if info.get("status") in ("setup", "active", "pre-switchover", "device", "postcopy-active",
                                  "wait-unplug", "cancelling"):
            raise RecordingError(f"QEMU is busy with a migration ({info.get('status')}); "
                                 "try again when it has finished")
        caps = await t.qmp("query-migrate-capabilities")
        self._saved_caps = [dict(c) for c in caps]
        params = await t.qmp("query-migrate-parameters")
        self._saved_bandwidth = params.get("max-bandwidth")
        try:
            await t.qmp("migrate-set-capabilities",
                        {"capabilities": [{"capability": "background-snapshot", "state": True}]})
        except QmpError as err:
            raise RecordingError(f"this QEMU cannot take live checkpoints (background-snapshot): "
                                 f"{err}") from err
        await t.qmp("migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH})
        self._prepared = True
        collapse = self.collapse_huge_pages
        if collapse is None:
            collapse = isinstance(t, QemuProcess)
        if collapse and self.collapser is None:
            pid = getattr(t, "pid", None) or getattr(t, "peer_pid", None)
            self.collapser = HugePageCollapser(pid)

    async def restore(self) -> None:
        """Put back the capabilities and parameters :meth:`prepare` changed."""
        await self._settle_collapse()
        if self.collapser is not None:
            self.collapser.close()
        if not self._prepared:
            return
        self._prepared = False
        t = self.target
        with contextlib.suppress(SbtuiError):
            if self._saved_caps is not None:
                bg = next((c for c in self._saved_caps if c.get("capability") == "background-snapshot"),
                          {"state": False})
                await t.qmp("migrate-set-capabilities",
                            {"capabilities": [{"capability": "background-snapshot",
                                               "state": bool(bg.get("state"))}]})
            if self._saved_bandwidth is not None:
                await t.qmp("migrate-set-parameters", {"max-bandwidth": self._saved_bandwidth})

    async def _settle_collapse(self) -> None:
        pending, self._collapsing = self._collapsing, None
        if pending is not None:
            spent = await pending
            if spent is not None:
                self.collapse_s.append(spent)

    async def take(self, index: int) -> CheckpointEntry:
        # A collapse must not overlap a snapshot (it would fight the write
        # protection); it started when the previous checkpoint ended.
        await self._settle_collapse()
        t = self.target
        rec = self.rec
        name = f"sbtui-live-{os.getpid()}-{index}"
        rfd, wfd = os.pipe()
        result: list[Any] = []
        parent = self.entries[-1].store_id if self.entries else None

        def ingest() -> None:
            try:
                with os.fdopen(rfd, "rb", buffering=1 << 20) as src:
                    with rec.store_lock:
                        result.append(rec.store.import_stream(
                            src, name=name, parent=parent,
                            meta={"index": index, "origin": "live"}))
            except BaseException as err:  # noqa: BLE001 - handed back below
                result.append(err)

        try:
            await t.send_fd(wfd, name)
        finally:
            os.close(wfd)   # QEMU has its own copy; ours would hide its end-of-file
        thread = threading.Thread(target=ingest, name="sbtui-live-ingest", daemon=True)
        thread.start()
        wall = time.monotonic() - self.t0
        t_start = time.monotonic()
        try:
            run_events: dict[str, float] = {}
            with t.listen("MIGRATION", "STOP", "RESUME") as events:
                try:
                    await t.qmp("migrate", {"uri": f"fd:{name}"})
                except SbtuiError:
                    with contextlib.suppress(SbtuiError):
                        await t.qmp("closefd", {"fdname": name})  # ends the reader with EOF
                    raise
                status = await _wait_migration(t, events, run_events)
            info = await t.qmp("query-migrate")
        finally:
            await asyncio.to_thread(thread.join, MIGRATION_TIMEOUT)
        ingest_s = time.monotonic() - t_start
        got = result[0] if result else RecordingError("the live checkpoint's import did not finish")
        if status != "completed":
            raise RecordingError(f"live checkpoint {index} failed: QEMU reports migration "
                                 f"'{status}': {info.get('error-desc', '')}".rstrip(": "))
        if isinstance(got, BaseException):
            if isinstance(got, OSError) and got.errno == errno.ENOSPC:
                raise RecordingError(f"{rec.path}: the disk is full ({got}); live checkpoint "
                                     f"{index} was not stored") from got
            raise RecordingError(f"storing live checkpoint {index} failed: {got}") from got
        downtime_ms = float(info.get("downtime", 0.0))
        self.on_event(CheckpointTaken(index, 0, downtime_ms, wall, pending=0))
        entry = CheckpointEntry(index=index, store_id=got.id, icount=0, wall_time=round(wall, 6),
                                guest_time_ns=0, downtime_ms=round(downtime_ms, 3), origin="live")
        rec.append_checkpoint(entry)
        self.entries.append(entry)
        self.downtimes_ms.append(downtime_ms)
        stop, resume = run_events.get("STOP"), run_events.get("RESUME")
        self.pauses_ms.append((resume - stop) * 1e3 if stop is not None and resume is not None
                              and resume >= stop else None)
        self.ingest_s.append(ingest_s)
        st = got.stats
        self.stored_bytes += st.stored_bytes
        self.raw_bytes += st.raw_bytes
        self.on_event(CheckpointStored(entry, st.dirty_pages, st.new_pages, st.stored_bytes,
                                       st.raw_bytes, ingest_s, 0))
        if self.collapser is not None and self.collapser.available:
            # QEMU has unregistered its write protection by now (the stream's
            # end-of-file comes after ram_write_tracking_stop).
            self._collapsing = asyncio.ensure_future(asyncio.to_thread(self.collapser.collapse))
        return entry

    def summary(self, status: str, *, error: str | None = None) -> RecordSummary:
        return RecordSummary(path=str(self.rec.path), kind="live", status=status,
                             checkpoints=len(self.entries), wall_s=self.rec.manifest.wall_s or 0.0,
                             downtimes_ms=list(self.downtimes_ms), ingest_s=list(self.ingest_s),
                             stored_bytes=self.stored_bytes, raw_bytes=self.raw_bytes,
                             proofs={}, proof_note="live checkpoints are not replayable; "
                                                   "nothing to prove", error=error)


async def _wait_migration(target, events, run_events: dict[str, float] | None = None) -> str:
    """Wait for the migration to end; its status. ``run_events`` gets the
    timestamps (seconds) of the first STOP and RESUME events seen."""
    deadline = time.monotonic() + MIGRATION_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            with contextlib.suppress(SbtuiError):
                await target.qmp("migrate_cancel")
            return "timeout"
        # MIGRATION events come only with the 'events' capability, which is the
        # user's to set: poll, briefly, and take an event when there is one.
        try:
            ev = await events.get(timeout=min(0.02, left))
            status = ev.get("data", {}).get("status", "")
            kind = ev.get("event")
            if run_events is not None and kind in ("STOP", "RESUME") and kind not in run_events:
                ts = ev.get("timestamp") or {}
                run_events[kind] = ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6
        except QemuTimeoutError:
            status = (await target.qmp("query-migrate")).get("status", "")
        if status in ("completed", "failed", "cancelled"):
            return status


# -- the schedule both live modes share --------------------------------------------

class _LiveSchedule:
    """A checkpoint every ``interval``, one at once on :meth:`checkpoint_now`, none while paused.

    Shared by :class:`LiveAttach` and :class:`LiveRecorder`. The control
    coroutines (:meth:`pause`, :meth:`resume`, :meth:`checkpoint_now`) run on
    the loop that runs :meth:`run`; :meth:`stop` may be called from any
    thread. Checkpoints and run-state changes are serialized (one migration
    at a time; no ``stop`` in the middle of a snapshot).
    """

    def __init__(self, *, interval: float, duration: float | None, count: int | None,
                 on_event: EventCallback | None):
        if not (isinstance(interval, (int, float)) and interval > 0):
            raise UsageError(f"--interval must be a positive number of seconds, got {interval!r}")
        if duration is not None and duration <= 0:
            raise UsageError(f"--duration must be a positive number of seconds, got {duration!r}")
        if count is not None and count < 1:
            raise UsageError(f"--count must be at least 1, got {count}")
        self.interval = float(interval)
        self.duration = duration
        self.count = count
        self.on_event = on_event or (lambda _e: None)
        self.rec: Recording | None = None
        self.cp: LiveCheckpointer | None = None
        self.paused = False          # the guest's vCPUs are stopped, as far as we know
        self.user_run_state: str | None = None   # "paused"/"running": the user's last pause/resume
        self._stopping = False
        self._wake: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_index = 0
        self._last_at = 0.0

    @property
    def recording(self) -> Recording | None:
        return self.rec

    def stop(self) -> None:
        """End soon: no new checkpoint. Safe from any thread and from a signal handler."""
        self._stopping = True
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    def _target(self):
        raise NotImplementedError

    def _started(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        if self._stopping:
            self._wake.set()

    def _ready(self) -> tuple[Any, LiveCheckpointer, asyncio.Lock]:
        if self.cp is None or self._lock is None:
            raise RecordingError("the live recording has not started yet")
        return self._target(), self.cp, self._lock

    async def pause(self) -> None:
        """QMP ``stop``: the guest's vCPUs stop; no periodic checkpoint meanwhile. Idempotent."""
        target, _cp, lock = self._ready()
        async with lock:
            await target.qmp("stop", timeout=30)
            self.paused, self.user_run_state = True, "paused"

    async def resume(self) -> None:
        """QMP ``cont``. Idempotent."""
        target, _cp, lock = self._ready()
        async with lock:
            await target.qmp("cont", timeout=30)
            self.paused, self.user_run_state = False, "running"
        if self._wake is not None:
            self._wake.set()     # the next periodic checkpoint is due an interval from now

    async def checkpoint_now(self) -> CheckpointEntry:
        """Take a checkpoint at once (paused or not); the next periodic one follows an interval later."""
        self._ready()
        entry = await self._take()
        if self._wake is not None:
            self._wake.set()
        return entry

    async def _take(self) -> CheckpointEntry:
        _target, cp, lock = self._ready()
        async with lock:
            entry = await cp.take(self._next_index)
            self._next_index += 1
            self._last_at = time.monotonic()
            return entry

    async def _refresh_run_state(self) -> None:
        """Ask QEMU whether the guest runs (someone else may have paused or resumed it)."""
        target, _cp, lock = self._ready()
        async with lock:
            status = (await target.qmp("query-status")).get("status", "")
        self.paused = status != "running"

    async def _schedule(self, exited: "asyncio.Future | None" = None) -> str:
        """Checkpoint until the end; return why it ended: ``stopped``, ``count``,
        ``duration`` or ``exited`` (``exited`` is a task that ends when the guest does)."""
        assert self._wake is not None
        start = time.monotonic()
        end = start + self.duration if self.duration is not None else None
        taken = 0
        if not self._stopping:
            await self._take()
            taken = 1
        wake_task: asyncio.Task | None = None
        try:
            while True:
                if self._stopping:
                    return "stopped"
                if self.count is not None and taken >= self.count:
                    return "count"
                now = time.monotonic()
                if end is not None and now >= end:
                    return "duration"
                due = self._last_at + self.interval
                deadline = min(due, end) if end is not None else due
                if wake_task is None or wake_task.done():
                    self._wake.clear()
                    wake_task = asyncio.create_task(self._wake.wait())
                waits: set = {wake_task} | ({exited} if exited is not None else set())
                done, _ = await asyncio.wait(waits, timeout=max(0.0, deadline - now),
                                             return_when=asyncio.FIRST_COMPLETED)
                if exited is not None and exited in done:
                    return "exited"
                if wake_task in done or self._stopping:
                    continue      # stop, checkpoint-now or resume: look again
                now = time.monotonic()
                if now < self._last_at + self.interval or (end is not None and now >= end):
                    continue
                if self.paused:
                    # A paused guest does not change; look whether someone resumed it.
                    await self._refresh_run_state()
                    if self.paused:
                        self._last_at = now
                        continue
                await self._take()
                taken += 1
        finally:
            if wake_task is not None:
                wake_task.cancel()
                with contextlib.suppress(BaseException):
                    await wake_task


# -- attach ------------------------------------------------------------------------

def open_or_create_live(path: Path, *, interval: float, qemu_version_text: str,
                        source: dict, spec: dict) -> Recording:
    """The live recording at ``path``: an existing one (checkpoints are appended) or a new one."""
    if path.exists() and (path / "recording.json").exists():
        rec = Recording.open(path)
        if rec.manifest.kind != "live":
            raise UsageError(f"{path}: is a record-mode recording; live checkpoints go into a "
                             "live recording (give a new path)")
        rec.update(status="recording", error=None)
        return rec
    manifest = Manifest(kind="live", spec=spec, qemu_version=qemu_version_text,
                        interval_s=interval, created=time.time(), source=source)
    return Recording.create(path, manifest)


class LiveAttach(_LiveSchedule):
    """``sbtui attach``: checkpoint a QEMU someone else started, then detach leaving it be.

    Ends after ``count`` checkpoints, ``duration`` seconds, on :meth:`stop`, or
    when that QEMU goes away (status ``complete``, ``interrupted`` and
    ``complete`` respectively; a lost QEMU with no checkpoint is an error).
    The guest's run state changes only when :meth:`pause`/:meth:`resume` are
    called; detaching leaves it as it is and :attr:`detach_note` says how
    (paused when the user paused it, running otherwise). The serial console
    belongs to that QEMU: :meth:`send_console` raises ``UsageError``.
    """

    def __init__(self, socket_path: str | Path, rec_path: str | Path, *, interval: float = 2.0,
                 count: int | None = None, duration: float | None = None,
                 on_event: EventCallback | None = None):
        super().__init__(interval=interval, duration=duration, count=count, on_event=on_event)
        self.socket_path = Path(socket_path)
        self.rec_path = Path(rec_path)
        self.vm: AttachedQemu | None = None
        self.status_at_attach: str | None = None
        self.detach_note = ""

    def _target(self) -> AttachedQemu:
        if self.vm is None:
            raise RecordingError("not attached")
        return self.vm

    @property
    def console_note(self) -> str:
        pid = self.vm.peer_pid if self.vm is not None else None
        who = f"the QEMU you started (pid {pid})" if pid else "the QEMU you started"
        return (f"This guest's console belongs to {who}, not to sbtui: read and type to it "
                f"where that QEMU's serial port goes (its -serial option).")

    async def send_console(self, data: bytes | str) -> None:
        raise UsageError(self.console_note)

    async def run(self) -> RecordSummary:
        self._started()
        async with AttachedQemu(self.socket_path) as q:
            status = await q.qmp("query-status")
            version = await q.qmp("query-version")
            v = version.get("qemu", {})
            vtext = f"{v.get('major', 0)}.{v.get('minor', 0)}.{v.get('micro', 0)}"
            try:
                mem = (await q.qmp("query-memory-size-summary")).get("base-memory", 0)
            except SbtuiError:
                mem = 0
            argv = q.command_line()
            self.status_at_attach = status.get("status")
            self.paused = self.status_at_attach != "running"
            source = {"qmp_socket": str(self.socket_path.resolve()), "pid": q.peer_pid,
                      "argv": argv, "status_at_attach": self.status_at_attach}
            spec = {"memory_mib": int(mem) >> 20} if mem else {}
            rec = open_or_create_live(self.rec_path, interval=self.interval,
                                      qemu_version_text=vtext, source=source, spec=spec)
            self.rec = rec
            t0 = time.monotonic() - (time.time() - rec.manifest.created)
            self._next_index = len(rec.checkpoints())
            cp = LiveCheckpointer(q, rec, t0=t0, on_event=self.on_event)
            self.on_event(RecordingStarted(rec.path, tuple(argv)))
            result = "complete"
            error: str | None = None
            try:
                await cp.prepare()
                self.vm, self.cp = q, cp
                why = await self._schedule()
                if why == "stopped":
                    result = "interrupted"
            except QemuDiedError as err:
                # The user's QEMU went away: keep what was stored.
                error = str(err).splitlines()[0]
                result = "complete" if cp.entries else "failed"
                if not cp.entries:
                    rec.update(status="failed", error=error)
                    raise
            except BaseException as err:
                rec.update(status="failed",
                           error=str(err).splitlines()[0] if str(err) else type(err).__name__)
                raise
            finally:
                await cp.restore()
                await self._note_detach(q)
                rec.update(wall_s=round(time.monotonic() - t0, 3))
            rec.update(status=result, error=error)
            summary = cp.summary(result, error=error)
            rec.update(stats=summary.figures())
            rec.close()
            return summary

    async def _note_detach(self, q: AttachedQemu) -> None:
        """Say in which run state the guest is left (nothing is changed here)."""
        try:
            now = (await q.qmp("query-status", timeout=5)).get("status", "")
        except SbtuiError:
            self.detach_note = "the QEMU is gone"
            return
        if now == "running":
            self.detach_note = "the guest runs on"
            if self.user_run_state == "running" and self.status_at_attach != "running":
                self.detach_note += f" (you resumed it; it was {self.status_at_attach} at attach)"
        elif self.user_run_state == "paused":
            self.detach_note = ("the guest stays paused, as you left it ('cont' in its "
                                "monitor resumes it)")
        else:
            self.detach_note = f"the guest is {now}, as it was" if now == self.status_at_attach \
                else f"the guest is {now} (it was {self.status_at_attach} at attach; sbtui did not pause it)"


async def attach(socket_path: str | Path, rec_path: str | Path, *, interval: float = 2.0,
                 count: int | None = None, duration: float | None = None,
                 stop: asyncio.Event | None = None,
                 on_event: EventCallback | None = None) -> RecordSummary:
    """:class:`LiveAttach` run to its end; setting ``stop`` detaches (status ``interrupted``)."""
    job = LiveAttach(socket_path, rec_path, interval=interval, count=count, duration=duration,
                     on_event=on_event)
    watcher = None
    if stop is not None:
        async def relay() -> None:
            await stop.wait()
            job.stop()
        watcher = asyncio.create_task(relay())
    try:
        return await job.run()
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher


# -- record --live -----------------------------------------------------------------

class LiveRecorder(_LiveSchedule):
    """``sbtui record --live``: start the guest (no record/replay) and checkpoint it live.

    Ends after ``duration``, when the guest powers off, or on :meth:`stop`
    (QEMU is then quit). The console is ours: :meth:`send_console` types to it.

    How the guest starts is in four hooks (:meth:`_new_manifest`,
    :meth:`_guest_files`, :meth:`_stored_spec`, :meth:`_start_guest`), so a
    guest started another way is recorded by the same code:
    :class:`engine.golive.GoLiveRecorder` starts it from a checkpoint.
    """

    console_note = None

    def __init__(self, path: str | Path, spec: MachineSpec, *, interval: float = 2.0,
                 duration: float | None = None, guest_info: dict | None = None,
                 on_event: EventCallback | None = None, qemu_binary: str | None = None,
                 launch_timeout: float = 60.0):
        super().__init__(interval=interval, duration=duration, count=None, on_event=on_event)
        if not spec.kernel:
            raise UsageError("the machine has no kernel: give --kernel (or use the demo guest)")
        self.path = Path(path).absolute()   # QEMU runs in another directory
        self.spec = spec
        self.guest_info = dict(guest_info or {})
        self.qemu_binary = qemu_binary
        self.launch_timeout = launch_timeout
        self.vm: QemuProcess | None = None

    def _target(self) -> QemuProcess:
        if self.vm is None or not self.vm.alive:
            raise RecordingError("the guest is not running")
        return self.vm

    async def send_console(self, data: bytes | str) -> None:
        if self.vm is None or not self.vm.alive or self.vm.console is None:
            raise RecordingError("the guest is not running; there is no console to type into")
        await self.vm.console.send(data)

    # -- how the guest starts (hooks) ----------------------------------------

    def _new_manifest(self, qemu_version_text: str) -> Manifest:
        """The new recording's manifest (its ``spec`` is filled in later)."""
        return Manifest(kind="live", spec={}, qemu_version=qemu_version_text,
                        interval_s=self.interval, created=time.time(), guest=dict(self.guest_info))

    def _guest_files(self) -> dict[str, Path]:
        """Files copied into the recording, by role (``kernel``, ``initrd``, ...)."""
        return {role: Path(getattr(self.spec, role))
                for role in ("kernel", "initrd") if getattr(self.spec, role)}

    def _stored_spec(self, files: Mapping[str, str]) -> MachineSpec:
        """The machine as the manifest keeps it (guest files relative to the recording)."""
        return self.spec.replace(kernel=files.get("kernel"), initrd=files.get("initrd"),
                                 debugcon_path="debugcon.out", rr=None, rrfile=None,
                                 icount_shift=None, vmstate_image=None, paused=False,
                                 no_reboot=True)

    def _launch_spec(self, rec: Recording) -> MachineSpec:
        """The machine QEMU is launched with."""
        return rec.machine_spec()

    async def _start_guest(self, vm: QemuProcess) -> None:
        """Called once QEMU is up, before the first checkpoint: the guest boots by itself."""

    # -- the run ---------------------------------------------------------------

    async def run(self) -> RecordSummary:
        self._started()
        binary = find_qemu(self.qemu_binary)
        vtext = ".".join(map(str, qemu_version(binary)))
        manifest = self._new_manifest(vtext)
        rec = Recording.create(self.path, manifest)
        try:
            files = {role: rec.add_guest_file(role, src) for role, src in self._guest_files().items()}
        except BaseException:
            shutil.rmtree(rec.path, ignore_errors=True)
            raise
        manifest.spec = self._stored_spec(files).to_dict()
        rec.save_manifest()
        self.rec = rec
        run_spec = self._launch_spec(rec)
        t0 = time.monotonic() - (time.time() - manifest.created)
        work = Path(tempfile.mkdtemp(prefix="sbtui-live-"))
        cp: LiveCheckpointer | None = None
        status, error = "failed", None
        try:
            vm = QemuProcess(run_spec, workdir=work / "qemu", log_path=rec.path / "qemu.log",
                             console_path=rec.console_path, qemu_binary=binary,
                             launch_timeout=self.launch_timeout)
            async with vm:
                await self._start_guest(vm)
                self.vm = vm
                self.on_event(RecordingStarted(rec.path, tuple(vm.argv)))
                cp = LiveCheckpointer(vm, rec, t0=t0, on_event=self.on_event)
                await cp.prepare()
                self.cp = cp
                exited = asyncio.create_task(vm.wait_exit(1e9))
                try:
                    why = await self._schedule(exited)
                except QemuError:
                    # The guest powered off during a checkpoint (QMP breaks off before
                    # the process is reaped): that checkpoint is lost, the run is over.
                    with contextlib.suppress(SbtuiError):
                        await vm.wait_exit(5.0)
                    if vm.alive:
                        raise
                    why = "exited"
                finally:
                    exited.cancel()
                    with contextlib.suppress(BaseException):
                        await exited
                if why == "exited" or not vm.alive:
                    if vm.returncode != 0:
                        raise QemuDiedError("QEMU died during the live recording",
                                            argv=vm.argv, exit_code=vm.returncode,
                                            log_tail=vm.log_tail())
                    status = "complete"
                else:
                    status = "interrupted" if why == "stopped" else "complete"
        except BaseException as err:
            status = "failed" if not isinstance(err, asyncio.CancelledError) else "interrupted"
            error = str(err) or type(err).__name__
            rec.update(status=status, error=error, wall_s=round(time.monotonic() - t0, 3))
            shutil.rmtree(work, ignore_errors=True)
            raise
        shutil.rmtree(work, ignore_errors=True)
        rec.update(status=status, error=error, wall_s=round(time.monotonic() - t0, 3))
        assert cp is not None
        summary = cp.summary(status)
        rec.update(stats=summary.figures())
        rec.close()
        return summary
