"""What a worker does with a replayed interval, and how the client judges the result.

An :class:`Analysis` has two halves:

* ``run(ctx)`` on the worker, inside the replay of one interval (the replay
  starts paused at the checkpoint's instruction count). Every analysis ends
  the same way (:func:`reach_end`): it replays to the next checkpoint's
  instruction count and returns the state there as page hashes, or, for the
  last interval, runs to the end of the log and returns QEMU's exit code;
  the console bytes produced go back too.
* ``summarize(rec, outcome, result)`` on the client, which has the store:
  the common verdict (:func:`judge`, the same rules as
  :func:`engine.replay.prove.prove_interval`: every RAM page equal to the
  next checkpoint's, or a clean exit at the end of the log with the
  recording's console) plus the analysis's own figures.

Analyses:

``verify``
    Only the common part: the interval is ``verified``, ``diverged``
    (RAM differs at the next checkpoint), ``console``, ``restore`` (QEMU
    exited badly at the end) or ``error`` (the job could not run).

``writeset``
    Replays the interval in sub-steps of ``step`` instructions
    (``replay-break``) and after each one reads the guest's RAM straight from
    its file-backed memory (``memory-backend-file``, ``share=on``, on tmpfs,
    named ``pc.ram`` like the default backend so the recorded state loads
    into it), hashes every page and lists the pages whose content changed in
    that sub-step. Its output: the steps (end icount, changed pages of the
    main RAM block as little-endian u32), the working set (pages changed in
    any step) and, on the client, how many pages differ between the two
    checkpoints in the store (``store_dirty``; every one of them must be in
    the working set: ``missed`` counts those that are not) and whether the
    RAM file matched the checkpoint at the start (``start_matches``).
    Reading 128 MiB of tmpfs and hashing it takes about 50 ms, a snapshot
    of it several hundred.
"""

from __future__ import annotations

import asyncio
import mmap
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import xxhash

from engine.errors import UsageError
from engine.store.pagemap import ABSENT, ENTRY, ZERO
from engine.stream.model import PAGE_SIZE

MAIN_RAM = "pc.ram"
_ZERO_PAGE = bytes(PAGE_SIZE)
_ZERO_HASH = xxhash.xxh3_128_digest(_ZERO_PAGE)
FIRST_DIFFS = 16
DEFAULT_STEPS = 16          # sub-steps of an average interval when no step is given
MIN_STEP = 1_000_000


# --------------------------------------------------------------------------
# Page hashes
# --------------------------------------------------------------------------

def hash_pages(buf) -> bytearray:
    """16-byte entries (xxh3-128, or ``ZERO`` for a zero page) for every page of ``buf``."""
    view = memoryview(buf)
    digest = xxhash.xxh3_128_digest
    out = bytearray()
    try:
        for off in range(0, len(view) - len(view) % PAGE_SIZE, PAGE_SIZE):
            d = digest(view[off:off + PAGE_SIZE])
            out += ZERO if d == _ZERO_HASH else d
    finally:
        view.release()
    return out


def hash_file(path: Path, size: int) -> bytearray:
    """Page entries of the first ``size`` bytes of a file (the guest's RAM)."""
    with open(path, "rb") as f:
        with mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as mm:
            return hash_pages(mm)


def hash_stream(src) -> dict[str, bytes]:
    """Page entries per RAM block of a migration stream (``ABSENT`` where it sent none)."""
    from engine.stream.migration import split_stream
    split = split_stream(src)
    maps: dict[str, bytearray] = {}
    digest = xxhash.xxh3_128_digest
    for rec in split.pages():
        m = maps.setdefault(rec.block, bytearray())
        at = (rec.offset // PAGE_SIZE) * ENTRY
        if len(m) < at + ENTRY:
            m.extend(ABSENT * ((at + ENTRY - len(m)) // ENTRY))
        if rec.data is None:
            e = ZERO
        else:
            e = digest(rec.data)
            if e == _ZERO_HASH:
                e = ZERO
        m[at:at + ENTRY] = e
    out = {}
    for block in split.blocks:
        m = maps.get(block.name, bytearray())
        want = (block.length // PAGE_SIZE) * ENTRY
        if len(m) < want:
            m.extend(ABSENT * ((want - len(m)) // ENTRY))
        out[block.name] = bytes(m[:want])
    return out


def changed_pages(a: bytes, b: bytes) -> array:
    """Indices of the entries that differ between two page-entry strings."""
    out = array("I")
    n = min(len(a), len(b)) // ENTRY
    chunk = 256 * ENTRY
    for base in range(0, n * ENTRY, chunk):
        if a[base:base + chunk] == b[base:base + chunk]:
            continue
        for off in range(base, min(base + chunk, n * ENTRY), ENTRY):
            if a[off:off + ENTRY] != b[off:off + ENTRY]:
                out.append(off // ENTRY)
    out.extend(range(n, max(len(a), len(b)) // ENTRY))
    return out


def pages_to_bytes(pages: array) -> bytes:
    """Little-endian u32 page indices (the wire and storage form)."""
    a = array("I", pages)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


def pages_from_bytes(data: bytes) -> array:
    a = array("I")
    a.frombytes(data[:len(data) - len(data) % 4])
    if sys.byteorder != "little":
        a.byteswap()
    return a


# --------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------

async def reach_end(ctx) -> None:
    """Replay to the interval's end; put the end state (or exit code) into the result."""
    rs, job, result = ctx.session, ctx.job, ctx.result
    if job.end_icount is not None:
        t0 = _now()
        await rs.run_to(job.end_icount)
        result.reached_icount = job.end_icount
        result.timings["replay_s"] = result.timings.get("replay_s", 0.0) + _now() - t0
        t1 = _now()
        stream = await rs.snapshot()
        try:
            result.end_pages = await asyncio.to_thread(hash_stream, stream)
        finally:
            stream.close()
        result.timings["snapshot_s"] = _now() - t1
    else:
        t0 = _now()
        result.exit_code = await rs.run_to_end()
        result.timings["replay_s"] = result.timings.get("replay_s", 0.0) + _now() - t0


async def _run_verify(ctx) -> None:
    await reach_end(ctx)


async def _run_writeset(ctx) -> None:
    rs, job, result = ctx.session, ctx.job, ctx.result
    step = int(job.params.get("step") or 0)
    if step < 1:
        raise UsageError(f"writeset: the sub-step must be a positive number of instructions, got {step}")
    path, size = ctx.memory_path, ctx.ram_bytes
    start = job.start_icount
    stop = job.end_icount if job.end_icount is not None else job.final_icount
    t_an = 0.0
    t0 = _now()
    prev = await asyncio.to_thread(hash_file, path, size)
    start_digest = xxhash.xxh3_128_digest(bytes(prev))
    t_an += _now() - t0
    steps: list[list] = []
    union = bytearray(len(prev) // ENTRY)
    t_replay = 0.0

    async def record(icount: int | None) -> None:
        nonlocal prev, t_an
        t = _now()
        cur = await asyncio.to_thread(hash_file, path, size)
        pages = changed_pages(prev, cur)
        for p in pages:
            union[p] = 1
        steps.append([icount, pages_to_bytes(pages)])
        prev = cur
        t_an += _now() - t

    if stop is not None:
        # The last sub-step of the last interval runs to the end of the log:
        # a break at the very last instruction may lie past the log's end.
        limit = stop if job.end_icount is not None else stop - 1
        target = start + step
        while target < limit:
            t = _now()
            await rs.run_to(target)
            t_replay += _now() - t
            await record(target)
            target += step
    result.timings["replay_s"] = t_replay
    await reach_end(ctx)
    await record(result.reached_icount if job.end_icount is not None else stop)
    result.output = {
        "step": step, "steps": steps, "working_set": sum(union), "ram_pages": len(union),
        "start_digest": start_digest, "end_digest": xxhash.xxh3_128_digest(bytes(prev)),
    }
    result.timings["analysis_s"] = t_an


def _now() -> float:
    import time
    return time.monotonic()


# --------------------------------------------------------------------------
# Client side: the verdict
# --------------------------------------------------------------------------

@dataclass
class Verdict:
    status: str          # verified | diverged | console | restore | error
    detail: str
    first_diffs: list[tuple[str, int]]


def _norm_entries(raw: bytes) -> bytes:
    # The store keeps ZERO for zero pages; a page of zeros stored by hash is the same page.
    if _ZERO_HASH not in raw:
        return raw
    out = bytearray(raw)
    for off in range(0, len(out), ENTRY):
        if out[off:off + ENTRY] == _ZERO_HASH:
            out[off:off + ENTRY] = ZERO
    return bytes(out)


def compare_pages(got: dict[str, bytes], store, checkpoint_id: str) -> tuple[int, int, list, str]:
    """(pages compared, pages differing, first differences, shape problem) against the store."""
    expected = store.page_map(checkpoint_id)
    compared = differing = 0
    first: list[tuple[str, int]] = []
    for block in expected.blocks():
        want = _norm_entries(expected.raw(block))
        have = got.get(block)
        if have is None:
            return compared, differing, first, f"RAM block {block!r} is missing from the replay's state"
        if len(have) != len(want):
            return (compared, differing, first,
                    f"RAM block {block!r} has {len(have) // ENTRY} pages in the replay, "
                    f"checkpoint {checkpoint_id} has {len(want) // ENTRY}")
        if have == want:
            compared += len(want) // ENTRY
            continue
        for off in range(0, len(want), ENTRY):
            w = want[off:off + ENTRY]
            h = have[off:off + ENTRY]
            if h == ABSENT:
                continue
            compared += 1
            if w != h and w != ABSENT:
                differing += 1
                if len(first) < FIRST_DIFFS:
                    first.append((block, off // ENTRY))
    extra = sorted(set(got) - set(expected.blocks()))
    if extra:
        return compared, differing, first, f"RAM block {extra[0]!r} is not in checkpoint {checkpoint_id}"
    return compared, differing, first, ""


def judge(rec, index: int, result) -> Verdict:
    """The common verdict on one interval's result (the rules of ``prove_interval``)."""
    if result.error:
        return Verdict("error", result.error, [])
    cps = {cp.index: cp for cp in rec.checkpoints()}
    cp, nxt = cps[index], cps.get(index + 1)
    if nxt is not None:
        compared, differing, first, shape = compare_pages(result.end_pages, rec.store, nxt.store_id)
        if shape:
            return Verdict("diverged", f"RAM at checkpoint {nxt.index} (icount {nxt.icount}): {shape}", [])
        if differing == 0:
            return Verdict("verified", f"all {compared} pages equal", [])
        where = ", ".join(f"{b}+{p * PAGE_SIZE:#x}" for b, p in first)
        return Verdict("diverged", f"RAM at checkpoint {nxt.index} (icount {nxt.icount}): "
                                   f"{differing} of {compared} pages differ; first: {where}", first)
    if result.exit_code != 0:
        return Verdict("restore", f"the replay exited with code {result.exit_code}", [])
    produced = result.console
    recorded = rec.console_bytes()[cp.console_offset:]
    if cp.console_offset or index == 0:
        if produced == recorded:
            return Verdict("verified", "ran to the end of the log; console output identical "
                                       f"({len(produced)} bytes)", [])
        n = 0
        for a, b in zip(produced, recorded):
            if a != b:
                break
            n += 1
        return Verdict("console", f"console differs from byte {n}: the replay wrote {len(produced)} "
                                  f"bytes, the recording has {len(recorded)} from this checkpoint on", [])
    return Verdict("verified", "ran to the end of the log", [])


def _summarize_verify(rec, index: int, result) -> dict[str, Any]:
    return {}


def _summarize_writeset(rec, index: int, result) -> dict[str, Any]:
    out = dict(result.output)
    if not out:
        return out
    cps = {cp.index: cp for cp in rec.checkpoints()}
    cp, nxt = cps[index], cps.get(index + 1)
    store = rec.store
    start_map = store.page_map(cp.store_id)
    if MAIN_RAM in start_map and out.get("start_digest") is not None:
        start_raw = _norm_entries(start_map.raw(MAIN_RAM))
        out["start_matches"] = xxhash.xxh3_128_digest(start_raw) == out.get("start_digest")
    union = bytearray(out.get("ram_pages", 0))
    for _icount, data in out.get("steps", []):
        for p in pages_from_bytes(data):
            if p < len(union):
                union[p] = 1
    if nxt is not None and MAIN_RAM in start_map:
        dirty = changed_pages(_norm_entries(start_map.raw(MAIN_RAM)),
                              _norm_entries(store.page_map(nxt.store_id).raw(MAIN_RAM)))
        out["store_dirty"] = len(dirty)
        out["missed"] = sum(1 for p in dirty if p >= len(union) or not union[p])
    return out


# --------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------

def _empty_verify(job, ram_bytes: int) -> dict[str, Any]:
    return {}


def _empty_writeset(job, ram_bytes: int) -> dict[str, Any]:
    end = job.final_icount if job.final_icount is not None else job.start_icount
    return {"step": int(job.params.get("step") or 0), "steps": [[end, b""]], "working_set": 0,
            "ram_pages": ram_bytes // PAGE_SIZE, "start_digest": None, "end_digest": None}


@dataclass(frozen=True)
class Analysis:
    name: str
    help: str
    run: Callable[[Any], Awaitable[None]]
    summarize: Callable[[Any, int, Any], dict[str, Any]]
    needs_memory_file: bool = False
    # The output for an interval with nothing to replay (the log ended at its checkpoint).
    empty_output: Callable[[Any, int], dict[str, Any]] = _empty_verify


ANALYSES: dict[str, Analysis] = {
    "verify": Analysis("verify", "replay each interval and compare the end state with the next "
                                 "checkpoint (as 'sbtui verify')", _run_verify, _summarize_verify),
    "writeset": Analysis("writeset", "pages whose content changed in each sub-step of every "
                                     "interval (finer heatmap, working-set size)",
                         _run_writeset, _summarize_writeset, needs_memory_file=True,
                         empty_output=_empty_writeset),
}


def get_analysis(name: str) -> Analysis:
    try:
        return ANALYSES[name]
    except KeyError:
        raise UsageError(f"no analysis {name!r}; known: {', '.join(sorted(ANALYSES))}") from None


def default_step(rec) -> int:
    """A sub-step for ``writeset``: an average interval in about ``DEFAULT_STEPS`` steps,
    a round number of instructions."""
    cps = rec.checkpoints()
    end = rec.manifest.end_icount or (cps[-1].icount if cps else 0)
    span = end - (cps[0].icount if cps else 0)
    n = max(1, len(cps))
    raw = max(MIN_STEP, span // (n * DEFAULT_STEPS))
    magnitude = 10 ** (len(str(raw)) - 1)
    return max(MIN_STEP, (raw // magnitude) * magnitude)
