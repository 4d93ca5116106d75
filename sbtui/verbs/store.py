"""``sbtui store``: import, list, export, stats, fsck, gc and delete on a checkpoint store.

A thin client of :class:`engine.store.Store`. Machine-readable output (ids,
``--json``) goes to stdout; progress and summaries go to stderr. Errors are
the engine's, so they name the store, file or checkpoint at fault.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from engine.errors import UsageError

QCOW2_MAGIC = b"QFI\xfb"
QEVM_MAGIC = b"QEVM"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "store", help="the checkpoint page store: import, list, export, stats, fsck, gc",
        description="Work on a checkpoint store: a directory of deduplicated, compressed "
                    "RAM pages and one manifest per checkpoint.")
    ss = p.add_subparsers(dest="store_cmd", metavar="COMMAND")
    ss.required = True

    c = ss.add_parser("import", help="import migration streams or qcow2 snapshots",
                      description="Import each SOURCE as a new checkpoint: a migration-stream "
                                  "file (QEVM) becomes one checkpoint, a qcow2 image one per "
                                  "internal snapshot with VM state, in table order. Creates "
                                  "STORE if missing. Prints the new checkpoint ids.")
    c.add_argument("store", metavar="STORE", help="store directory")
    c.add_argument("sources", metavar="SOURCE", nargs="+", help="migration stream or qcow2 image")
    c.add_argument("--name", help="checkpoint name (default: file or snapshot name); "
                                  "only with a single checkpoint")
    c.add_argument("--parent", default="latest",
                   help="parent of the first new checkpoint: an id, 'latest' (default) or 'none'")
    c.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="metadata to keep with each checkpoint (VALUE is JSON if it parses)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress or summary on stderr")
    c.set_defaults(func=cmd_import)

    c = ss.add_parser("list", help="list checkpoints with their statistics",
                      description="One line (or, with --json, one object) per checkpoint: id, "
                                  "name, parent and its statistics.")
    c.add_argument("store", metavar="STORE")
    c.add_argument("--json", action="store_true", help="print a JSON array")
    c.set_defaults(func=cmd_list)

    c = ss.add_parser("export", help="write a checkpoint's migration stream",
                      description="Write CHECKPOINT's migration stream, byte-identical to the "
                                  "one imported. FILE appears only once complete and verified.")
    c.add_argument("store", metavar="STORE")
    c.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint id (see `list`)")
    c.add_argument("-o", "--output", metavar="FILE", required=True, help="output file ('-': stdout)")
    c.set_defaults(func=cmd_export)

    c = ss.add_parser("stats", help="store-wide statistics",
                      description="Sizes on disk, pages stored, and the dedup figures summed "
                                  "over all checkpoints.")
    c.add_argument("store", metavar="STORE")
    c.add_argument("--json", action="store_true", help="print a JSON object")
    c.set_defaults(func=cmd_stats)

    c = ss.add_parser("fsck", help="check every pack record, index entry and manifest",
                      description="Read the whole store and check it. Exit 0 when nothing is "
                                  "damaged (repairable leftovers of an interrupted writer are "
                                  "listed but do not fail the check), 1 otherwise.")
    c.add_argument("store", metavar="STORE")
    c.add_argument("--repair", action="store_true",
                   help="remove interrupted writers' leftovers and rebuild a damaged index "
                        "from the packs, then check again")
    c.add_argument("--quick", action="store_true", help="do not decompress and hash every page")
    c.set_defaults(func=cmd_fsck)

    c = ss.add_parser("gc", help="drop pages no checkpoint refers to",
                      description="Delete unreferenced pages, rewriting the packs that held them.")
    c.add_argument("store", metavar="STORE")
    c.set_defaults(func=cmd_gc)

    c = ss.add_parser("delete", help="delete a checkpoint (its children are re-based)",
                      description="Delete CHECKPOINT. Its children stay valid (re-based onto "
                                  "its parent); run `gc` to reclaim the pages it alone used.")
    c.add_argument("store", metavar="STORE")
    c.add_argument("checkpoint", metavar="CHECKPOINT")
    c.set_defaults(func=cmd_delete)


def _open(path: str, **kw):
    from engine.store import Store
    return Store.open(path, **kw)


def _mib(n: int) -> str:
    """A byte count for people: 812 B, 12.3 KiB, 4.0 MiB, 1.21 GiB."""
    if n < 1024:
        return f"{n} B"
    for unit, shift in (("KiB", 10), ("MiB", 20), ("GiB", 30)):
        if n < 1 << (shift + 10) or unit == "GiB":
            v = n / (1 << shift)
            return f"{v:.2f} {unit}" if v < 10 else f"{v:.1f} {unit}"
    return f"{n} B"


class _Progress:
    """Progress on stderr: a rewritten line on a terminal, a line every few seconds otherwise."""

    def __init__(self, label: str, quiet: bool):
        self.label = label
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        # off a terminal, say something only about imports that take a while
        self.last = 0.0 if self.tty else time.monotonic()
        self.shown = False

    def __call__(self, done: int, total: int | None) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if not self.tty and now - self.last < 5.0:
            return
        self.last = now
        pct = f" {100 * done / total:3.0f}%" if total else ""
        text = f"importing {self.label}:{pct} {_mib(done)}" + (f" of {_mib(total)}" if total else "")
        if self.tty:
            sys.stderr.write("\r" + text + "\x1b[K")
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown and self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _parse_meta(items: list[str]) -> dict:
    meta = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--meta {item!r}: expected KEY=VALUE")
        try:
            meta[key] = json.loads(value)
        except ValueError:
            meta[key] = value
    return meta


def _sources(paths: list[str]):
    """(label, name, opener, size, meta) for each checkpoint the sources hold, checked up front."""
    from engine.stream.qcow2 import list_snapshots, open_vmstate
    out = []
    for raw in paths:
        path = Path(raw)
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except FileNotFoundError:
            raise UsageError(f"{raw}: no such file") from None
        except IsADirectoryError:
            raise UsageError(f"{raw}: is a directory, expected a migration stream or qcow2 image") from None
        except OSError as err:
            raise UsageError(f"{raw}: cannot read: {err.strerror}") from None
        if magic == QCOW2_MAGIC:
            snaps = [s for s in list_snapshots(path) if s.vm_state_size]
            if not snaps:
                raise UsageError(f"{raw}: qcow2 image without snapshots that hold VM state")
            for s in snaps:
                meta = {"source": str(path), "qcow2_snapshot": s.id, "vm_clock_ns": s.vm_clock_ns,
                        "date": s.date.isoformat()}
                if s.icount is not None:
                    meta["icount"] = s.icount
                out.append((f"{path.name}:{s.name}", s.name,
                            (lambda p=path, sid=s.id: open_vmstate(p, sid)), s.vm_state_size, meta))
        elif magic == QEVM_MAGIC:
            out.append((path.name, path.name, (lambda p=path: open(p, "rb")),
                        path.stat().st_size, {"source": str(path)}))
        else:
            raise UsageError(f"{raw}: not a migration stream (QEVM) or qcow2 image "
                             f"(it starts with {magic!r})")
    return out


def cmd_import(args: argparse.Namespace) -> int:
    todo = _sources(args.sources)
    if args.name is not None and len(todo) != 1:
        raise UsageError(f"--name names one checkpoint, but the sources hold {len(todo)}")
    extra = _parse_meta(args.meta)
    parent = None if args.parent == "none" else args.parent
    with _open(args.store, create=True) as store:
        for label, name, opener, size, meta in todo:
            progress = _Progress(label, args.quiet)
            t0 = time.monotonic()
            with opener() as src:
                try:
                    info = store.import_stream(src, name=args.name or name, parent=parent,
                                               meta={**meta, **extra}, progress=progress, size=size)
                finally:
                    progress.done()
            parent = info.id   # the sources' checkpoints form one chain
            print(info.id, flush=True)
            if not args.quiet:
                s = info.stats
                print(f"{info.id} {label}: {s.page_records} pages ({s.zero_pages} zero, "
                      f"{s.dirty_pages} dirty), {s.new_pages} new, {s.intra_duplicates} intra + "
                      f"{s.inter_duplicates} inter duplicates; {_mib(s.raw_bytes)} -> "
                      f"{_mib(s.stored_bytes)} stored in {time.monotonic() - t0:.2f} s",
                      file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _open(args.store) as store:
        infos = store.checkpoints()
    if args.json:
        rows = []
        for i in infos:
            d = i.to_dict()
            rows.append({"id": d["id"], "name": d["name"], "parent": d["parent"],
                         "created": d["created"], "machine": d["machine"],
                         "keyframe": d["keyframe"], **d["stats"], "meta": d["meta"]})
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    head = ("ID", "PARENT", "PAGES", "ZERO", "DIRTY", "NEW", "INTRA", "INTER", "RAW", "STORED", "NAME")
    lines = [head]
    for i in infos:
        s = i.stats
        lines.append((i.id, i.parent or "-", str(s.page_records), str(s.zero_pages),
                      str(s.dirty_pages), str(s.new_pages), str(s.intra_duplicates),
                      str(s.inter_duplicates), _mib(s.raw_bytes), _mib(s.stored_bytes), i.name))
    widths = [max(len(r[k]) for r in lines) for k in range(len(head) - 1)]
    for r in lines:
        print("  ".join(c.rjust(w) if k > 1 else c.ljust(w) for k, (c, w) in
                        enumerate(zip(r[:-1], widths))) + "  " + r[-1])
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with _open(args.store) as store:
        store.checkpoint(args.checkpoint)   # a wrong id fails before any file is touched
        if args.output == "-":
            n = store.export_stream(args.checkpoint, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            n = _export_atomic(store, args.checkpoint, Path(args.output))
    print(f"exported checkpoint {args.checkpoint}: {n} bytes", file=sys.stderr)
    return 0


def _export_atomic(store, checkpoint: str, out: Path) -> int:
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{out}: directory {parent} does not exist")
    tmp = parent / f".tmp-{out.name}.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            n = store.export_stream(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    from engine.store.fsutil import fsync_dir
    fsync_dir(parent)
    return n


def cmd_stats(args: argparse.Namespace) -> int:
    with _open(args.store) as store:
        s = store.stats()
    d = s.to_dict()
    if args.json:
        json.dump(d, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    for k, v in d.items():
        extra = f"  ({_mib(v)})" if k.endswith("_bytes") and isinstance(v, int) else ""
        print(f"{k:18} {v}{extra}")
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    store = _open(args.store, repair=False, strict_index=False)
    with store:
        if args.repair:
            if store._index.damaged:
                n = store.rebuild_index()
                print(f"rebuilt the index from the packs: {n} pages", file=sys.stderr)
            rep = store.repair()
            for name, (a, b) in rep.truncated.items():
                print(f"repaired: truncated pack {name} from {a} to {b} bytes", file=sys.stderr)
            for name in rep.removed_packs + rep.removed_files:
                print(f"repaired: removed {name}", file=sys.stderr)
        report = store.fsck(verify_pages=not args.quick)
    for line in report.lines():
        print(line)
    verdict = "ok" if report.ok else f"DAMAGED ({len(report.damage)} problems)"
    print(f"{args.store}: {report.checkpoints} checkpoints, {report.index_entries} pages, "
          f"{report.records} pack records in {report.packs} packs: {verdict}")
    if report.damaged_checkpoints:
        print(f"checkpoints that cannot be exported: {', '.join(report.damaged_checkpoints)}")
    return 0 if report.ok else 1


def cmd_gc(args: argparse.Namespace) -> int:
    with _open(args.store) as store:
        rep = store.gc()
    print(f"removed {rep.pages_removed} pages ({_mib(rep.bytes_freed)} freed), kept "
          f"{rep.pages_kept}; rewrote {len(rep.packs_rewritten)} packs, deleted "
          f"{len(rep.packs_deleted)}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with _open(args.store) as store:
        store.delete_checkpoint(args.checkpoint)
    print(f"deleted checkpoint {args.checkpoint} (run `sbtui store gc` to reclaim its pages)",
          file=sys.stderr)
    return 0

