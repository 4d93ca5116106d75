"""prove_interval's reading of how a replay ended, with the replay faked (fast).

The integration side (real replays proving real intervals) is in
tests/test_replay.py and tests/test_record_repair.py.
"""

from __future__ import annotations

import pytest

from engine.errors import QemuDiedError
from engine.recording.format import CheckpointEntry, Manifest, Recording
from engine.replay import prove


class DiesOnLoad:
    """A ReplaySession whose QEMU exits with ``code`` while the state loads."""

    code = 0

    def __init__(self, *args, **kwargs):
        pass

    async def __aenter__(self):
        raise QemuDiedError("QEMU exited during QMP command 'query-replay'", exit_code=self.code)

    async def __aexit__(self, *exc):
        return False


@pytest.fixture
def rec(tmp_path):
    r = Recording.create(tmp_path / "rec", Manifest(kind="record", spec={}, qemu_version="10.0.2",
                                                    interval_s=2.0, created=0.0, status="complete"))
    r.append_checkpoint(CheckpointEntry(0, "0000", 0, 0.0, 0, 1.0))
    r.append_checkpoint(CheckpointEntry(1, "0001", 5000, 2.0, 0, 1.0))
    return r


async def test_a_last_checkpoint_at_the_end_of_the_log_is_verified(rec, monkeypatch):
    monkeypatch.setattr(prove, "ReplaySession", DiesOnLoad)
    DiesOnLoad.code = 0
    r = await prove.prove_interval(rec, 1)
    assert r.status == "verified" and "nothing after it" in r.detail


async def test_qemu_failing_on_load_is_a_restore_failure(rec, monkeypatch):
    monkeypatch.setattr(prove, "ReplaySession", DiesOnLoad)
    DiesOnLoad.code = 1
    assert (await prove.prove_interval(rec, 1)).status == "restore"
    DiesOnLoad.code = 0   # not the last interval: exiting there is a failure too
    assert (await prove.prove_interval(rec, 0)).status == "restore"
