"""The recorder's proofs in a child process (``engine.replay.prove_child``), on
the demo recording (real QEMU):

* a proof in the child verifies an interval and says so, at the niceness and
  scheduling class it was asked for;
* cancelling it (the recording stopped) kills the child, and its replay QEMU
  goes with it;
* a recording that is not there is a clear error naming the child's exit.
"""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from engine.errors import ReplayError
from engine.replay.prove_child import prove_in_child
from test_recording_support import tagged_qemus, wait_until

pytestmark = [pytest.mark.qemu]


@pytest.fixture
def rec_copy(demo_recording, tmp_path):
    path = tmp_path / "rec"
    shutil.copytree(demo_recording, path)   # a proof appends to the checkpoint log
    return path


def _children(parent: int) -> set[int]:
    """The proof children of ``parent`` (pytest has other children too)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) != parent:
                        continue
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"engine.replay.prove_child" in f.read():
                        found.add(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return found


def test_a_proof_in_a_niced_child_verifies_the_interval(rec_copy):
    seen: dict[str, int] = {}

    async def run():
        task = asyncio.create_task(prove_in_child(rec_copy, 1, nice=15))
        while not task.done():
            for pid in _children(os.getpid()):
                try:
                    seen.setdefault("nice", os.getpriority(os.PRIO_PROCESS, pid))
                    seen.setdefault("policy", os.sched_getscheduler(pid))
                except OSError:
                    pass
            await asyncio.sleep(0.05)
        return await task

    with tagged_qemus():
        result = asyncio.run(run())
    assert result.status == "verified", result
    assert seen.get("nice") == 15 and seen.get("policy") == os.SCHED_IDLE, seen


def test_cancelling_a_proof_kills_the_child_and_its_qemu(rec_copy):
    async def run():
        task = asyncio.create_task(prove_in_child(rec_copy, 1))
        children = await asyncio.to_thread(
            wait_until, lambda: _children(os.getpid()), "the proof's child process", 30)
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return children

    with tagged_qemus():   # fails if a tagged QEMU is left behind
        children = asyncio.run(run())
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or \
            open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_a_missing_recording_is_a_clear_error(tmp_path):
    with pytest.raises(ReplayError, match=r"interval 1 \(child process\) exited with code 1:.*"):
        asyncio.run(prove_in_child(tmp_path / "nowhere", 1))
