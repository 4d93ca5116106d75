"""Verify every interval of a recording: ``sbtui verify``, on the parallel engine.

``verify_recording(rec, jobs=N)`` is :func:`engine.parallel.simulate` with
the ``verify`` analysis on a :class:`~engine.parallel.local.LocalScheduler`
of N worker processes (or any scheduler given), so ``sbtui verify`` and
``sbtui simulate --analysis verify`` are one implementation: the same jobs,
the same worker code, the same verdict (:func:`engine.parallel.analyses.judge`,
the rules of :func:`engine.replay.prove.prove_interval`). Interval k restores
checkpoint k, replays to checkpoint k+1's instruction count and compares
every RAM page with it; the last interval replays to the end of the log,
which must end with QEMU exiting cleanly and the recording's console.
Intervals are handed out longest first.

Promises:

* The recording is not changed (no results are stored with it; ``sbtui
  simulate -a verify`` stores them).
* The report lists every interval asked for, verified or not; ``failed``
  names those that did not verify, and a failed interval's entry carries
  the first differing pages (``first_diffs``, block and page index).
* ``progress`` gets the scheduler's
  :class:`~engine.parallel.simulate.SimulationProgress` (done, running,
  failed, time left, and a message per interval started or finished).
* Ctrl-C (KeyboardInterrupt) stops the workers, whose replays shut their
  QEMUs down and remove their files, and propagates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from engine.errors import ReplayError
from engine.recording.format import Recording


@dataclass
class VerifyReport:
    """What ``sbtui verify`` prints: one entry per interval (an
    :class:`~engine.parallel.simulate.IntervalOutcome`)."""

    intervals: int
    results: list = field(default_factory=list)
    wall_s: float = 0.0
    jobs: int = 1
    scheduler: str = ""

    @property
    def verified(self) -> int:
        return sum(1 for r in self.results if r.ok)

    @property
    def failed(self) -> list[int]:
        return sorted(r.index for r in self.results if not r.ok)

    def to_json(self) -> dict[str, Any]:
        return {"intervals": self.intervals, "verified": self.verified, "failed": self.failed,
                "wall_s": round(self.wall_s, 3), "jobs": self.jobs, "scheduler": self.scheduler,
                "results": [_result_json(r) for r in sorted(self.results, key=lambda r: r.index)]}


def _result_json(outcome) -> dict[str, Any]:
    d = outcome.to_json()
    d.pop("output", None)           # the verify analysis has none
    # The names `sbtui verify --json` has always used, beside the outcome's own.
    d["target_icount"] = outcome.end_icount
    for key in ("restore_s", "replay_s"):
        d[key] = round(outcome.timings.get(key, 0.0), 3)
    d["compare_s"] = round(outcome.timings.get("snapshot_s", 0.0), 3)
    return d


def verify_recording(rec: Recording, *, jobs: int = 1,
                     progress: Callable[[Any], None] | None = None,
                     only: list[int] | None = None, scheduler=None) -> VerifyReport:
    """Verify every interval (or those in ``only``) with ``jobs`` local
    processes, or with ``scheduler`` when one is given."""
    from engine.parallel.local import LocalScheduler
    from engine.parallel.simulate import simulate
    if rec.manifest.status == "recording":
        raise ReplayError(f"{rec.path}: the recording is still being made; verify it when it ends")
    sched = scheduler if scheduler is not None else LocalScheduler(jobs)
    report = simulate(rec, "verify", sched, only=only, progress=progress, save=False)
    return VerifyReport(intervals=report.intervals, results=list(report.results),
                        wall_s=report.wall_s, jobs=sched.slots, scheduler=sched.name)
