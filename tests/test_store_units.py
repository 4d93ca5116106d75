"""Pure unit tests: index segments, page-map deltas, pack records, atomic writes."""

from __future__ import annotations

import os
import random
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import IntegrityError
from engine.store import index as idx
from engine.store.fsutil import WriterLock, atomic_write
from engine.store.packs import REC_HEADER, encode_record, parse_record_header, decode_payload
from engine.store.pagemap import ABSENT, ENTRY, ZERO, PageMap, apply, diff

import xxhash


def _rand_hashes(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(16) for _ in range(n)]


@pytest.mark.parametrize("count", [0, 1, 7, 8, 100, 5000])
def test_segment_finds_every_entry_and_nothing_else(tmp_path, count):
    hashes = sorted(set(_rand_hashes(count, count)))
    entries = {h: (k % 7, 16 + 100 * k, 40 + k % 5) for k, h in enumerate(hashes)}
    data = idx.encode_segment(hashes, [idx.ENTRY.pack(*entries[h]) for h in hashes], {3: 999})
    path = tmp_path / idx.segment_name(1, 1)
    path.write_bytes(data)
    seg = idx.Segment(path)
    assert seg.count == len(hashes)
    assert seg.pack_lengths == {3: 999}
    for h in hashes:
        assert seg.lookup(h) == entries[h]
    for h in _rand_hashes(200, 10_000 + count):
        assert seg.lookup(h) is None
    assert [h for h, _ in seg.items()] == hashes


def test_a_match_straddling_two_hashes_is_not_a_hit(tmp_path):
    a = b"\x00" * 8 + b"\x11" * 8
    b = b"\x22" * 8 + b"\x33" * 8
    data = idx.encode_segment([a, b], [idx.ENTRY.pack(1, 16, 40)] * 2, {})
    path = tmp_path / idx.segment_name(1, 1)
    path.write_bytes(data)
    seg = idx.Segment(path)
    assert seg.lookup(b"\x11" * 8 + b"\x22" * 8) is None
    assert seg.lookup(a) == (1, 16, 40)


def test_segment_corruption_is_detected(tmp_path):
    hashes = sorted(_rand_hashes(50, 1))
    data = bytearray(idx.encode_segment(hashes, [idx.ENTRY.pack(1, 2, 3)] * 50, {1: 10}))
    data[200] ^= 1
    path = tmp_path / idx.segment_name(1, 1)
    path.write_bytes(data)
    with pytest.raises(IntegrityError, match="checksum"):
        idx.Segment(path)
    path.write_bytes(data[:-40])
    with pytest.raises(IntegrityError, match="header implies"):
        idx.Segment(path)


def test_index_merges_keep_every_entry_and_few_segments(tmp_path):
    index = idx.Index(tmp_path)
    every = {}
    lengths = {}
    rng = random.Random(5)
    for k in range(60):
        new = {rng.randbytes(16): (k, 16 * j, 40) for j in range(rng.choice([1, 5, 50, 500]))}
        every.update(new)
        lengths[k] = 16 * len(new)
        index.add(new, {k: lengths[k]})
        assert len(index.segments) <= idx.MAX_SEGMENTS
    assert index.entry_count() == len(every)
    for h, e in every.items():
        assert index.lookup(h) == e
    assert index.committed_lengths() == lengths
    # a second reader sees the same; superseded files are gone
    again = idx.Index(tmp_path)
    assert again.entry_count() == len(every)
    assert index.superseded_files() == []


def test_live_ranges():
    assert idx._live_ranges([(1, 1), (2, 2), (1, 3), (4, 4)]) == [(1, 3), (4, 4)]
    assert idx._live_ranges([(0, 9), (1, 1), (5, 8)]) == [(0, 9)]
    assert idx._live_ranges([(1, 2), (3, 3), None]) == [(1, 2), (3, 3)]


def test_pack_record_round_trip_and_raw_fallback():
    for page in (bytes(4096), b"ab" * 2048, os.urandom(4096)):
        digest = xxhash.xxh3_128_digest(page)
        rec = encode_record(digest, page)
        head = parse_record_header(rec)
        assert head is not None and head.digest == digest and head.length == len(rec)
        assert decode_payload(head, rec[REC_HEADER.size:]) == page
        assert len(rec) <= REC_HEADER.size + 4096      # random pages are stored raw
    bad = bytearray(encode_record(digest, page))
    bad[30] ^= 1
    assert parse_record_header(bad) is None


entries = st.one_of(st.just(ZERO), st.just(ABSENT), st.sampled_from([bytes([k]) * 16 for k in range(1, 6)]))
blockmaps = st.dictionaries(st.sampled_from(["pc.ram", "vga", "rom"]),
                            st.lists(entries, max_size=40), max_size=3)


def _pm(d: dict[str, list[bytes]]) -> PageMap:
    return PageMap({k: bytearray(b"".join(v)) for k, v in d.items()})


@settings(max_examples=300, deadline=None)
@given(blockmaps, blockmaps)
def test_apply_of_diff_rebuilds_the_child(parent, child):
    p, c = _pm(parent), _pm(child)
    d = diff(p, c)
    assert apply(p, d) == c
    assert apply(None, diff(None, c)) == c
    # the delta lists exactly the entries that differ
    for name, bd in d.items():
        old = parent.get(name, [])
        new = child[name]
        changed = [i for i in range(len(new))
                   if (old[i] if i < len(old) else ABSENT) != new[i]]
        assert list(bd.indices) == changed
        assert isinstance(bd.indices, array)


def test_diff_finds_single_changes_in_large_maps():
    n = 100_000
    base = bytearray(os.urandom(16 * n))
    child = bytearray(base)
    for i in (0, 255, 256, 50_000, n - 1):
        child[i * ENTRY:(i + 1) * ENTRY] = ZERO
    d = diff(PageMap({"ram": base}), PageMap({"ram": child}))
    assert list(d["ram"].indices) == [0, 255, 256, 50_000, n - 1]


def test_atomic_write_leaves_old_or_new(tmp_path):
    target = tmp_path / "f"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f"]


def test_writer_lock_excludes_a_second_holder(tmp_path):
    a, b = WriterLock(tmp_path / "lock"), WriterLock(tmp_path / "lock")
    assert a.try_acquire()
    assert not b.try_acquire()
    from engine.errors import StoreError
    with pytest.raises(StoreError, match="busy"):
        b.acquire(0.05)
    a.release()
    assert b.try_acquire()
    b.release()
