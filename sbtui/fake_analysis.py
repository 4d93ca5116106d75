"""The fake session's analyses: :class:`engine.api.AnalysisView` without QEMU.

:class:`FakeAnalyses` is a base class of ``FakeRecording``
(``sbtui/fake_session.py``) and uses its synthetic checkpoints. What it
promises, so the app's Pilot and snapshot tests can rely on it:

* Deterministic: everything is a function of the recording's seed and rows.
* Intervals follow the engine's numbering: interval ``i`` starts at
  checkpoint ``i`` and ends at checkpoint ``i + 1``; the fake recording ends at
  its last checkpoint, so it has ``len(rows) - 1`` intervals.
* A synthetic ``writeset`` of interval ``i`` is derived from the dirty pages
  of checkpoint ``i + 1`` (the pages ``dirty_pages`` gives for it): they are
  split into :data:`STEPS` sub-steps in address order (a sweep moves across
  RAM from step to step), and hot kernel pages are also written again in
  about a quarter of the other steps. The working set is the union of the
  steps, which equals the dirty set (``store_dirty``).
* ``simulate`` runs through the intervals in at most :data:`ROUNDS` rounds of
  ``jobs`` intervals or more, calling ``progress`` after each start and each
  finish, sleeping ``latency`` seconds in all (spread over the rounds) in the
  calling thread; intervals in ``fail_intervals`` fail. An exception raised
  by ``progress`` stops the run and stores nothing (the real engine does the
  same). It raises ``ReplayError`` for a recording that is still being made
  and ``UsageError`` for an unknown analysis.
"""

from __future__ import annotations

import time
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable

from engine.api import AnalysisInfo, GuestState, IntervalWriteset, SimulationProgress, WritesetStep
from engine.errors import ReplayError, UsageError

STEPS = 16                # sub-steps per interval
ROUNDS = 20               # progress rounds of a fake simulation at most
CREATED = 1_700_000_000.0  # the fixed "when" of stored fake analyses (no clock in snapshots)
KNOWN = ("verify", "writeset")


class FakeAnalyses:
    """Mixin for ``FakeRecording``: see the module docstring."""

    def _init_analyses(self, *, latency: float = 0.0, fail_intervals: tuple[int, ...] = (),
                       analyses: tuple[str, ...] = ()) -> None:
        self.latency = latency
        self.fail_intervals = frozenset(fail_intervals)
        self._stored: dict[str, AnalysisInfo] = {}
        self._ws_cache: OrderedDict[int, IntervalWriteset] = OrderedDict()
        for name in analyses:      # stored as if run earlier (tests, screenshots)
            self._store(name, scheduler="fake:1", wall_s=0.0)

    # -- helpers ------------------------------------------------------------
    def _intervals(self) -> int:
        return max(0, len(self._rows) - 1)   # type: ignore[attr-defined]

    def _failed(self, total: int) -> tuple[int, ...]:
        return tuple(sorted(i for i in self.fail_intervals if 0 <= i < total))

    def _store(self, name: str, *, scheduler: str, wall_s: float) -> AnalysisInfo:
        total = self._intervals()
        failed = self._failed(total)
        info = AnalysisInfo(name=name, intervals=total, verified=total - len(failed),
                            failed=failed, wall_s=wall_s, scheduler=scheduler,
                            created=CREATED, stale=False)
        self._stored[name] = info
        if name == "writeset":
            self._ws_cache.clear()
        return info

    def _fake_writeset(self, interval: int) -> IntervalWriteset:
        hit = self._ws_cache.get(interval)
        if hit is not None:
            return hit
        rows = self._rows                                   # type: ignore[attr-defined]
        start, end = rows[interval], rows[interval + 1]
        pages = self._materialize(interval + 1)            # type: ignore[attr-defined]
        n = len(pages)
        lo, hi = self._layout.kernel                        # type: ignore[attr-defined]
        h0, h1 = bisect_left(pages, lo), bisect_left(pages, hi)
        hot = pages[h0:h1]
        span = end.icount - start.icount
        step_icount = max(1, -(-span // STEPS))
        steps = []
        for s in range(STEPS):
            a, b = s * n // STEPS, (s + 1) * n // STEPS
            again = array("I", (p for p in hot if (p * 2654435761 + s * 40503 + interval) % 4 == 0))
            if a >= h1:     # the hot pages all lie below this step's slice: still sorted
                part = again + pages[a:b]
            else:
                part = array("I", sorted(set(pages[a:b]).union(again)))
            steps.append(WritesetStep(icount=min(end.icount, start.icount + (s + 1) * step_icount),
                                      pages=part))
        ws = IntervalWriteset(
            interval=interval, start_icount=start.icount, end_icount=end.icount,
            step_icount=step_icount, steps=tuple(steps), working_set=n,
            ram_pages=self._machine.ram_pages, store_dirty=n,   # type: ignore[attr-defined]
            verified=interval not in self.fail_intervals)
        self._ws_cache[interval] = ws
        while len(self._ws_cache) > 64:
            self._ws_cache.popitem(last=False)
        return ws

    # -- AnalysisView ----------------------------------------------------------
    def analyses(self) -> list[AnalysisInfo]:
        return [self._stored[name] for name in sorted(self._stored)]

    def writeset(self, checkpoint_id: str) -> IntervalWriteset | None:
        index = self._index(checkpoint_id)                  # type: ignore[attr-defined]
        if index == 0 or "writeset" not in self._stored:
            return None
        return self._fake_writeset(index - 1)

    def writesets(self) -> list[IntervalWriteset]:
        if "writeset" not in self._stored:
            return []
        return [self._fake_writeset(i) for i in range(self._intervals())]

    def simulate(self, analysis: str, *, jobs: int = 1, scheduler: str | None = None,
                 progress: Callable[[SimulationProgress], None] | None = None) -> AnalysisInfo:
        if analysis not in KNOWN:
            raise UsageError(f"no analysis {analysis!r} (known: {', '.join(KNOWN)})")
        if self.state is not GuestState.RECORDED:           # type: ignore[attr-defined]
            raise ReplayError("the recording is still being made; simulate it when it ends")
        if jobs < 1:
            raise UsageError(f"--jobs must be at least 1, got {jobs}")
        total = self._intervals()
        if total == 0:
            raise ReplayError("the recording has no interval to replay")
        failing = set(self._failed(total))
        chunk = max(jobs, -(-total // ROUNDS))
        rounds = -(-total // chunk)
        t0 = time.monotonic()
        done = failed = 0

        def report(running: int, message: str) -> None:
            if progress is None:
                return
            elapsed = time.monotonic() - t0
            left = total - done
            eta = 0.0 if not left else (elapsed / done * left if done else None)
            progress(SimulationProgress(total=total, done=done, running=running, failed=failed,
                                        elapsed_s=elapsed, eta_s=eta, message=message))

        report(0, f"{total} intervals on fake:{jobs}")
        for r in range(rounds):
            batch = range(r * chunk, min(total, (r + 1) * chunk))
            report(len(batch), f"intervals {batch[0]}-{batch[-1]} started")
            if self.latency:
                time.sleep(self.latency / rounds)
            done += len(batch)
            failed += sum(1 for i in batch if i in failing)
            report(0, f"intervals {batch[0]}-{batch[-1]} finished")
        return self._store(analysis, scheduler=scheduler or f"fake:{jobs}",
                           wall_s=time.monotonic() - t0)
