"""The local scheduler: interval jobs in N processes on this machine (``--jobs N``).

Each worker process opens the recording itself, builds the interval's job
(:func:`engine.parallel.job.build_job` with ``local=True``: what a remote
worker would get, built where the store is, so building runs in parallel too,
except that the checkpoint's stream goes from the store straight into the
restoring QEMU while it loads, and the guest files are the recording's own)
and runs it with :func:`engine.parallel.job.run_job`, the code every
scheduler runs.

Promises:

* At most ``jobs`` intervals run at once, each in a long-lived worker
  process of its own, handed out in the plan's order (longest first); an
  interval counts as running from the moment it is sent to a free process.
* A worker process that dies (killed, out of memory) costs only the interval
  it was running: the process is replaced and that interval runs again, at
  most ``retries`` more times; after that it fails with the reason. (Python's
  process pool would lose every job in flight when one process dies.)
* Processes are started with ``spawn`` (no forked event loops or threads);
  their QEMUs die with them (``PR_SET_PDEATHSIG``). On Ctrl-C or an error the
  workers get SIGINT (their replays shut QEMU down and remove their files),
  then SIGKILL if they linger.
* It works in a host whose ``sys.stderr`` is no file (the Textual app
  captures it, and its ``fileno()`` is -1): see :func:`_ensure_resource_tracker`.
  The workers of such a host write their stderr (and their QEMUs') to a log
  file in the cache (:attr:`LocalScheduler.worker_log`) instead of file
  descriptor 2, which is the terminal the app draws on.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from collections import deque
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any

from engine.errors import SbtuiError, UsageError
from engine.parallel.job import (JobResult, build_job, remove_stale_workdirs, run_job, scratch_dir,
                                 worker_name)
from engine.parallel.simulate import EventSink, PlannedInterval, SchedulerEvent
from engine.recording.format import Recording

TICK_S = 1.0


def _local_job(rec_path: str, index: int, analysis: str, params: dict[str, Any],
               offsets: dict[int, int]) -> bytes:
    name = worker_name()
    rec = Recording.open(rec_path)
    try:
        try:
            job = build_job(rec, index, analysis, params, offsets=offsets, local=True)
        except SbtuiError as err:
            return JobResult(index, analysis, name, error=f"on {name}: {err}").encode()
        return run_job(job, worker=name).encode()
    finally:
        rec.close()


def _slot_main(conn, job_fn, stderr_path: str | None = None) -> None:
    """A worker process: run the jobs its scheduler sends until told to stop."""
    if stderr_path is not None:
        fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if msg is None:
            return
        rec_path, index, analysis, params, offsets = msg
        try:
            data = job_fn(rec_path, index, analysis, params, offsets)
        except KeyboardInterrupt:
            return      # the scheduler is stopping; the job's replay has cleaned up
        except Exception as err:  # noqa: BLE001 - reported as the interval's failure
            data = JobResult(index, analysis, worker_name(), error=f"local worker failed: {err}").encode()
        conn.send(data)


class _StderrWithoutFd:
    """``sys.stderr`` as it is, except that it has no file descriptor."""

    def __init__(self, stream):
        self._stream = stream

    def fileno(self) -> int:
        raise OSError("no file descriptor")

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


_TRACKER_LOCK = threading.Lock()


def _host_stderr_captured() -> bool:
    """True when ``sys.stderr`` answers -1 for its file descriptor: the host
    (the Textual app) captures it, and descriptor 2 is its terminal."""
    try:
        return sys.stderr is not None and sys.stderr.fileno() < 0
    except (AttributeError, OSError, ValueError):
        return False


def _ensure_resource_tracker() -> None:
    """Start multiprocessing's resource tracker so that spawning works.

    The tracker is started on the first spawn and given ``sys.stderr``'s file
    descriptor; a stream that answers -1 (Textual's capture of stderr while an
    app runs) makes every spawn fail with "bad value(s) in fds_to_keep". Such
    a host's tracker is started without a stderr instead (its warnings about
    leaked semaphores are lost rather than drawn over the app).
    """
    from multiprocessing import resource_tracker
    try:
        if sys.stderr is None or sys.stderr.fileno() >= 0:
            return
    except (AttributeError, OSError, ValueError):
        return      # no fileno at all: the tracker leaves stderr out by itself
    with _TRACKER_LOCK:
        saved = sys.stderr
        sys.stderr = _StderrWithoutFd(saved)
        try:
            resource_tracker.ensure_running()
        finally:
            sys.stderr = saved


class _Slot:
    """One worker process and the interval it runs."""

    def __init__(self, ctx, job_fn, stderr_path: str | None = None):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_slot_main, args=(child, job_fn, stderr_path), daemon=True,
                                name="sbtui-local-worker")
        self.proc.start()
        child.close()
        self.index: int | None = None

    def stop(self, timeout: float) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.proc.join(timeout)
        if self.proc.is_alive():
            # Ctrl-C first: the job's replay shuts its QEMU down and removes its files.
            os.kill(self.proc.pid, signal.SIGINT)
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)
        self.conn.close()


class LocalScheduler:
    """``jobs`` local worker processes."""

    def __init__(self, jobs: int = 1, *, retries: int = 2, job_fn=None):
        """``job_fn`` replaces the worker function (a module-level function
        with ``_local_job``'s signature; tests use it to kill a worker)."""
        if jobs < 1:
            raise UsageError(f"--jobs must be at least 1, got {jobs}")
        self.slots = jobs
        self.retries = retries
        self.name = f"local:{jobs}"
        self._job_fn = job_fn or _local_job
        self.worker_log: str | None = None     # set by run() when the host captures stderr

    def run(self, rec: Recording, plan: list[PlannedInterval], analysis: str,
            params: dict[str, Any], offsets: dict[int, int], events: EventSink) -> None:
        _ensure_resource_tracker()
        if _host_stderr_captured() and self.worker_log is None:
            from engine.paths import cache_dir
            logs = cache_dir() / "logs"
            logs.mkdir(exist_ok=True)
            self.worker_log = str(logs / f"local-workers-{os.getpid()}.log")
        ctx = multiprocessing.get_context("spawn")
        path = str(Path(rec.path).resolve())
        pending = deque(p.index for p in plan)
        tries: dict[int, int] = {}
        slots: list[_Slot] = []
        finished: list[tuple[int, bytes]] = []
        try:
            def hand_out() -> None:
                for i in range(self.slots):
                    if not pending:
                        return
                    if i == len(slots):
                        slots.append(_Slot(ctx, self._job_fn, self.worker_log))
                    slot = slots[i]
                    if slot.index is None:
                        index = pending.popleft()
                        tries[index] = tries.get(index, 0) + 1
                        slot.conn.send((path, index, analysis, params, offsets))
                        slot.index = index
                        events(SchedulerEvent("started", index, worker=f"local process {slot.proc.pid}"))

            while pending or any(s.index is not None for s in slots):
                hand_out()
                busy = [s for s in slots if s.index is not None]
                ready = mp_wait([s.conn for s in busy] + [s.proc.sentinel for s in busy],
                                timeout=TICK_S)
                if not ready:
                    events(SchedulerEvent("tick"))
                    continue
                for n, slot in enumerate(slots):
                    if slot.index is None or (slot.conn not in ready and slot.proc.sentinel not in ready):
                        continue
                    index, slot.index = slot.index, None
                    try:
                        data = slot.conn.recv()
                    except (EOFError, OSError):
                        # The process died under this interval (and only this one).
                        code = slot.proc.exitcode
                        slot.stop(1)
                        slots[n] = _Slot(ctx, self._job_fn, self.worker_log)
                        self._again(index, tries, pending, events,
                                    f"its worker process died (exit code {code})")
                        continue
                    finished.append((index, data))
                # Judging a result reads the store: done after the freed
                # processes got their next jobs, so they do not wait for it.
                hand_out()
                while finished:
                    index, data = finished.pop(0)
                    events(SchedulerEvent("finished", index, result=JobResult.decode(data)))
        finally:
            for slot in slots:
                slot.stop(5 if slot.index is None else 0.1)
            # A worker interrupted twice, or killed, cannot remove its job
            # directory (tmpfs: it holds guest RAM); its owner is gone now.
            remove_stale_workdirs(scratch_dir())

    def _again(self, index: int, tries: dict[int, int], pending: deque, events: EventSink,
               why: str) -> None:
        if tries.get(index, 0) <= self.retries:
            pending.appendleft(index)
            events(SchedulerEvent("retry", index, detail=why))
        else:
            events(SchedulerEvent("finished", index, result=JobResult(
                index, "", "local", error=f"{why}; it ran {tries[index]} times")))
