"""Statistics of one checkpoint and of a whole store.

Every non-zero page record of a stream is exactly one of three kinds, so
``data_pages == new_pages + intra_duplicates + inter_duplicates``:

* ``new_pages``         first time this content is seen anywhere: stored now;
* ``inter_duplicates``  first time in this checkpoint, but the store already
  held the content before the import began;
* ``intra_duplicates``  the content already occurred earlier in this same
  checkpoint's stream.

Zero pages are never stored; they are counted apart (``zero_pages``), so the
duplicates that are zero pages are ``zero_pages`` and every record that did
not add a page to the store is ``duplicate_pages``. ``dirty_pages`` counts the
page-map entries that changed since the parent checkpoint (every page, for a
checkpoint without parent). ``stored_bytes`` is what the checkpoint added on
disk: pack records, its index segment and its manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(slots=True)
class CheckpointStats:
    page_records: int = 0       # RAM page records in the stream (zero and data)
    zero_pages: int = 0         # ZERO records
    data_pages: int = 0         # records with content
    superseded_records: int = 0  # records of a page the stream sent again later
    dirty_pages: int = 0        # page-map entries changed since the parent
    new_pages: int = 0
    intra_duplicates: int = 0
    inter_duplicates: int = 0
    raw_bytes: int = 0          # length of the stream
    skeleton_bytes: int = 0     # the codec's skeleton, uncompressed
    pack_bytes: int = 0         # pack records appended for this checkpoint
    index_bytes: int = 0        # its index segment
    manifest_bytes: int = 0     # its manifest file
    stored_bytes: int = 0       # pack + index + manifest

    @property
    def duplicate_pages(self) -> int:
        return self.zero_pages + self.intra_duplicates + self.inter_duplicates

    @property
    def dedup_ratio(self) -> float:
        """Raw stream bytes per byte this checkpoint added to the store."""
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else float("inf")

    def to_dict(self) -> dict[str, int | float]:
        d: dict[str, int | float] = asdict(self)
        d["duplicate_pages"] = self.duplicate_pages
        d["dedup_ratio"] = round(self.dedup_ratio, 3) if self.stored_bytes else None  # type: ignore[assignment]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> "CheckpointStats":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_record(self) -> dict[str, int]:
        return asdict(self)


@dataclass(slots=True)
class StoreStats:
    checkpoints: int = 0
    stored_pages: int = 0        # distinct pages in the index
    pack_files: int = 0
    pack_bytes: int = 0          # pack files on disk
    index_bytes: int = 0
    manifest_bytes: int = 0
    disk_bytes: int = 0          # everything the store occupies
    raw_bytes: int = 0           # sum of the checkpoints' streams
    page_records: int = 0
    zero_pages: int = 0
    data_pages: int = 0
    dirty_pages: int = 0
    new_pages: int = 0
    intra_duplicates: int = 0
    inter_duplicates: int = 0

    @property
    def duplicate_pages(self) -> int:
        return self.zero_pages + self.intra_duplicates + self.inter_duplicates

    @property
    def ratio(self) -> float:
        """Raw stream bytes per byte on disk."""
        return self.raw_bytes / self.disk_bytes if self.disk_bytes else 0.0

    def to_dict(self) -> dict[str, int | float]:
        d: dict[str, int | float] = asdict(self)
        d["duplicate_pages"] = self.duplicate_pages
        d["ratio"] = round(self.ratio, 3)
        return d
