"""The recorder: run a guest under QEMU's record/replay with a checkpoint every interval.

::

    rec = Recorder(path, MachineSpec(kernel=..., initrd=..., append=...),
                   interval=2.0, duration=30, on_event=print)
    summary = await rec.run()        # rec.stop() from elsewhere ends it early

What one run does (see shared/notes/qemu-facts.md for why):

* QEMU starts paused (``-S``) with ``-icount shift=S,rr=record`` on
  ``q35,hpet=off``, an orphan qcow2 node for VM state on tmpfs and the debug
  console port on ``REC/debugcon.out``. Checkpoint 0 is the state before the
  first instruction. Checkpoint k: ``stop``, ``query-replay`` (its instruction
  count), ``savevm``, ``cont``; the guest's downtime is stop..cont. ``migrate``
  is never used in record mode (it aborts QEMU there).
* Ingestion runs beside the guest: a background task reads each snapshot's
  VM state straight out of the qcow2 file (``engine.stream.qcow2``), imports
  it into ``REC/store`` in a thread, appends the checkpoint's line and deletes
  the snapshot from the qcow2 (so the image does not grow). The queue of
  snapshots waiting is bounded: when it is full, the next checkpoint waits
  (a :class:`Notice` says so), so a slow disk cannot fill tmpfs.
* Proofs: once checkpoint k+1 is stored and the replay log on disk reaches
  past it, a background task proves interval k with the ``prover`` (default:
  ``engine.replay.prove.prove_and_repair``, which restores checkpoint k into a
  replay, runs it to k+1, compares RAM, and rebuilds checkpoint k from k-1
  when it does not restore; run in a child process, niced and SCHED_IDLE
  while the guest records, ``engine.replay.prove_child``). The run ends only after every interval,
  including the last (replayed to the end of the log), was proven. Without
  ``engine.replay`` the proofs stay ``unproven`` and the summary says so.
* Markers: lines ``sbmark`` writes to the debug port are placed at an
  instruction count as checkpoints arrive (:mod:`engine.recording.markers`).
* The serial console is a two-way channel: its output goes to
  ``REC/console.out``; :meth:`Recorder.send_console` types into the guest,
  which QEMU records, so replays see the same input.

How a run ends, and what it leaves (always a recording that opens and
replays up to where it ends):

* QEMU refuses to start (no kernel, a bad option): the error is raised and
  the new directory removed, as nothing was recorded;
* ``duration`` elapsed: the guest is paused, its instruction count noted as
  the end, QMP ``quit`` (QEMU finalizes the log), status ``complete``;
* the guest powers off (QEMU exits 0): status ``complete``;
* :meth:`stop` (the CLI's Ctrl-C): no new checkpoint, ``quit``, ingestion
  drained, status ``interrupted``;
* QEMU dies, the disk fills up, or anything else fails: status ``failed``
  with the error in the manifest; every checkpoint already stored stays, and
  :meth:`run` raises the error (a :class:`~engine.errors.SbtuiError`).

No QEMU (recording or proof replay) outlives :meth:`run`: the process owner
shuts it down on every path, including cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import struct
import tempfile
import termios
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, BinaryIO, Callable

from engine.errors import (Qcow2Error, QemuDiedError, QemuError, QemuLaunchError, QmpError,
                           RecordingError, SbtuiError, StoreError, StreamError, UsageError)
from engine.qemu import MachineSpec, QemuProcess, find_qemu, qemu_version
from engine.paths import remove_orphaned_dirs
from engine.qemu.vmstate import scratch_base, vmstate_image
from engine.recording import markers as mk
from engine.recording import replaylog
from engine.recording.events import (CheckpointStored, CheckpointTaken, MarkerRecorded, Notice,
                                     ProofFinished, ProofStarted, RecordingStarted, RecordSummary)
from engine.recording.format import (DEBUGCON, REPLAY_LOG, CheckpointEntry, Manifest, Marker,
                                     Recording)
from engine.stream.qcow2 import list_snapshots, open_vmstate

log = logging.getLogger(__name__)

# One instruction is 2**2 = 4 ns of guest time. TCG runs this project's
# guests at 0.5-1.5 G instructions per second, so the guest's clock runs at
# 2-6x real time while it computes and at real time while it idles. A larger
# shift only makes the guest's timer interrupts more frequent per
# instruction; the value has no other effect, but replays must use the same.
DEFAULT_ICOUNT_SHIFT = 2
DEFAULT_INTERVAL_S = 2.0
DEFAULT_QUEUE_LIMIT = 4
# The replay log is written through stdio (replay.c, 4 KiB buffer): a proof
# of interval k waits until the log on disk has grown this far past
# checkpoint k+1, so the replay never meets the end of a log still in QEMU's
# buffer. (Once QEMU has exited the log is complete.)
LOG_FLUSH_MARGIN = 64 * 1024
# Stop recording while this much space is left on the recording's file
# system, so QEMU's own log writes (which it does not check) never fail.
MIN_FREE_BYTES = 64 << 20
RESERVE_FILE = ".reserve"
RESERVE_BYTES = 1 << 20
SAVEVM_RETRIES = 8
SCRATCH_PREFIX = "sbtui-rec-"
# Niceness of proof replays while the recording runs (they use leftover CPU).
PROOF_NICE = 15
SAVEVM_TIMEOUT = 300.0

Prover = Callable[..., Awaitable[Any]]
EventCallback = Callable[[object], None]


def default_prover() -> tuple[Prover | None, str]:
    """The proof step when ``engine.replay`` is importable, else (None, why):
    ``prove_and_repair`` in a child process (``engine.replay.prove_child``),
    which the recorder nices while the guest records."""
    try:
        from engine.replay.prove_child import prove_in_child
    except ImportError as err:
        return None, f"checkpoint proofs are not available ({err}); checkpoints stay unproven"
    return prove_in_child, ""


@dataclass
class _Pending:
    index: int
    name: str                 # snapshot name in the qcow2
    icount: int
    wall_time: float
    downtime_ms: float
    console_offset: int
    log_bytes: int            # size of the replay log on disk right after the snapshot


class Recorder:
    """Records one guest into a new recording directory. One :meth:`run` per object."""

    def __init__(self, path: str | Path, spec: MachineSpec, *,
                 interval: float = DEFAULT_INTERVAL_S, duration: float | None = None,
                 icount_shift: int = DEFAULT_ICOUNT_SHIFT, guest_info: dict | None = None,
                 prover: Prover | None | str = "default", prove: str = "background",
                 on_event: EventCallback | None = None, scratch_dir: str | Path | None = None,
                 queue_limit: int = DEFAULT_QUEUE_LIMIT, qemu_binary: str | None = None,
                 launch_timeout: float = 60.0, min_free_bytes: int = MIN_FREE_BYTES,
                 stream_hook: Callable[[int, BinaryIO], BinaryIO] | None = None):
        if not (isinstance(interval, (int, float)) and interval > 0):
            raise UsageError(f"--interval must be a positive number of seconds, got {interval!r}")
        if duration is not None and not (isinstance(duration, (int, float)) and duration > 0):
            raise UsageError(f"--duration must be a positive number of seconds, got {duration!r}")
        if not spec.kernel:
            raise UsageError("the machine has no kernel: give --kernel (or use the demo guest)")
        if prove not in ("background", "end", "off"):
            raise UsageError(f"prove must be 'background', 'end' or 'off', got {prove!r}")
        self.path = Path(path).absolute()   # QEMU runs in another directory
        self.spec = spec
        self.interval = float(interval)
        self.duration = float(duration) if duration is not None else None
        self.icount_shift = icount_shift
        self.guest_info = dict(guest_info or {})
        self.prove_mode = prove
        self.on_event = on_event or (lambda _e: None)
        self.scratch_dir = Path(scratch_dir) if scratch_dir else None
        self.queue_limit = max(1, int(queue_limit))
        self.qemu_binary = qemu_binary
        self.launch_timeout = launch_timeout
        self.min_free_bytes = min_free_bytes
        # Fault injection for tests: wraps each checkpoint's VM-state reader
        # before import (e.g. to store a state that does not restore).
        self.stream_hook = stream_hook
        if prover == "default":
            self._prover, self._proof_note = default_prover() if prove != "off" else (None, "")
        else:
            self._prover, self._proof_note = prover, ""  # type: ignore[assignment]
        if prove == "off":
            self._prover, self._proof_note = None, "proofs switched off; checkpoints stay unproven"
        # The default prover's child process takes the niceness itself (its
        # own Python work, not only its replay QEMU, must yield to the guest).
        self._prover_nices = _takes_nice(self._prover)

        self.rec: Recording | None = None
        self.vm: QemuProcess | None = None
        self.summary: RecordSummary | None = None
        self._stop_requested = asyncio.Event()
        self._end_reason = ""
        self._t0 = 0.0                      # monotonic time of the manifest's "created"
        self._queue: asyncio.Queue[_Pending | None] | None = None
        self._monitor = asyncio.Lock()      # one checkpoint or delvm at a time on QMP
        self._take_lock = asyncio.Lock()
        self._next_index = 0
        self._last_checkpoint_at = 0.0
        self._user_paused = False
        self._waiters: dict[int, asyncio.Future] = {}
        self._entries: dict[int, CheckpointEntry] = {}
        self._taken = 0
        self._stored: list[CheckpointEntry] = []
        self._stored_ids: dict[int, str] = {}
        self._log_marks: dict[int, int] = {}
        self._proved: set[int] = set()
        self._proofs_finished = 0
        self._proof_queue: asyncio.Queue[int | None] | None = None
        self._proof_task: asyncio.Task | None = None
        self._ingest_task: asyncio.Task | None = None
        self._ingest_error: BaseException | None = None
        self._markers: mk.DebugconReader | None = None
        self._pending_marks: list[mk.RawMark] = []
        self._marker_count = 0
        self._qemu_exited = False
        self._scratch: Path | None = None
        self._image: Path | None = None
        self._downtimes: list[float] = []
        self._ingest_times: list[float] = []
        self._max_lag = 0
        self._stored_bytes = 0
        self._raw_bytes = 0

    # -- control from outside ------------------------------------------------

    def stop(self) -> None:
        """End the recording soon: no new checkpoint, QEMU quits, ingestion drains.

        Safe to call from a signal handler installed with ``loop.add_signal_handler``.
        """
        self._stop_requested.set()

    async def send_console(self, data: bytes | str) -> None:
        """Type ``data`` into the guest's serial console (recorded, so replays see it)."""
        if self.vm is None or not self.vm.alive or self.vm.console is None:
            raise RecordingError("the guest is not running; there is no console to type into")
        await self.vm.console.send(data)

    @property
    def recording(self) -> Recording | None:
        return self.rec

    # -- the run -------------------------------------------------------------

    async def run(self) -> RecordSummary:
        binary = find_qemu(self.qemu_binary)
        version = qemu_version(binary)
        self.rec = self._create_recording(binary, version)
        rec = self.rec
        self._t0 = time.monotonic() - (time.time() - rec.manifest.created)
        error: BaseException | None = None
        status = "failed"
        try:
            status = await self._record(binary)
        except asyncio.CancelledError:
            status, error = "interrupted", None
            self._end_reason = self._end_reason or "cancelled"
            self._finish_cancelled()
            raise
        except BaseException as err:  # noqa: BLE001 - recorded, then re-raised
            error = err
            status = "failed"
        if isinstance(error, QemuLaunchError) and not self._stored:
            # QEMU never ran the guest: there is nothing to keep.
            self._cleanup_scratch()
            rec.close()
            shutil.rmtree(rec.path, ignore_errors=True)
            raise error
        try:
            await self._finish(status, error)
        except asyncio.CancelledError:
            # Cancelled while draining or proving (a second Ctrl-C): the
            # manifest already says how the recording ended; stop the proofs.
            if self._proof_task is not None:
                self._proof_task.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.shield(self._proof_task)
            raise
        finally:
            self._cleanup_scratch()
            rec.close()
        if error is not None:
            if isinstance(error, SbtuiError):
                raise error
            if isinstance(error, OSError) and error.errno == errno.ENOSPC:
                raise RecordingError(self._disk_full_text(error)) from error
            raise error
        assert self.summary is not None
        return self.summary

    def _create_recording(self, binary: str, version: tuple[int, int, int]) -> Recording:
        manifest = Manifest(kind="record", spec={}, qemu_version=".".join(map(str, version)),
                            interval_s=self.interval, created=time.time(),
                            sbtui_version=_sbtui_version(), guest=dict(self.guest_info))
        rec = Recording.create(self.path, manifest)
        try:
            files = {}
            for role in ("kernel", "initrd"):
                src = getattr(self.spec, role)
                if src:
                    if not Path(src).is_file():
                        raise UsageError(f"--{role} {src}: no such file")
                    files[role] = rec.add_guest_file(role, Path(src))
            # Kernel symbols travel with the recording, so a debugger shows
            # function names on any machine it is moved to.
            system_map = rec.manifest.guest.pop("system_map_source", None)
            if system_map and Path(system_map).is_file():
                rec.add_guest_file("system_map", Path(system_map))
            spec = self.spec.replace(
                kernel=files.get("kernel"), initrd=files.get("initrd"),
                icount_shift=self.icount_shift, rr="record", rrfile=REPLAY_LOG,
                debugcon_path=DEBUGCON, vmstate_image=None, paused=False, incoming_defer=False,
                gdb=None, no_reboot=True)
            manifest.spec = spec.to_dict()
            manifest.replay_argv = self._replay_argv(spec)
            rec.save_manifest()
            _write_reserve(rec.path / RESERVE_FILE)
        except BaseException as err:
            # Nothing was recorded: leave no half directory behind.
            shutil.rmtree(rec.path, ignore_errors=True)
            if isinstance(err, OSError) and err.errno == errno.ENOSPC:
                raise RecordingError(f"{self.path}: the disk is full; copying the guest's files "
                                     f"into the recording failed ({err})") from err
            raise
        return rec

    @staticmethod
    def _replay_argv(spec: MachineSpec) -> list[str]:
        placeholder = spec.with_rr("replay").replace(
            kernel="{rec}/" + spec.kernel if spec.kernel else None,
            initrd="{rec}/" + spec.initrd if spec.initrd else None,
            rrfile="{rrfile}", debugcon_path="{debugcon}", vmstate_image="{vmstate}")
        return placeholder.argv("qemu-system-x86_64", console="socket,fd={console}")

    def _run_spec(self) -> MachineSpec:
        assert self.rec is not None and self._image is not None
        spec = self.rec.machine_spec()
        return spec.replace(vmstate_image=str(self._image), paused=True,
                            debugcon_path=str(self.rec.debugcon_path),
                            rrfile=str(self.rec.log_path))

    async def _record(self, binary: str) -> str:
        rec = self.rec
        assert rec is not None
        base = self.scratch_dir or scratch_base() or rec.path
        remove_orphaned_dirs(Path(base), SCRATCH_PREFIX)
        self._scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=base))
        self._image = await asyncio.to_thread(vmstate_image, self._scratch / "vmstate.qcow2")
        self._markers = mk.DebugconReader(rec.debugcon_path)
        self._queue = asyncio.Queue(maxsize=self.queue_limit)
        if self.prove_mode == "background" and self._prover is not None:
            self._start_prover()
        if self._proof_note:
            self.on_event(Notice(self._proof_note))

        vm = QemuProcess(self._run_spec(), workdir=self._scratch / "qemu",
                         log_path=rec.path / "qemu.log", console_path=rec.console_path,
                         qemu_binary=binary, launch_timeout=self.launch_timeout)
        self.vm = vm
        async with vm:
            self.on_event(RecordingStarted(rec.path, tuple(vm.argv)))
            self._ingest_task = asyncio.create_task(self._ingest_loop(), name="sbtui-ingest")
            exited = asyncio.create_task(vm.wait_exit(1e9), name="sbtui-qemu-exit")
            try:
                return await self._checkpoint_loop(vm, exited)
            finally:
                exited.cancel()
                with contextlib.suppress(BaseException):
                    await exited

    async def _checkpoint_loop(self, vm: QemuProcess, exited: asyncio.Task) -> str:
        rec = self.rec
        assert rec is not None
        await self._take_next(vm)
        start = time.monotonic()
        end_at = start + self.duration if self.duration is not None else None
        stop_wait = asyncio.create_task(self._stop_requested.wait())
        try:
            while True:
                # The next checkpoint is due an interval after the last one (a
                # checkpoint_now() in between restarts the interval).
                due = self._last_checkpoint_at + self.interval
                deadline = min(due, end_at) if end_at is not None else due
                timeout = max(0.0, min(deadline - time.monotonic(), self.interval))
                done, _ = await asyncio.wait({exited, stop_wait}, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                self._raise_ingest_error()
                if exited in done:
                    return self._qemu_ended(vm)
                if stop_wait in done:
                    self._end_reason = "stopped"
                    await self._end_qemu(vm)
                    return "interrupted"
                now = time.monotonic()
                if end_at is not None and now >= end_at:
                    self._end_reason = "duration"
                    await self._end_qemu(vm)
                    return "complete"
                if now < self._last_checkpoint_at + self.interval:
                    continue
                if self._user_paused:
                    # A paused guest does not move: no checkpoint until it runs again.
                    self._last_checkpoint_at = now
                    continue
                self._check_disk()
                if self._queue is not None and self._queue.full():
                    self.on_event(Notice(f"ingestion is {self._queue.qsize()} checkpoints behind; "
                                         f"checkpoint {self._next_index} waits for room"))
                    waited = await self._wait_for_room(exited, stop_wait)
                    if not waited:
                        continue  # QEMU exited or a stop came: the loop handles it
                try:
                    await self._take_next(vm)
                except QemuDiedError:
                    # The guest powered off in the middle of the checkpoint: that
                    # checkpoint is lost, the recording is not.
                    await asyncio.wait({exited}, timeout=5)
                    if vm.returncode == 0:
                        return self._qemu_ended(vm)
                    raise
        finally:
            stop_wait.cancel()

    async def _take_next(self, vm: QemuProcess) -> int:
        """Take the next checkpoint (periodic or asked for); returns its index."""
        async with self._take_lock:   # indices are queued in order
            index = self._next_index
            self._next_index += 1
            self._last_checkpoint_at = time.monotonic()
            await self._take_checkpoint(vm, index, resume=not self._user_paused)
            return index

    # -- control while recording (the app's LiveControl) ---------------------------

    def _running_vm(self) -> QemuProcess:
        vm = self.vm
        if vm is None or not vm.alive or self._qemu_exited:
            raise RecordingError("the guest is not running")
        return vm

    async def pause(self) -> None:
        """Stop the guest's vCPUs until :meth:`resume`; no checkpoints meanwhile. Idempotent."""
        vm = self._running_vm()
        async with self._monitor:
            await vm.qmp("stop", timeout=30)
            self._user_paused = True

    async def resume(self) -> None:
        """Let a paused guest run again. Idempotent."""
        vm = self._running_vm()
        async with self._monitor:
            self._user_paused = False
            await vm.qmp("cont", timeout=30)

    async def checkpoint_now(self) -> CheckpointEntry:
        """Take a checkpoint at once (the current interval ends early); returns it once stored."""
        vm = self._running_vm()
        if self._queue is None:
            raise RecordingError("the recording has not started yet")
        index = await self._take_next(vm)
        done = self._entries.get(index)
        if done is not None:
            return done
        if self._ingest_error is not None:
            raise self._ingest_error
        waiter = self._waiters.setdefault(index, asyncio.get_running_loop().create_future())
        return await waiter

    async def _wait_for_room(self, exited: asyncio.Task, stop_wait: asyncio.Task) -> bool:
        assert self._queue is not None
        while self._queue.full():
            self._raise_ingest_error()
            if exited.done() or stop_wait.done():
                return False
            await asyncio.sleep(0.05)
        return True

    def _qemu_ended(self, vm: QemuProcess) -> str:
        code = vm.returncode
        self._qemu_exited = True
        if code == 0:
            self._end_reason = "poweroff"
            return "complete"
        raise QemuDiedError("QEMU died while recording", argv=vm.argv, exit_code=code,
                            log_tail=vm.log_tail())

    async def _end_qemu(self, vm: QemuProcess) -> None:
        """Pause the guest for good, note where the log ends, and let QEMU finalize it.

        No checkpoint is taken at the end: a state at the very end of the log
        has nothing left to replay (a replay restored there ends at once).
        """
        rec = self.rec
        assert rec is not None
        try:
            async with self._monitor:
                await vm.qmp("stop", timeout=30)
                rec.manifest.end_icount = int((await vm.qmp("query-replay", timeout=30))["icount"])
        except QemuDiedError:
            if vm.returncode == 0:
                self._end_reason = "poweroff"
                self._qemu_exited = True
                return
            raise
        await vm.shutdown(timeout=30)   # QMP quit: replay.c writes the log's end and version
        self._qemu_exited = True
        if vm.returncode not in (0, None):
            raise QemuDiedError("QEMU failed while finishing the recording", argv=vm.argv,
                                exit_code=vm.returncode, log_tail=vm.log_tail())

    # -- taking a checkpoint ---------------------------------------------------

    async def _take_checkpoint(self, vm: QemuProcess, index: int, *, resume: bool) -> None:
        rec = self.rec
        assert rec is not None and self._queue is not None
        name = f"sbtui-ck{index}"
        downtime = 0.0
        async with self._monitor:
            for attempt in range(SAVEVM_RETRIES):
                t_stop = time.monotonic()
                with vm.listen("STOP", "RESUME") as events:
                    # Checkpoint 0: QEMU was started paused (-S), nothing to stop;
                    # neither is there while the user has paused the guest.
                    running = (index > 0 or attempt > 0) and not self._user_paused
                    if running:
                        await vm.qmp("stop", timeout=30)
                    icount = int((await vm.qmp("query-replay", timeout=30))["icount"])
                    offset = await _settled_console_length(vm)
                    t_save = time.monotonic()
                    try:
                        await vm.hmp(f"savevm {name}", timeout=SAVEVM_TIMEOUT)
                        ok = True
                    except QmpError as err:
                        # "Record/replay does not allow making snapshot right now": an
                        # asynchronous event is queued; run a moment and try again.
                        if "does not allow" not in str(err) or attempt == SAVEVM_RETRIES - 1:
                            if resume and vm.alive:
                                with contextlib.suppress(QemuError):
                                    await vm.qmp("cont", timeout=30)
                            raise
                        ok = False
                    savevm_s = time.monotonic() - t_save
                    if resume or not ok:
                        await vm.qmp("cont", timeout=30)
                    t_end = time.monotonic()
                    downtime += await _paused_seconds(events, fallback=t_end - t_stop,
                                                      expect_stop=running,
                                                      expect_resume=resume or not ok)
                if ok:
                    break
                await asyncio.sleep(0.002 * (attempt + 1))
        wall = t_stop - self._t0
        try:
            log_bytes = os.stat(rec.log_path).st_size
        except OSError:
            log_bytes = 0
        downtime_ms = downtime * 1000.0
        if running:  # checkpoint 0 and a user-paused guest: nothing that ran was paused
            self._downtimes.append(downtime_ms)
        self._taken = index + 1
        item = _Pending(index, name, icount, wall, downtime_ms, offset, log_bytes)
        await self._queue.put(item)
        self.on_event(CheckpointTaken(index, icount, downtime_ms, wall,
                                      pending=self._queue.qsize(), savevm_ms=savevm_s * 1000.0))

    # -- ingestion -------------------------------------------------------------

    async def _ingest_loop(self) -> None:
        assert self._queue is not None
        while True:
            item = await self._queue.get()
            try:
                if item is None:
                    return
                await self._ingest_one(item)
            except BaseException as err:  # noqa: BLE001 - handed to the run loop
                if isinstance(err, asyncio.CancelledError):
                    raise
                self._ingest_error = err
                self._fail_waiters(err)
                return
            finally:
                self._queue.task_done()

    async def _ingest_one(self, item: _Pending) -> None:
        rec = self.rec
        assert rec is not None and self._image is not None
        t0 = time.monotonic()
        snap = await asyncio.to_thread(self._find_snapshot, item.name)
        parent = self._stored_ids.get(item.index - 1)
        meta = {"index": item.index, "icount": item.icount, "origin": "record",
                "guest_time_ns": snap.vm_clock_ns}
        info = await asyncio.to_thread(self._import, item.name, parent, meta)
        ingest_s = time.monotonic() - t0
        entry = CheckpointEntry(index=item.index, store_id=info.id, icount=item.icount,
                                wall_time=round(item.wall_time, 6), guest_time_ns=snap.vm_clock_ns,
                                downtime_ms=round(item.downtime_ms, 3),
                                console_offset=item.console_offset, origin="record")
        try:
            rec.append_checkpoint(entry)
        except OSError as err:
            raise RecordingError(self._disk_full_text(err) if err.errno == errno.ENOSPC
                                 else f"{rec.path}: cannot append checkpoint {item.index}: {err}") from err
        self._stored.append(entry)
        self._stored_ids[item.index] = info.id
        self._log_marks[item.index] = item.log_bytes
        st = info.stats
        self._stored_bytes += st.stored_bytes
        self._raw_bytes += st.raw_bytes
        self._ingest_times.append(ingest_s)
        lag = self._taken - len(self._stored)
        self._max_lag = max(self._max_lag, lag)
        self._entries[item.index] = entry
        waiter = self._waiters.pop(item.index, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(entry)
        await self._delete_snapshot(item.name)
        self.on_event(CheckpointStored(entry, st.dirty_pages, st.new_pages, st.stored_bytes,
                                       st.raw_bytes, ingest_s, lag))
        self._place_markers(final=False)
        if item.index > 0 and self._proof_queue is not None:
            self._proof_queue.put_nowait(item.index - 1)

    def _find_snapshot(self, name: str):
        assert self._image is not None
        last: Exception | None = None
        for attempt in range(20):
            try:
                for snap in list_snapshots(self._image):
                    if snap.name == name and snap.vm_state_size > 0:
                        return snap
                last = RecordingError(f"{self._image}: snapshot {name} is not in the image")
            except Qcow2Error as err:  # QEMU rewrote the table as we read it
                last = err
            time.sleep(0.01 * (attempt + 1))
        assert last is not None
        raise last

    def _import(self, name: str, parent: str | None, meta: dict):
        rec = self.rec
        assert rec is not None and self._image is not None
        for attempt in range(3):
            try:
                with rec.store_lock:
                    with open_vmstate(self._image, name) as src:
                        if self.stream_hook is not None:
                            src = self.stream_hook(meta["index"], src)
                        return rec.store.import_stream(src, name=name, parent=parent, meta=meta)
            except (Qcow2Error, StreamError) as err:
                # A torn read of a table QEMU was rewriting; the store rolled back.
                if attempt == 2:
                    raise RecordingError(f"checkpoint {meta['index']}: reading snapshot {name} "
                                         f"from {self._image} failed: {err}") from err
                time.sleep(0.05)
            except OSError as err:
                if err.errno == errno.ENOSPC:
                    raise RecordingError(self._disk_full_text(err)) from err
                raise
            except StoreError as err:
                cause = err.__cause__ or err.__context__
                if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
                    raise RecordingError(self._disk_full_text(cause)) from err
                raise
        raise AssertionError("unreachable")

    async def _delete_snapshot(self, name: str) -> None:
        vm = self.vm
        if vm is None or not vm.alive or self._qemu_exited:
            return  # the image goes away with the scratch directory
        try:
            async with self._monitor:
                if vm.alive:
                    await vm.hmp(f"delvm {name}", timeout=60)
        except QemuError as err:
            log.debug("delvm %s: %s", name, err)

    def _fail_waiters(self, err: BaseException) -> None:
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(err)
        self._waiters.clear()

    def _raise_ingest_error(self) -> None:
        if self._ingest_error is not None:
            raise self._ingest_error

    # -- markers ----------------------------------------------------------------

    def _place_markers(self, *, final: bool) -> None:
        rec = self.rec
        assert rec is not None and self._markers is not None
        self._pending_marks.extend(self._markers.poll())
        if not self._pending_marks or not self._stored:
            return
        points = [mk.ClockPoint(e.icount, e.guest_time_ns) for e in self._stored]
        keep: list[mk.RawMark] = []
        for raw in self._pending_marks:
            j = _interval_of(points, raw.tsc)
            if j is None:
                j = 0  # before checkpoint 0 cannot happen; treat as the first interval
            after = points[j + 1] if j + 1 < len(points) else None
            if after is None and not final:
                keep.append(raw)
                continue
            p = mk.place(raw.tsc, self.icount_shift, points[j], after)
            end = rec.manifest.end_icount
            if after is None and end is not None:
                # Past the last checkpoint: somewhere up to where the log ends.
                p = mk.Placement(min(p.icount, end), False, end)
            e0 = self._stored[j]
            e1 = self._stored[j + 1] if j + 1 < len(self._stored) else None
            if e1 is not None and e1.guest_time_ns > e0.guest_time_ns:
                frac = (raw.tsc - e0.guest_time_ns) / (e1.guest_time_ns - e0.guest_time_ns)
                wall = e0.wall_time + max(0.0, min(1.0, frac)) * (e1.wall_time - e0.wall_time)
            else:
                wall = e0.wall_time
            marker = Marker(icount=p.icount, text=raw.text, wall_time=round(wall, 6),
                            guest_time_ns=raw.tsc, exact=p.exact, icount_max=p.icount_max)
            rec.append_marker(marker)
            self._marker_count += 1
            self.on_event(MarkerRecorded(marker))
        self._pending_marks = keep

    # -- proofs -----------------------------------------------------------------

    @property
    def proof_progress(self) -> tuple[int, int] | None:
        """(intervals proven so far, intervals there are to prove: one per
        checkpoint, the last one to the end of the log), or None when this
        recording is not proven. Read from any thread (two ints)."""
        if self._prover is None or self.prove_mode == "off":
            return None
        return self._proofs_finished, len(self._entries)

    def _start_prover(self) -> None:
        if self._proof_task is None:
            self._proof_queue = asyncio.Queue()
            self._proof_task = asyncio.create_task(self._proof_loop(), name="sbtui-prove")

    async def _proof_loop(self) -> None:
        assert self._proof_queue is not None and self._prover is not None
        rec = self.rec
        assert rec is not None
        while True:
            index = await self._proof_queue.get()
            if index is None:
                return
            if index in self._proved:
                continue
            # The replay needs the log on disk past the next checkpoint.
            mark = self._log_marks.get(index + 1)
            while mark is not None and not self._qemu_exited:
                try:
                    size = os.stat(rec.log_path).st_size
                except OSError:
                    size = 0
                if size >= mark + LOG_FLUSH_MARGIN:
                    break
                await asyncio.sleep(0.25)
            await self._prove(index)

    async def _prove(self, index: int) -> None:
        rec = self.rec
        assert rec is not None and self._prover is not None
        self._proved.add(index)
        before = {cp.index: cp for cp in rec.checkpoints()}.get(index)
        self.on_event(ProofStarted(index))
        recording = self.vm is not None and not self._qemu_exited
        nicer = asyncio.create_task(self._deprioritize_replays()) \
            if recording and not self._prover_nices else None
        extra = {"nice": PROOF_NICE if recording else 0} if self._prover_nices else {}
        try:
            result = await self._prover(rec, index, **extra,
                                        progress=lambda msg: log.debug("proof: %s", msg))
            status = getattr(result, "status", "unproven")
            detail = getattr(result, "detail", "")
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - a proof that crashes is a failed proof
            status, detail = "error", f"{type(err).__name__}: {err}"
        finally:
            if nicer is not None:
                nicer.cancel()
        after = {cp.index: cp for cp in rec.checkpoints()}.get(index)
        rebuilt = (before is not None and after is not None and after.origin == "rebuilt"
                   and after.store_id != before.store_id)
        self._proofs_finished += 1
        self.on_event(ProofFinished(index, status, detail, rebuilt))

    async def _deprioritize_replays(self) -> None:
        """For a prover that does not nice itself: while the guest is being
        recorded, a proof's replay QEMU gets only the CPU the recording leaves over: on two cores it would otherwise slow the guest
        by half. Runs beside one proof; QEMU is in its own process group, and
        ``setpriority(PRIO_PGRP)`` reaches all of its threads."""
        me = os.getpid()
        done: set[int] = set()
        while not self._qemu_exited:
            for pid in _replay_children(me) - done:
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PGRP, pid, PROOF_NICE)
                done.add(pid)
            await asyncio.sleep(0.1)

    async def _run_remaining_proofs(self) -> None:
        rec = self.rec
        assert rec is not None
        if self._prover is None:
            return
        self._start_prover()
        assert self._proof_queue is not None and self._proof_task is not None
        for cp in rec.checkpoints():
            if cp.index not in self._proved:
                self._proof_queue.put_nowait(cp.index)
        self._proof_queue.put_nowait(None)
        await self._proof_task

    # -- the end ----------------------------------------------------------------

    async def _finish(self, status: str, error: BaseException | None) -> None:
        rec = self.rec
        assert rec is not None
        vm = self.vm
        # Make sure QEMU is gone before the last snapshots are read (it may still
        # be writing one when an error ended the loop).
        if vm is not None:
            with contextlib.suppress(Exception):
                await vm.shutdown(timeout=30)
        self._qemu_exited = True
        # Drain ingestion: what QEMU wrote to the image is still there.
        if self._ingest_task is not None and self._queue is not None:
            if not self._ingest_task.done():
                await self._queue.put(None)
            with contextlib.suppress(Exception):
                await self._ingest_task
            if self._ingest_error is not None and error is None:
                error = self._ingest_error
                status = "failed"
        self._fail_waiters(error or RecordingError("the recording ended before the checkpoint "
                                                   "was stored"))
        _remove_reserve(rec.path / RESERVE_FILE)
        with contextlib.suppress(Exception):
            self._place_markers(final=True)
        wall_s = round(time.monotonic() - self._t0, 3)
        if rec.manifest.end_icount is None and self._end_reason == "poweroff":
            # The guest ended the recording: the log says where.
            with contextlib.suppress(SbtuiError, OSError):
                scanned = await asyncio.to_thread(replaylog.scan, rec.log_path)
                if scanned.complete:
                    rec.manifest.end_icount = scanned.instructions
        text = _error_text(error) if error is not None else None
        rec.update(status=status, error=text, wall_s=wall_s)
        if status in ("complete", "interrupted") and error is None:
            if self._prover is not None:
                await self._run_remaining_proofs()
        elif self._proof_task is not None:
            # A failed recording: stop proving; what was proven stays in the log.
            self._proof_task.cancel()
            with contextlib.suppress(BaseException):
                await self._proof_task
        self.summary = self._summary(status, text)
        with contextlib.suppress(OSError):
            rec.update(stats=self.summary.figures())

    def _finish_cancelled(self) -> None:
        """A hard cancel (second Ctrl-C): no waiting, just an honest manifest."""
        rec = self.rec
        if self.vm is not None:
            self.vm.kill()
        for task in (self._ingest_task, self._proof_task):
            if task is not None:
                task.cancel()
        if rec is not None:
            _remove_reserve(rec.path / RESERVE_FILE)
            with contextlib.suppress(Exception):
                rec.update(status="interrupted", error="cancelled before the recording was drained",
                           wall_s=round(time.monotonic() - self._t0, 3))
            with contextlib.suppress(Exception):
                rec.close()
        self._cleanup_scratch()

    def _summary(self, status: str, error: str | None) -> RecordSummary:
        rec = self.rec
        assert rec is not None
        cps = rec.checkpoints()
        proofs = {"verified": sum(1 for c in cps if c.proof == "verified"),
                  "failed": sum(1 for c in cps if c.proof == "failed"),
                  "unproven": sum(1 for c in cps if c.proof == "unproven"),
                  "rebuilt": sum(1 for c in cps if c.origin == "rebuilt")}
        return RecordSummary(
            path=str(rec.path), kind="record", status=status, checkpoints=len(cps),
            markers=self._marker_count, end_icount=rec.manifest.end_icount,
            wall_s=rec.manifest.wall_s or 0.0, downtimes_ms=list(self._downtimes),
            max_lag=self._max_lag, ingest_s=list(self._ingest_times), proofs=proofs,
            proof_note=self._proof_note, stored_bytes=self._stored_bytes,
            raw_bytes=self._raw_bytes, error=error)

    def _check_disk(self) -> None:
        rec = self.rec
        assert rec is not None
        try:
            st = os.statvfs(rec.path)
        except OSError:
            return
        free = st.f_bavail * st.f_frsize
        if free < self.min_free_bytes:
            raise RecordingError(
                f"{rec.path}: the disk is nearly full ({free >> 20} MiB left, the recorder "
                f"stops below {self.min_free_bytes >> 20} MiB); the recording keeps the "
                f"checkpoints stored so far")

    def _disk_full_text(self, err: OSError) -> str:
        rec = self.rec
        where = rec.path if rec is not None else self.path
        return (f"{where}: the disk is full ({err.strerror or err}); the recording stopped and "
                f"keeps the {len(self._stored)} checkpoint(s) stored so far")

    def _cleanup_scratch(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


# -- helpers ------------------------------------------------------------------

def _interval_of(points: list[mk.ClockPoint], tsc: int) -> int | None:
    """Index j of the last checkpoint whose virtual clock is at or before ``tsc``."""
    j = None
    for i, p in enumerate(points):
        if p.vclock_ns <= tsc:
            j = i
        else:
            break
    return j


async def _paused_seconds(events, *, fallback: float, expect_stop: bool,
                          expect_resume: bool) -> float:
    """How long the guest was paused, from the STOP and RESUME events' own time
    stamps (QEMU's clock), so QMP latency before the stop does not count."""
    stamps: dict[str, float] = {}
    wanted = {n for n, w in (("STOP", expect_stop), ("RESUME", expect_resume)) if w}
    try:
        while not wanted <= stamps.keys():
            ev = await events.get(timeout=2.0)
            ts = ev.get("timestamp") or {}
            stamps.setdefault(ev.get("event", ""), ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6)
    except SbtuiError:
        return fallback
    if "STOP" in stamps and "RESUME" in stamps and stamps["RESUME"] >= stamps["STOP"]:
        return stamps["RESUME"] - stamps["STOP"]
    return fallback


async def _settled_console_length(vm: QemuProcess, timeout: float = 0.5) -> int:
    """How many console bytes the guest wrote before it was paused.

    QEMU writes a paused guest's last console bytes into our socket
    synchronously, so they are in flight: wait until the socket's receive
    queue and the reader's buffer are empty (bounded), then count.
    """
    console = vm.console
    if console is None:
        return 0
    sock = getattr(console, "_sock", None)
    reader = getattr(console, "_reader", None)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    quiet = 0
    while loop.time() < deadline:
        pending = 0
        try:
            if sock is not None:
                buf = fcntl.ioctl(sock.fileno(), termios.FIONREAD, struct.pack("i", 0))
                pending = struct.unpack("i", buf)[0]
        except OSError:
            pending = 0
        buffered = len(getattr(reader, "_buffer", b"")) if reader is not None else 0
        if pending == 0 and buffered == 0:
            quiet += 1
            if quiet >= 2:
                break
        else:
            quiet = 0
        await asyncio.sleep(0 if quiet else 0.001)
    return len(console.output)


def _takes_nice(prover) -> bool:
    try:
        from engine.replay.prove_child import prove_in_child
    except ImportError:
        return False
    return prover is prove_in_child


def _replay_children(parent: int) -> set[int]:
    """Child processes of ``parent`` that are QEMU replays (``rr=replay``)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            if b"rr=replay" in (entry / "cmdline").read_bytes():
                found.add(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _sbtui_version() -> str:
    try:
        from importlib.metadata import version
        return version("sbtui")
    except Exception:  # not installed as a package: the manifest just lacks it
        return ""


def _write_reserve(path: Path) -> None:
    """Room kept back for the final manifest and log when the disk fills up."""
    with open(path, "wb") as f:
        f.write(b"\0" * RESERVE_BYTES)
        f.flush()
        os.fsync(f.fileno())


def _remove_reserve(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _error_text(err: BaseException) -> str:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return f"the disk is full: {err}"
    text = str(err) or type(err).__name__
    return text if isinstance(err, SbtuiError) else f"{type(err).__name__}: {text}"
