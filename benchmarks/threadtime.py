"""How long a process's threads ran on a core and waited for one (Linux ``/proc``).

For comparisons that must hold on a loaded machine: a thread's run time
changes little with the load, while its wall time includes how long it sat in
the run queue. ``/proc/PID/task/TID/schedstat`` gives both in nanoseconds
(run time, run-queue wait, time slices).

* :func:`sample` reads every thread of a process at one moment; threads that
  vanish while it reads are left out.
* :func:`busiest` compares two samples and returns the thread that ran the
  most in between (for a TCG QEMU running a busy guest, the vCPU thread) with
  its run and wait seconds. Threads that appeared in between count from zero.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ThreadTime:
    """Seconds one thread ran, and waited runnable for a core."""

    run_s: float
    wait_s: float


Sample = dict[int, ThreadTime]


def sample(pid: int) -> Sample:
    """Every thread of ``pid`` now. Raises :class:`OSError` when the process is gone."""
    out: Sample = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run_ns, wait_ns, *_ = f.read().split()
        except OSError:
            continue  # the thread ended while we listed them
        out[int(tid)] = ThreadTime(int(run_ns) / 1e9, int(wait_ns) / 1e9)
    return out


def busiest(before: Sample, after: Sample) -> ThreadTime:
    """Run and wait seconds, between two samples, of the thread that ran most."""
    best = ThreadTime(0.0, 0.0)
    for tid, t in after.items():
        t0 = before.get(tid, ThreadTime(0.0, 0.0))
        d = ThreadTime(t.run_s - t0.run_s, t.wait_s - t0.wait_s)
        if d.run_s > best.run_s:
            best = d
    return best


def total(before: Sample, after: Sample) -> ThreadTime:
    """Run and wait seconds of all threads between two samples (ended threads are lost)."""
    run = wait = 0.0
    for tid, t in after.items():
        t0 = before.get(tid, ThreadTime(0.0, 0.0))
        run += t.run_s - t0.run_s
        wait += t.wait_s - t0.wait_s
    return ThreadTime(run, wait)
