"""Verify every interval of a recording, in parallel local processes.

``verify_recording(path, jobs=N)`` proves each interval (``prove_interval``)
without changing the recording: interval k restores checkpoint k, replays to
checkpoint k+1's instruction count and compares all of RAM with it; the last
interval replays to the end of the log. Intervals run in ``jobs`` worker
processes, longest first (by instructions), so the slowest one does not start
last. Each worker owns its QEMU; a worker that is interrupted shuts its QEMU
down (and QEMU dies with its parent in any case, PR_SET_PDEATHSIG).

The report lists every interval's result; ``failed`` names the intervals that
did not verify.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from engine.errors import ReplayError
from engine.recording.format import Recording
from engine.replay.prove import IntervalResult, prove_interval

Progress = Callable[[str], None]


@dataclass
class VerifyReport:
    intervals: int
    results: list[IntervalResult] = field(default_factory=list)
    wall_s: float = 0.0
    jobs: int = 1

    @property
    def verified(self) -> int:
        return sum(1 for r in self.results if r.ok)

    @property
    def failed(self) -> list[int]:
        return sorted(r.index for r in self.results if not r.ok)

    def to_json(self) -> dict:
        return {"intervals": self.intervals, "verified": self.verified, "failed": self.failed,
                "wall_s": round(self.wall_s, 3), "jobs": self.jobs,
                "results": [r.to_json() for r in sorted(self.results, key=lambda r: r.index)]}


def _prove_in_worker(path: str, index: int) -> IntervalResult:
    rec = Recording.open(path)
    try:
        return asyncio.run(prove_interval(rec, index))
    finally:
        rec.close()


def interval_order(rec: Recording) -> list[int]:
    """Interval indices, longest first (the last interval, of unknown length, first of all)."""
    cps = rec.checkpoints()
    lengths = {}
    for a, b in zip(cps, cps[1:]):
        lengths[a.index] = b.icount - a.icount
    if cps:
        end = rec.manifest.end_icount
        lengths[cps[-1].index] = (end - cps[-1].icount) if end else float("inf")
    return sorted(lengths, key=lambda i: (-lengths[i], i))


def verify_recording(rec: Recording, *, jobs: int = 1, progress: Progress | None = None,
                     only: list[int] | None = None) -> VerifyReport:
    """Prove every interval (or those in ``only``) using ``jobs`` processes."""
    say = progress or (lambda _m: None)
    if rec.manifest.status == "recording":
        raise ReplayError(f"{rec.path}: the recording is still being made; verify it when it ends")
    order = interval_order(rec)
    if only is not None:
        unknown = sorted(set(only) - set(order))
        if unknown:
            raise ReplayError(f"{rec.path}: no interval {unknown[0]} (the recording has "
                              f"{len(order)} intervals, 0..{len(order) - 1})")
        order = [i for i in order if i in set(only)]
    report = VerifyReport(intervals=len(order), jobs=jobs)
    t0 = time.monotonic()
    if jobs <= 1:
        for n, index in enumerate(order, 1):
            say(f"[{n}/{len(order)}] interval {index}")
            r = asyncio.run(prove_interval(rec, index))
            report.results.append(r)
            say(f"[{n}/{len(order)}] interval {index}: {r.status} {r.detail}")
    else:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_prove_in_worker, str(Path(rec.path).resolve()), i): i for i in order}
            try:
                for n, fut in enumerate(concurrent.futures.as_completed(futures), 1):
                    index = futures[fut]
                    try:
                        r = fut.result()
                    except Exception as err:  # a worker that died: the interval failed, say why
                        r = IntervalResult(index, "restore", f"worker failed: {err}")
                    report.results.append(r)
                    say(f"[{n}/{len(order)}] interval {index}: {r.status} {r.detail}")
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    report.wall_s = time.monotonic() - t0
    return report
