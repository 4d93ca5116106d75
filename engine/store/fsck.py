"""Checking a store end to end, and rebuilding its index from the packs.

:func:`fsck` reads everything and sorts what it finds into three lists:

* ``damage``     something a checkpoint needs is unreadable or missing: a pack
  record whose bytes do not match its hash, a committed pack range that does
  not parse, an index entry pointing at the wrong bytes, a manifest that does
  not parse or refers to a page or parent the store lacks. ``damaged_checkpoints``
  names the checkpoints that can no longer be exported.
* ``repairable`` leftovers of an interrupted writer that the next writer (or
  ``Store.repair``) removes without losing anything: a torn pack tail past the
  committed length, a pack no index segment knows, temporary files, merged
  index segments not yet deleted.
* ``notes``      harmless facts, such as pages no checkpoint refers to (``gc``
  reclaims them).

:func:`rebuild_index` writes a fresh index from the records found in the packs
(they are self-describing), for when index segments are damaged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.errors import SbtuiError, StoreError
from engine.store import manifest as mf
from engine.store.packs import iter_pack_ids, pack_name, scan_pack
from engine.store.pagemap import ABSENT, ENTRY, ZERO


@dataclass
class FsckReport:
    damage: list[str] = field(default_factory=list)
    repairable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    damaged_checkpoints: list[str] = field(default_factory=list)
    packs: int = 0
    records: int = 0
    index_entries: int = 0
    checkpoints: int = 0
    referenced_pages: int = 0
    unreferenced_pages: int = 0

    @property
    def ok(self) -> bool:
        return not self.damage

    def lines(self) -> list[str]:
        out = [f"DAMAGE: {d}" for d in self.damage]
        out += [f"repairable: {r}" for r in self.repairable]
        out += [f"note: {n}" for n in self.notes]
        return out


def fsck(store, *, verify_pages: bool = True) -> FsckReport:
    rep = FsckReport()
    index = store._index
    index.refresh()
    for name, why in sorted(index.damaged.items()):
        rep.damage.append(f"index segment {name}: {why} (fsck --repair rebuilds the index)")

    pending = store.pending_repairs()
    for name, (size, committed) in pending.truncated.items():
        rep.repairable.append(f"pack {name}: torn tail of {size - committed} bytes past the "
                              f"committed length {committed} (an interrupted import)")
    for name in pending.removed_packs:
        rep.repairable.append(f"pack {name}: not committed by any index segment "
                              "(an interrupted import or gc)")
    for name in pending.removed_files:
        rep.repairable.append(f"{name}: left over by an interrupted writer")

    committed = index.committed_lengths()
    on_disk = set(iter_pack_ids(store.packs_dir))
    # pack id -> {offset: (digest, length, error)} of every record in committed ranges
    records: dict[int, dict[int, tuple[bytes, int, str | None]]] = {}
    for pid in sorted(on_disk & set(committed)):
        path = store.packs_dir / pack_name(pid)
        rep.packs += 1
        try:
            scan = scan_pack(path, pid, verify=verify_pages, limit=committed[pid])
        except SbtuiError as err:
            rep.damage.append(f"pack {pack_name(pid)}: {err}")
            records[pid] = {}
            continue
        table = {}
        for r in scan.records:
            table[r.offset] = (r.digest, r.length, r.error)
            rep.records += 1
            if r.error:
                rep.damage.append(f"pack {pack_name(pid)} offset {r.offset}: {r.error}")
        records[pid] = table
        if scan.valid_end < min(committed[pid], scan.size):
            rep.damage.append(f"pack {pack_name(pid)} offset {scan.valid_end}: record header is "
                              f"damaged; {committed[pid] - scan.valid_end} committed bytes after "
                              "it cannot be walked")
        if scan.size < committed[pid]:
            rep.damage.append(f"pack {pack_name(pid)}: {scan.size} bytes, but {committed[pid]} "
                              "were committed (the file was cut short)")
    for pid in sorted(set(committed) - on_disk):
        rep.damage.append(f"pack {pack_name(pid)} is missing (the index says {committed[pid]} "
                          "bytes were committed to it)")

    bad_pages: dict[bytes, str] = {}
    present: set[bytes] = set()
    for h, (pid, off, length) in index.items():
        rep.index_entries += 1
        table = records.get(pid)
        got = table.get(off) if table is not None else None
        if got is None:
            bad_pages[h] = f"index entry points at pack {pack_name(pid)} offset {off}, where no record starts"
        elif got[0] != h or got[1] != length:
            bad_pages[h] = (f"index entry points at pack {pack_name(pid)} offset {off}, which holds "
                            f"page {got[0].hex()} ({got[1]} bytes)")
        elif got[2]:
            bad_pages[h] = f"pack {pack_name(pid)} offset {off}: {got[2]}"
        present.add(h)
    for h, why in bad_pages.items():
        if not why.startswith("pack "):   # record errors were reported with the pack scan
            rep.damage.append(f"page {h.hex()}: {why}")

    referenced: set[bytes] = set()
    try:
        manifests = store._scan()
    except StoreError:
        manifests = _scan_each(store, rep)
    for cid, m in manifests.items():
        rep.checkpoints += 1
        problems: list[str] = []
        try:
            refs = set()
            chain_problem = _chain_problem(m, manifests)
            if chain_problem:
                problems.append(chain_problem)
            for d, _cls in mf.read_delta(m).values():
                e = d.entries
                refs.update(e[i:i + ENTRY] for i in range(0, len(e), ENTRY))
            if "full" in m.blobs:
                refs |= mf.read_full(m).hashes()
            refs.update(mf.read_superseded(m).values())
            mf.read_skeleton(m)
        except SbtuiError as err:
            problems.append(str(err))
            refs = set()
        refs.discard(ZERO)
        refs.discard(ABSENT)
        missing = [h for h in refs if h not in present]
        broken = [h for h in refs if h in bad_pages]
        if missing:
            problems.append(f"{len(missing)} page(s) it refers to are not in the store "
                            f"(first {missing[0].hex()})")
        if broken:
            problems.append(f"{len(broken)} page(s) it refers to are damaged "
                            f"(first: {bad_pages[broken[0]]})")
        referenced |= refs
        for p in problems:
            rep.damage.append(f"checkpoint {cid}: {p}")
        if problems:
            rep.damaged_checkpoints.append(cid)
    rep.referenced_pages = len(referenced)
    rep.unreferenced_pages = len(present - referenced)
    if rep.unreferenced_pages:
        rep.notes.append(f"{rep.unreferenced_pages} stored page(s) no checkpoint refers to "
                         "(`sbtui store gc` reclaims them)")
    return rep


def _chain_problem(m, manifests: dict) -> str | None:
    cur, steps = m, 0
    while not cur.is_keyframe:
        parent = manifests.get(cur.parent)
        if parent is None:
            who = "its parent" if cur is m else f"ancestor {cur.id}'s parent"
            return f"{who} {cur.parent} does not exist, so its page map cannot be restored"
        cur, steps = parent, steps + 1
        if steps > len(manifests):
            return "its parent chain loops"
    return None


def _scan_each(store, rep: FsckReport) -> dict:
    """Manifests one by one, reporting the ones that do not parse."""
    out = {}
    for path in sorted(store.ckpt_dir.glob("*.ckpt")):
        cid = path.name[:-5]
        if not mf.valid_id(cid):
            continue
        try:
            m = mf.read_manifest(path)
            if m.id != cid:
                raise StoreError(f"{path}: manifest says it is checkpoint {m.id}")
        except SbtuiError as err:
            rep.damage.append(f"checkpoint {cid}: {err}")
            rep.damaged_checkpoints.append(cid)
            continue
        out[cid] = m
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def rebuild_index(store) -> int:
    """Replace the index with one built from every sound record in the packs.

    Caller holds the writer lock. Returns the number of pages indexed.
    """
    entries = {}
    lengths = {}
    for pid in sorted(iter_pack_ids(store.packs_dir)):
        path = store.packs_dir / pack_name(pid)
        try:
            scan = scan_pack(path, pid, verify=True)
        except SbtuiError:
            lengths[pid] = path.stat().st_size   # unreadable header: keep the bytes, index nothing
            continue
        for r in scan.records:
            if r.error is None:
                entries[r.digest] = (pid, r.offset, r.length)
        # keep every byte: a damaged header mid-pack must not cost the records after it
        lengths[pid] = scan.size
    index = store._index
    index.replace_all(entries.items(), lengths)
    for name in list(index.damaged):
        try:
            (index.directory / name).unlink()
        except FileNotFoundError:
            pass
    index.refresh()
    return len(entries)
