"""Replay every interval of a recording at once and run an analysis on each: the SimuBoost step.

::

    report = simulate(rec, "writeset", LocalScheduler(jobs=2), progress=print)
    report.failed            # intervals that did not verify
    load_report(rec, "writeset")   # what was stored with the recording

What :func:`simulate` promises:

* Every interval (or those in ``only``) is replayed exactly once unless a
  worker dies under it, in which case the scheduler runs it again elsewhere
  (``attempts`` counts). Intervals are handed out longest first, by an
  estimate of their replay time (:func:`estimate_s`: instructions plus the
  replay-log bytes the interval reads, because QEMU replays idle stretches
  event by event and a busy log is the slow part of a replay).
* Results do not depend on the scheduler: the same job bytes, the same worker
  code, and the verdict computed here on the client against the store
  (:func:`engine.parallel.analyses.judge`).
* The report is stored with the recording (:mod:`engine.parallel.results`,
  ``REC/analyses/NAME.msgpack``, written atomically); a run over some
  intervals updates those and keeps the others.
* ``progress`` gets a :class:`SimulationProgress` whenever an interval starts
  or ends and about once a second meanwhile: intervals done, running,
  failed, and the projected time left.
* Cancelling: an exception raised by ``progress`` stops the run and
  propagates out of :func:`simulate`; the scheduler stops its jobs on the way
  (the local one interrupts its worker processes, whose replays shut QEMU
  down; the Dask one cancels its futures) and nothing is stored. The app's
  cancel button works this way.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from engine.errors import ReplayError, UsageError
from engine.parallel.analyses import default_step, get_analysis, judge
from engine.parallel.job import JobResult
from engine.recording.format import Recording

# Replay speed of this project's machines under TCG (measured on the demo
# guest, 2 cores): about a billion instructions a second, and about 1.2 us per
# byte of replay log (idle stretches are thousands of small clock events).
INSTRUCTIONS_PER_S = 1.0e9
LOG_BYTES_PER_S = 0.8e6
JOB_OVERHEAD_S = 1.5      # QEMU start, restore, snapshot: what every job pays


@dataclass(frozen=True)
class PlannedInterval:
    index: int
    start_icount: int
    end_icount: int | None      # None: to the end of the log
    instructions: int
    log_bytes: int
    est_s: float


@dataclass(frozen=True)
class SimulationProgress:
    """How far a simulation has come (what the progress bars show)."""

    total: int
    done: int                   # finished, verified or not
    running: int
    failed: int                 # finished and not verified
    elapsed_s: float
    eta_s: float | None         # projected seconds left; None before anything is known
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


@dataclass
class IntervalOutcome:
    index: int
    status: str                 # verified | diverged | console | restore | error
    detail: str
    start_icount: int
    end_icount: int | None
    worker: str = ""
    attempts: int = 1
    timings: dict[str, float] = field(default_factory=dict)
    output: dict[str, Any] = field(default_factory=dict)
    first_diffs: list[tuple[str, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "verified"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["first_diffs"] = [[b, p] for b, p in self.first_diffs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IntervalOutcome":
        known = {f.name for f in dataclasses.fields(cls)}
        out = cls(**{k: v for k, v in d.items() if k in known})
        out.first_diffs = [(b, p) for b, p in out.first_diffs]
        return out

    def to_json(self) -> dict[str, Any]:
        """JSON-safe: page lists and hashes of the output are summarized."""
        d = self.to_dict()
        d["ok"] = self.ok
        d["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        d["output"] = _jsonable_output(self.output)
        return d


def _jsonable_output(out: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for key, value in out.items():
        if key == "steps":
            res["steps"] = [[icount, len(pages) // 4] for icount, pages in value]
        elif isinstance(value, bytes):
            res[key] = value.hex()
        else:
            res[key] = value
    return res


@dataclass
class SimulationReport:
    recording: str
    analysis: str
    scheduler: str
    slots: int
    params: dict[str, Any]
    intervals: int
    results: list[IntervalOutcome] = field(default_factory=list)
    wall_s: float = 0.0
    created: float = 0.0
    stale: bool = False         # loaded results whose checkpoints changed since

    @property
    def verified(self) -> int:
        return sum(1 for r in self.results if r.ok)

    @property
    def failed(self) -> list[int]:
        return sorted(r.index for r in self.results if not r.ok)

    def outcome(self, index: int) -> IntervalOutcome | None:
        return next((r for r in self.results if r.index == index), None)

    def to_json(self) -> dict[str, Any]:
        return {"recording": self.recording, "analysis": self.analysis,
                "scheduler": self.scheduler, "slots": self.slots, "params": self.params,
                "intervals": self.intervals, "verified": self.verified, "failed": self.failed,
                "wall_s": round(self.wall_s, 3),
                "results": [r.to_json() for r in sorted(self.results, key=lambda r: r.index)]}


# --------------------------------------------------------------------------
# Schedulers
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class SchedulerEvent:
    kind: str                   # started | finished | retry | tick
    index: int = -1
    worker: str = ""
    result: JobResult | None = None
    detail: str = ""


EventSink = Callable[[SchedulerEvent], None]


class Scheduler(Protocol):
    """Runs interval jobs somewhere; reports through ``events`` from the calling thread."""

    name: str                   # "local:2", "dask:tcp://host:8786"
    slots: int                  # jobs that can run at once

    def run(self, rec: Recording, plan: list[PlannedInterval], analysis: str,
            params: dict[str, Any], offsets: dict[int, int], events: EventSink) -> None: ...


# --------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------

def estimate_s(instructions: int, log_bytes: int) -> float:
    return JOB_OVERHEAD_S + instructions / INSTRUCTIONS_PER_S + log_bytes / LOG_BYTES_PER_S


def plan_intervals(rec: Recording, offsets: dict[int, int],
                   only: list[int] | None = None) -> list[PlannedInterval]:
    """The intervals to replay, longest (estimated) first."""
    cps = rec.checkpoints()
    log_size = rec.log_path.stat().st_size if rec.log_path.exists() else 0
    plan = []
    for cp, nxt in zip(cps, [*cps[1:], None]):
        end = nxt.icount if nxt is not None else rec.manifest.end_icount
        instructions = (end - cp.icount) if end is not None else 0
        log_end = offsets.get(cp.index + 1, log_size) if nxt is not None else log_size
        log_bytes = max(0, log_end - offsets.get(cp.index, 0))
        plan.append(PlannedInterval(cp.index, cp.icount, nxt.icount if nxt else None,
                                    instructions, log_bytes, estimate_s(instructions, log_bytes)))
    if only is not None:
        known = {p.index for p in plan}
        unknown = sorted(set(only) - known)
        if unknown:
            raise UsageError(f"{rec.path}: no interval {unknown[0]} (the recording has "
                             f"{len(plan)} intervals, 0..{len(plan) - 1})")
        plan = [p for p in plan if p.index in set(only)]
    return sorted(plan, key=lambda p: (-p.est_s, p.index))


class _Tracker:
    """Turns scheduler events into outcomes and progress."""

    def __init__(self, rec: Recording, plan: list[PlannedInterval], analysis: str, slots: int,
                 progress: Callable[[SimulationProgress], None] | None):
        self.rec = rec
        self.plan = {p.index: p for p in plan}
        self.analysis = get_analysis(analysis)
        self.slots = max(1, slots)
        self.progress = progress
        self.t0 = time.monotonic()
        self.running: dict[int, tuple[float, str]] = {}
        self.attempts: dict[int, int] = {}
        self.outcomes: dict[int, IntervalOutcome] = {}
        self.job_seconds: dict[int, float] = {}

    def __call__(self, ev: SchedulerEvent) -> None:
        msg = ""
        if ev.kind == "started":
            self.running[ev.index] = (time.monotonic(), ev.worker)
            self.attempts[ev.index] = self.attempts.get(ev.index, 0) + 1
            msg = f"interval {ev.index} started on {ev.worker}"
        elif ev.kind == "retry":
            self.running.pop(ev.index, None)
            msg = f"interval {ev.index} runs again: {ev.detail}"
        elif ev.kind == "finished":
            started, _w = self.running.pop(ev.index, (None, ""))
            if started is not None:
                self.job_seconds[ev.index] = time.monotonic() - started
            out = self._outcome(ev.index, ev.result)
            self.outcomes[ev.index] = out
            msg = f"interval {ev.index}: {out.status} {out.detail}"
        if self.progress is not None:
            self.progress(self.snapshot(msg))

    def _outcome(self, index: int, result: JobResult | None) -> IntervalOutcome:
        p = self.plan[index]
        if result is None:
            result = JobResult(index, self.analysis.name, "", error="no result")
        verdict = judge(self.rec, index, result)
        output: dict[str, Any] = {}
        if not result.error:
            try:
                output = self.analysis.summarize(self.rec, index, result)
            except Exception as err:  # noqa: BLE001 - a summary bug must not lose the verdict
                output = {"summary_error": str(err)}
        return IntervalOutcome(index=index, status=verdict.status, detail=verdict.detail,
                               start_icount=p.start_icount, end_icount=p.end_icount,
                               worker=result.worker, attempts=max(1, self.attempts.get(index, 1)),
                               timings=dict(result.timings), output=output,
                               first_diffs=verdict.first_diffs)

    def snapshot(self, message: str = "") -> SimulationProgress:
        now = time.monotonic()
        done = len(self.outcomes)
        failed = sum(1 for o in self.outcomes.values() if not o.ok)
        return SimulationProgress(total=len(self.plan), done=done, running=len(self.running),
                                  failed=failed, elapsed_s=now - self.t0, eta_s=self._eta(now),
                                  message=message)

    def _eta(self, now: float) -> float | None:
        if len(self.outcomes) == len(self.plan):
            return 0.0
        # Seconds per estimated second, from the jobs that finished; the model's own guess before.
        est_done = sum(self.plan[i].est_s for i in self.job_seconds)
        factor = sum(self.job_seconds.values()) / est_done if est_done > 0 else 1.0
        left: list[float] = []
        for index, p in self.plan.items():
            if index in self.outcomes:
                continue
            need = p.est_s * factor
            if index in self.running:
                need = max(0.0, need - (now - self.running[index][0]))
            left.append(need)
        if not left:
            return 0.0
        return max(max(left), sum(left) / self.slots)


def simulate(rec: Recording, analysis: str, scheduler: Scheduler, *,
             params: dict[str, Any] | None = None, only: list[int] | None = None,
             progress: Callable[[SimulationProgress], None] | None = None,
             save: bool = True) -> SimulationReport:
    """Replay the intervals with ``scheduler`` and run ``analysis`` on each."""
    from engine.parallel import replaylog
    from engine.parallel.results import save_report
    an = get_analysis(analysis)
    if rec.manifest.kind != "record":
        raise ReplayError(f"{rec.path}: a live recording has no replay log; its intervals "
                          "cannot be replayed")
    if rec.manifest.status == "recording":
        raise ReplayError(f"{rec.path}: the recording is still being made; simulate it when it ends")
    params = dict(params or {})
    if an.name == "writeset" and not params.get("step"):
        params["step"] = default_step(rec)
    offsets = replaylog.log_offsets(rec)
    plan = plan_intervals(rec, offsets, only)
    if not plan:
        raise ReplayError(f"{rec.path}: the recording has no checkpoints")
    tracker = _Tracker(rec, plan, an.name, scheduler.slots, progress)
    t0 = time.monotonic()
    if progress is not None:
        progress(tracker.snapshot(f"{len(plan)} intervals on {scheduler.name}"))
    scheduler.run(rec, plan, an.name, params, offsets, tracker)
    missing = [p.index for p in plan if p.index not in tracker.outcomes]
    for index in missing:   # a scheduler that gave up on an interval: say so, never drop it
        tracker(SchedulerEvent("finished", index, result=JobResult(
            index, an.name, "", error=f"the scheduler {scheduler.name} returned no result")))
    report = SimulationReport(recording=str(rec.path), analysis=an.name, scheduler=scheduler.name,
                              slots=scheduler.slots, params=params, intervals=len(plan),
                              results=sorted(tracker.outcomes.values(), key=lambda o: o.index),
                              wall_s=time.monotonic() - t0, created=time.time())
    if save:
        save_report(rec, report)
    return report
