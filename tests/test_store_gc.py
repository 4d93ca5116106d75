"""Deleting checkpoints (children re-based) and gc (exactly the unreferenced pages go)."""

from __future__ import annotations

import io

import pytest
import xxhash

from engine.errors import NotFoundError
from engine.store import KEYFRAME_INTERVAL, Store
from test_store_support import build_stream, page, snapshot, tree_bytes

PAGE = 4096
H = xxhash.xxh3_128_digest


def export(store, cid):
    out = io.BytesIO()
    store.export_stream(cid, out)
    return out.getvalue()


def hashes(contents):
    return {H(c) for c in contents if c is not None}


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "st", create=True, pack_size=16 << 10) as s:
        yield s


def test_delete_middle_rebases_child_and_gc_removes_exactly_its_pages(store):
    shared = [page(f"s{i}") for i in range(6)]
    a = shared + [page("a1"), page("a2")]
    b = shared + [page("b1"), page("b2")]
    c = shared + [page("b1"), page("c2")]           # keeps b1 from b, changes the rest
    streams = {}
    for name, contents in (("a", a), ("b", b), ("c", c)):
        data = snapshot(contents, extra_rom=False)
        info = store.import_stream(io.BytesIO(data), name=name)
        streams[info.id] = data
    assert [i.parent for i in store.checkpoints()] == [None, "0000", "0001"]

    store.delete_checkpoint("0001")
    infos = store.checkpoints()
    assert [(i.id, i.parent) for i in infos] == [("0000", None), ("0002", "0000")]
    # c's delta is now against a: b1 and c2 differ from a1, a2
    assert list(store.dirty_pages("0002")["pc.ram"]) == [6, 7]
    assert infos[1].stats.dirty_pages == 2
    for cid in ("0000", "0002"):
        assert export(store, cid) == streams[cid]
    with pytest.raises(NotFoundError):
        store.export_stream("0001", io.BytesIO())

    before = store.stats().stored_pages
    early = Store.open(store.root)          # a reader whose view of the index predates gc
    assert export(early, "0000") == streams["0000"]
    report = store.gc()
    only_b = hashes(b) - hashes(a) - hashes(c)
    assert report.removed == only_b == {H(page("b2"))}
    assert report.pages_removed == 1
    assert store.stats().stored_pages == before - 1
    assert report.packs_rewritten or report.packs_deleted
    assert store.fsck().ok
    for cid in ("0000", "0002"):
        assert export(store, cid) == streams[cid]
    # the early reader still reads: it finds the rewritten packs through the new index
    with early:
        for cid in ("0000", "0002"):
            assert export(early, cid) == streams[cid]


def test_delete_root_makes_the_child_a_root(store):
    datas = [snapshot([page(f"{k}.{i}") for i in range(3)] + [page("same")]) for k in range(3)]
    for k, d in enumerate(datas):
        store.import_stream(io.BytesIO(d), name=str(k))
    store.delete_checkpoint("0000")
    infos = store.checkpoints()
    assert infos[0].id == "0001" and infos[0].parent is None and infos[0].keyframe
    assert export(store, "0001") == datas[1]
    assert export(store, "0002") == datas[2]
    rep = store.gc()
    assert rep.removed == {H(page(f"0.{i}")) for i in range(3)}
    assert store.fsck().ok


def test_delete_keeps_restore_chains_bounded(tmp_path):
    with Store.open(tmp_path / "st", create=True) as store:
        n = 40
        contents = [page(f"b{i}") for i in range(n)]
        streams = {}
        for k in range(3 * KEYFRAME_INTERVAL):
            contents = list(contents)
            contents[k % n] = page(f"d{k}")
            data = snapshot(contents, extra_rom=False)
            streams[store.import_stream(io.BytesIO(data), name=str(k)).id] = data
        keyframes = [i.id for i in store.checkpoints() if i.keyframe and i.parent is not None]
        assert keyframes
        for victim in keyframes + ["0005"]:
            store.delete_checkpoint(victim)
            del streams[victim]
        for info in store.checkpoints():
            assert len(store.restore_chain(info.id)) <= KEYFRAME_INTERVAL
        for cid, data in streams.items():
            assert export(store, cid) == data
        store.gc()
        assert store.fsck().ok
        with Store.open(store.root) as cold:
            for cid, data in streams.items():
                assert export(cold, cid) == data


def test_gc_keeps_pages_only_superseded_records_use(store):
    # page 0 is sent twice: its first content survives only as a superseded record
    s = build_stream([("pc.ram", 2 * PAGE)],
                     [("pc.ram", 0, page("first")), ("pc.ram", PAGE, page("x")),
                      ("pc.ram", 0, page("second"))], parts=2)
    info = store.import_stream(io.BytesIO(s), name="twice")
    report = store.gc()
    assert report.pages_removed == 0
    assert export(store, info.id) == s


def test_gc_with_nothing_to_collect_changes_nothing(store):
    store.import_stream(io.BytesIO(snapshot([page(i) for i in range(20)])), name="x")
    before = tree_bytes(store.root)
    report = store.gc()
    assert report.pages_removed == 0 and not report.packs_rewritten and not report.packs_deleted
    assert tree_bytes(store.root) == before


def test_gc_after_deleting_everything_empties_the_packs(store):
    for k in range(3):
        store.import_stream(io.BytesIO(snapshot([page(f"{k}.{i}") for i in range(10)])), name=str(k))
    for info in store.checkpoints():
        store.delete_checkpoint(info.id)
    report = store.gc()
    assert report.pages_kept == 0
    assert report.pages_removed == 30 + 2
    assert list((store.root / "packs").glob("*.pack")) == []
    assert store.stats().stored_pages == 0
    assert store.fsck().ok
    info = store.import_stream(io.BytesIO(snapshot([page("again")])), name="again")
    assert info.id == "0003"
    assert export(store, info.id) == snapshot([page("again")])
