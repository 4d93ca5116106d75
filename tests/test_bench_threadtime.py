"""benchmarks.threadtime: per-thread run and wait times from /proc (no QEMU).

The replay-speed benchmark compares the QEMU vCPU thread's CPU time in record
and replay mode through these; a wrong thread or a wrong unit would make that
figure meaningless.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from benchmarks import threadtime

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")


def _spin(stop: threading.Event, tid: list[int]) -> None:
    tid.append(threading.get_native_id())
    while not stop.is_set():
        pass


def test_busiest_picks_the_spinning_thread_with_its_run_time_in_seconds():
    stop = threading.Event()
    tid: list[int] = []
    t = threading.Thread(target=_spin, args=(stop, tid), daemon=True)
    t.start()
    try:
        while not tid:
            time.sleep(0.001)
        t0 = time.monotonic()
        before = threadtime.sample(os.getpid())
        assert tid[0] in before
        # Until the spinner has run 0.2 s of CPU (bounded, not a timing assertion).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            after = threadtime.sample(os.getpid())
            if after[tid[0]].run_s - before[tid[0]].run_s >= 0.2:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the spinning thread never ran 0.2 s")
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        t.join()
    best = threadtime.busiest(before, after)
    mine = after[tid[0]]
    assert best.run_s == pytest.approx(mine.run_s - before[tid[0]].run_s)
    assert best.run_s >= 0.2
    assert best.wait_s >= 0.0
    # Seconds, not nanoseconds or clock ticks: one thread cannot run longer
    # than the wall time that passed.
    assert best.run_s <= elapsed + 0.01
    everything = threadtime.total(before, after)
    assert everything.run_s >= best.run_s


def test_a_thread_that_appeared_between_samples_counts_from_zero():
    before = {1: threadtime.ThreadTime(5.0, 1.0)}
    after = {1: threadtime.ThreadTime(5.5, 1.2), 2: threadtime.ThreadTime(0.8, 0.1)}
    assert threadtime.busiest(before, after) == threadtime.ThreadTime(0.8, 0.1)
    total = threadtime.total(before, after)
    assert total.run_s == pytest.approx(1.3) and total.wait_s == pytest.approx(0.3)


def test_sample_of_a_process_that_is_gone_raises_oserror():
    with pytest.raises(OSError):
        threadtime.sample(2 ** 22 + 12345)  # above the default pid_max
