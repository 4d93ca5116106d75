"""The store through the real codec on synthetic QEMU-format streams: round trips,
dedup and zero-page counts against streams with known duplicates, page maps,
dirty pages, chains and keyframes, failed imports, concurrent readers."""

from __future__ import annotations

import io
import os
import threading

import pytest

from engine.errors import NotFoundError, StoreError, StreamError, TruncatedStreamError, UsageError
from engine.store import KEYFRAME_INTERVAL, ZERO, Store
from test_store_support import build_stream, page, snapshot, text_page, tree_bytes

import xxhash

PAGE = 4096


def export(store: Store, cid: str) -> bytes:
    out = io.BytesIO()
    n = store.export_stream(cid, out)
    assert n == len(out.getvalue())
    return out.getvalue()


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "st", create=True, pack_size=64 << 10) as s:
        yield s


def test_round_trip_is_byte_identical_for_varied_streams(store):
    streams = [
        snapshot([page(1), None, page(2), text_page(3)]),
        snapshot([None] * 50, extra_rom=False),                       # all zero
        snapshot([page(i) for i in range(40)], parts=3),               # several PART sections
        snapshot([text_page(i % 3) for i in range(30)], vmdesc=False),  # no VMDESCRIPTION
        build_stream([("pc.ram", 8 * PAGE), ("vga.vram", 4 * PAGE)],
                     [("vga.vram", 0, page("v")), ("pc.ram", 3 * PAGE, page(3)),
                      ("pc.ram", 0, None), ("vga.vram", 2 * PAGE, text_page("v2"))]),  # sparse, interleaved
    ]
    ids = [store.import_stream(io.BytesIO(s), name=f"s{i}").id for i, s in enumerate(streams)]
    assert ids == ["0000", "0001", "0002", "0003", "0004"]
    for cid, s in zip(ids, streams):
        assert export(store, cid) == s
    # a second Store object (a reader elsewhere) sees the same
    with Store.open(store.root) as again:
        for cid, s in zip(ids, streams):
            assert export(again, cid) == s


def test_page_sent_twice_keeps_the_superseded_record(store):
    # live migration re-sends dirtied pages: page 1 goes out three times, page 2 twice
    records = [("pc.ram", 0, page("a")), ("pc.ram", PAGE, page("b1")), ("pc.ram", 2 * PAGE, None),
               ("pc.ram", PAGE, page("b2")), ("pc.ram", 2 * PAGE, page("c")),
               ("pc.ram", PAGE, None)]
    s = build_stream([("pc.ram", 3 * PAGE)], records, parts=3)
    info = store.import_stream(io.BytesIO(s), name="twice")
    assert info.stats.page_records == 6
    assert info.stats.superseded_records == 3
    assert export(store, info.id) == s
    pm = store.page_map(info.id)
    assert pm.get("pc.ram", 1) is None                         # last record of page 1: zero
    assert pm.get("pc.ram", 2) == xxhash.xxh3_128_digest(page("c"))


@pytest.mark.parametrize("parts", [1, 3])
def test_a_diverted_ram_block_goes_into_its_file_and_the_rest_into_the_stream(store, tmp_path,
                                                                             parts):
    """Restoring into RAM held in a file (replay): the block's pages land in
    the file as the stream's last records say (page 1: data twice, then
    ZERO; page 2: ZERO, then data); the stream keeps every other record; the
    whole-stream check still covers the diverted bytes."""
    from engine.stream.migration import RamFile, iter_ram_pages
    records = [("pc.ram", 0, page("a")), ("pc.ram", PAGE, page("b1")), ("pc.ram", 2 * PAGE, None),
               ("vga.vram", 0, page("v")), ("pc.ram", PAGE, page("b2")),
               ("pc.ram", 2 * PAGE, page("c")), ("vga.vram", PAGE, None), ("pc.ram", PAGE, None),
               ("pc.ram", 5 * PAGE, page("f"))]
    s = build_stream([("pc.ram", 8 * PAGE), ("vga.vram", 2 * PAGE)], records, parts=parts)
    cid = store.import_stream(io.BytesIO(s), name="divert").id
    path = tmp_path / "ram"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 8 * PAGE)
        out = io.BytesIO()
        n = store.export_stream(cid, out, ram=RamFile("pc.ram", fd, 8 * PAGE))
    finally:
        os.close(fd)
    assert n == len(s) > len(out.getvalue())     # the length of the whole stream
    ram = path.read_bytes()
    want = {0: page("a"), 2: page("c"), 5: page("f")}
    for p in range(8):
        assert ram[p * PAGE:(p + 1) * PAGE] == want.get(p, bytes(PAGE)), p
    kept = list(iter_ram_pages(io.BytesIO(out.getvalue())))
    assert kept == [("vga.vram", 0, page("v")), ("vga.vram", PAGE, None)]
    # a file too small for the block is refused, naming it
    fd = os.open(tmp_path / "small", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 2 * PAGE)
        with pytest.raises(StreamError, match="pc.ram.*beyond its file of 8192 bytes"):
            store.export_stream(cid, io.BytesIO(), ram=RamFile("pc.ram", fd, 2 * PAGE))
    finally:
        os.close(fd)


def test_dedup_and_zero_counts_match_a_stream_with_known_duplicates(store):
    a, b, c, d = page("a"), page("b"), page("c"), text_page("d")
    # checkpoint 0: a b a 0 c a 0 d  -> new a b c d (4), intra: a a (2), zero 2
    first = [a, b, a, None, c, a, None, d]
    i0 = store.import_stream(io.BytesIO(snapshot(first, extra_rom=False)), name="0")
    s0 = i0.stats
    assert (s0.page_records, s0.zero_pages, s0.data_pages) == (8, 2, 6)
    assert (s0.new_pages, s0.intra_duplicates, s0.inter_duplicates) == (4, 2, 0)
    assert s0.dirty_pages == 8            # no parent: every page
    assert s0.duplicate_pages == 4

    # checkpoint 1: b b a 0 0 e e c
    #   b: inter (in store, moved), b: intra, a: inter, e: new, e: intra, c: inter
    e = page("e")
    second = [b, b, a, None, None, e, e, c]
    i1 = store.import_stream(io.BytesIO(snapshot(second, extra_rom=False)), name="1")
    s1 = i1.stats
    assert (s1.page_records, s1.zero_pages, s1.data_pages) == (8, 2, 6)
    assert (s1.new_pages, s1.intra_duplicates, s1.inter_duplicates) == (1, 2, 3)
    assert s1.data_pages == s1.new_pages + s1.intra_duplicates + s1.inter_duplicates
    # entries that changed: 0 (a->b), 2 (a->a? no: a->a), 4 (c->0), 5 (a->e), 6 (0->e), 7 (d->c)
    changed = [k for k in range(8) if first[k] != second[k]]
    assert s1.dirty_pages == len(changed)
    assert list(store.dirty_pages(i1.id)["pc.ram"]) == changed
    classes = store.page_classes(i1.id)["pc.ram"]
    assert list(classes.zero) == [4]
    assert list(classes.new) == [5, 6]              # e, stored by this checkpoint (twice here)
    assert list(classes.duplicate) == [0, 7]        # b and c: in the store before

    st = store.stats()
    assert st.checkpoints == 2
    assert st.stored_pages == 5                      # a b c d e, each once
    assert st.zero_pages == 4 and st.new_pages == 5
    assert st.intra_duplicates == 4 and st.inter_duplicates == 3
    assert st.disk_bytes > 0 and st.raw_bytes == s0.raw_bytes + s1.raw_bytes

    # stored bytes: what the checkpoint added on disk
    assert s1.stored_bytes == s1.pack_bytes + s1.index_bytes + s1.manifest_bytes
    assert 0 < s1.pack_bytes < 2 * PAGE               # one new (random) page and its header


def test_page_map_and_read_page(store):
    contents = [page(1), None, text_page(2), page(1)]
    info = store.import_stream(io.BytesIO(snapshot(contents)), name="x")
    pm = store.page_map(info.id)
    assert set(pm.blocks()) == {"pc.ram", "pc.bios"}
    assert pm.page_count("pc.ram") == 4
    for k, c in enumerate(contents):
        h = pm.get("pc.ram", k)
        if c is None:
            assert h is None and pm.entry("pc.ram", k) == ZERO
        else:
            assert store.read_page(h) == c
    with pytest.raises(NotFoundError, match="no RAM block 'nope'"):
        pm.get("nope", 0)
    with pytest.raises(NotFoundError, match="outside RAM block"):
        pm.get("pc.ram", 99)
    with pytest.raises(UsageError):
        store.read_page(b"short")


def test_parents_latest_none_explicit_and_branches(store):
    s = [snapshot([page(f"{k}-{i}") for i in range(4)]) for k in range(4)]
    a = store.import_stream(io.BytesIO(s[0]), name="a")
    b = store.import_stream(io.BytesIO(s[1]), name="b")                 # parent: latest = a
    c = store.import_stream(io.BytesIO(s[2]), name="c", parent=a.id)    # a branch off a
    r = store.import_stream(io.BytesIO(s[3]), name="r", parent=None)    # a new root
    assert (a.parent, b.parent, c.parent, r.parent) == (None, a.id, a.id, None)
    assert r.keyframe and a.keyframe
    for info, data in zip((a, b, c, r), s):
        assert export(store, info.id) == data
    with pytest.raises(NotFoundError, match="no checkpoint '0042'"):
        store.import_stream(io.BytesIO(s[0]), name="z", parent="0042")
    with pytest.raises(NotFoundError):
        store.checkpoint("../../etc")


def test_metadata_round_trips_and_is_validated(store):
    meta = {"icount": 123456789012, "wall": 1.5, "downtime_ms": 3.25, "tags": ["a", "b"],
            "nested": {"k": None, "raw": b"\x00\x01"}}
    info = store.import_stream(io.BytesIO(snapshot([page(1)])), name="m", meta=meta)
    assert store.checkpoint(info.id).meta == meta
    assert store.checkpoints()[0].meta == meta
    with pytest.raises(StoreError, match="meta"):
        store.import_stream(io.BytesIO(snapshot([page(1)])), name="m", meta={"x": object()})


def test_long_chain_composes_through_a_bounded_number_of_deltas(tmp_path):
    with Store.open(tmp_path / "st", create=True) as store:
        n = 64
        base = [page(f"base{i}") for i in range(n)]
        streams = {}
        for k in range(200):
            contents = list(base)
            contents[k % n] = page(f"dirty{k}")          # one page dirty per interval
            contents[(k * 7) % n] = None
            base = contents
            data = snapshot(contents, extra_rom=False)
            info = store.import_stream(io.BytesIO(data), name=f"c{k}")
            streams[info.id] = data
            assert info.stats.dirty_pages <= (2 if k else n)
        ids = [i.id for i in store.checkpoints()]
        assert len(ids) == 200
        longest = max(len(store.restore_chain(cid)) for cid in ids)
        assert longest <= KEYFRAME_INTERVAL
        keyframes = sum(1 for i in store.checkpoints() if i.keyframe)
        assert 200 // KEYFRAME_INTERVAL <= keyframes <= 200 // (KEYFRAME_INTERVAL - 1) + 1
        # a cold reader composes the last one the same as the writer built it
        with Store.open(store.root) as cold:
            for cid in (ids[-1], ids[100], ids[17]):
                assert export(cold, cid) == streams[cid]
                assert cold.page_map(cid) == store.page_map(cid)


def test_big_dirty_sets_make_keyframes_early(store):
    n = 40
    for k in range(4):
        store.import_stream(io.BytesIO(snapshot([page(f"{k}/{i}") for i in range(n)],
                                                extra_rom=False)), name=str(k))
    infos = store.checkpoints()
    # every page changes every time: over half a map per delta, so every one is a keyframe
    assert all(i.keyframe for i in infos)
    assert all(len(store.restore_chain(i.id)) == 1 for i in infos)


@pytest.mark.parametrize("damage", ["truncate", "bad_record", "trailing"])
def test_a_bad_stream_leaves_the_store_byte_for_byte_unchanged(store, damage):
    good = snapshot([page(i) for i in range(30)])
    store.import_stream(io.BytesIO(good), name="good")
    before = tree_bytes(store.root)
    bad = snapshot([page(f"new{i}") for i in range(30)])   # new pages get appended before the error
    if damage == "truncate":
        bad, err = bad[:len(bad) - 200], TruncatedStreamError
    elif damage == "bad_record":
        cut = bad.index(page("new29"))
        bad, err = bad[:cut - 8] + b"\xff" * 8 + bad[cut:], StreamError
    else:
        bad, err = bad + b"garbage", StreamError
    with pytest.raises(err):
        store.import_stream(io.BytesIO(bad), name="bad")
    assert tree_bytes(store.root) == before
    assert [i.name for i in store.checkpoints()] == ["good"]
    assert store.fsck().ok
    # and the store still takes the next import
    again = store.import_stream(io.BytesIO(snapshot([page("next")])), name="next")
    assert export(store, again.id) == snapshot([page("next")])


def test_a_second_writer_waits_then_gets_a_clear_error(tmp_path):
    path = tmp_path / "st"
    with Store.open(path, create=True) as a, Store.open(path, lock_timeout=0.2) as b:
        with a._writing():
            with pytest.raises(StoreError, match="busy"):
                b.import_stream(io.BytesIO(snapshot([page(1)])), name="x")
        assert b.import_stream(io.BytesIO(snapshot([page(1)])), name="x").id == "0000"


def test_readers_read_while_a_writer_imports(tmp_path):
    path = tmp_path / "st"
    streams = [snapshot([page(f"{k}.{i}") for i in range(64)] + [page(i) for i in range(64)])
               for k in range(12)]
    errors: list[BaseException] = []
    exported = []
    done = threading.Event()

    with Store.open(path, create=True, pack_size=32 << 10) as writer:
        writer.import_stream(io.BytesIO(streams[0]), name="0")

        def reader():
            try:
                with Store.open(path) as r:
                    while not done.is_set():
                        for info in r.checkpoints():
                            assert export(r, info.id) == streams[int(info.name)]
                            exported.append(info.id)
            except BaseException as err:  # reported below
                errors.append(err)

        t = threading.Thread(target=reader)
        t.start()
        try:
            for k in range(1, 12):
                writer.import_stream(io.BytesIO(streams[k]), name=str(k))
        finally:
            done.set()
            t.join(60)
    assert not errors, errors
    assert exported


def test_ids_are_never_reused_after_a_delete(store):
    a = store.import_stream(io.BytesIO(snapshot([page(1)])), name="a")
    b = store.import_stream(io.BytesIO(snapshot([page(2)])), name="b")
    store.delete_checkpoint(b.id)
    c = store.import_stream(io.BytesIO(snapshot([page(3)])), name="c")
    assert (a.id, b.id, c.id) == ("0000", "0001", "0002")
    assert c.parent == a.id
