"""The checkpoint store: deduplicated RAM pages plus one manifest per checkpoint.

Layout of a store directory::

    FORMAT                 b"sbtui checkpoint store\\nformat-version: 1\\n", read first
    lock                   the writer lock (flock)
    next-id                the next checkpoint number (ids are never reused)
    packs/NNNNNNNN.pack    page records (packs.py)
    index/F-L.idx          hash -> pack location (index.py)
    checkpoints/NNNN.ckpt  manifests (manifest.py)

What it promises:

* Each distinct non-zero page is stored once across all checkpoints, lz4
  compressed; zero pages are never stored. Reads verify every page's hash.
* Export is byte-identical to the imported stream, checked end to end: the
  store keeps the xxh3-128 of the stream it imported and compares it with
  what it wrote (``IntegrityError`` otherwise).
* One writer at a time (``import_stream``, ``gc``, ``delete_checkpoint``,
  ``repair``) under ``lock``; any number of readers, in this or other
  processes, read while a writer appends: they only follow index entries and
  manifests, which a writer publishes only after the bytes they point at are
  durable.
* Crash safety: a checkpoint exists only once its manifest is renamed into
  place, after its pages (fsynced packs) and their index segment. A crash
  (kill -9 included) at any point leaves every earlier checkpoint intact; the
  leftovers of an interrupted import are bytes past a pack's committed length,
  packs no index segment knows and temporary files. The next writer removes
  them (:meth:`Store.repair`, which :meth:`Store.open` runs when no writer is
  active); ``fsck`` reports them.
* A failed import (bad input, Ctrl-C) rolls back: the store's bytes are
  exactly as before.
* Restoring a checkpoint's page map composes at most ``KEYFRAME_INTERVAL``
  deltas: a checkpoint stores its whole map (a keyframe) when its parent's
  chain is that long, or when the deltas since the last keyframe add up to
  half a map.

Checkpoint ids are the decimal sequence number, zero-padded to four digits
("0000", "0001", ... "9999", "10000"), assigned in import order and never
reused, so the recorder's checkpoint 0..n are "0000".. in an empty store.
"""

from __future__ import annotations

import inspect
import os
import stat
import threading
import time
from array import array
from bisect import bisect_left
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import lz4.block
import xxhash

from engine.errors import FormatVersionError, IntegrityError, NotFoundError, StoreError, UsageError
from engine.store import manifest as mf
from engine.store.fsutil import (WriterLock, atomic_write, fsync_dir, list_leftovers,
                                 remove_leftovers)
from engine.store.index import Index
from engine.store.manifest import Manifest, checkpoint_id, valid_id
from engine.store.packs import (CODEC_LZ4, CODEC_RAW, REC_CHECKED, REC_FIXED, REC_HEADER,
                                REC_MAGIC, WINDOW_BITS, PackReader, PackWriter, encode_record,
                                iter_pack_ids, pack_name)
from engine.store.pagemap import ABSENT, ENTRY, ZERO, BlockDelta, Delta, PageMap, apply, diff
from engine.store.stats import CheckpointStats, StoreStats
from engine.stream.model import PAGE_SIZE, PageRun, RamBlock

FORMAT_FILE = "FORMAT"
STORE_VERSION = 1
FORMAT_TEXT = f"sbtui checkpoint store\nformat-version: {STORE_VERSION}\n".encode()
KEYFRAME_INTERVAL = 16
KEYFRAME_FRACTION = 0.5
DEFAULT_PACK_SIZE = 32 << 20
DEFAULT_LOCK_TIMEOUT = 30.0
MAP_CACHE = 4

# Page classes kept per dirty page (the UI's page marks)
CLASS_NEW, CLASS_ZERO, CLASS_DUP = 0, 1, 3

Progress = Callable[[int, int | None], None]   # (bytes read, total bytes or None)

_xxh3_128 = xxhash.xxh3_128_digest
_lz4_decompress = lz4.block.decompress
REC_SIZE = REC_HEADER.size
_pack_fixed = REC_FIXED.pack
_WINDOW = 1 << WINDOW_BITS
_LEN_MASK = (1 << 21) - 1   # export hints: offset << 21 | record length (at most 1 MiB + header)
_CMP_PAGES = 32   # entries compared with the parent's at once before looking at single pages
_ONES = b"\x01" * 65536
_BATCH = 512      # new pages handed to the pack writer's thread at once, at most,
_BATCH_BUFFERS = 2   # and views into at most this many of the codec's read buffers


def _records_of(log: list[tuple[int, int, int]], pages: int) -> array:
    """Each page's last record (-1: none), from a block's runs in stream order."""
    ri = array("q", [-1]) * pages
    for first, end, record in log:
        ri[first:end] = array("q", range(record, record + end - first))
    return ri


def _one_record_runs(pages) -> Iterator[PageRun]:
    """Runs of one record each, for a codec that hands out only ``pages()``."""
    for rec in pages:
        data = rec.data
        if data is not None and len(data) != PAGE_SIZE:
            raise StoreError(f"page record {rec.index} ({rec.block}+{rec.offset:#x}) "
                             f"holds {len(data)} bytes, expected {PAGE_SIZE}")
        yield PageRun(rec.index, rec.block, rec.offset, 1,
                      memoryview(data) if data is not None else None)


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint as listed: identity, shape, statistics and metadata."""

    id: str
    name: str
    parent: str | None
    created: float
    machine: str
    blocks: tuple[RamBlock, ...]
    raw_bytes: int
    stats: CheckpointStats
    meta: dict[str, Any]
    keyframe: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "parent": self.parent, "created": self.created,
            "machine": self.machine, "keyframe": self.keyframe,
            "blocks": [[b.name, b.length] for b in self.blocks],
            "stats": self.stats.to_dict(), "meta": _jsonable(self.meta),
        }


@dataclass
class PageClasses:
    """A checkpoint's dirty pages of one block, by what their content was."""

    new: array            # content this checkpoint added to the store
    zero: array
    duplicate: array      # content the store held before this checkpoint
    known: bool = True    # False once a delete re-based the checkpoint (classes lost)


@dataclass
class RepairReport:
    truncated: dict[str, tuple[int, int]] = field(default_factory=dict)  # pack -> (size before, after)
    removed_packs: list[str] = field(default_factory=list)
    removed_files: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.truncated or self.removed_packs or self.removed_files)


@dataclass
class GcReport:
    pages_removed: int = 0
    pages_kept: int = 0
    bytes_freed: int = 0
    packs_rewritten: list[str] = field(default_factory=list)
    packs_deleted: list[str] = field(default_factory=list)
    removed: set[bytes] = field(default_factory=set)   # hashes of the removed pages


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


class _HashingReader:
    """Passes reads through, hashing and counting them, and reports progress."""

    def __init__(self, src: BinaryIO, progress: Progress | None, total: int | None):
        self._src = src
        self._hash = xxhash.xxh3_128()
        self.count = 0
        self._progress = progress
        self._total = total
        self._next_report = 0.0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        if data:
            self._account(data)
        return data

    def readinto(self, buf) -> int:
        """Like ``read`` into the caller's buffer (saves the codec a copy)."""
        readinto = getattr(self._src, "readinto", None)
        if readinto is None:
            data = self._src.read(len(buf))
            n = len(data) if data else 0
            buf[:n] = data or b""
        else:
            n = readinto(buf) or 0
        if n:
            with memoryview(buf) as view:
                self._account(view[:n])
        return n

    def _account(self, data) -> None:
        self._hash.update(data)
        self.count += len(data)
        if self._progress is not None:
            now = time.monotonic()
            if now >= self._next_report:
                self._next_report = now + 0.2
                self._progress(self.count, self._total)

    def digest(self) -> bytes:
        return self._hash.digest()


class _HashingWriter:
    def __init__(self, dst: BinaryIO):
        self._dst = dst
        self._hash = xxhash.xxh3_128()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.hide(data)
        self._dst.write(data)
        return len(data)

    def flush(self) -> None:
        self._dst.flush()

    def hide(self, data) -> None:
        """Bytes of the stream that go elsewhere (a diverted RAM block): hashed, not written."""
        self._hash.update(data)
        self.count += len(data)

    def digest(self) -> bytes:
        return self._hash.digest()


def _default_codec():
    from engine.stream import migration
    return migration


def _takes_check_hash(codec) -> bool:
    """Whether the codec's ``assemble_stream`` has the ``check_hash`` option."""
    try:
        return "check_hash" in inspect.signature(codec.assemble_stream).parameters
    except (TypeError, ValueError):
        return False


def _source_size(src: BinaryIO) -> int | None:
    try:
        st = os.fstat(src.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None
        return st.st_size - src.tell()
    except (AttributeError, OSError, ValueError):
        return None


class Store:
    """A checkpoint store directory. See the module docstring for its promises."""

    def __init__(self, root: Path, *, codec=None, pack_size: int = DEFAULT_PACK_SIZE,
                 lock_timeout: float = DEFAULT_LOCK_TIMEOUT, strict_index: bool = True):
        self.root = root
        self._codec = codec
        self.pack_size = pack_size
        self.lock_timeout = lock_timeout
        self.packs_dir = root / "packs"
        self.index_dir = root / "index"
        self.ckpt_dir = root / "checkpoints"
        self._lock = WriterLock(root / "lock")
        self._index = Index(self.index_dir, strict=strict_index)
        self._packs = PackReader(self.packs_dir)
        self._manifests: dict[str, tuple[tuple[int, int, int], Manifest]] = {}
        self._maps: OrderedDict[str, PageMap] = OrderedDict()
        # A Store object may be shared by threads (the recorder imports while
        # the UI reads): _mutex guards the caches, _writer orders this
        # object's own writers before they compete for the file lock.
        self._mutex = threading.RLock()
        self._writer = threading.Lock()
        self._dir_key: tuple[tuple[int, int], int] | None = None
        self._frozen = False    # True while this object writes: only it changes checkpoints/
        self._sorted: dict[str, Manifest] = {}
        # where the last export found its pages (see _ExportSource): hints, checked on use
        self._export_hints: dict[str, tuple[bytes, array, array]] = {}

    @contextmanager
    def _writing(self):
        """Hold the store's writer lock (this object's threads, then other processes)."""
        if not self._writer.acquire(timeout=self.lock_timeout):
            raise StoreError(f"store is busy: another thread is writing to {self.root} "
                             f"(waited {self.lock_timeout:g} s)")
        try:
            self._lock.acquire(self.lock_timeout)
            try:
                self._scan(force=True)
                self._frozen = True
                yield
            finally:
                self._frozen = False
                self._lock.release()
        finally:
            self._writer.release()

    # -- opening -------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, *, create: bool = False, codec=None,
             repair: bool = True, pack_size: int = DEFAULT_PACK_SIZE,
             lock_timeout: float = DEFAULT_LOCK_TIMEOUT, strict_index: bool = True) -> "Store":
        """Open the store at ``path`` (creating it with ``create``).

        The format-version file is checked before anything else is read.
        With ``repair`` (the default) the leftovers of an interrupted writer
        are cleaned up when no other writer holds the lock. ``strict_index=False``
        opens a store whose index segments are damaged (for fsck), skipping them.
        """
        root = Path(path)
        if not root.exists():
            if not create:
                raise NotFoundError(f"{root}: no such store (the directory does not exist)")
            _create(root)
        elif not root.is_dir():
            raise StoreError(f"{root}: not a store (it is a file, not a directory)")
        fmt = root / FORMAT_FILE
        if not fmt.exists():
            if create and _is_empty_layout(root):
                _create(root)
            else:
                raise StoreError(f"{root}: not an sbtui store (no {FORMAT_FILE} file)")
        check_format(root)
        for sub in ("packs", "index", "checkpoints"):
            # lstat: a store from elsewhere must not steer our writes out of it
            try:
                st = os.lstat(root / sub)
            except FileNotFoundError:
                raise StoreError(f"{root}: damaged store: the {sub}/ directory is missing") from None
            if not stat.S_ISDIR(st.st_mode):
                raise StoreError(f"{root}: {sub} is not a directory (a symbolic link?)")
        store = cls(root, codec=codec, pack_size=pack_size, lock_timeout=lock_timeout,
                    strict_index=strict_index)
        # never judge pack tails against a damaged index: that could delete good packs
        if repair and not store._index.damaged and store._lock.try_acquire():
            try:
                store._repair_locked()
            finally:
                store._lock.release()
        return store

    def close(self) -> None:
        self._packs.close()
        self._index.close()
        self._lock.release()
        self._maps.clear()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def codec(self):
        if self._codec is None:
            self._codec = _default_codec()
        return self._codec

    # -- manifests -----------------------------------------------------------

    def _scan(self, force: bool = False) -> dict[str, Manifest]:
        """Bring the manifest cache in line with ``checkpoints/``.

        Skips the per-file checks while the directory's mtime is unchanged and
        was already in the past when the cache was filled: a change in the
        same clock tick as the last scan could otherwise go unseen.
        """
        with self._mutex:
            if self._frozen and not force:
                return self._sorted
            st = os.stat(self.ckpt_dir)
            key = (st.st_ino, st.st_mtime_ns)
            if (not force and self._dir_key is not None and self._dir_key[0] == key
                    and self._dir_key[1] - st.st_mtime_ns > 100_000_000):
                return self._sorted
            now = time.time_ns()
            self._sorted = self._scan_unlocked()
            self._dir_key = (key, now)
            return self._sorted

    def _scan_unlocked(self) -> dict[str, Manifest]:
        seen = set()
        with os.scandir(self.ckpt_dir) as it:
            entries = [e for e in it if e.name.endswith(".ckpt")]
        for entry in entries:
            cid = entry.name[:-5]
            if not valid_id(cid):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue   # deleted meanwhile
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            seen.add(cid)
            cached = self._manifests.get(cid)
            if cached is not None and cached[0] == key:
                continue
            path = self.ckpt_dir / entry.name
            m = mf.read_manifest(path)
            if m.id != cid:
                raise StoreError(f"{path}: manifest says it is checkpoint {m.id}")
            self._manifests[cid] = (key, m)
            self._maps.pop(cid, None)
        for cid in list(self._manifests):
            if cid not in seen:
                del self._manifests[cid]
                self._maps.pop(cid, None)
        return {cid: m for cid, (_k, m) in sorted(self._manifests.items(), key=lambda kv: int(kv[0]))}

    def _manifest(self, cid: str) -> Manifest:
        if not isinstance(cid, str) or not valid_id(cid):
            raise NotFoundError(f"{self.root}: no checkpoint {cid!r} (ids are numbers like 0000)")
        ms = self._scan()
        try:
            return ms[cid]
        except KeyError:
            have = ", ".join(list(ms)[:3] + (["..."] if len(ms) > 4 else []) + list(ms)[3:][-1:])
            raise NotFoundError(f"{self.root}: no checkpoint {cid!r} "
                                f"(the store has {len(ms)}{': ' + have if ms else ''})") from None

    def _info(self, m: Manifest) -> CheckpointInfo:
        return CheckpointInfo(
            id=m.id, name=m.name, parent=m.parent, created=m.created, machine=m.machine,
            blocks=tuple(RamBlock(n, length) for n, length in m.blocks), raw_bytes=m.raw_bytes,
            stats=CheckpointStats.from_dict(m.stats), meta=m.meta, keyframe=m.is_keyframe)

    def checkpoints(self) -> list[CheckpointInfo]:
        """Every checkpoint in id order, with statistics and metadata."""
        return [self._info(m) for m in self._scan().values()]

    def checkpoint(self, checkpoint_id: str) -> CheckpointInfo:
        return self._info(self._manifest(checkpoint_id))

    def latest(self) -> str | None:
        ms = self._scan()
        return next(reversed(ms), None) if ms else None

    # -- page maps -------------------------------------------------------------

    def restore_chain(self, checkpoint_id: str) -> list[str]:
        """The checkpoints whose stored maps compose this one, keyframe first."""
        ms = self._scan()
        chain = []
        cid: str | None = checkpoint_id
        while True:
            m = ms.get(cid) if cid is not None else None
            if m is None:
                if not chain:
                    self._manifest(checkpoint_id)  # raises NotFoundError
                raise IntegrityError(f"checkpoint {chain[-1]} names parent {cid}, which does not "
                                     "exist: its page map cannot be restored", checkpoint=checkpoint_id)
            chain.append(m.id)
            if m.is_keyframe:
                break
            if len(chain) > len(ms):
                raise IntegrityError("the parent chain loops", checkpoint=checkpoint_id)
            cid = m.parent
        chain.reverse()
        return chain

    def page_map(self, checkpoint_id: str) -> PageMap:
        """The composed page map of a checkpoint (per block, hash or zero per page)."""
        with self._mutex:
            cached = self._maps.get(checkpoint_id)
            if cached is not None:
                self._maps.move_to_end(checkpoint_id)
                return cached
        chain = self.restore_chain(checkpoint_id)
        ms = self._scan()
        start = 0
        pm: PageMap | None = None
        with self._mutex:
            for k in range(len(chain) - 1, 0, -1):   # start from the newest cached map on the chain
                if chain[k] in self._maps:
                    pm, start = self._maps[chain[k]], k + 1
                    break
        for cid in chain[start:]:
            m = ms[cid]
            if pm is None and "full" in m.blobs:
                pm = mf.read_full(m)
            else:
                pm = apply(pm, self._delta(m))
        assert pm is not None
        self._remember(checkpoint_id, pm)
        return pm

    def _remember(self, cid: str, pm: PageMap) -> None:
        with self._mutex:
            self._maps[cid] = pm
            self._maps.move_to_end(cid)
            while len(self._maps) > MAP_CACHE:
                self._maps.popitem(last=False)

    def _delta(self, m: Manifest) -> Delta:
        return {name: d for name, (d, _cls) in mf.read_delta(m).items()}

    def dirty_pages(self, checkpoint_id: str) -> dict[str, array]:
        """Per block, the pages whose entry changed since the parent (``array('I')``).

        Read straight from the checkpoint's own delta: no chain is composed.
        A checkpoint without parent has every page it holds dirty.
        """
        m = self._manifest(checkpoint_id)
        out = {}
        for name, (d, _cls) in mf.read_delta(m).items():
            out[name] = array("I", d.indices)
        return out

    def page_classes(self, checkpoint_id: str) -> dict[str, PageClasses]:
        """The dirty pages of each block split into new, zero and duplicate content."""
        m = self._manifest(checkpoint_id)
        out = {}
        for name, (d, classes) in mf.read_delta(m).items():
            pc = PageClasses(array("I"), array("I"), array("I"), known=classes is not None)
            if classes is not None:
                for i, c in zip(d.indices, classes):
                    (pc.new if c == CLASS_NEW else pc.zero if c == CLASS_ZERO else pc.duplicate).append(i)
            else:
                e = d.entries
                for k, i in enumerate(d.indices):
                    if e[k * ENTRY:k * ENTRY + ENTRY] == ZERO:
                        pc.zero.append(i)
            out[name] = pc
        return out

    # -- pages -----------------------------------------------------------------

    def read_page(self, digest: bytes, *, checkpoint: str | None = None) -> bytes:
        """The 4 KiB page whose xxh3-128 is ``digest``, verified."""
        if not isinstance(digest, (bytes, bytearray)) or len(digest) != ENTRY:
            raise UsageError(f"a page hash is 16 bytes, got {digest!r:.60}")
        digest = bytes(digest)
        if digest == ZERO:
            return bytes(PAGE_SIZE)
        for attempt in (0, 1):
            where = self._index.lookup(digest)
            if where is None:
                if attempt == 0 and self._index.refresh():
                    continue
                raise IntegrityError(f"page {digest.hex()} is not in the store",
                                     checkpoint=checkpoint)
            pack_id, offset, length = where
            try:
                return self._packs.read(pack_id, offset, length, digest, checkpoint)
            except FileNotFoundError:
                # gc may have moved it: a newer index says where
                if attempt == 0 and self._index.refresh():
                    self._packs.forget(pack_id)
                    continue
                raise IntegrityError(f"pack {pack_name(pack_id)} holding page {digest.hex()} "
                                     "is missing", checkpoint=checkpoint,
                                     pack=pack_name(pack_id), offset=offset) from None
            except IntegrityError:
                if attempt == 0 and self._index.refresh():
                    self._packs.forget(pack_id)
                    continue
                raise
        raise AssertionError("unreachable")

    # -- export ----------------------------------------------------------------

    def export_stream(self, checkpoint_id: str, dst: BinaryIO, *, ram=None) -> int:
        """Write the checkpoint's migration stream, byte-identical to the one imported.

        ``ram`` (a :class:`engine.stream.migration.RamFile`) takes the page
        records of its RAM block instead of ``dst``: they go into its file;
        the check against the imported stream's length and hash covers them."""
        m = self._manifest(checkpoint_id)
        pm = self.page_map(checkpoint_id)
        source = _ExportSource(self, m.id, pm, mf.read_superseded(m))
        skeleton = mf.read_skeleton(m)
        out = _HashingWriter(dst)
        if ram is not None:
            self.codec.assemble_stream(skeleton, source, out, check_hash=False, divert=ram)
        elif _takes_check_hash(self.codec):
            # this end-to-end check (xxh3-128) makes the codec's own hash redundant
            self.codec.assemble_stream(skeleton, source, out, check_hash=False)
        else:
            self.codec.assemble_stream(skeleton, source, out)
        if out.count != m.raw_bytes or out.digest() != m.stream_hash:
            raise IntegrityError(f"exported stream is {out.count} bytes with hash "
                                 f"{out.digest().hex()}, imported one was {m.raw_bytes} bytes "
                                 f"with hash {m.stream_hash.hex()}", checkpoint=m.id)
        source.publish()
        return out.count

    # -- import ----------------------------------------------------------------

    def import_stream(self, src: BinaryIO, *, name: str, parent: str | None = "latest",
                      meta: dict | None = None, progress: Progress | None = None,
                      size: int | None = None) -> CheckpointInfo:
        """Store the migration stream read from ``src`` as a new checkpoint.

        ``parent`` is a checkpoint id, ``"latest"`` (the newest checkpoint, or
        none in an empty store) or None (a root). ``meta`` is free-form
        msgpack-able data kept with the checkpoint. ``progress(done, total)``
        is called with bytes read at most five times a second. A bad stream
        raises the codec's ``StreamError`` and leaves the store unchanged.
        """
        if not isinstance(name, str) or len(name) > mf.MAX_NAME:
            raise UsageError(f"checkpoint name must be a string of at most {mf.MAX_NAME} characters")
        meta = mf.check_meta(dict(meta or {}))
        with self._writing():
            self._repair_locked()
            return self._import_locked(src, name, parent, meta, progress,
                                       size if size is not None else _source_size(src))

    def _resolve_parent(self, parent: str | None) -> str | None:
        if parent is None:
            return None
        if parent == "latest":
            return self.latest()
        return self._manifest(parent).id

    def _import_locked(self, src, name, parent, meta, progress, total) -> CheckpointInfo:
        self._index.refresh()
        self._index.use_filter()   # an import's new pages are misses: answer most from memory
        parent_id = self._resolve_parent(parent)
        parent_map = self.page_map(parent_id) if parent_id is not None else None
        parent_blocks = parent_map._raw_blocks() if parent_map is not None else {}

        committed = self._index.committed_lengths()
        existing = set(iter_pack_ids(self.packs_dir)) | set(committed)
        tail_id = max(committed, default=None)
        writer = PackWriter(self.packs_dir, next_id=max(existing, default=0) + 1,
                            tail=(tail_id, committed[tail_id]) if tail_id is not None else None,
                            target_size=self.pack_size)
        reader = _HashingReader(src, progress, total)
        st = CheckpointStats()
        try:
            split = self.codec.split_stream(reader)
            maps, superseded = self._ingest(split, parent_blocks, writer, st)
            if progress is not None:
                progress(reader.count, total)
            # the codec reads to the end of the stream and refuses trailing bytes
            if split.raw_bytes != reader.count:
                raise StoreError(f"the codec reports a {split.raw_bytes}-byte stream but "
                                 f"{reader.count} bytes were read")
            skeleton = split.skeleton
            pack_lengths = writer.commit()
            new_pages = writer.locations
            if len(new_pages) != st.new_pages:
                raise StoreError(f"the pack writer placed {len(new_pages)} pages, "
                                 f"the import stored {st.new_pages}")
        except BaseException:
            writer.abort()
            raise

        # Shape the page map after the stream's block list: pages it never sent are absent.
        for b in split.blocks:
            pages = -(-b.length // PAGE_SIZE)
            m = maps.setdefault(b.name, bytearray())
            if len(m) < pages * ENTRY:
                m += bytes(pages * ENTRY - len(m))
        child = PageMap(maps)
        delta = diff(parent_map, child)
        st.dirty_pages = sum(len(d) for d in delta.values())
        st.raw_bytes = reader.count
        st.skeleton_bytes = len(skeleton)
        st.pack_bytes = writer.bytes_written
        keyframe = parent_id is not None and self._needs_keyframe(parent_id, st.dirty_pages, child)

        # Commit point 1: the pages' index segment (makes the pack bytes permanent).
        if new_pages or pack_lengths:
            st.index_bytes = self._index.add(new_pages, pack_lengths)
        cid = self._next_id()
        man = Manifest(id=cid, name=name, parent=parent_id, created=time.time(),
                       machine=split.machine, blocks=[(b.name, b.length) for b in split.blocks],
                       raw_bytes=reader.count, stream_hash=reader.digest(),
                       stats={}, meta=meta)
        blobs = {"skeleton": skeleton,
                 "delta": mf.encode_delta(delta, {n: _delta_classes(d, new_pages) for n, d in delta.items()})}
        if keyframe:
            blobs["full"] = mf.encode_full(child)
        if superseded:
            blobs["superseded"] = mf.encode_superseded(superseded)
        data = b""
        for _ in range(4):   # the manifest's own size is one of its statistics
            st.stored_bytes = st.pack_bytes + st.index_bytes + st.manifest_bytes
            man.stats = st.to_record()
            data = mf.encode_manifest(man, blobs)
            if len(data) == st.manifest_bytes:
                break
            st.manifest_bytes = len(data)
        # Commit point 2: the manifest. From here on the checkpoint exists.
        atomic_write(self.ckpt_dir / f"{cid}.ckpt", data)
        self._scan(force=True)
        self._remember(cid, child)
        return self.checkpoint(cid)

    def _ingest(self, split, parent_blocks, writer: PackWriter, st: CheckpointStats):
        """Consume the page records: dedup, store new pages, build the child's map.

        The hot loop of an import. It works on runs of records (the codec's
        ``runs()``; a codec with only ``pages()`` gets one-record runs), so
        Python's work is per run and per *changed* page: zero runs are one
        slice assignment, a data run's hashes are compared with the parent's
        entries for the same pages in bulk (memcmp), and only pages that
        differ from the parent are looked up and perhaps compressed.
        """
        maps: dict[str, bytearray] = {}
        # per block: which pages the stream sent (1 byte each), and its runs
        # (first page, end page, first record) to find a re-sent page's record
        sent_by_block: dict[str, bytearray] = {}
        runs_by_block: dict[str, list[tuple[int, int, int]]] = {}
        # per block, once the stream re-sends one of its pages: each page's last record
        rec_by_block: dict[str, array] = {}
        superseded: dict[int, bytes] = {}
        seen: set[bytes] = set()
        seen_add = seen.add
        seen_update = seen.update
        lookup = self._index.lookup
        append_pages = writer.append_pages
        xxh = _xxh3_128
        runs = split.runs() if hasattr(split, "runs") else _one_record_runs(split.pages())
        cur_block = None
        m = sent = log = ri = None
        mlen = 0
        pm: bytes | bytearray = b""
        data_pages = intra = new = 0
        records = 0
        batch: list[tuple[bytes, memoryview]] = []
        batch_obj = None
        batch_buffers = 0
        for run in runs:
            if run.block != cur_block:
                cur_block = run.block
                m = maps.setdefault(cur_block, bytearray())
                sent = sent_by_block.setdefault(cur_block, bytearray())
                log = runs_by_block.setdefault(cur_block, [])
                ri = rec_by_block.get(cur_block)
                pm = parent_blocks.get(cur_block, b"")
                mlen = len(m)
            n = run.count
            page = run.offset >> 12
            end = page + n
            pos = page << 4
            epos = end << 4
            if n <= 0 or run.index != records:
                raise StoreError(f"the codec handed out a run of {n} records starting with "
                                 f"record {run.index}, expected record {records}")
            if epos > mlen:
                if end > mf.MAX_PAGES:
                    raise StoreError(f"page record {run.index + mf.MAX_PAGES - page} is at "
                                     f"{run.block}+{mf.MAX_PAGES * PAGE_SIZE:#x}: RAM beyond "
                                     f"{mf.MAX_PAGES * PAGE_SIZE >> 30} GiB is not supported")
                grow = min(max(end, 2 * len(sent)), mf.MAX_PAGES) - len(sent)
                m += bytes(grow * ENTRY)
                sent += bytes(grow)
                if ri is not None:
                    ri.extend(array("q", [-1]) * grow)
                mlen = len(m)
            if sent.find(1, page, end) >= 0:
                # the stream sent some of these pages before (live migration does):
                # keep those records' content
                if ri is None:
                    ri = rec_by_block[cur_block] = _records_of(log, len(sent))
                for k in range(page, end):
                    if sent[k]:
                        superseded[ri[k]] = bytes(m[k << 4:(k << 4) + ENTRY])
            sent[page:end] = _ONES[:n] if n <= len(_ONES) else b"\x01" * n
            log.append((page, end, records))
            if ri is not None:
                ri[page:end] = array("q", range(records, records + n))
            records += n
            d = run.data
            if d is None:
                m[pos:epos] = ZERO * n
                continue
            data_pages += n
            o, stride = run.start, run.stride
            if o < 0 or len(d) < o + (n - 1) * stride + PAGE_SIZE:
                raise StoreError(f"page records {run.index}..{run.index + n - 1} "
                                 f"({run.block}+{run.offset:#x}): the codec's run holds "
                                 f"{len(d)} bytes, too few for {n} pages")
            hashes = [xxh(d[q:q + PAGE_SIZE]) for q in range(o, o + n * stride, stride)]
            hs = b"".join(hashes)
            m[pos:epos] = hs
            old_entries = pm[pos:epos]
            if hs == old_entries:
                # unchanged since the parent (the common case): no page is new
                before = len(seen)
                seen_update(hashes)
                intra += n - (len(seen) - before)
                continue
            for a in range(0, n, _CMP_PAGES):
                b = min(a + _CMP_PAGES, n)
                if hs[a << 4:b << 4] == old_entries[a << 4:b << 4]:
                    before = len(seen)
                    seen_update(hashes[a:b])
                    intra += b - a - (len(seen) - before)
                    continue
                for k in range(a, b):
                    h = hashes[k]
                    if h in seen:
                        intra += 1
                        continue
                    seen_add(h)
                    # the parent's page here, or stored by an earlier checkpoint
                    if old_entries[k << 4:(k << 4) + ENTRY] == h or lookup(h) is not None:
                        continue
                    if h == ZERO or h == ABSENT:
                        raise StoreError(f"page record {run.index + k} hashes to a reserved value")
                    q = o + k * stride
                    batch.append((h, d[q:q + PAGE_SIZE]))
            if batch:
                if d.obj is not batch_obj:      # the pages are views: count the buffers held
                    batch_obj = d.obj
                    batch_buffers += 1
                if len(batch) >= _BATCH or batch_buffers >= _BATCH_BUFFERS:
                    # compressed and written by the pack writer's thread, beside this loop
                    new += len(batch)
                    append_pages(batch)
                    batch = []
                    batch_buffers = 0
                    batch_obj = None
        if batch:
            new += len(batch)
            append_pages(batch)
        # trim the growth slack to the pages actually seen
        for name, mm in maps.items():
            del mm[(sent_by_block[name].rfind(1) + 1) * ENTRY:]
        st.page_records = records
        st.zero_pages = records - data_pages
        st.data_pages = data_pages
        st.superseded_records = len(superseded)
        st.new_pages = new
        st.intra_duplicates = intra
        st.inter_duplicates = data_pages - new - intra
        return maps, superseded

    def _needs_keyframe(self, parent_id: str, dirty: int, child: PageMap) -> bool:
        chain = self.restore_chain(parent_id)
        if len(chain) >= KEYFRAME_INTERVAL:
            return True
        ms = self._scan()
        since = dirty + sum(ms[c].stats.get("dirty_pages", 0) for c in chain[1:])
        total = sum(child.page_count(b) for b in child.blocks())
        return since > KEYFRAME_FRACTION * max(total, 1)

    def _next_id(self) -> str:
        n = 0
        try:
            text = (self.root / "next-id").read_text().strip()
            if text.isdigit() and len(text) <= 12:
                n = int(text)
        except FileNotFoundError:
            pass
        ms = self._scan()
        if ms:
            n = max(n, int(next(reversed(ms))) + 1)
        return checkpoint_id(n)

    # -- repair ----------------------------------------------------------------

    def repair(self) -> RepairReport:
        """Remove what interrupted writers left (takes the writer lock)."""
        with self._writing():
            return self._repair_locked()

    def _repair_locked(self) -> RepairReport:
        if self._index.damaged:
            raise StoreError(f"{self.root}: index segments are damaged "
                             f"({', '.join(self._index.damaged)}); run `sbtui store fsck --repair`")
        rep = RepairReport()
        for d in (self.root, self.packs_dir, self.index_dir, self.ckpt_dir):
            rep.removed_files += [str(p.relative_to(self.root)) for p in remove_leftovers(d)]
        rep.removed_files += [f"index/{n}" for n in self._index.remove_superseded()]
        self._index.refresh()
        committed = self._index.committed_lengths()
        changed = False
        for pid in sorted(iter_pack_ids(self.packs_dir)):
            path = self.packs_dir / pack_name(pid)
            if pid not in committed:
                os.unlink(path)
                rep.removed_packs.append(pack_name(pid))
                changed = True
                continue
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                raise StoreError(f"{path} is not a regular file (a symbolic link?); refusing to touch it")
            size = st.st_size
            if size > committed[pid]:
                os.truncate(path, committed[pid])
                rep.truncated[pack_name(pid)] = (size, committed[pid])
                changed = True
        if changed:
            fsync_dir(self.packs_dir)
        return rep

    def rebuild_index(self) -> int:
        """Replace the index with one rebuilt from the packs; returns pages indexed."""
        from engine.store.fsck import rebuild_index
        with self._writing():
            n = rebuild_index(self)
            self._repair_locked()
            return n

    def pending_repairs(self) -> RepairReport:
        """What :meth:`repair` would do, without doing it (for fsck)."""
        rep = RepairReport()
        for d in (self.root, self.packs_dir, self.index_dir, self.ckpt_dir):
            rep.removed_files += [str(p.relative_to(self.root)) for p in list_leftovers(d)]
        rep.removed_files += [f"index/{n}" for n in self._index.superseded_files()]
        committed = self._index.committed_lengths()
        for pid in sorted(iter_pack_ids(self.packs_dir)):
            if pid not in committed:
                rep.removed_packs.append(pack_name(pid))
                continue
            size = (self.packs_dir / pack_name(pid)).stat().st_size
            if size > committed[pid]:
                rep.truncated[pack_name(pid)] = (size, committed[pid])
        return rep

    # -- statistics ------------------------------------------------------------

    def stats(self) -> StoreStats:
        self._index.refresh()
        s = StoreStats()
        for m in self._scan().values():
            cs = m.stats
            s.checkpoints += 1
            s.raw_bytes += m.raw_bytes
            s.manifest_bytes += m.file_size
            for k in ("page_records", "zero_pages", "data_pages", "dirty_pages", "new_pages",
                      "intra_duplicates", "inter_duplicates"):
                setattr(s, k, getattr(s, k) + cs.get(k, 0))
        s.stored_pages = self._index.entry_count()
        for pid in iter_pack_ids(self.packs_dir):
            s.pack_files += 1
            s.pack_bytes += _size(self.packs_dir / pack_name(pid))
        s.index_bytes = sum(_size(seg.path) for seg in self._index.segments)
        s.disk_bytes = sum(_size(Path(d) / f) for d, _dirs, files in os.walk(self.root) for f in files)
        return s

    # -- gc and delete ---------------------------------------------------------

    def referenced_pages(self) -> set[bytes]:
        """Every page hash some checkpoint refers to."""
        refs: set[bytes] = set()
        for m in self._scan().values():
            for d in self._delta(m).values():
                e = d.entries
                refs.update(e[i:i + ENTRY] for i in range(0, len(e), ENTRY))
            if "full" in m.blobs:
                refs |= mf.read_full(m).hashes()
            refs.update(mf.read_superseded(m).values())
        refs.discard(ZERO)
        refs.discard(ABSENT)
        return refs

    def gc(self) -> GcReport:
        """Drop pages no checkpoint refers to; rewrite the packs that held them."""
        with self._writing():
            self._repair_locked()
            return self._gc_locked()

    def _gc_locked(self) -> GcReport:
        self._index.refresh()
        refs = self.referenced_pages()
        rep = GcReport()
        by_pack: dict[int, list[tuple[int, int, bytes]]] = {}
        dead_in: dict[int, int] = {}
        entries: dict[bytes, tuple[int, int, int]] = {}
        for h, (pid, off, length) in self._index.items():
            entries[h] = (pid, off, length)
            if h in refs:
                by_pack.setdefault(pid, []).append((off, length, h))
            else:
                dead_in[pid] = dead_in.get(pid, 0) + length
                rep.removed.add(h)
        if not rep.removed:
            rep.pages_kept = len(entries)
            return rep
        committed = self._index.committed_lengths()
        existing = set(iter_pack_ids(self.packs_dir)) | set(committed)
        writer = PackWriter(self.packs_dir, next_id=max(existing, default=0) + 1, tail=None,
                            target_size=self.pack_size)
        try:
            for pid in sorted(dead_in):
                live = sorted(by_pack.get(pid, []))
                if live:
                    rep.packs_rewritten.append(pack_name(pid))
                else:
                    rep.packs_deleted.append(pack_name(pid))
                for off, length, h in live:
                    page = self._packs.read(pid, off, length, h)   # verifies while copying
                    entries[h] = writer.append(encode_record(h, page))
            new_lengths = writer.commit()
        except BaseException:
            writer.abort()
            raise
        for h in rep.removed:
            del entries[h]
        dropped = set(dead_in)
        lengths = {pid: n for pid, n in committed.items() if pid not in dropped}
        lengths.update(new_lengths)
        before = sum(_size(self.packs_dir / pack_name(p)) for p in dropped)
        self._index.replace_all(entries.items(), lengths)
        for pid in dropped:
            self._packs.forget(pid)
            try:
                os.unlink(self.packs_dir / pack_name(pid))
            except FileNotFoundError:
                pass
        fsync_dir(self.packs_dir)
        rep.pages_removed = len(rep.removed)
        rep.pages_kept = len(entries)
        rep.bytes_freed = before - sum(new_lengths.values())
        return rep

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        """Delete a checkpoint; its children are re-based onto its parent.

        The pages it alone referenced stay until :meth:`gc`.
        """
        with self._writing():
            self._repair_locked()
            self._delete_locked(checkpoint_id)

    def _delete_locked(self, cid: str) -> None:
        victim = self._manifest(cid)
        ms = self._scan()
        children = [m for m in ms.values() if m.parent == cid]
        new_parent = victim.parent
        parent_map = self.page_map(new_parent) if new_parent is not None else None
        for child in children:
            cmap = self.page_map(child.id)
            delta = diff(parent_map, cmap)
            keyframe = new_parent is not None and (
                victim.is_keyframe or "full" in child.blobs
                or len(self.restore_chain(new_parent)) >= KEYFRAME_INTERVAL)
            blobs = {"skeleton": mf.read_skeleton(child),
                     "delta": mf.encode_delta(delta, {n: None for n in delta})}
            if keyframe:
                blobs["full"] = mf.encode_full(cmap)
            if "superseded" in child.blobs:
                blobs["superseded"] = mf.read_blob(child, "superseded")
            stats = dict(child.stats)
            stats["dirty_pages"] = sum(len(d) for d in delta.values())
            rebased = Manifest(id=child.id, name=child.name, parent=new_parent,
                               created=child.created, machine=child.machine, blocks=child.blocks,
                               raw_bytes=child.raw_bytes, stream_hash=child.stream_hash,
                               stats=stats, meta=child.meta)
            atomic_write(self.ckpt_dir / f"{child.id}.ckpt", mf.encode_manifest(rebased, blobs))
        # the children no longer need the victim: now it can go. Remember
        # its number first, so the next import does not give it out again.
        n = int(self._next_id())
        atomic_write(self.root / "next-id", f"{n}\n".encode())
        os.unlink(self.ckpt_dir / f"{cid}.ckpt")
        fsync_dir(self.ckpt_dir)
        with self._mutex:
            self._maps.pop(cid, None)
        self._scan(force=True)

    # -- integrity -------------------------------------------------------------

    def fsck(self, *, verify_pages: bool = True):
        """Check every pack record, index entry and manifest; see :mod:`engine.store.fsck`."""
        from engine.store.fsck import fsck
        return fsck(self, verify_pages=verify_pages)


class _ExportSource:
    """The pages of one checkpoint for the codec's reassembly.

    Answers per run of records (``runs``): a stretch of zero entries in the
    page map is one count, found by comparing entries in bulk; each data
    page is located, read through the pack reader's windows and verified
    (record header and the page's hash) in a tight loop. Locations come from
    the previous export of this :class:`Store` where the page map holds the
    same entry there (consecutive checkpoints share most pages), else from
    the index. Anything unusual on that path (a page the index does not know,
    a window that does not hold the record, a record or page that does not
    match) goes to :meth:`Store.read_page`, which refreshes the index,
    re-reads the record from the file and raises the :class:`IntegrityError`
    naming checkpoint, pack and offset. Called per record (the plain
    page-source protocol) by a codec that knows no runs.
    """

    RECENT = 1024   # pages a stream repeats are read and verified once

    def __init__(self, store: Store, cid: str, pm: PageMap, superseded: dict[int, bytes]):
        self.store = store
        self.cid = cid
        self.blocks = {name: bytes(entries) for name, entries in pm._raw_blocks().items()}
        self.superseded = superseded
        self.superseded_at = sorted(superseded)
        self.read_page = store.read_page
        self.segments = store._index.segments   # a copy, reordered by the lookups here
        self.window = store._packs.window
        self.record_bytes = store._packs.record_bytes
        self.recent: dict[bytes, bytes] = {}
        self.cur_name: str | None = None
        self.cur_map = b""
        # where the previous export found its pages, and where this one finds them:
        # per block (entries, pack ids, offset << 21 | record length), 0 = not known
        self.old_hints = store._export_hints
        self.hints: dict[str, tuple[bytes, array, array]] = {}

    def publish(self) -> None:
        """Keep this export's page locations for the next one (after it succeeded)."""
        with self.store._mutex:
            self.store._export_hints = self.hints

    def _map(self, index: int, block: str) -> bytes:
        if block is not self.cur_name:
            if block not in self.blocks:
                raise IntegrityError(f"stream record {index} is in RAM block {block!r}, "
                                     "which the page map does not have", checkpoint=self.cid)
            self.cur_name, self.cur_map = block, self.blocks[block]
        return self.cur_map

    def _page(self, e: bytes, index: int, block: str, offset: int) -> bytes:
        page = self.recent.get(e)
        if page is not None:
            return page
        if e == ABSENT or len(e) != ENTRY:
            raise IntegrityError(f"page map has no page for stream record {index} "
                                 f"({block}+{offset:#x})", checkpoint=self.cid)
        page = self.read_page(e, checkpoint=self.cid)
        recent = self.recent
        if len(recent) >= self.RECENT:
            recent.clear()
        recent[e] = page
        return page

    def __call__(self, index: int, block: str, offset: int) -> bytes | None:
        if self.superseded and index in self.superseded:
            e = self.superseded[index]
        else:
            p = (offset >> 12) << 4
            e = self._map(index, block)[p:p + ENTRY]
        if e == ZERO:
            return None
        return self._page(e, index, block, offset)

    def _hints_for(self, block: str, bm: bytes) -> tuple[bytes, array, array, array, array]:
        h = self.hints.get(block)
        if h is None:
            pages = len(bm) // ENTRY
            h = self.hints[block] = (bm, array("I", bytes(4 * pages)), array("Q", bytes(8 * pages)))
        old = self.old_hints.get(block)
        if old is None or len(old[0]) != len(bm):
            old = (b"", array("I"), array("Q"))
        return old[0], old[1], old[2], h[1], h[2]

    def runs(self, index: int, block: str, offset: int, count: int) -> list:
        sa = self.superseded_at
        if sa:
            k = bisect_left(sa, index)
            if k < len(sa) and sa[k] < index + count:   # rare: a page the stream sent twice
                return [1 if d is None else d for d in
                        (self(index + j, block, offset + j * PAGE_SIZE) for j in range(count))]
        bm = self._map(index, block)
        first = offset >> 12
        p = first << 4
        ents = bm[p:p + count * ENTRY]
        if len(ents) != count * ENTRY:
            raise IntegrityError(f"page map has no page for stream record "
                                 f"{index + len(ents) // ENTRY} ({block}+"
                                 f"{offset + (len(ents) // ENTRY << 12):#x})", checkpoint=self.cid)
        old_ents, old_pid, old_loc, new_pid, new_loc = self._hints_for(block, bm)
        # the previous export's locations hold where its map had the same entry
        same = old_ents[p:p + len(ents)] == ents
        pieces: list = []
        stretch: list = []          # consecutive data pages: one list piece
        append = stretch.append
        recent = self.recent
        segs = self.segments
        window = self.window
        record_bytes = self.record_bytes
        xxh = _xxh3_128
        decompress = _lz4_decompress
        pack_fixed = _pack_fixed
        slow = self._page
        wpid = -1
        wbase = 0
        win = b""
        k = 0
        while k < count:
            q = k << 4
            e = ents[q:q + ENTRY]
            if e == ZERO:
                if stretch:
                    pieces.append(stretch)
                    stretch = []
                    append = stretch.append
                z = _zero_entries(ents, k, count - k)
                pieces.append(z)
                k += z
                continue
            page = recent.get(e)
            if page is None:
                j = first + k
                loc = old_loc[j] if same or old_ents[p + q:p + q + ENTRY] == e else 0
                if loc:
                    pid, off, length = old_pid[j], loc >> 21, loc & _LEN_MASK
                else:
                    # the segment of the last hit first: pages stored by one import
                    # come in stretches (move to front; the index's order otherwise)
                    where = None
                    for i, seg in enumerate(segs):
                        where = seg.lookup(e)
                        if where is not None:
                            if i:
                                segs.insert(0, segs.pop(i))
                            break
                    pid, off, length = where if where is not None else (-1, 0, 0)
                if pid >= 0:
                    try:
                        if pid != wpid or not wbase <= off < wbase + _WINDOW:
                            win = window(pid, off)
                            wpid = pid
                            wbase = off >> WINDOW_BITS << WINDOW_BITS
                        buf = win
                        o = off - wbase
                        if o + length > len(win):      # runs past the window: read it alone
                            buf = record_bytes(pid, off, length)
                            o = 0
                    except (OSError, StoreError):   # gone (gc) or damaged: the slow path says
                        buf = b""
                        o = 0
                        wpid = -1
                    end = o + length
                    if end <= len(buf):
                        codec = buf[o + 4]
                        # the record must be the one expected: magic, codec, hash and
                        # lengths (the page's own hash is checked below)
                        if buf.startswith(pack_fixed(REC_MAGIC, codec, e, PAGE_SIZE,
                                                     length - REC_SIZE), o):
                            try:
                                if codec == CODEC_LZ4:
                                    page = decompress(buf[o + REC_SIZE:end],
                                                      uncompressed_size=PAGE_SIZE)
                                elif codec == CODEC_RAW:
                                    page = buf[o + REC_SIZE:end]
                            except Exception:   # noqa: BLE001 - judged in full by the slow path
                                page = None
                            if page is not None and (len(page) != PAGE_SIZE or xxh(page) != e):
                                page = None
                if page is None:    # not where expected: the full, checked read
                    page = slow(e, index + k, block, offset + (k << 12))
                    wpid = -1       # the window may have been stale
                else:
                    new_pid[j] = pid
                    new_loc[j] = off << 21 | length
                    if len(recent) >= 1024:
                        recent.clear()
                    recent[e] = page
            append(page)
            k += 1
        if stretch:
            pieces.append(stretch)
        return pieces


_ZEROS = ZERO * 4096


def _zero_entries(ents: bytes, k: int, limit: int) -> int:
    """How many ZERO entries ``ents`` holds from entry ``k`` on (at most ``limit``):
    memcmp against a block of them, a binary search where one differs."""
    total = 0
    while total < limit:
        n = min(len(_ZEROS) // ENTRY, limit - total)
        p = (k + total) << 4
        if ents.startswith(_ZEROS[:n << 4] if n < 4096 else _ZEROS, p):
            total += n
            continue
        view = memoryview(_ZEROS)
        lo, hi = 0, n
        while hi - lo > 1:
            mid = (lo + hi) >> 1
            if ents.startswith(view[:mid << 4], p):
                lo = mid
            else:
                hi = mid
        return total + lo
    return total


def _delta_classes(d: BlockDelta, new_pages: dict[bytes, tuple[int, int, int]]) -> bytes:
    """One class byte per changed page: zero, new to the store, or already stored."""
    e = d.entries
    out = bytearray(len(d.indices))
    for k in range(len(out)):
        h = e[k * ENTRY:k * ENTRY + ENTRY]
        out[k] = CLASS_ZERO if h == ZERO else CLASS_NEW if h in new_pages else CLASS_DUP
    return bytes(out)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _create(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("packs", "index", "checkpoints"):
        (root / sub).mkdir(exist_ok=True)
    (root / "lock").touch()
    atomic_write(root / FORMAT_FILE, FORMAT_TEXT)


def _is_empty_layout(root: Path) -> bool:
    """An empty directory, or one a crashed ``_create`` left (no FORMAT yet)."""
    for entry in os.listdir(root):
        p = root / entry
        if entry in ("packs", "index", "checkpoints") and p.is_dir() and not os.listdir(p):
            continue
        if entry == "lock" or entry.startswith(".tmp-"):
            continue
        return False
    return True


def check_format(root: Path) -> None:
    """Raise unless ``root/FORMAT`` names the format version this code writes."""
    path = root / FORMAT_FILE
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except FileNotFoundError:
        raise StoreError(f"{root}: not an sbtui store (no {FORMAT_FILE} file)") from None
    if data == FORMAT_TEXT:
        return
    lines = data.split(b"\n")
    if lines and lines[0] == b"sbtui checkpoint store":
        for line in lines[1:]:
            if line.startswith(b"format-version:"):
                found = line.split(b":", 1)[1].strip().decode("ascii", "replace")
                raise FormatVersionError(
                    f"{root}: store format version {found}, this sbtui reads version "
                    f"{STORE_VERSION} (use the sbtui that wrote it, or re-import)")
    raise FormatVersionError(f"{path}: unrecognised format file (expected "
                             f"{FORMAT_TEXT.decode()!r})")
