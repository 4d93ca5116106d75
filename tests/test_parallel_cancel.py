"""Cancelling a simulation: an exception raised by the progress callback (the
scheduler's event sink) stops the local scheduler's worker processes, even
those busy with an interval, and propagates (``engine/parallel/simulate.py``
promises it; the app's cancel relies on it). No QEMU: the worker function is
stood in for by one that would run for a minute."""

from __future__ import annotations

import os

import pytest


def slow_job(rec_path: str, index: int, analysis: str, params: dict, offsets: dict) -> bytes:
    import time
    time.sleep(60)
    raise AssertionError("a cancelled job ran to its end")


class _Rec:
    def __init__(self, path):
        self.path = path


class Cancelled(Exception):
    pass


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_raising_from_the_event_sink_stops_busy_local_workers(tmp_path):
    from engine.parallel.local import LocalScheduler
    from engine.parallel.simulate import PlannedInterval

    plan = [PlannedInterval(i, i * 10, i * 10 + 10, 10, 0, 1.0) for i in range(4)]
    events = []

    def sink(ev) -> None:
        events.append(ev)
        if ev.kind == "tick":       # both workers are busy with their interval by now
            raise Cancelled("the user cancelled")

    with pytest.raises(Cancelled):
        LocalScheduler(2, job_fn=slow_job).run(_Rec(tmp_path), plan, "verify", {}, {}, sink)
    pids = [int(e.worker.rsplit(" ", 1)[1]) for e in events if e.kind == "started"]
    assert len(pids) == 2 and not any(e.kind == "finished" for e in events)
    assert not [pid for pid in pids if alive(pid)], "a worker process outlived the cancel"
    assert os.getpid() not in pids
