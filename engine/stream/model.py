"""The contract between the migration-stream codec and the page store.

A stream is split into two parts that together rebuild it byte for byte:

* the RAM page records, handed out one by one in stream order as
  :class:`PageRecord` (block, byte offset, 4 KiB payload or ``None`` for a
  zero page), which the store deduplicates by content;
* the *skeleton*: opaque bytes owned by the codec holding everything else
  (prologue, configuration, section headers and footers, RAM block list, the
  order and addressing of the page records, device state, trailing JSON).
  It does not hold page contents and not whether a record was ZERO or PAGE:
  that comes back from the page source when reassembling. Its size grows with
  the number of *runs* of consecutive page records, not with RAM size.

Splitting (``engine.stream.migration.split_stream``) reads a file object once,
streaming: memory stays bounded by one section, not by the stream size.
Reassembling (``engine.stream.migration.assemble_stream``) asks a
:data:`PageSource` for each page record, in stream order.

The run-based fast path (for the store, where per-page Python calls are the
cost): ``runs()`` hands out the same records grouped as :class:`PageRun`
(consecutive pages of one block, all ZERO or all PAGE), and a page source
that also has a ``runs`` method (a :data:`RunSource`) is asked once per run
of the skeleton instead of once per record, and answers with zero counts and
pages. Both paths describe the same records and rebuild the same bytes.

Failures: a stream that does not parse raises ``StreamError`` (or
``TruncatedStreamError``) out of the ``pages()`` (or ``runs()``) iteration,
never a quietly shorter result, so an importer can discard what it took so
far; the records before the fault come out first. The skeleton
records the original stream's length and hash; ``assemble_stream`` raises
``IntegrityError`` (after writing) when the page source's pages do not rebuild it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol

PAGE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class RamBlock:
    """A RAM block as the stream's MEM_SIZE record lists it."""

    name: str
    length: int  # used length in bytes


@dataclass(slots=True)
class PageRecord:
    """One RAM page record of the stream, in stream order.

    ``index`` counts page records from 0 across the whole stream, so a page
    that a stream sends twice (live migration can) is told apart.
    ``data`` is the 4096-byte payload, or ``None`` for a ZERO record.
    """

    index: int
    block: str
    offset: int
    data: bytes | None


@dataclass(slots=True)
class PageRun:
    """``count`` consecutive page records of one RAM block, all ZERO or all PAGE.

    Record ``index + k`` is the page at byte ``offset + k * 4096`` of ``block``.
    For PAGE records, payload ``k`` is ``data[start + k * stride:][:4096]``
    (``stride`` is 4096 when the payloads are concatenated; a codec that hands
    out views into its read buffer uses the record length, skipping the record
    headers without copying). ``data`` is None for ZERO records.

    ``data`` is a read-only view that stays valid after the iteration moves on
    (it keeps its buffer alive), so hold on to it only as long as needed.
    """

    index: int
    block: str
    offset: int
    count: int
    data: memoryview | None = None
    start: int = 0
    stride: int = PAGE_SIZE

    @property
    def zero(self) -> bool:
        return self.data is None

    def page(self, k: int) -> memoryview:
        """The payload of the run's ``k``-th record (a view, not a copy)."""
        if self.data is None:
            raise ValueError("a run of ZERO records has no payloads")
        if not 0 <= k < self.count:
            raise IndexError(f"record {k} of a run of {self.count}")
        o = self.start + k * self.stride
        return self.data[o:o + PAGE_SIZE]

    def records(self) -> Iterator[PageRecord]:
        """The run as :class:`PageRecord` objects (payloads copied to bytes)."""
        block, offset, index = self.block, self.offset, self.index
        if self.data is None:
            for k in range(self.count):
                yield PageRecord(index + k, block, offset + k * PAGE_SIZE, None)
            return
        d, o, stride = self.data, self.start, self.stride
        for k in range(self.count):
            yield PageRecord(index + k, block, offset + k * PAGE_SIZE, bytes(d[o:o + PAGE_SIZE]))
            o += stride


# page_source(index, block, offset) -> 4096 bytes for a PAGE record, or None
# for a ZERO record. Called once per page record, in stream order.
PageSource = Callable[[int, str, int], bytes | None]

# run_source(index, block, offset, count) -> the payloads of the ``count``
# consecutive page records starting with record ``index`` at ``block+offset``,
# in order, as pieces: an ``int`` n stands for n ZERO records, a ``list`` holds
# the 4096-byte payloads of consecutive PAGE records, anything else is one
# PAGE record's 4096 bytes (any bytes-like object). The pieces must cover
# exactly ``count`` records. Called once per run of the skeleton, in stream
# order; the codec may split a long run into several calls.
RunSource = Callable[[int, str, int, int], Iterable["int | bytes | memoryview"]]


class SplitStream(Protocol):
    """What ``split_stream`` returns.

    Either ``pages()`` or ``runs()`` may be iterated, once; ``skeleton``,
    ``blocks``, ``machine`` and ``raw_bytes`` are complete only after it is
    exhausted.
    """

    machine: str            # e.g. "pc-q35-10.0"; "" when the stream has no configuration section
    blocks: list[RamBlock]  # every RAM block, in stream order
    raw_bytes: int          # length of the input stream in bytes
    skeleton: bytes         # codec-owned; feed to assemble_stream

    def pages(self) -> Iterator[PageRecord]: ...

    def runs(self) -> Iterator[PageRun]: ...
