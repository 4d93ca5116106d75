"""Proving that a checkpoint restores exactly, and rebuilding one that does not.

``prove_interval(rec, k)`` restores checkpoint k into a replay and runs it:

* to the next checkpoint's instruction count, then compares every RAM page
  with checkpoint k+1 in the store (``engine.replay.compare``);
* for the last checkpoint of a finished recording, to the end of the log,
  which must end with QEMU exiting cleanly, and the console output produced
  must be the recording's console from the checkpoint on.

The result says ``verified`` or why not: ``restore`` (QEMU refused the state,
or the replay stalled: the checkpoint's device state does not restore, as with
the HPET in qemu-facts.md), ``diverged`` (RAM differs at the next checkpoint)
or ``console`` (the replay wrote something else).

``prove_and_repair(rec, k)`` (the recorder's proof step, run for k = 0, 1, ...
in order) keeps every checkpoint consistent with the deterministic replay, by
induction from checkpoint 0: when the replay from a consistent checkpoint k
reaches k+1's instruction count with RAM that differs from the record-mode
snapshot k+1, it replaces k+1 by the replay's own state there.

``rebuild_checkpoint(rec, k)`` replaces a checkpoint whose restore fails: it
restores checkpoint k-1, replays to checkpoint k's exact instruction count,
snapshots there in replay mode, stores that state and appends it to the
recording as checkpoint k (origin ``rebuilt``). The recording's append-only
checkpoint log keeps the old line; the new one wins.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

from engine.errors import QemuDiedError, QemuError, ReplayError, SbtuiError
from engine.recording.format import CheckpointEntry, Recording
from engine.replay.compare import diff_stream_against
from engine.replay.session import DEFAULT_STALL_S, ReplaySession
from engine.stream.qcow2 import open_vmstate

Progress = Callable[[str], None]


@dataclass
class IntervalResult:
    index: int
    status: str                   # verified | restore | diverged | console | unproven
    detail: str = ""
    target_icount: int | None = None
    first_diffs: list[tuple[str, int]] = field(default_factory=list)
    restore_s: float = 0.0
    replay_s: float = 0.0
    compare_s: float = 0.0
    replaced: int | None = None   # the next checkpoint's index, when it was replaced

    @property
    def ok(self) -> bool:
        return self.status == "verified"

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["first_diffs"] = [[b, p] for b, p in self.first_diffs]
        d["ok"] = self.ok
        return d


def _entry(rec: Recording, index: int) -> tuple[CheckpointEntry, CheckpointEntry | None]:
    cps = {cp.index: cp for cp in rec.checkpoints()}
    if index not in cps:
        have = f"0..{max(cps)}" if cps else "none"
        raise ReplayError(f"{rec.path}: no checkpoint {index} (the recording has {have})")
    return cps[index], cps.get(index + 1)


def _diff_snapshot(image, rec: Recording, store_id: str):
    with open_vmstate(image, "proof") as stream:
        return diff_stream_against(stream, rec.store, store_id)


def _replace_with_replay_state(rec: Recording, cp: CheckpointEntry, nxt: CheckpointEntry,
                               image, why: str) -> CheckpointEntry:
    with open_vmstate(image, "proof") as stream, rec.store_lock:
        info = rec.store.import_stream(
            stream, name=f"ck{nxt.index}-replay", parent=cp.store_id,
            meta={"index": nxt.index, "icount": nxt.icount, "origin": "rebuilt",
                  "replaces": nxt.store_id})
    new = dataclasses.replace(nxt, store_id=info.id, origin="rebuilt", proof="unproven",
                              detail=f"the replay's state at icount {nxt.icount}, from checkpoint "
                                     f"{cp.index} (replaces {nxt.store_id}, which differed: {why})")
    rec.append_checkpoint(new)
    return new


async def prove_interval(rec: Recording, index: int, *, stall_s: float = DEFAULT_STALL_S,
                         progress: Progress | None = None,
                         replace_next: bool = False) -> IntervalResult:
    """Restore checkpoint ``index`` and check that the replay reproduces the recording.

    With ``replace_next`` (the recorder's repair, for a checkpoint ``index``
    known to be consistent with the replay), a next checkpoint whose RAM
    differs from the replay's at its instruction count is replaced by the
    replay's own state there. Seen here: a record-mode snapshot reported at
    icount N held the effect of instruction N+1 (1 page of 32,898 differed at
    N and none at N+1), so restoring it would execute that instruction twice.
    """
    cp, nxt = _entry(rec, index)
    say = progress or (lambda _m: None)
    if nxt is None and rec.manifest.status == "recording":
        return IntervalResult(index, "unproven", "the recording has not ended yet")
    result = IntervalResult(index, "unproven", target_icount=nxt.icount if nxt else None)
    try:
        async with ReplaySession(rec, cp, stall_s=stall_s, progress=progress) as rs:
            result.restore_s = rs.restore_s or 0.0
            t0 = time.monotonic()
            if nxt is not None:
                say(f"interval {index}: replaying to icount {nxt.icount}")
                await rs.run_to(nxt.icount)
                result.replay_s = time.monotonic() - t0
                t1 = time.monotonic()
                await rs.save_snapshot("proof")
                diff = await asyncio.to_thread(_diff_snapshot, rs.vmstate_image, rec, nxt.store_id)
                result.compare_s = time.monotonic() - t1
                if diff.equal:
                    result.status, result.detail = "verified", diff.summary()
                elif replace_next:
                    new = await asyncio.to_thread(_replace_with_replay_state, rec, cp, nxt,
                                                  rs.vmstate_image, diff.summary())
                    result.status = "verified"
                    result.replaced = new.index
                    result.detail = (f"checkpoint {nxt.index} replaced by the replay's own state at "
                                     f"icount {nxt.icount} (the record-mode snapshot differed: "
                                     f"{diff.summary()})")
                else:
                    result.status, result.detail = "diverged", (
                        f"RAM at checkpoint {nxt.index} (icount {nxt.icount}): {diff.summary()}")
                    result.first_diffs = diff.first
            else:
                say(f"interval {index}: replaying to the end of the log")
                code = await rs.run_to_end()
                result.replay_s = time.monotonic() - t0
                produced = rs.console_bytes()
                recorded = rec.console_bytes()[cp.console_offset:]
                if code != 0:
                    result.status, result.detail = "restore", f"the replay exited with code {code}"
                elif cp.console_offset or index == 0:
                    if produced == recorded:
                        result.status, result.detail = "verified", (
                            f"ran to the end of the log; console output identical ({len(produced)} bytes)")
                    else:
                        result.status = "console"
                        result.detail = _console_diff(produced, recorded)
                else:
                    result.status, result.detail = "verified", "ran to the end of the log"
    except (ReplayError, QemuError) as err:
        if nxt is None and isinstance(err, QemuDiedError) and err.exit_code == 0:
            # A last checkpoint taken where the log ends (an idle guest, then the
            # recorded shutdown): QEMU replays the shutdown as soon as it loads.
            result.status = "verified"
            result.detail = "the log ends at this checkpoint: nothing after it to replay"
        else:
            result.status, result.detail = "restore", str(err).splitlines()[0]
    return result


def _console_diff(produced: bytes, recorded: bytes) -> str:
    n = 0
    for a, b in zip(produced, recorded):
        if a != b:
            break
        n += 1
    return (f"console differs from byte {n}: the replay wrote {len(produced)} bytes, "
            f"the recording has {len(recorded)} from this checkpoint on")


async def rebuild_checkpoint(rec: Recording, index: int, *, stall_s: float = DEFAULT_STALL_S,
                             progress: Progress | None = None) -> CheckpointEntry:
    """Replace checkpoint ``index`` by a replay-mode snapshot taken at its exact icount."""
    if index == 0:
        raise ReplayError(f"{rec.path}: checkpoint 0 cannot be rebuilt (nothing precedes it)")
    bad, _ = _entry(rec, index)
    prev, _ = _entry(rec, index - 1)
    say = progress or (lambda _m: None)
    say(f"rebuilding checkpoint {index} from checkpoint {index - 1}")
    async with ReplaySession(rec, prev, stall_s=stall_s, progress=progress) as rs:
        await rs.run_to(bad.icount)
        stream = await rs.snapshot()
        try:
            def store_it():
                with rec.store_lock:
                    return rec.store.import_stream(
                        stream, name=f"ck{index}-rebuilt", parent=prev.store_id,
                        meta={"index": index, "icount": bad.icount, "origin": "rebuilt",
                              "replaces": bad.store_id})
            info = await asyncio.to_thread(store_it)
        finally:
            stream.close()
    new = dataclasses.replace(bad, store_id=info.id, origin="rebuilt", proof="unproven",
                              detail=f"rebuilt from checkpoint {index - 1} by replay "
                                     f"(replaces {bad.store_id}: {bad.detail or 'did not restore'})")
    rec.append_checkpoint(new)
    return new


async def prove_and_repair(rec: Recording, index: int, *, stall_s: float = DEFAULT_STALL_S,
                           progress: Progress | None = None) -> IntervalResult:
    """The recorder's proof step: prove interval ``index``; if checkpoint
    ``index`` does not restore, rebuild it once and prove again. Records the
    outcome in the recording's checkpoint log."""
    cps = {cp.index: cp for cp in rec.checkpoints()}
    # Checkpoint ``index`` is consistent with the replay when it is the first, was
    # itself taken from a replay, or the interval before it verified.
    consistent = (index == 0 or cps[index].origin == "rebuilt"
                  or (index - 1 in cps and cps[index - 1].proof == "verified"))
    result = await prove_interval(rec, index, stall_s=stall_s, progress=progress,
                                  replace_next=consistent)
    if result.status == "restore" and index > 0:
        try:
            await rebuild_checkpoint(rec, index, stall_s=stall_s, progress=progress)
        except SbtuiError as err:
            result.detail += f"; rebuilding it failed: {err}"
        else:
            result = await prove_interval(rec, index, stall_s=stall_s, progress=progress,
                                          replace_next=True)
    cp, _ = _entry(rec, index)
    proof = "verified" if result.ok else ("unproven" if result.status == "unproven" else "failed")
    if proof != cp.proof or result.detail != cp.detail:
        rec.append_checkpoint(dataclasses.replace(cp, proof=proof, detail=result.detail))
    return result
