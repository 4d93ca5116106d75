"""Verbs that read a recording: ``checkpoints``, ``console``, ``markers``, and ``pack``.

Each takes a recording directory or a packed file (``engine.recording.pack.open_any``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("checkpoints", help="list a recording's checkpoints",
                       description="List the checkpoints of a recording with their instruction "
                                   "count, guest downtime and what each added to the store.")
    c.add_argument("recording", metavar="REC", help="recording directory or packed file")
    c.add_argument("--json", action="store_true",
                   help="a JSON object: the recording, its checkpoints and the store's statistics")
    c.set_defaults(func=run_checkpoints)

    o = sub.add_parser("console", help="print a recording's console output",
                       description="Write the guest's serial console output, as recorded, to stdout.")
    o.add_argument("recording", metavar="REC", help="recording directory or packed file")
    o.set_defaults(func=run_console)

    m = sub.add_parser("markers", help="list a recording's guest markers",
                       description="List the moments the guest marked with 'sbmark TEXT', with the "
                                   "instruction count of each.")
    m.add_argument("recording", metavar="REC", help="recording directory or packed file")
    m.add_argument("--json", action="store_true", help="a JSON array on stdout")
    m.set_defaults(func=run_markers)

    p = sub.add_parser("pack", help="pack a recording into one file",
                       description="Write a recording into one file to move it to another machine; "
                                   "'open', 'replay' and 'verify' accept that file too.")
    p.add_argument("recording", metavar="REC", help="recording directory")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="FILE", help="the file to write")
    p.set_defaults(func=run_pack)


def _open(path: str):
    from engine.recording.pack import open_any
    return open_any(path)


def checkpoint_rows(rec) -> list[dict]:
    """The recording's checkpoints joined with the store's statistics of each."""
    infos = {c.id: c for c in rec.store.checkpoints()}
    rows = []
    for cp in rec.checkpoints():
        info = infos.get(cp.store_id)
        st = info.stats if info is not None else None
        row = {"id": cp.index, "index": cp.index, "store_id": cp.store_id, "icount": cp.icount,
               "wall_time": cp.wall_time, "guest_time_ns": cp.guest_time_ns,
               "downtime_ms": cp.downtime_ms, "console_offset": cp.console_offset,
               "origin": cp.origin, "proof": cp.proof, "detail": cp.detail,
               "pages_dirty": st.dirty_pages if st else None,
               "pages_new": st.new_pages if st else None,
               "stored_bytes": st.stored_bytes if st else None}
        if st is not None:
            row["stats"] = st.to_dict()
        rows.append(row)
    return rows


def run_checkpoints(args: argparse.Namespace) -> int:
    rec = _open(args.recording)
    try:
        rows = checkpoint_rows(rec)
        if args.json:
            m = rec.manifest
            print(json.dumps({"recording": str(rec.path), "kind": m.kind, "status": m.status,
                              "interval_s": m.interval_s, "end_icount": m.end_icount,
                              "checkpoints": rows, "store": rec.store.stats().to_dict()}))
            return 0
        print(f"{'id':>4} {'icount':>14} {'downtime_ms':>11} {'pages_dirty':>11} {'pages_new':>9} "
              f"{'stored_bytes':>12}  origin   proof")
        for r in rows:
            print(f"{r['id']:>4} {r['icount']:>14} {r['downtime_ms']:>11.1f} "
                  f"{_n(r['pages_dirty']):>11} {_n(r['pages_new']):>9} {_n(r['stored_bytes']):>12}  "
                  f"{r['origin']:<8} {r['proof']}")
        st = rec.store.stats()
        print(f"{len(rows)} checkpoints; status {rec.manifest.status}; store: {st.stored_pages} "
              f"pages, {st.disk_bytes / 1e6:.1f} MB on disk for {st.raw_bytes / 1e6:.1f} MB of "
              f"state (ratio {st.ratio:.1f})")
    finally:
        rec.close()
    return 0


def _n(v) -> str:
    return "-" if v is None else str(v)


def run_console(args: argparse.Namespace) -> int:
    rec = _open(args.recording)
    data = rec.console_bytes()
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0


def run_markers(args: argparse.Namespace) -> int:
    rec = _open(args.recording)
    markers = rec.markers()
    if args.json:
        print(json.dumps([m.to_json() for m in markers]))
        return 0
    for m in markers:
        where = f"{m.icount}" if m.exact else f"{m.icount}..{m.icount_max} (approximate)"
        print(f"{where:>20}  {m.text}")
    return 0


def run_pack(args: argparse.Namespace) -> int:
    from engine.recording.pack import pack
    src = Path(args.recording)
    if not src.is_dir():
        raise UsageError(f"{src}: not a recording directory")
    out = pack(src, args.output)
    print(f"sbtui pack: wrote {out} ({out.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    return 0
