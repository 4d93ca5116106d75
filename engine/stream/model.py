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

Failures: a stream that does not parse raises ``StreamError`` (or
``TruncatedStreamError``) out of the ``pages()`` iteration, never a quietly
shorter result, so an importer can discard what it took so far. The skeleton
records the original stream's length and hash; ``assemble_stream`` raises
``IntegrityError`` (after writing) when the page source's pages do not rebuild it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

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


# page_source(index, block, offset) -> 4096 bytes for a PAGE record, or None
# for a ZERO record. Called once per page record, in stream order.
PageSource = Callable[[int, str, int], bytes | None]


class SplitStream(Protocol):
    """What ``split_stream`` returns.

    ``pages()`` may be iterated once; ``skeleton``, ``blocks``, ``machine`` and
    ``raw_bytes`` are complete only after it is exhausted.
    """

    machine: str            # e.g. "pc-q35-10.0"; "" when the stream has no configuration section
    blocks: list[RamBlock]  # every RAM block, in stream order
    raw_bytes: int          # length of the input stream in bytes
    skeleton: bytes         # codec-owned; feed to assemble_stream

    def pages(self) -> Iterator[PageRecord]: ...
