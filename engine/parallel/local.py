"""The local scheduler: interval jobs in N processes on this machine (``--jobs N``).

Each worker process opens the recording itself, builds the interval's job
(:func:`engine.parallel.job.build_job`: the same bytes a remote worker would
get, built where the store is, so building runs in parallel too) and runs it
with :func:`engine.parallel.job.run_job`, the code every scheduler runs.

Promises:

* At most ``jobs`` intervals run at once, handed out in the plan's order
  (longest first); an interval counts as running from the moment it is
  handed to a free process.
* A worker process that dies (killed, out of memory) breaks Python's pool:
  the pool is replaced and every interval that was in it runs again, at most
  ``retries`` more times each; after that the interval fails with the reason.
* Processes are started with ``spawn`` (no forked event loops or threads);
  their QEMUs die with them (``PR_SET_PDEATHSIG``). Ctrl-C cancels what has
  not started and waits for the pool to wind down.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from engine.errors import SbtuiError, UsageError
from engine.parallel.job import JobResult, build_job, guest_roles, run_job, worker_name
from engine.parallel.simulate import EventSink, PlannedInterval, SchedulerEvent
from engine.recording.format import Recording

TICK_S = 1.0


def _local_job(rec_path: str, index: int, analysis: str, params: dict[str, Any],
               offsets: dict[int, int]) -> bytes:
    name = worker_name()
    rec = Recording.open(rec_path)
    try:
        try:
            job = build_job(rec, index, analysis, params, offsets=offsets)
            guest = {digest: path.read_bytes() for digest, path in guest_roles(rec).values()}
        except SbtuiError as err:
            return JobResult(index, analysis, name, error=f"on {name}: {err}").encode()
        return run_job(job, guest=guest, worker=name).encode()
    finally:
        rec.close()


class LocalScheduler:
    """``jobs`` local worker processes."""

    def __init__(self, jobs: int = 1, *, retries: int = 2):
        if jobs < 1:
            raise UsageError(f"--jobs must be at least 1, got {jobs}")
        self.slots = jobs
        self.retries = retries
        self.name = f"local:{jobs}"

    def _pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self.slots, mp_context=multiprocessing.get_context("spawn"))

    def run(self, rec: Recording, plan: list[PlannedInterval], analysis: str,
            params: dict[str, Any], offsets: dict[int, int], events: EventSink) -> None:
        path = str(Path(rec.path).resolve())
        pending = deque(p.index for p in plan)
        tries: dict[int, int] = {}
        pool = self._pool()
        running: dict[concurrent.futures.Future, int] = {}
        try:
            while pending or running:
                while pending and len(running) < self.slots:
                    index = pending.popleft()
                    tries[index] = tries.get(index, 0) + 1
                    fut = pool.submit(_local_job, path, index, analysis, params, offsets)
                    running[fut] = index
                    events(SchedulerEvent("started", index, worker="a local process"))
                done, _ = concurrent.futures.wait(running, timeout=TICK_S,
                                                  return_when=concurrent.futures.FIRST_COMPLETED)
                if not done:
                    events(SchedulerEvent("tick"))
                    continue
                broken = False
                for fut in done:
                    index = running.pop(fut)
                    try:
                        data = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        self._again(index, tries, pending, events, "its worker process died")
                        continue
                    except Exception as err:  # noqa: BLE001 - reported as the interval's failure
                        events(SchedulerEvent("finished", index, result=JobResult(
                            index, analysis, "local", error=f"local worker failed: {err}")))
                        continue
                    events(SchedulerEvent("finished", index, result=JobResult.decode(data)))
                if broken:
                    # Every job still in the broken pool is lost with it.
                    for fut, index in list(running.items()):
                        self._again(index, tries, pending, events, "its worker pool broke")
                    running.clear()
                    pool.shutdown(wait=True, cancel_futures=True)
                    pool = self._pool()
        except BaseException:
            for fut in running:
                fut.cancel()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _again(self, index: int, tries: dict[int, int], pending: deque, events: EventSink,
               why: str) -> None:
        if tries.get(index, 0) <= self.retries:
            pending.appendleft(index)
            events(SchedulerEvent("retry", index, detail=why))
        else:
            events(SchedulerEvent("finished", index, result=JobResult(
                index, "", "local", error=f"{why}, {tries[index]} times")))
