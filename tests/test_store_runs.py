"""The store's run-based import and export against the per-page paths.

A codec that knows no runs (only ``pages()`` and a per-page source) must give
the same checkpoints as the real codec's runs: the same page maps, statistics,
page classes and byte-identical exports. The export's location hints (where
the previous export found each page) must never hand out a wrong page, also
after gc moved pages or a pack record was damaged; the background pack
writer's failures must roll the import back.
"""

from __future__ import annotations

import errno
import io

import pytest

from engine.errors import IntegrityError
from engine.store import Store
from engine.store import packs as packs_mod
from engine.store.packs import REC_HEADER, scan_pack
from engine.stream import migration
from test_store_support import build_stream, page, snapshot, text_page, tree_bytes

PAGE = 4096


class PagesOnlyCodec:
    """The real codec seen through the per-page protocol only (no runs either way)."""

    class _Split:
        def __init__(self, sp):
            self._sp = sp

        def __getattr__(self, name):
            if name == "runs":
                raise AttributeError(name)
            return getattr(self._sp, name)

        def pages(self):
            return self._sp.pages()

    def split_stream(self, src):
        return self._Split(migration.split_stream(src))

    def assemble_stream(self, skeleton, source, dst):
        return migration.assemble_stream(skeleton, lambda i, b, o: source(i, b, o), dst)


def export(store: Store, cid: str) -> bytes:
    out = io.BytesIO()
    assert store.export_stream(cid, out) == len(out.getvalue())
    return out.getvalue()


def chain() -> list[bytes]:
    """Checkpoints with long zero and data runs, unchanged stretches, intra and inter
    duplicates, pages moved between places, text pages and a page sent twice."""
    n = 700
    base = [None] * n
    for i in range(100, 400):
        base[i] = page(f"b{i}")
    base[450:470] = [text_page("t")] * 20             # intra duplicates in one run
    out = [snapshot(list(base))]
    for k in range(1, 5):
        cur = list(base)
        for i in range(100 + 37 * k, 100 + 37 * k + 40):
            cur[i] = page(f"c{k}.{i}")                  # a dirty stretch
        cur[500 + k] = base[200]                         # moved: stored before, new place
        cur[600:610] = [None] * 10
        cur[610 + k] = page(f"c{k - 1}.{100 + 37 * (k - 1)}") if k > 1 else page("x")
        out.append(snapshot(cur))
        base = cur
    # live-migration style: a page sent again in a later PART
    recs = [("pc.ram", i * PAGE, base[i]) for i in range(n)]
    recs += [("pc.ram", 150 * PAGE, page("resent")), ("pc.ram", 151 * PAGE, None)]
    out.append(build_stream([("pc.ram", n * PAGE), ("pc.bios", 2 * PAGE)], recs, parts=3))
    return out


@pytest.fixture(scope="module")
def streams():
    return chain()


def test_runs_and_pages_paths_build_the_same_checkpoints(tmp_path, streams):
    with Store.open(tmp_path / "runs", create=True, pack_size=256 << 10) as a, \
            Store.open(tmp_path / "pages", create=True, pack_size=256 << 10,
                       codec=PagesOnlyCodec()) as b:
        for k, data in enumerate(streams):
            ia = a.import_stream(io.BytesIO(data), name=str(k))
            ib = b.import_stream(io.BytesIO(data), name=str(k))
            assert ia.stats == ib.stats
            assert a.page_map(ia.id) == b.page_map(ib.id)
            assert {n: (list(c.new), list(c.zero), list(c.duplicate))
                    for n, c in a.page_classes(ia.id).items()} == \
                {n: (list(c.new), list(c.zero), list(c.duplicate))
                 for n, c in b.page_classes(ib.id).items()}
        assert a.stats().stored_pages == b.stats().stored_pages
        last = a.checkpoints()[-1].stats
        assert last.superseded_records == 2
        for info, data in zip(a.checkpoints(), streams):
            assert export(a, info.id) == data      # runs
            assert export(b, info.id) == data      # per page
            with Store.open(a.root, codec=PagesOnlyCodec()) as per_page:
                assert export(per_page, info.id) == data    # store built by runs, read per page


def test_exports_in_any_order_reuse_locations_and_stay_identical(tmp_path, streams):
    with Store.open(tmp_path / "st", create=True, pack_size=128 << 10) as s:
        ids = [s.import_stream(io.BytesIO(d), name=str(k)).id for k, d in enumerate(streams)]
        for cid in ids + ids[::-1] + [ids[2], ids[2]]:
            assert export(s, cid) == streams[ids.index(cid)]
        assert s._export_hints   # kept for the next export


def test_stale_locations_after_gc_fall_back_to_the_index(tmp_path, streams):
    with Store.open(tmp_path / "st", create=True, pack_size=64 << 10) as s:
        ids = [s.import_stream(io.BytesIO(d), name=str(k)).id for k, d in enumerate(streams)]
        assert export(s, ids[2]) == streams[2]            # hints point into the old packs
        s.delete_checkpoint(ids[1])
        rep = s.gc()
        assert rep.packs_rewritten or rep.packs_deleted
        for cid in (ids[2], ids[3], ids[0]):
            assert export(s, cid) == streams[ids.index(cid)]
        assert s.fsck().ok


def test_a_damaged_page_found_through_a_location_hint_names_checkpoint_pack_offset(tmp_path):
    data = snapshot([page(i) for i in range(8)] + [None] * 4 + [text_page("t")])
    path = tmp_path / "st"
    with Store.open(path, create=True) as s:
        cid = s.import_stream(io.BytesIO(data), name="x").id
        assert export(s, cid) == data                    # remembers where every page is
        pack = sorted((path / "packs").glob("*.pack"))[0]
        rec = scan_pack(pack, 1).records[3]
        raw = bytearray(pack.read_bytes())
        raw[rec.offset + REC_HEADER.size + 7] ^= 0x01
        pack.write_bytes(raw)
        s._packs.forget()                                # drop cached windows: read the file
        with pytest.raises(IntegrityError) as exc:
            s.export_stream(cid, io.BytesIO())
        err = exc.value
        assert (err.checkpoint, err.pack, err.offset) == (cid, pack.name, rec.offset)


def test_a_failing_background_pack_write_rolls_the_import_back(tmp_path, monkeypatch, streams):
    path = tmp_path / "st"
    with Store.open(path, create=True, pack_size=64 << 10) as s:
        s.import_stream(io.BytesIO(streams[0]), name="0")
        before = tree_bytes(path)
        calls = []

        def full_disk(fd, data):
            calls.append(len(data))
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(packs_mod, "_write_all", full_disk)
        monkeypatch.setattr(packs_mod.PackWriter, "FLUSH_AT", 8 << 10)
        with pytest.raises(OSError, match="No space"):
            s.import_stream(io.BytesIO(streams[1]), name="1")
        monkeypatch.undo()
        assert calls
        assert tree_bytes(path) == before
        assert [i.name for i in s.checkpoints()] == ["0"]
        info = s.import_stream(io.BytesIO(streams[1]), name="1")
        assert export(s, info.id) == streams[1]
        assert s.fsck().ok


# -- the index's absence filter and the pack writer's raw streaks ---------------------

def _entries(rng, n, pack=1):
    return {rng.randbytes(16): (pack, 16 + 40 * k, 40) for k in range(n)}


def test_absence_filter_never_hides_a_page_the_index_holds(tmp_path, monkeypatch):
    import random

    from engine.store import index as idx
    monkeypatch.setattr(idx.AbsenceFilter, "MIN_BITS", 1 << 10)   # force regrowth
    rng = random.Random(5)
    d = tmp_path / "index"
    d.mkdir()
    writer = idx.Index(d)
    writer.use_filter()
    other = idx.Index(d)                       # another process adding segments
    held: dict[bytes, tuple] = {}
    for k in range(14):
        batch = _entries(rng, 37 + 11 * k)
        (other if k % 3 == 2 else writer).add(batch, {1: 10 ** 6})
        held.update(batch)
        writer.refresh()
        assert all(writer.lookup(h) == e for h, e in held.items())
    assert writer._filter is not None and writer._filter.mask + 1 > 1 << 10
    misses = [rng.randbytes(16) for _ in range(2000)]
    assert all(writer.lookup(h) is None for h in misses)
    assert sum(h in writer._filter for h in misses) < 400       # most misses never reach a segment
    # gc replaces everything: the filter is dropped, and rebuilt on demand
    keep = dict(list(held.items())[::2])
    writer.replace_all(keep.items(), {1: 10 ** 6})
    assert writer._filter is None
    writer.use_filter()
    assert all(writer.lookup(h) == e for h, e in keep.items())
    assert all(writer.lookup(h) is None for h in list(held)[1::2])


def test_pages_after_a_streak_of_random_ones_are_still_stored_and_compressed(tmp_path):
    from engine.store.packs import PackReader, PackWriter
    randoms = [page(f"r{i}") for i in range(40)]
    texts = [text_page(f"t{i}") for i in range(40)]
    import xxhash
    w = PackWriter(tmp_path, next_id=1, tail=None, target_size=1 << 20)
    items = [(xxhash.xxh3_128_digest(p), p) for p in randoms + texts + randoms[:5]]
    w.append_pages(items[:50])
    w.append_pages(items[50:])
    w.commit()
    r = PackReader(tmp_path)
    for h, p in items:
        pid, off, length = w.locations[h]
        assert r.read(pid, off, length, h) == p
    # a probe found the text again: most text pages are compressed despite the streak
    compressed = sum(w.locations[h][2] < 4096 for h, _p in items[40:80])
    assert compressed >= 30


def test_pages_sent_again_in_later_rounds_match_the_per_page_path(tmp_path):
    # live migration: every page once, then rounds that re-send dirtied pages
    n = 300
    recs = [("pc.ram", i * PAGE, page(f"r0.{i}") if i % 4 else None) for i in range(n)]
    for rnd, step in ((1, 3), (2, 5), (3, 3)):
        recs += [("pc.ram", i * PAGE, page(f"r{rnd}.{i}") if i % 2 else None)
                 for i in range(0, n, step)]
    data = build_stream([("pc.ram", n * PAGE), ("pc.bios", 2 * PAGE)], recs, parts=4)
    with Store.open(tmp_path / "a", create=True) as a, \
            Store.open(tmp_path / "b", create=True, codec=PagesOnlyCodec()) as b:
        ia = a.import_stream(io.BytesIO(data), name="live")
        ib = b.import_stream(io.BytesIO(data), name="live")
        assert ia.stats == ib.stats
        assert ia.stats.superseded_records == len(recs) - n
        assert a.page_map(ia.id) == b.page_map(ib.id)
        assert export(a, ia.id) == data
        assert export(b, ib.id) == data


def test_the_store_checks_the_export_end_to_end_itself(tmp_path, monkeypatch, streams):
    # the codec is told to skip its own hash: the store's xxh3-128 must catch a wrong page
    from engine.store import store as store_mod
    with Store.open(tmp_path / "st", create=True) as s:
        cid = s.import_stream(io.BytesIO(streams[0]), name="0").id
        real = store_mod._ExportSource.runs

        def wrong(self, index, block, offset, count):
            pieces = real(self, index, block, offset, count)
            return [[bytes(4096)] * len(p) if isinstance(p, list) else p for p in pieces]

        monkeypatch.setattr(store_mod._ExportSource, "runs", wrong)
        with pytest.raises(IntegrityError, match="exported stream") as exc:
            s.export_stream(cid, io.BytesIO())
        assert exc.value.checkpoint == cid


def test_diff_and_apply_agree_with_entry_by_entry_maps():
    import random

    from engine.store.pagemap import ENTRY, PageMap, apply, diff
    rng = random.Random(11)
    for _ in range(40):
        n = rng.randrange(1, 3000)
        old = bytearray(b"".join(rng.randbytes(16) for _ in range(n)))
        new = bytearray(old)
        for _ in range(rng.randrange(0, 40)):          # stretches and single pages change
            a = rng.randrange(n)
            for i in range(a, min(n, a + rng.choice([1, 1, 2, 17, 300]))):
                new[i * ENTRY:(i + 1) * ENTRY] = rng.randbytes(16)
        grow = rng.choice([0, 0, 5])
        new += b"".join(rng.randbytes(16) for _ in range(grow))
        parent, child = PageMap({"b": old}), PageMap({"b": new})
        d = diff(parent, child)
        changed = [i for i in range(n + grow)
                   if i >= n or new[i * ENTRY:(i + 1) * ENTRY] != old[i * ENTRY:(i + 1) * ENTRY]]
        assert list(d["b"].indices) == changed
        assert apply(parent, d) == child
