"""Compare guest RAM: a migration stream against a checkpoint in the store.

:func:`diff_stream_against` hashes every RAM page record of a stream (xxh3-128,
as the store does) and compares it page by page with the store's composed page
map of a checkpoint. A page of zeros counts as zero whether the stream sent it
as a ZERO record or as a PAGE of zeros. Blocks and page counts must match.

Returns the differing pages (block, page index), all of them counted and the
first few listed, so a failed interval names where the states part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO

import xxhash

from engine.store.pagemap import ABSENT, ZERO
from engine.stream.migration import split_stream
from engine.stream.model import PAGE_SIZE

_ZERO_PAGE = bytes(PAGE_SIZE)
_ZERO_PAGE_HASH = xxhash.xxh3_128_digest(_ZERO_PAGE)
FIRST_DIFFS = 16


@dataclass
class RamDiff:
    pages_compared: int = 0
    pages_differing: int = 0
    first: list[tuple[str, int]] = field(default_factory=list)  # (block, page index)
    shape: str = ""   # why the block layouts differ, when they do

    @property
    def equal(self) -> bool:
        return self.pages_differing == 0 and not self.shape

    def summary(self) -> str:
        if self.shape:
            return self.shape
        if self.equal:
            return f"all {self.pages_compared} pages equal"
        where = ", ".join(f"{b}+{p * PAGE_SIZE:#x}" for b, p in self.first)
        return (f"{self.pages_differing} of {self.pages_compared} pages differ; "
                f"first: {where}")


def _norm(entry: bytes) -> bytes:
    return ZERO if entry == _ZERO_PAGE_HASH else entry


def diff_stream_against(src: BinaryIO, store, checkpoint_id: str) -> RamDiff:
    """RAM of the stream ``src`` against the store's checkpoint ``checkpoint_id``."""
    expected = store.page_map(checkpoint_id)
    diff = RamDiff()
    split = split_stream(src)
    for rec in split.pages():
        if rec.block not in expected:
            diff.shape = f"RAM block {rec.block!r} is not in checkpoint {checkpoint_id}"
            break
        page = rec.offset // PAGE_SIZE
        if rec.data is None or rec.data == _ZERO_PAGE:
            got = ZERO
        else:
            got = xxhash.xxh3_128_digest(rec.data)
        want = _norm(expected.entry(rec.block, page))
        diff.pages_compared += 1
        if got != want and want != ABSENT:
            diff.pages_differing += 1
            if len(diff.first) < FIRST_DIFFS:
                diff.first.append((rec.block, page))
    else:
        for block in split.blocks:
            if block.name not in expected:
                diff.shape = f"RAM block {block.name!r} is not in checkpoint {checkpoint_id}"
            elif expected.page_count(block.name) != block.length // PAGE_SIZE:
                diff.shape = (f"RAM block {block.name!r} has {block.length // PAGE_SIZE} pages, "
                              f"checkpoint {checkpoint_id} has {expected.page_count(block.name)}")
    return diff
