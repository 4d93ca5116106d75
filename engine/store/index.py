"""The page index: xxh3-128 hash -> (pack id, offset, record length).

The index is a small log-structured set of immutable *segment* files
``index/FFFFFFFF-LLLLLLLL.idx``. Each import adds one segment holding the
pages it stored; a segment covers the range of segment numbers
``[first, last]`` it was built from, and a segment whose range lies inside
another's has been merged into it and is ignored (deleted by the next
writer). Segments are merged size-tiered: once the four newest segments are
of one size class (the largest under four times the smallest), they become
one, a class up. So a page is rewritten once per factor of four the store
grows by, and a store holds at most three segments per size class (never
more than ten: past that the newest are merged regardless).

A segment is laid out like git's pack ``.idx`` so it opens in O(1) with
``mmap`` and answers a lookup with two ``struct`` reads and one ``find``::

    header   32 bytes  b"SBTUIIDX", u32 version, u32 fanout bits B, u64 count N,
                       u32 pack count P, u32 flags
    fanout   (2**B + 1) x u32: entry number of the first hash whose top B bits
             are >= k, so bucket k is entries fanout[k] .. fanout[k+1]
    hashes   N x 16 bytes, sorted
    entries  N x (u32 pack, u64 offset, u32 length), in hash order
    packs    P x (u32 pack, u64 committed length)
    trailer  xxh3-128 of everything before it

B is chosen so a bucket holds about eight hashes. Measured on this machine
(benchmarks/bench_index.py): for 1 M pages, opening the mmap'd segment
(including the checksum of its 32 MB) takes milliseconds and a lookup about a
microsecond, where loading the same entries into a dict takes most of a second
and a few hundred MB.

The ``packs`` table records how long each pack was when the segment was
written: every byte of a pack beyond the longest committed length is an
interrupted append that no checkpoint references.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
import threading
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Iterable, Iterator

import xxhash

from engine.errors import FormatVersionError, IntegrityError, StoreError
from engine.store.fsutil import atomic_write

IDX_MAGIC = b"SBTUIIDX"
IDX_VERSION = 1
IDX_HEADER = struct.Struct("<8sIIQII")
ENTRY = struct.Struct("<IQI")
PACK_LEN = struct.Struct("<IQ")
FAN = struct.Struct("<II")
_U32 = struct.Struct("<I")
TRAILER = 16
MAX_FANOUT_BITS = 22
MERGE_RATIO = 4
MERGE_MIN = 4        # merge only once this many segments of similar size gathered
MAX_SEGMENTS = 10
MERGE_CHUNK = 1 << 14   # entries sorted at once by a merge, about
_LITTLE = sys.byteorder == "little"

Entry = tuple[int, int, int]  # pack id, offset, record length


def segment_name(first: int, last: int) -> str:
    return f"{first:08d}-{last:08d}.idx"


def parse_segment_name(name: str) -> tuple[int, int] | None:
    if not name.endswith(".idx"):
        return None
    a, dash, b = name[:-4].partition("-")
    if not dash or len(a) != 8 or len(b) != 8 or not a.isdigit() or not b.isdigit():
        return None
    first, last = int(a), int(b)
    return (first, last) if first <= last else None


def _fanout_bits(count: int) -> int:
    return min(MAX_FANOUT_BITS, (count // 8).bit_length())


def pack_entries(entries: Iterable[Entry]) -> bytes:
    """``ENTRY``-packed (pack, offset, length) triples, concatenated: columns
    built as arrays and interleaved with strided copies (no struct call each)."""
    rows = list(entries)
    pids = array("I", map(itemgetter(0), rows))
    offsets = array("Q", map(itemgetter(1), rows))
    lengths = array("I", map(itemgetter(2), rows))
    if not _LITTLE:
        for a in (pids, offsets, lengths):
            a.byteswap()
    out = bytearray(ENTRY.size * len(rows))
    at = 0
    for col, width in ((pids, 4), (offsets, 8), (lengths, 4)):
        raw = col.tobytes()
        for j in range(width):
            out[at + j::ENTRY.size] = raw[j::width]
        at += width
    return bytes(out)


_REC = 16 + ENTRY.size   # a hash and its entry side by side (merges)


def _interleave(hashes: bytes, entries: bytes) -> bytearray:
    """Records of ``_REC`` bytes, each hash followed by its entry (strided copies)."""
    out = bytearray(len(hashes) + len(entries))
    for j in range(16):
        out[j::_REC] = hashes[j::16]
    for j in range(ENTRY.size):
        out[16 + j::_REC] = entries[j::ENTRY.size]
    return out


def _deinterleave(recs: bytes) -> tuple[bytearray, bytearray]:
    """The inverse of :func:`_interleave`."""
    n = len(recs) // _REC
    hashes, entries = bytearray(16 * n), bytearray(ENTRY.size * n)
    for j in range(16):
        hashes[j::16] = recs[j::_REC]
    for j in range(ENTRY.size):
        entries[j::ENTRY.size] = recs[16 + j::_REC]
    return hashes, entries


def _adjacent_equal(hashes: bytes | bytearray) -> bool:
    """Does the sorted run of 16-byte ``hashes`` hold one hash twice (side by side)?

    The run XOR itself shifted by one hash shows an aligned run of 16 zero
    bytes exactly there: C work over the whole run, no step per hash. (An
    unaligned run of zeros only sends it to the exact check.)
    """
    if len(hashes) <= 16:
        return False
    x = int.from_bytes(hashes[16:], "little") ^ int.from_bytes(hashes[:-16], "little")
    if bytes(16) not in x.to_bytes(len(hashes) - 16, "little"):
        return False
    return any(hashes[i:i + 16] == hashes[i + 16:i + 32] for i in range(0, len(hashes) - 16, 16))


def _newest_wins(parts: list[bytes]) -> list[bytes]:
    """Sorted records of ``parts`` (newest first) with one record per hash, the newest."""
    table: dict[bytes, bytes] = {}
    for blob in map(bytes, reversed(parts)):
        for i in range(0, len(blob), _REC):
            table[blob[i:i + 16]] = blob[i:i + _REC]
    return [table[h] for h in sorted(table)]


def encode_segment(hashes: list[bytes], entries: list[bytes],
                   pack_lengths: dict[int, int]) -> bytes:
    """Serialise a segment; ``hashes`` sorted, ``entries`` packed ENTRY structs."""
    return encode_segment_blobs(b"".join(hashes), b"".join(entries), pack_lengths)


def _bucket_starts(prefixes: array, shift: int, buckets: int) -> list[int]:
    """Per bucket ``k``, the first of the sorted ``prefixes`` that is ``>= k << shift``.

    A bucket holds about eight hashes, so each search looks a little past
    where the last one ended first, and the whole rest only when the bucket
    is larger than that.
    """
    out = []
    lo = 0
    count = len(prefixes)
    for k in range(buckets):
        target = k << shift
        hi = lo + 64
        if hi >= count or prefixes[hi - 1] >= target:
            lo = bisect_left(prefixes, target, lo, min(hi, count))
        else:
            lo = bisect_left(prefixes, target, hi, count)
        out.append(lo)
    return out


def encode_segment_blobs(hashes: bytes | bytearray, entries: bytes | bytearray,
                         pack_lengths: dict[int, int]) -> bytes:
    """Serialise a segment from its sorted hashes and their entries, each concatenated."""
    count = len(hashes) // 16
    if len(hashes) != 16 * count or len(entries) != ENTRY.size * count:
        raise ValueError("hashes and entries differ in count")
    bits = _fanout_bits(count)
    shift = 32 - bits
    # bucket k starts at the first hash whose top bits are >= k: a binary
    # search per bucket over the hashes' 32-bit prefixes (gathered with
    # strided slices), not a Python step per hash
    gathered = bytearray(4 * count)
    for j in range(4):
        gathered[j::4] = hashes[j::16]
    prefixes = array("I")
    prefixes.frombytes(bytes(gathered))
    if _LITTLE:
        prefixes.byteswap()
    buckets = _bucket_starts(prefixes, shift, 1 << bits) + [count]
    out = bytearray(IDX_HEADER.pack(IDX_MAGIC, IDX_VERSION, bits, count, len(pack_lengths), 0))
    out += struct.pack(f"<{len(buckets)}I", *buckets)
    out += hashes
    out += entries
    for pack_id in sorted(pack_lengths):
        out += PACK_LEN.pack(pack_id, pack_lengths[pack_id])
    out += xxhash.xxh3_128_digest(out)
    return bytes(out)


class Segment:
    """One mmap'd, checksum-verified index segment."""

    def __init__(self, path: Path):
        self.path = path
        rng = parse_segment_name(path.name)
        if rng is None:
            raise StoreError(f"{path}: not an index segment name")
        self.first, self.last = rng
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < IDX_HEADER.size + 4 + TRAILER:
                raise IntegrityError(f"index segment {path} is truncated ({size} bytes)", offset=0)
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mm = self._mm
        try:
            magic, version, bits, count, npacks, _flags = IDX_HEADER.unpack_from(mm)
            if magic != IDX_MAGIC:
                raise IntegrityError(f"index segment {path}: bad magic {magic!r}", offset=0)
            if version != IDX_VERSION:
                raise FormatVersionError(f"{path}: index format version {version}, "
                                         f"this sbtui reads version {IDX_VERSION}")
            if bits > MAX_FANOUT_BITS:
                raise IntegrityError(f"index segment {path}: fanout of {bits} bits", offset=12)
            self.fan_off = IDX_HEADER.size
            self.hash_off = self.fan_off + 4 * ((1 << bits) + 1)
            self.entry_off = self.hash_off + 16 * count
            self.pack_off = self.entry_off + ENTRY.size * count
            expect = self.pack_off + PACK_LEN.size * npacks + TRAILER
            if size != expect:
                raise IntegrityError(f"index segment {path} is {size} bytes, its header "
                                     f"implies {expect}", offset=0)
            if xxhash.xxh3_128_digest(memoryview(mm)[:-TRAILER]) != mm[-TRAILER:]:
                raise IntegrityError(f"index segment {path} fails its checksum", offset=size - TRAILER)
            if FAN.unpack_from(mm, self.hash_off - 8)[1] != count:
                raise IntegrityError(f"index segment {path}: fanout table does not end at "
                                     f"{count}", offset=self.hash_off - 4)
        except BaseException:
            mm.close()
            raise
        self.bits = bits
        self.shift = 32 - bits
        self.count = count
        self.pack_lengths = {
            pid: length for pid, length in
            (PACK_LEN.unpack_from(mm, self.pack_off + PACK_LEN.size * i) for i in range(npacks))}

    def close(self) -> None:
        self._mm.close()

    def lookup(self, digest: bytes) -> Entry | None:
        mm = self._mm
        bucket = int.from_bytes(digest[:4], "big") >> self.shift if self.bits else 0
        lo, hi = FAN.unpack_from(mm, self.fan_off + 4 * bucket)
        if lo >= hi:
            return None
        base = self.hash_off
        end = base + 16 * hi
        i = mm.find(digest, base + 16 * lo, end)
        while i >= 0 and (i - base) & 15:   # a match straddling two hashes
            i = mm.find(digest, i + 1, end)
        if i < 0:
            return None
        return ENTRY.unpack_from(mm, self.entry_off + (i - base))

    def hash_blob(self) -> bytes:
        """All hashes of the segment, sorted and concatenated (16 bytes each)."""
        return self._mm[self.hash_off:self.entry_off]

    def bucket_range(self, prefix: int, bits: int) -> tuple[int, int]:
        """Entry numbers ``[lo, hi)`` of the hashes whose top ``bits`` bits are
        ``prefix`` (``bits`` at most this segment's fanout bits)."""
        if bits == 0:
            return 0, self.count
        shift = self.bits - bits
        lo = _U32.unpack_from(self._mm, self.fan_off + 4 * (prefix << shift))[0]
        hi = _U32.unpack_from(self._mm, self.fan_off + 4 * ((prefix + 1) << shift))[0]
        return lo, min(hi, self.count)

    def records(self, lo: int, hi: int) -> bytearray:
        """Entries ``lo`` to ``hi`` as hash-and-entry records (see ``_interleave``)."""
        mm, h, e = self._mm, self.hash_off, self.entry_off
        return _interleave(mm[h + 16 * lo:h + 16 * hi],
                           mm[e + ENTRY.size * lo:e + ENTRY.size * hi])

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """(hash, packed entry) pairs in hash order."""
        mm = self._mm
        h, e = self.hash_off, self.entry_off
        for k in range(self.count):
            yield mm[h + 16 * k:h + 16 * k + 16], mm[e + 16 * k:e + 16 * k + 16]


class AbsenceFilter:
    """Pages the index surely does not hold, answered without touching a segment.

    One bit per slot of ``hash(digest)`` (Python's own hash of the bytes
    object, cached in it, randomised per process: the filter lives in memory
    only). A clear bit proves absence; a set bit only means "maybe". An
    import's new pages are misses, and a miss in the segments costs a probe
    of each of them (about 0.5 us each, up to ten segments): this turns most
    into one bit test. At least 16 bits per hash (a few per cent false
    positives); it doubles when it gets fuller than that.
    """

    MIN_BITS = 1 << 23     # 1 MiB: half a million pages before it first grows

    def __init__(self, count: int):
        bits = self.MIN_BITS
        while bits < 16 * count:
            bits <<= 1
        self.mask = bits - 1
        self.bits = bytearray(bits >> 3)
        self.count = 0

    def full(self) -> bool:
        return self.count * 16 > self.mask + 1

    def add(self, digests: Iterable[bytes]) -> None:
        bits, mask = self.bits, self.mask
        n = 0
        for d in digests:
            x = hash(d) & mask
            bits[x >> 3] |= 1 << (x & 7)
            n += 1
        self.count += n

    def add_blob(self, blob: bytes) -> None:
        """Add the 16-byte hashes concatenated in ``blob``."""
        self.add(blob[i:i + 16] for i in range(0, len(blob), 16))

    def __contains__(self, digest: bytes) -> bool:
        x = hash(digest) & self.mask
        return bool(self.bits[x >> 3] >> (x & 7) & 1)


class Index:
    """The live segments of ``index/``.

    Readers call :meth:`refresh` to see segments a writer added since; only
    the writer holding the store lock calls the methods that write.
    """

    def __init__(self, directory: Path, *, strict: bool = True):
        self.directory = directory
        self.strict = strict
        self.damaged: dict[str, str] = {}    # segment name -> what is wrong (strict=False)
        self._segments: list[Segment] = []   # newest first
        self._by_size: list[Segment] = []    # the same, largest first (for lookups)
        # Built on demand by use_filter() (the importer): the hashes of every
        # live segment, and the ranges of the segments whose hashes are in it.
        self._filter: AbsenceFilter | None = None
        self._filtered: set[tuple[int, int]] = set()
        self.generation: tuple[str, ...] = ()
        self._mutex = threading.Lock()
        self.refresh()

    # -- reading -----------------------------------------------------------

    def refresh(self) -> bool:
        """Re-read the directory; True if the set of live segments changed.

        Segments that are no longer live are dropped, not closed: another
        thread may be in the middle of a lookup on them, and the mmap closes
        itself once nothing refers to it.
        """
        with self._mutex:
            return self._refresh()

    def _refresh(self) -> bool:
        for _attempt in range(20):
            names = [n for n in os.listdir(self.directory) if parse_segment_name(n)]
            live = _live_ranges([parse_segment_name(n) for n in names])
            want = tuple(segment_name(a, b) for a, b in sorted(live, key=lambda r: -r[1]))
            if want == self.generation:
                return False
            have = {s.path.name: s for s in self._segments}
            new: list[Segment] = []
            damaged: dict[str, str] = {}
            try:
                for name in want:
                    if name in have:
                        new.append(have.pop(name))
                        continue
                    try:
                        new.append(Segment(self.directory / name))
                    except StoreError as err:
                        if self.strict:
                            hint = "; `sbtui store fsck --repair` rebuilds the index from the packs"
                            if isinstance(err, IntegrityError):
                                raise IntegrityError(str(err).split(": ", 1)[-1] + hint,
                                                     offset=err.offset) from None
                            raise
                        damaged[name] = str(err)
            except FileNotFoundError:
                continue   # a writer merged it away between listdir and open: list again
            # The filter must know every page of the new segments before a
            # lookup can see them (lookups read both without the lock).
            if self._filter is not None:
                self._update_filter(new)
            # Live segments never disagree about a page (a gc base supersedes
            # everything before it), so lookups may try them in any order:
            # the largest first is the likeliest hit.
            self._by_size = sorted(new, key=lambda seg: -seg.count)
            self._segments = new
            self.damaged = damaged
            self.generation = want
            return True
        raise StoreError(f"{self.directory}: index kept changing while being read")

    def close(self) -> None:
        for seg in self._segments:
            seg.close()
        self._segments = []
        self._by_size = []
        self.generation = ()
        self._filter = None
        self._filtered = set()

    def lookup(self, digest: bytes) -> Entry | None:
        f = self._filter
        if f is not None and digest not in f:
            return None
        for seg in self._by_size:
            hit = seg.lookup(digest)
            if hit is not None:
                return hit
        return None

    def use_filter(self) -> None:
        """Answer most misses from an in-memory :class:`AbsenceFilter` from now on.

        For a writer, whose new pages are all misses: building it reads every
        hash of the index once (about 0.2 us each); it then follows the
        segments this process adds and sees.
        """
        with self._mutex:
            if self._filter is None:
                self._update_filter(self._segments)

    def _update_filter(self, segments: list[Segment]) -> None:
        f = self._filter
        total = sum(seg.count for seg in segments)   # at least the distinct pages
        todo = [seg for seg in segments if not self._in_filter(seg.first, seg.last)]
        if f is None or total * 16 > f.mask + 1:
            f = AbsenceFilter(total)                  # (re)build, larger
            self._filtered = set()
            todo = segments
        for seg in todo:
            f.add_blob(seg.hash_blob())
            self._filtered.add((seg.first, seg.last))
        f.count = total
        self._filter = f

    def _in_filter(self, first: int, last: int) -> bool:
        """Are the pages of segment ``first-last`` in the filter already?

        Yes when it was added itself, or when it is a merge (or gc base) of
        segments that all were: a merge's range is its sources' ranges, which
        tile ``first .. last - 1``, plus the fresh number ``last``.
        """
        if (first, last) in self._filtered:
            return True
        if first == last:
            return False
        need = first
        for a, b in sorted(r for r in self._filtered if first <= r[0] and r[1] < last):
            if a > need:
                return False
            need = max(need, b + 1)
        return need >= last

    def __contains__(self, digest: bytes) -> bool:
        return self.lookup(digest) is not None

    @property
    def segments(self) -> list[Segment]:
        return list(self._segments)

    def entry_count(self) -> int:
        return sum(s.count for s in self._segments)

    def committed_lengths(self) -> dict[int, int]:
        lengths: dict[int, int] = {}
        for seg in self._segments:
            for pid, length in seg.pack_lengths.items():
                if length > lengths.get(pid, -1):
                    lengths[pid] = length
        return lengths

    def items(self) -> Iterator[tuple[bytes, Entry]]:
        """Every (hash, entry) once; a newer segment's entry wins."""
        if len(self._segments) == 1:
            for h, e in self._segments[0].items():
                yield h, ENTRY.unpack(e)
            return
        seen: set[bytes] = set()
        for seg in self._segments:
            for h, e in seg.items():
                if h not in seen:
                    seen.add(h)
                    yield h, ENTRY.unpack(e)

    # -- writing (store lock held) -----------------------------------------

    def _next_number(self) -> int:
        numbers = [parse_segment_name(n) for n in os.listdir(self.directory)]
        return max((r[1] for r in numbers if r), default=0) + 1

    def add(self, new: dict[bytes, Entry], pack_lengths: dict[int, int]) -> int:
        """Commit one import's pages as a new segment, then merge if due; returns its size."""
        n = self._next_number()
        hashes = sorted(new)
        data = encode_segment_blobs(b"".join(hashes), pack_entries(map(new.__getitem__, hashes)),
                                    pack_lengths)
        name = segment_name(n, n)
        with self._mutex:
            f = self._filter
            if f is not None and not f.full():
                f.add(hashes)                 # cheaper than re-reading them from the file
                self._filtered.add((n, n))
        atomic_write(self.directory / name, data)
        self.refresh()
        self._merge_if_due()
        return len(data)

    def _merge_if_due(self) -> None:
        # A merge makes a segment of the next size class, which may in turn
        # complete a run there: cascade (at most one step per size class).
        while len(self._segments) > 1:
            segs = self._segments  # newest first
            # the newest run of segments of one size class (largest < 4 x smallest)
            k, lo, hi = 1, segs[0].count, segs[0].count
            while k < len(segs):
                c = segs[k].count
                if max(hi, c) >= MERGE_RATIO * max(min(lo, c), 1):
                    break
                lo, hi, k = min(lo, c), max(hi, c), k + 1
            if k >= MERGE_MIN:
                self._merge(segs[:k])
            elif len(segs) > MAX_SEGMENTS:
                self._merge(segs[:len(segs) - MAX_SEGMENTS + 2])
            else:
                return

    def _merge(self, segs: list[Segment]) -> None:
        """One segment from ``segs`` (newest first), a slice of hashes at a time.

        Each segment is sorted and its fanout table says where every hash
        prefix starts, so the segments are cut at the same prefixes into
        chunks of about ``MERGE_CHUNK`` entries; a chunk's records (hash and
        entry side by side) are sorted with ``list.sort``, which finds the
        sorted runs and merges them in C. Memory stays flat: one chunk besides
        the output. Where two segments hold the same page (only after a crash
        mid-merge) the newer one's entry wins.
        """
        lengths: dict[int, int] = {}
        for seg in segs:
            for pid, length in seg.pack_lengths.items():
                lengths[pid] = max(length, lengths.get(pid, 0))
        total = sum(seg.count for seg in segs)
        bits = min([seg.bits for seg in segs] + [(total // MERGE_CHUNK).bit_length()])
        hashes, entries = bytearray(), bytearray()
        ends = [0] * len(segs)     # how far each segment has been taken
        for chunk in range(1 << bits):
            parts = []
            for k, seg in enumerate(segs):
                lo, hi = seg.bucket_range(chunk, bits)
                if lo != ends[k] or hi < lo:
                    raise IntegrityError(f"index segment {seg.path}: fanout table is not "
                                         f"monotonic at prefix {chunk}", offset=seg.fan_off)
                ends[k] = hi
                if hi > lo:
                    parts.append(seg.records(lo, hi))
            if not parts:
                continue
            blob = b"".join(parts)
            recs = [blob[i:i + _REC] for i in range(0, len(blob), _REC)]
            recs.sort()
            h, e = _deinterleave(b"".join(recs))
            if _adjacent_equal(h):
                recs = _newest_wins(parts)
                h, e = _deinterleave(b"".join(recs))
            for r in (recs[0], recs[-1]):
                if bits and int.from_bytes(r[:4], "big") >> (32 - bits) != chunk:
                    raise IntegrityError(f"index segments {segs[0].path.name}..: a hash outside "
                                         f"its fanout bucket", offset=0)
            hashes += h
            entries += e
        for k, seg in enumerate(segs):
            if ends[k] != seg.count:
                raise IntegrityError(f"index segment {seg.path}: fanout table ends at "
                                     f"{ends[k]}, the segment holds {seg.count}", offset=seg.fan_off)
        first = min(s.first for s in segs)
        data = encode_segment_blobs(hashes, entries, lengths)
        del hashes, entries
        atomic_write(self.directory / segment_name(first, self._next_number()), data)
        self.refresh()
        self.remove_superseded()

    def replace_all(self, entries: Iterable[tuple[bytes, Entry]], pack_lengths: dict[int, int]) -> None:
        """Write one segment that supersedes every existing one (gc, rebuild)."""
        with self._mutex:
            self._filter = None           # pages went away: use_filter() builds a new one
            self._filtered = set()
        table = {h: ENTRY.pack(*e) for h, e in entries}
        hashes = sorted(table)
        last = self._next_number()
        atomic_write(self.directory / segment_name(0, last),
                     encode_segment(hashes, [table[h] for h in hashes], pack_lengths))
        self.refresh()
        self.remove_superseded()

    def remove_superseded(self) -> list[str]:
        """Delete segment files that a live segment's range covers."""
        names = [n for n in os.listdir(self.directory) if parse_segment_name(n)]
        live = {segment_name(a, b) for a, b in _live_ranges([parse_segment_name(n) for n in names])}
        removed = []
        for name in names:
            if name not in live:
                try:
                    os.unlink(self.directory / name)
                    removed.append(name)
                except FileNotFoundError:
                    pass
        return removed

    def superseded_files(self) -> list[str]:
        names = [n for n in os.listdir(self.directory) if parse_segment_name(n)]
        live = {segment_name(a, b) for a, b in _live_ranges([parse_segment_name(n) for n in names])}
        return sorted(n for n in names if n not in live)


def _live_ranges(ranges: list[tuple[int, int] | None]) -> list[tuple[int, int]]:
    """Ranges not inside another, larger range."""
    rs = sorted({r for r in ranges if r}, key=lambda r: (r[0], -r[1]))
    live: list[tuple[int, int]] = []
    reach = -1
    for a, b in rs:
        if b <= reach:
            continue   # inside a range that starts earlier (or at the same place and is wider)
        live.append((a, b))
        reach = b
    return live


@dataclass(slots=True)
class IndexStats:
    segments: int
    entries: int
    bytes: int
