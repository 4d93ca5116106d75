"""The checkpoint store: content-addressed, deduplicated RAM pages and checkpoint manifests.

Knows hashes, packs and manifests only; the migration-stream codec
(:mod:`engine.stream.migration`, or any object with its ``split_stream`` and
``assemble_stream``) is handed in. Modules:

* ``store.py``     :class:`Store`: import, export, listing, gc, delete, repair
* ``packs.py``     append-only, self-describing pack files of compressed pages
* ``index.py``     hash -> pack location, mmap'd sorted segments
* ``manifest.py``  per-checkpoint manifest files (msgpack header + blobs)
* ``pagemap.py``   page maps and deltas between them
* ``stats.py``     per-checkpoint and per-store statistics
* ``fsck.py``      full check and index rebuild
* ``fsutil.py``    atomic writes and the writer lock

Typical use::

    with Store.open(path, create=True) as store:
        info = store.import_stream(f, name="boot", meta={"icount": 123})
        store.export_stream(info.id, out)
"""

from engine.store.fsck import FsckReport
from engine.store.pagemap import ABSENT, ZERO, PageMap
from engine.store.stats import CheckpointStats, StoreStats
from engine.store.store import (
    KEYFRAME_INTERVAL,
    CheckpointInfo,
    GcReport,
    PageClasses,
    RepairReport,
    Store,
)

__all__ = [
    "ABSENT", "KEYFRAME_INTERVAL", "ZERO", "CheckpointInfo", "CheckpointStats", "FsckReport",
    "GcReport", "PageClasses", "PageMap", "RepairReport", "Store", "StoreStats",
]
