"""The recorder's checkpoint proofs in a child process, niced while the guest records.

Why a process: a proof's own Python work (streaming checkpoint k out of the
store into the replay, comparing RAM with checkpoint k+1, storing a replaced
checkpoint) ran in the recorder's process at normal priority, and the
recording guest's vCPU thread waited for a core meanwhile. Measured on a
1 GiB memchurn recording (2 cores): 4-5 s more CPU in the recorder's process,
0.9 s of vCPU run-queue wait against 0.04-0.08 s, 1.19x the wall time of the
recording without checkpoints instead of 1.04x. Niceness is per process (the
proof's replay QEMU already had it), so the whole proof moves to a child.

Contract of :func:`prove_in_child`:

* runs :func:`engine.replay.prove.prove_and_repair` for one interval in
  ``python -m engine.replay.prove_child REC INDEX`` and returns its status and
  detail (the child prints them as one JSON line); the child's writes are
  the ones the in-process proof made: the store under its writer lock
  (``flock``, so they take turns with the recorder's ingestion) and single
  ``O_APPEND`` lines in the checkpoint log;
* ``nice``: the child lowers its own priority before anything else; its
  replay QEMU inherits that;
* the child dies with its parent (``PR_SET_PDEATHSIG``) and is killed when the
  proof is cancelled; its replay QEMU dies with it (the same signal, set by
  the child's QEMU driver), and its scratch files are removed by the next
  replay as orphans;
* a child that fails (non-zero exit, no JSON line) raises
  :class:`engine.errors.ReplayError` with the tail of its stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine.errors import ReplayError
from engine.qemu.process import die_with_parent

STDERR_TAIL = 2000


@dataclass
class ChildProof:
    index: int
    status: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "verified"


def _preexec(parent: int, nice: int) -> Callable[[], None]:
    first = die_with_parent(parent)

    def preexec() -> None:
        first()
        if nice:
            os.nice(nice)
            # SCHED_IDLE on top: a core running only this counts as idle when
            # the recorder's threads wake, so they go there and not onto the
            # vCPU thread's core (with nice alone the vCPU still waited 0.9 s).
            try:
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            except (OSError, AttributeError):
                pass
    return preexec


async def prove_in_child(rec, index: int, *, nice: int = 0,
                         progress: Callable[[str], None] | None = None) -> ChildProof:
    """Prove interval ``index`` of ``rec`` (a Recording or its path) in a child."""
    path = Path(getattr(rec, "path", rec))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.replay.prove_child", str(path), str(index),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
        preexec_fn=_preexec(os.getpid(), nice))
    try:
        out, err = await proc.communicate()
    except BaseException:   # cancelled (the recording ended) or anything else: no orphan
        if proc.returncode is None:
            proc.kill()
            await asyncio.shield(proc.wait())
        raise
    tail = err.decode("utf-8", "replace")[-STDERR_TAIL:].strip()
    lines = out.decode("utf-8", "replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise ReplayError(f"the proof of interval {index} (child process) exited with code "
                          f"{proc.returncode}: {tail or 'no output'}")
    try:
        data = json.loads(lines[-1])
        return ChildProof(index, str(data["status"]), str(data.get("detail", "")))
    except (ValueError, KeyError, TypeError) as exc:
        raise ReplayError(f"the proof of interval {index} (child process) printed "
                          f"{lines[-1][:200]!r}, not its result: {exc}") from None


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m engine.replay.prove_child RECORDING INDEX", file=sys.stderr)
        return 2
    from engine.errors import SbtuiError
    from engine.recording.format import Recording
    from engine.replay.prove import prove_and_repair
    try:
        rec = Recording.open(argv[0])
        try:
            result = asyncio.run(prove_and_repair(rec, int(argv[1])))
        finally:
            rec.close()
    except SbtuiError as exc:
        print(f"sbtui proof: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"status": result.status, "detail": result.detail}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
