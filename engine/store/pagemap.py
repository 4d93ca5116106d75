"""Page maps and the deltas between them.

A page map says, for every page of every RAM block, what the page held at a
checkpoint: a 16-byte xxh3-128 hash, or one of two sentinels that no stored
page may hash to (the store refuses such a page, probability 2**-127):

* :data:`ZERO`   (16 x 0xff) the page is all zeros and was never stored;
* :data:`ABSENT` (16 x 0x00) the stream did not send the page.

In memory a block's map is one ``bytearray`` of 16-byte entries, so a 1 GiB
guest's map is 4 MiB and two maps compare at memcmp speed.

A :data:`Delta` holds, per block of the child, the block's page count and the
entries that differ from the parent (``array('I')`` of page indices and
their 16-byte entries, concatenated). Every block of the child appears in
its delta, even with no changes, so a delta fully determines the child's
shape; applying it to the parent's map gives the child's map.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

from engine.errors import NotFoundError

ENTRY = 16
ZERO = b"\xff" * ENTRY
ABSENT = b"\x00" * ENTRY
_CHUNK = 256   # entries compared at once before looking at single entries...
_SUB = 16      # ...and then this many
_SAME = bytes(ENTRY)   # an entry XOR an equal one


@dataclass(slots=True)
class BlockDelta:
    pages: int          # page count of the block in the child
    indices: array      # array('I') of changed page indices, ascending
    entries: bytes      # len(indices) x 16 bytes

    def __len__(self) -> int:
        return len(self.indices)


Delta = dict[str, BlockDelta]


class PageMap:
    """Per block, hash-or-zero for every page of a checkpoint."""

    __slots__ = ("_blocks",)

    def __init__(self, blocks: dict[str, bytearray] | None = None):
        self._blocks: dict[str, bytearray] = blocks if blocks is not None else {}

    def blocks(self) -> list[str]:
        return list(self._blocks)

    def __contains__(self, block: str) -> bool:
        return block in self._blocks

    def page_count(self, block: str) -> int:
        return len(self._block(block)) // ENTRY

    def entry(self, block: str, page: int) -> bytes:
        """The raw 16-byte entry (a hash, :data:`ZERO` or :data:`ABSENT`)."""
        m = self._block(block)
        if not 0 <= page < len(m) // ENTRY:
            raise NotFoundError(f"page {page} is outside RAM block {block!r} "
                                f"({len(m) // ENTRY} pages)")
        return bytes(m[page * ENTRY:page * ENTRY + ENTRY])

    def get(self, block: str, page: int) -> bytes | None:
        """The page's hash, or None for a zero page; NotFoundError if never sent."""
        e = self.entry(block, page)
        if e == ZERO:
            return None
        if e == ABSENT:
            raise NotFoundError(f"page {page} of RAM block {block!r} is not in this checkpoint")
        return e

    def raw(self, block: str) -> bytes:
        """All entries of a block, 16 bytes each (for heatmaps and bulk compares)."""
        return bytes(self._block(block))

    def hashes(self) -> set[bytes]:
        """Every stored page hash the map refers to (no sentinels)."""
        out: set[bytes] = set()
        for m in self._blocks.values():
            b = bytes(m)
            out.update(b[i:i + ENTRY] for i in range(0, len(b), ENTRY))
        out.discard(ZERO)
        out.discard(ABSENT)
        return out

    def counts(self) -> dict[str, int]:
        """Totals over all blocks: pages, zero pages, absent pages."""
        pages = zero = absent = 0
        for m in self._blocks.values():
            n = len(m) // ENTRY
            pages += n
            for i in range(0, len(m), ENTRY * _CHUNK):
                chunk = bytes(m[i:i + ENTRY * _CHUNK])
                zero += _count_entries(chunk, ZERO)
                absent += _count_entries(chunk, ABSENT)
        return {"pages": pages, "zero": zero, "absent": absent}

    def copy(self) -> "PageMap":
        return PageMap({b: bytearray(m) for b, m in self._blocks.items()})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PageMap) and self._blocks == other._blocks

    def _block(self, block: str) -> bytearray:
        try:
            return self._blocks[block]
        except KeyError:
            raise NotFoundError(f"no RAM block {block!r} in this checkpoint "
                                f"(blocks: {', '.join(self._blocks) or 'none'})") from None

    # used by the store while building a map
    def _raw_blocks(self) -> dict[str, bytearray]:
        return self._blocks


def _count_entries(chunk: bytes, entry: bytes) -> int:
    if entry not in chunk:
        return 0
    return sum(1 for i in range(0, len(chunk), ENTRY) if chunk[i:i + ENTRY] == entry)


def _all_differ(a: bytes | bytearray, b: bytes | bytearray) -> bool:
    """Does every entry of ``a`` differ from the entry at the same place in ``b``?

    Yes when the XOR of the two holds no entry-sized run of zero bytes (an
    equal entry is one, aligned): a few C operations over the whole stretch
    instead of a Python step per entry. No does not say which entries are
    equal; the caller then compares them one by one.
    """
    x = int.from_bytes(a, "little") ^ int.from_bytes(b, "little")
    return _SAME not in x.to_bytes(len(a), "little")


def diff(parent: PageMap | None, child: PageMap) -> Delta:
    """The entries of ``child`` that differ from ``parent`` (None: an empty map)."""
    old_blocks = parent._raw_blocks() if parent is not None else {}
    delta: Delta = {}
    for name, new in child._raw_blocks().items():
        old = old_blocks.get(name, b"")
        n = len(new) // ENTRY
        common = min(n, len(old) // ENTRY)
        idx = array("I")
        out = bytearray()
        step = ENTRY * _CHUNK
        sub = ENTRY * _SUB
        for a in range(0, common * ENTRY, step):
            b = min(a + step, common * ENTRY)
            na, oa = new[a:b], old[a:b]
            if na == oa:
                continue
            if _all_differ(na, oa):         # a dirty stretch: taken whole
                idx.extend(range(a // ENTRY, b // ENTRY))
                out += na
                continue
            for c in range(a, b, sub):      # then smaller chunks, then single entries
                d = min(c + sub, b)
                nc, oc = new[c:d], old[c:d]
                if nc == oc:
                    continue
                if _all_differ(nc, oc):
                    idx.extend(range(c // ENTRY, d // ENTRY))
                    out += nc
                    continue
                for p in range(c, d, ENTRY):
                    e = new[p:p + ENTRY]
                    if e != old[p:p + ENTRY]:
                        idx.append(p // ENTRY)
                        out += e
        for p in range(common * ENTRY, n * ENTRY, ENTRY):
            e = new[p:p + ENTRY]
            if e != ABSENT:
                idx.append(p // ENTRY)
                out += e
        delta[name] = BlockDelta(n, idx, bytes(out))
    return delta


def apply(base: PageMap | None, delta: Delta) -> PageMap:
    """``base`` with ``delta`` applied, as a new map (``base`` is not changed)."""
    old_blocks = base._raw_blocks() if base is not None else {}
    blocks: dict[str, bytearray] = {}
    for name, d in delta.items():
        m = bytearray(old_blocks.get(name, b""))
        want = d.pages * ENTRY
        if len(m) > want:
            del m[want:]
        elif len(m) < want:
            m += bytes(want - len(m))   # ABSENT is all zero bytes
        _apply_block(m, d)
        blocks[name] = m
    return PageMap(blocks)


def apply_in_place(m: PageMap, delta: Delta) -> PageMap:
    """Like :func:`apply` but reuses ``m``'s buffers (``m`` must not be shared)."""
    blocks = m._raw_blocks()
    for name in list(blocks):
        if name not in delta:
            del blocks[name]
    for name, d in delta.items():
        b = blocks.setdefault(name, bytearray())
        want = d.pages * ENTRY
        if len(b) > want:
            del b[want:]
        elif len(b) < want:
            b += bytes(want - len(b))
        _apply_block(b, d)
    return m


def _apply_block(m: bytearray, d: BlockDelta) -> None:
    e = d.entries
    idx = d.indices
    n = len(idx)
    k = 0
    while k < n:   # consecutive pages (dirty pages come in stretches) in one slice each
        i = idx[k]
        j = k + 1
        while j < n and idx[j] == i + j - k:
            j += 1
        m[i * ENTRY:(i + j - k) * ENTRY] = e[k * ENTRY:j * ENTRY]
        k = j


def delta_hashes(delta: Delta) -> set[bytes]:
    out: set[bytes] = set()
    for d in delta.values():
        e = d.entries
        out.update(e[i:i + ENTRY] for i in range(0, len(e), ENTRY))
    out.discard(ZERO)
    out.discard(ABSENT)
    return out


def delta_size(delta: Delta) -> int:
    return sum(len(d) for d in delta.values())
