"""The import's pack writer (batches laid out by columns, written with writev) and
the index's chunked merge: what they write reads back, page for page and entry
for entry, whatever mix of compressible and incompressible pages, pack
roll-overs, short writes or duplicate index entries they meet."""

from __future__ import annotations

import io
import os
import random

import pytest
import xxhash

from engine.errors import IntegrityError
from engine.store import Store
from engine.store import index as idx
from engine.store import packs as packs_mod
from engine.store.packs import CODEC_LZ4, CODEC_RAW, PackReader, PackWriter, scan_pack
from test_store_support import page, snapshot

PAGE = 4096


def _mixed_pages(n: int, seed: int) -> list[bytes]:
    """Stretches of random pages (stored raw) between pages that compress."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        if rng.random() < 0.5:
            out += [rng.randbytes(PAGE) for _ in range(rng.randrange(1, 40))]
        else:
            out += [bytes([rng.randrange(256)]) * 100 + rng.randbytes(64) + bytes(PAGE - 164)
                    for _ in range(rng.randrange(1, 10))]
    return out[:n]


def _write(directory, pages, *, target_size, batch=97):
    writer = PackWriter(directory, next_id=1, tail=None, target_size=target_size)
    digests = [xxhash.xxh3_128_digest(p) for p in pages]
    for k in range(0, len(pages), batch):
        # views into one buffer, as the importer hands them over
        buf = memoryview(b"".join(pages[k:k + batch]))
        writer.append_pages([(digests[j], buf[(j - k) * PAGE:(j - k + 1) * PAGE])
                             for j in range(k, min(k + batch, len(pages)))])
    lengths = writer.commit()
    return writer, digests, lengths


def test_a_mixed_batch_reads_back_from_packs_that_roll_over_mid_batch(tmp_path):
    pages = _mixed_pages(700, 1)
    writer, digests, lengths = _write(tmp_path, pages, target_size=256 << 10)
    assert len(lengths) > 3                        # several roll-overs, most inside a batch
    reader = PackReader(tmp_path)
    codecs = set()
    for d, p in zip(digests, pages):
        pid, off, length = writer.locations[d]
        assert reader.read(pid, off, length, d) == p
        codecs.add(reader.record_bytes(pid, off, length)[4])
    assert codecs == {CODEC_RAW, CODEC_LZ4}        # a mixed pack, both kinds of record
    # the packs describe themselves: a scan finds exactly the records placed, all sound
    where = {}
    for pid, length in lengths.items():
        scan = scan_pack(tmp_path / packs_mod.pack_name(pid), pid)
        assert scan.valid_end == scan.size == length
        assert all(r.error is None for r in scan.records)
        where.update({r.digest: (pid, r.offset, r.length) for r in scan.records})
        # a pack only takes more records while shorter than its target
        assert scan.records[-1].offset < 256 << 10
    assert where == writer.locations


def test_incompressible_pages_are_stored_raw_and_export_byte_identical(tmp_path):
    rng = random.Random(2)
    contents = [rng.randbytes(PAGE) for _ in range(300)] + [page(i) for i in range(20)]
    data = snapshot(contents)
    with Store.open(tmp_path / "st", create=True) as s:
        info = s.import_stream(io.BytesIO(data), name="r")
        out = io.BytesIO()
        s.export_stream(info.id, out)
        assert out.getvalue() == data
        pack = sorted((tmp_path / "st" / "packs").glob("*.pack"))[0]
        raw = pack.read_bytes()
        recs = scan_pack(pack, int(pack.stem)).records
        kinds = [raw[r.offset + 4] for r in recs]
        assert kinds.count(CODEC_RAW) >= 300         # every random page, no lz4 expansion
        assert all(r.length == 36 + PAGE for r, k in zip(recs, kinds) if k == CODEC_RAW)
        assert s.fsck().ok


def test_a_short_writev_is_completed(tmp_path, monkeypatch):
    real = os.writev
    calls = []

    def short(fd, bufs):
        calls.append(len(bufs))
        first = bytes(bufs[0])
        return real(fd, [first[:len(first) // 2 + 1]])   # a partial write, mid-buffer

    monkeypatch.setattr(os, "writev", short)
    pages = _mixed_pages(50, 3)
    writer, digests, _ = _write(tmp_path, pages, target_size=1 << 30, batch=50)
    monkeypatch.undo()
    assert calls
    reader = PackReader(tmp_path)
    for d, p in zip(digests, pages):
        assert reader.read(*writer.locations[d], d) == p


def _segment(directory, first, last, entries: dict[bytes, tuple[int, int, int]]):
    hashes = sorted(entries)
    data = idx.encode_segment(hashes, [idx.ENTRY.pack(*entries[h]) for h in hashes], {1: 10 ** 6})
    path = directory / idx.segment_name(first, last)
    path.write_bytes(data)
    return idx.Segment(path)


@pytest.mark.parametrize("sizes", [[3, 1, 0, 5], [40_000, 9_000, 20_000, 16_000], [1, 1, 1, 1]])
def test_merge_keeps_every_entry_in_order_and_the_newest_of_duplicates(tmp_path, monkeypatch, sizes):
    monkeypatch.setattr(idx, "MERGE_CHUNK", 1 << 12)   # many chunks even for these sizes
    rng = random.Random(sum(sizes))
    segs_entries = [{rng.randbytes(16): (k, 16 + 40 * j, 40) for j in range(n)}
                    for k, n in enumerate(sizes)]
    # the same pages in two segments (what a crash mid-merge leaves): the newer one wins
    shared = list(segs_entries[0])[:2]
    for h in shared:
        segs_entries[-1][h] = (99, 7, 40)
    segs = [_segment(tmp_path, k + 1, k + 1, e) for k, e in enumerate(segs_entries)]
    index = idx.Index(tmp_path)
    index._merge(list(reversed(segs)))                # newest first
    assert [s.path.name for s in index.segments] == [idx.segment_name(1, 5)]
    want = {}
    for e in segs_entries:
        want.update(e)
    merged = index.segments[0]
    blob = merged.hash_blob()
    assert [blob[i:i + 16] for i in range(0, len(blob), 16)] == sorted(want)
    assert dict(index.items()) == want


@pytest.mark.parametrize("bucket,value", [(64, 0), (64, 10 ** 6), (128, 1)])
def test_merge_refuses_a_segment_whose_fanout_lies(tmp_path, monkeypatch, bucket, value):
    monkeypatch.setattr(idx, "MERGE_CHUNK", 1 << 10)   # 16 chunks of 10,000 entries: 64 buckets each
    rng = random.Random(9)
    entries = {rng.randbytes(16): (1, 16 * j, 40) for j in range(5000)}
    good = _segment(tmp_path, 1, 1, entries)
    data = bytearray(good.path.read_bytes())
    assert good.bits == 10
    fan = idx.IDX_HEADER.size + 4 * bucket           # a chunk's start moved (checksum redone)
    data[fan:fan + 4] = value.to_bytes(4, "little")
    data[-16:] = xxhash.xxh3_128_digest(bytes(data[:-16]))
    bad_path = tmp_path / idx.segment_name(2, 2)
    bad_path.write_bytes(bytes(data))
    other = _segment(tmp_path, 3, 3, {rng.randbytes(16): (3, 16, 40) for _ in range(5000)})
    index = idx.Index(tmp_path, strict=False)
    with pytest.raises(IntegrityError, match="fanout"):
        index._merge([other, idx.Segment(bad_path)])


def test_a_failing_background_fdatasync_rolls_the_import_back(tmp_path, monkeypatch):
    rng = random.Random(4)
    first = snapshot([page(f"f{i}") for i in range(64)])
    second = snapshot([rng.randbytes(PAGE) for _ in range(600)])
    path = tmp_path / "st"
    with Store.open(path, create=True) as s:
        s.import_stream(io.BytesIO(first), name="first")
        before = {p.name: p.read_bytes() for p in (path / "packs").iterdir()}
        calls = []

        def failing(fd):
            calls.append(fd)
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(PackWriter, "SYNC_EVERY", 64 << 10)   # syncs start mid-import
        monkeypatch.setattr(os, "fdatasync", failing)
        with pytest.raises(OSError, match="Input/output"):
            s.import_stream(io.BytesIO(second), name="second")
        monkeypatch.undo()
        assert calls
        assert {p.name: p.read_bytes() for p in (path / "packs").iterdir()} == before
        assert [i.name for i in s.checkpoints()] == ["first"]
        info = s.import_stream(io.BytesIO(second), name="second")
        out = io.BytesIO()
        s.export_stream(info.id, out)
        assert out.getvalue() == second
        assert s.fsck().ok


def test_diff_takes_dirty_stretches_whole_and_still_finds_every_equal_entry():
    from engine.store.pagemap import ENTRY, PageMap, diff
    rng = random.Random(6)
    n = 5000
    old = bytearray(rng.randbytes(ENTRY * n))
    new = bytearray(old)
    for start in range(0, n, 700):                 # dirty stretches, unaligned to any chunk
        for k in range(start + 13, min(start + 13 + rng.randrange(1, 600), n)):
            new[k * ENTRY:(k + 1) * ENTRY] = rng.randbytes(ENTRY)
    for k in (20, 21, 300, 1413):                  # equal entries inside a stretch
        new[k * ENTRY:(k + 1) * ENTRY] = old[k * ENTRY:(k + 1) * ENTRY]
    for k in (40, 2130):
        # two entries that both differ, yet their XOR has 16 zero bytes across the
        # boundary between them (the second half of one, the first half of the next)
        new[k * ENTRY:(k + 2) * ENTRY] = (rng.randbytes(8) + old[k * ENTRY + 8:(k + 1) * ENTRY]
                                          + old[(k + 1) * ENTRY:(k + 1) * ENTRY + 8]
                                          + rng.randbytes(8))
    d = diff(PageMap({"ram": old}), PageMap({"ram": new}))["ram"]
    changed = [k for k in range(n) if new[k * ENTRY:(k + 1) * ENTRY] != old[k * ENTRY:(k + 1) * ENTRY]]
    assert {40, 41, 2130, 2131} <= set(changed) and 20 not in changed
    assert list(d.indices) == changed
    assert d.entries == b"".join(new[k * ENTRY:(k + 1) * ENTRY] for k in changed)


def test_bucket_starts_and_adjacent_duplicates_match_their_plain_definitions():
    from array import array
    from bisect import bisect_left
    rng = random.Random(8)
    for count, bits in ((0, 0), (5, 0), (1000, 7), (20_000, 11)):
        prefixes = array("I", sorted(rng.getrandbits(32) for _ in range(count)))
        if count > 100:                      # a crowded bucket, longer than the window
            prefixes = array("I", sorted(list(prefixes) + [prefixes[50]] * 300))
        shift = 32 - bits
        assert idx._bucket_starts(prefixes, shift, 1 << bits) == \
            [bisect_left(prefixes, k << shift) for k in range(1 << bits)]
    hashes = sorted(rng.randbytes(16) for _ in range(3000))
    assert not idx._adjacent_equal(b"".join(hashes))
    assert idx._adjacent_equal(b"".join(sorted(hashes + [hashes[1234]])))
    # three different hashes whose XORs with their neighbours meet in 16 zero bytes
    # across a hash boundary: the exact check must say no
    near = [bytes(8) + bytes([5]) * 8, bytes([1]) * 8 + bytes([5]) * 8, bytes([1]) * 8 + bytes([9]) * 8]
    assert not idx._adjacent_equal(b"".join(near))
