"""Analysis results stored with the recording: ``REC/analyses/NAME.msgpack``.

One file per analysis, rewritten atomically (temporary file, fsync, rename),
so a reader sees the previous results or the new ones, never a torn file.
It holds the :class:`~engine.parallel.simulate.SimulationReport` as msgpack
(page lists stay bytes: little-endian u32 page indices), plus the
checkpoints it was computed against (index, store id, icount): results for a
checkpoint that was since rebuilt are ``stale`` and not merged into a new run.

A run over some intervals (``only``) merges into the stored file: the
intervals it ran replace their old entries, the others stay.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgpack

from engine.errors import RecordingError
from engine.recording.format import Recording
from engine.store.fsutil import atomic_write

RESULTS_DIR = "analyses"
RESULTS_FORMAT = 1
# Results are produced by workers and may be large (a page list per
# sub-step), but a results file is never bigger than the recording's RAM
# many times over; this bound stops a hostile file from exhausting memory.
MAX_RESULTS_BYTES = 1 << 30


def results_path(rec: Recording, name: str) -> Path:
    if not name.isidentifier():
        raise RecordingError(f"bad analysis name {name!r}")
    return Path(rec.path) / RESULTS_DIR / f"{name}.msgpack"


def _checkpoint_key(rec: Recording) -> list[list[Any]]:
    return [[cp.index, cp.store_id, cp.icount] for cp in rec.checkpoints()]


def save_report(rec: Recording, report) -> Path:
    """Store ``report`` (merging into the stored results of the same analysis)."""
    from engine.parallel.simulate import SimulationReport
    path = results_path(rec, report.analysis)
    key = _checkpoint_key(rec)
    merged: SimulationReport = report
    old = load_report(rec, report.analysis)
    if old is not None and not getattr(old, "stale", False) and old.params == report.params:
        mine = {r.index for r in report.results}
        kept = [r for r in old.results if r.index not in mine]
        if kept:
            merged = SimulationReport(
                recording=report.recording, analysis=report.analysis, scheduler=report.scheduler,
                slots=report.slots, params=report.params,
                intervals=len(kept) + len(report.results),
                results=sorted([*kept, *report.results], key=lambda r: r.index),
                wall_s=report.wall_s, created=report.created)
    body = {"format": RESULTS_FORMAT, "saved": time.time(), "checkpoints": key,
            "analysis": merged.analysis, "scheduler": merged.scheduler, "slots": merged.slots,
            "params": merged.params, "intervals": merged.intervals, "wall_s": merged.wall_s,
            "created": merged.created, "recording": merged.recording,
            "results": [r.to_dict() for r in merged.results]}
    path.parent.mkdir(exist_ok=True)
    atomic_write(path, msgpack.packb(body, use_bin_type=True))
    return path


def load_report(rec: Recording, name: str):
    """The stored report of analysis ``name``, or None. Its ``stale`` attribute
    says whether the recording's checkpoints changed since."""
    from engine.parallel.simulate import IntervalOutcome, SimulationReport
    path = results_path(rec, name)
    try:
        if path.stat().st_size > MAX_RESULTS_BYTES:
            raise RecordingError(f"{path}: {path.stat().st_size} bytes is too large for results")
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise RecordingError(f"{path}: unreadable: {err}") from err
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if not isinstance(body, dict) or body.get("format") != RESULTS_FORMAT:
            raise ValueError(f"format {body.get('format') if isinstance(body, dict) else body!r}")
        results = [IntervalOutcome.from_dict(r) for r in body["results"]]
        report = SimulationReport(
            recording=str(body.get("recording", rec.path)), analysis=str(body["analysis"]),
            scheduler=str(body["scheduler"]), slots=int(body["slots"]), params=dict(body["params"]),
            intervals=int(body["intervals"]), results=results, wall_s=float(body["wall_s"]),
            created=float(body.get("created", 0.0)))
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as err:
        raise RecordingError(f"{path}: damaged analysis results: {err}") from err
    report.stale = body.get("checkpoints") != _checkpoint_key(rec)
    return report


def stored_analyses(rec: Recording) -> list[str]:
    d = Path(rec.path) / RESULTS_DIR
    try:
        return sorted(p.stem for p in d.glob("*.msgpack") if p.stem.isidentifier())
    except OSError:
        return []
