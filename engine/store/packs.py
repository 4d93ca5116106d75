"""Pack files: append-only, self-describing containers of page records.

A pack is ``packs/NNNNNNNN.pack``::

    header   16 bytes   b"SBTUIPAK", u32 format version, u32 pack id
    record   36 bytes   b"SBpg", u8 codec, 3 zero bytes, 16-byte xxh3-128 of the
                        page, u32 page length, u32 stored length,
                        u32 xxh32 of the 32 header bytes before it
             N bytes    the stored payload (N = stored length)
    record ...

Codec 0 stores the page as is, codec 1 as an lz4 *block* (``lz4.block``,
no size prefix). Pages are compressed one by one so any page reads alone;
the block format is used rather than lz4 frames because a frame repeats what
the record header already holds (magic, sizes, a checksum) and costs about 15
bytes and a little time per 4 KiB page. A page that does not shrink is stored
raw, so a record is never longer than the page plus its header.

Every record carries its own hash and lengths, and its header its own
checksum, so the index can be rebuilt from the packs alone and a scanner tells
a torn tail (an interrupted append) from a damaged record. Readers verify the
page's xxh3 on every read and raise :class:`IntegrityError` naming the pack and
offset. Packs only grow; the writer that owns the store lock truncates a tail
that no index segment has committed (see ``store.py``).
"""

from __future__ import annotations

import os
import struct
import threading
from bisect import bisect_left
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import accumulate, repeat
from pathlib import Path
from typing import Iterator

import lz4.block
import xxhash

from engine.errors import FormatVersionError, IntegrityError, StoreError
from engine.store.fsutil import fsync_dir

PACK_MAGIC = b"SBTUIPAK"
PACK_VERSION = 1
PACK_HEADER = struct.Struct("<8sII")
REC_MAGIC = b"SBpg"
REC_HEADER = struct.Struct("<4sBxxx16sIII")
REC_FIXED = struct.Struct("<4sBxxx16sII")  # the part the header checksum covers
REC_CHECKED = REC_FIXED.size
CODEC_RAW = 0
CODEC_LZ4 = 1
MAX_PAGE = 1 << 20  # no sane page is larger; bounds what a hostile header can make us allocate
MAX_RECORD = REC_HEADER.size + MAX_PAGE
# Readers cache windows of packs, the least recently used dropped first. A
# checkpoint's pages come from every import that stored one of them, so an
# export walks many regions of the packs at once, each in order: many small
# windows keep them all (16 MiB in all).
WINDOW_BITS = 18    # 256 KiB windows...
WINDOWS = 64        # ...this many of them
_LENS = struct.Struct("<II")

_xxh32 = xxhash.xxh32_intdigest
_xxh3_128 = xxhash.xxh3_128_digest
_compress = lz4.block.compress
_decompress = lz4.block.decompress
_pack_fixed = REC_FIXED.pack
_pack_u32 = struct.Struct("<I").pack


def _iov_max() -> int:
    try:
        n = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):
        n = -1
    return min(n if n > 0 else 16, 1024) & ~1   # POSIX guarantees 16; even: (header, payload) pairs


_IOV_MAX = _iov_max()


def pack_name(pack_id: int) -> str:
    return f"{pack_id:08d}.pack"


def parse_pack_name(name: str) -> int | None:
    stem, dot, ext = name.partition(".")
    if ext != "pack" or len(stem) != 8 or not stem.isdigit():
        return None
    return int(stem)


def encode_record(digest: bytes, page: bytes) -> bytes:
    """One record (header + payload) for ``page`` whose xxh3-128 is ``digest``."""
    packed = _compress(page, store_size=False)
    if len(packed) < len(page):
        codec, payload = CODEC_LZ4, packed
    else:
        codec, payload = CODEC_RAW, page
    head = _pack_fixed(REC_MAGIC, codec, digest, len(page), len(payload))
    return head + _xxh32(head).to_bytes(4, "little") + payload


@dataclass(slots=True)
class RecordHeader:
    codec: int
    digest: bytes
    page_len: int
    stored_len: int

    @property
    def length(self) -> int:
        return REC_HEADER.size + self.stored_len


def parse_record_header(buf: bytes | memoryview) -> RecordHeader | None:
    """The header at the start of ``buf``, or None if it is not a valid header."""
    if len(buf) < REC_HEADER.size:
        return None
    magic, codec, digest, page_len, stored_len, check = REC_HEADER.unpack_from(buf)
    if magic != REC_MAGIC or _xxh32(bytes(buf[:REC_CHECKED])) != check:
        return None
    if codec not in (CODEC_RAW, CODEC_LZ4) or page_len > MAX_PAGE or stored_len > MAX_PAGE + 64:
        return None
    if codec == CODEC_RAW and stored_len != page_len:
        return None
    return RecordHeader(codec, bytes(digest), page_len, stored_len)


def decode_payload(head: RecordHeader, payload: bytes | memoryview) -> bytes:
    """The page bytes of a record; raises ValueError on bad compressed data."""
    if head.codec == CODEC_RAW:
        return bytes(payload)
    return _decompress(payload, uncompressed_size=head.page_len)


def write_pack_header(fd: int, pack_id: int) -> None:
    os.write(fd, PACK_HEADER.pack(PACK_MAGIC, PACK_VERSION, pack_id))


def check_pack_header(buf: bytes, path: Path, pack_id: int) -> None:
    if len(buf) < PACK_HEADER.size:
        raise IntegrityError("pack header is truncated", pack=path.name, offset=0)
    magic, version, stored_id = PACK_HEADER.unpack_from(buf)
    if magic != PACK_MAGIC:
        raise IntegrityError(f"not a pack file (magic {magic!r}, expected {PACK_MAGIC!r})",
                             pack=path.name, offset=0)
    if version != PACK_VERSION:
        raise FormatVersionError(
            f"{path}: pack format version {version}, this sbtui reads version {PACK_VERSION}")
    if stored_id != pack_id:
        raise IntegrityError(f"pack header names pack {stored_id}, file name says {pack_id}",
                             pack=path.name, offset=8)


class PackReader:
    """Reads and verifies records; keeps one open descriptor per pack.

    An open descriptor keeps reading a pack that gc has since unlinked, so a
    reader with a slightly old view of the index still gets its pages.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self._fds: dict[int, int] = {}
        self._windows: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._windows_lock = threading.Lock()   # a Store may be shared by threads

    def _fd(self, pack_id: int) -> int:
        fd = self._fds.get(pack_id)
        if fd is None:
            path = self.directory / pack_name(pack_id)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                raise   # the caller refreshes its index: gc may have moved the page
            except OSError as err:
                raise IntegrityError(f"cannot open the pack: {err.strerror} (a symbolic link?)",
                                     pack=path.name) from None
            try:
                check_pack_header(os.pread(fd, PACK_HEADER.size, 0), path, pack_id)
            except BaseException:
                os.close(fd)
                raise
            kept = self._fds.setdefault(pack_id, fd)
            if kept != fd:   # another thread opened it meanwhile
                os.close(fd)
            fd = kept
        return fd

    def forget(self, pack_id: int | None = None) -> None:
        ids = list(self._fds) if pack_id is None else [pack_id]
        with self._windows_lock:
            self._windows.clear()
        for pid in ids:
            fd = self._fds.pop(pid, None)
            if fd is not None:
                os.close(fd)

    def close(self) -> None:
        self.forget()

    def read(self, pack_id: int, offset: int, length: int, digest: bytes,
             checkpoint: str | None = None) -> bytes:
        """The page stored at ``(pack_id, offset)``, verified against ``digest``.

        Reads go through a few cached 1 MiB windows of the pack (pages of one
        checkpoint were appended together, so they sit together). Whatever the
        path, the page's xxh3-128 is checked before it is returned; a record
        that fails the quick checks is read again from the file and judged in
        full, so a stale window can never hand out a wrong page.
        """
        if not REC_HEADER.size < length <= MAX_RECORD:
            raise IntegrityError(f"the index gives a record length of {length} bytes",
                                 pack=pack_name(pack_id), offset=offset)
        buf = self._window_bytes(pack_id, offset, length)
        if buf is not None:
            page = _quick_decode(buf, length, digest)
            if page is not None:
                return page
            with self._windows_lock:
                self._windows.clear()
        return self._read_checked(pack_id, offset, length, digest, checkpoint)

    def window(self, pack_id: int, offset: int) -> bytes:
        """The cached 1 MiB window of the pack holding ``offset`` (shorter at the
        pack's end; unverified bytes: callers check what they take from it)."""
        w = offset >> WINDOW_BITS
        key = (pack_id, w)
        windows = self._windows
        with self._windows_lock:
            win = windows.get(key)
            if win is not None:
                windows.move_to_end(key)
                return win
        win = os.pread(self._fd(pack_id), 1 << WINDOW_BITS, w << WINDOW_BITS)
        with self._windows_lock:
            windows[key] = win
            while len(windows) > WINDOWS:
                windows.popitem(last=False)
        return win

    def record_bytes(self, pack_id: int, offset: int, length: int) -> bytes:
        """The raw bytes of one record, read directly (unverified, like a window)."""
        return os.pread(self._fd(pack_id), length, offset)

    def _window_bytes(self, pack_id: int, offset: int, length: int):
        w = offset >> WINDOW_BITS
        if (offset + length - 1) >> WINDOW_BITS != w:
            return None   # straddles two windows: read it directly
        win = self.window(pack_id, offset)
        rel = offset - (w << WINDOW_BITS)
        if rel + length > len(win):
            with self._windows_lock:   # the pack has grown since: read it afresh
                self._windows.pop((pack_id, w), None)
            return None
        return memoryview(win)[rel:rel + length]

    def _read_checked(self, pack_id: int, offset: int, length: int, digest: bytes,
                      checkpoint: str | None) -> bytes:
        name = pack_name(pack_id)
        buf = os.pread(self._fd(pack_id), length, offset)

        def bad(why: str) -> IntegrityError:
            return IntegrityError(why, checkpoint=checkpoint, pack=name, offset=offset)

        if len(buf) != length:
            raise bad(f"record is cut short: {len(buf)} of {length} bytes present")
        head = parse_record_header(buf)
        if head is None:
            raise bad("record header is damaged (bad magic, checksum or lengths)")
        if head.length != length:
            raise bad(f"record is {head.length} bytes, the index says {length}")
        if head.digest != digest:
            raise bad(f"record holds page {head.digest.hex()}, expected {digest.hex()}")
        try:
            page = decode_payload(head, memoryview(buf)[REC_HEADER.size:])
        except (ValueError, lz4.block.LZ4BlockError) as err:
            raise bad(f"compressed page does not decompress: {err}") from None
        if len(page) != head.page_len or _xxh3_128(page) != digest:
            raise bad(f"page content does not match its hash {digest.hex()}")
        return page


def _quick_decode(buf: memoryview, length: int, digest: bytes) -> bytes | None:
    """The page if the record is whole and its content matches ``digest``, else None."""
    if len(buf) != length or buf[:4] != REC_MAGIC or buf[8:24] != digest:
        return None
    codec = buf[4]
    page_len, stored_len = _LENS.unpack_from(buf, 24)
    if stored_len + REC_HEADER.size != length or page_len > MAX_PAGE:
        return None
    try:
        if codec == CODEC_LZ4:
            page = _decompress(buf[REC_HEADER.size:], uncompressed_size=page_len)
        elif codec == CODEC_RAW:
            page = bytes(buf[REC_HEADER.size:])
        else:
            return None
    except (ValueError, lz4.block.LZ4BlockError):
        return None
    if len(page) != page_len or _xxh3_128(page) != digest:
        return None
    return page


@dataclass(slots=True)
class ScannedRecord:
    offset: int
    length: int
    digest: bytes
    error: str | None  # None when the payload decodes and matches its hash


@dataclass(slots=True)
class PackScan:
    records: list[ScannedRecord]
    valid_end: int   # end of the last record with a sound header
    size: int        # file size


def scan_pack(path: Path, pack_id: int, *, verify: bool = True,
              limit: int | None = None) -> PackScan:
    """Walk every record of a pack from its header on (fsck, index rebuild).

    Stops at the first unreadable header: everything from there on is a torn
    tail (or damage, which the caller judges against the committed length).
    ``limit`` stops the walk at that offset (the committed length).
    """
    records: list[ScannedRecord] = []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        check_pack_header(f.read(PACK_HEADER.size), path, pack_id)
        pos = PACK_HEADER.size
        end = size if limit is None else min(size, limit)
        while pos < end:
            f.seek(pos)
            head = parse_record_header(f.read(REC_HEADER.size))
            if head is None or pos + head.length > end:
                break
            error = None
            if verify:
                payload = f.read(head.stored_len)
                try:
                    page = decode_payload(head, payload)
                    if len(page) != head.page_len or _xxh3_128(page) != head.digest:
                        error = f"page content does not match its hash {head.digest.hex()}"
                except (ValueError, lz4.block.LZ4BlockError) as err:
                    error = f"compressed page does not decompress: {err}"
            records.append(ScannedRecord(pos, head.length, head.digest, error))
            pos += head.length
    return PackScan(records, pos, size)


class PackWriter:
    """Appends records for one import (or gc) under the store lock.

    Two ways in, not to be mixed in one writer:

    * ``append`` / ``append_page`` (gc, tests): the caller's thread builds the
      records; they are buffered and written in large chunks by a background
      thread (``os.write`` releases the GIL, so the disk works meanwhile);
    * ``append_pages`` (imports): batches of pages go to the background
      thread, which compresses them (lz4 releases the GIL, so compression
      runs beside the importer's parsing and hashing on another core), lays
      out the records, writes them and flushes them to disk as it goes; where
      each page landed is in ``locations`` once ``commit()`` returned.

    A pack rolls over once it reaches ``target_size``. ``commit()`` fsyncs
    every pack touched and returns their lengths, which the index segment
    then records as committed. ``abort()`` truncates every pack back to where
    this writer found it and deletes packs it created, leaving the bytes as
    they were.
    """

    FLUSH_AT = 4 << 20
    MAX_QUEUED = 4
    SYNC_EVERY = 8 << 20   # background writes ask the disk to catch up this often
    # Random data comes in stretches, and lz4 takes about as long to find that
    # a page does not shrink as to compress one that does: after RAW_STREAK
    # pages in a row that did not shrink, only every RAW_PROBE-th page is
    # tried, until one shrinks (append_pages only; such pages are stored raw).
    RAW_STREAK = 4
    RAW_PROBE = 8

    def __init__(self, directory: Path, *, next_id: int, tail: tuple[int, int] | None,
                 target_size: int):
        self.directory = directory
        self.target_size = target_size
        self._next_id = next_id
        self._resume = tail   # (pack id, committed length) of a pack that may take more records
        self._fd: int | None = None
        self._pack_id = -1
        self._pos = 0
        self._buf = bytearray()
        self._touched: dict[int, int] = {}   # pack id -> length before this writer (0: created)
        self._created: list[int] = []
        self._lengths: dict[int, int] = {}
        self.bytes_written = 0
        self.locations: dict[bytes, tuple[int, int, int]] = {}   # append_pages: digest -> where
        self._direct = False    # True inside the background thread's batches: write, do not queue
        self._raw_streak = 0    # pages in a row that did not compress (append_pages)
        self._unsynced = 0      # append_pages: bytes written since the last fdatasync
        self._syncer: ThreadPoolExecutor | None = None   # runs those fdatasyncs
        self._sync: Future | None = None
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sbtui-pack-writer")
        self._pending: deque[Future] = deque()

    def _open_next(self) -> None:
        self._close_current()
        path = self.directory / pack_name(self._resume[0]) if self._resume else None
        if self._resume is not None and self._resume[1] < self.target_size and path.exists():
            pack_id, length = self._resume
            self._resume = None
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
            size = os.fstat(fd).st_size
            if size != length:
                os.close(fd)
                raise StoreError(f"{pack_name(pack_id)} is {size} bytes, committed length is "
                                 f"{length}: the store was not repaired before writing")
            os.lseek(fd, length, os.SEEK_SET)
            self._touched[pack_id] = length
            self._fd, self._pack_id, self._pos = fd, pack_id, length
            return
        self._resume = None
        pack_id = self._next_id
        self._next_id += 1
        path = self.directory / pack_name(pack_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._created.append(pack_id)
        self._touched[pack_id] = 0
        write_pack_header(fd, pack_id)
        self._fd, self._pack_id, self._pos = fd, pack_id, PACK_HEADER.size
        self.bytes_written += PACK_HEADER.size

    def append_page(self, digest: bytes, page: bytes) -> tuple[int, int, int]:
        """Compress and queue ``page``; like ``append(encode_record(...))`` with fewer copies."""
        if self._fd is None or self._pos >= self.target_size:
            self._open_next()
        packed = _compress(page, store_size=False)
        if len(packed) < len(page):
            codec, payload = CODEC_LZ4, packed
        else:
            codec, payload = CODEC_RAW, page
        head = _pack_fixed(REC_MAGIC, codec, digest, len(page), len(payload))
        length = REC_HEADER.size + len(payload)
        where = (self._pack_id, self._pos, length)
        buf = self._buf
        buf += head
        buf += _xxh32(head).to_bytes(4, "little")
        buf += payload
        self._pos += length
        self.bytes_written += length
        if len(buf) >= self.FLUSH_AT:
            self._flush()
        return where

    def append(self, record: bytes) -> tuple[int, int, int]:
        """Queue ``record``; returns where it lands: (pack id, offset, length)."""
        if self._fd is None or self._pos >= self.target_size:
            self._open_next()
        where = (self._pack_id, self._pos, len(record))
        self._buf += record
        self._pos += len(record)
        self.bytes_written += len(record)
        if len(self._buf) >= self.FLUSH_AT:
            self._flush()
        return where

    def append_pages(self, batch: list[tuple[bytes, object]]) -> None:
        """Queue ``(digest, page)`` pairs for the background thread (see the class doc).

        The pages (any bytes-like objects) must stay unchanged until
        ``commit()``; an error of the background thread comes out of a later
        call or of ``commit()``.
        """
        while len(self._pending) >= self.MAX_QUEUED:   # bound what waits behind a slow disk
            self._pending.popleft().result()
        self._pending.append(self._io.submit(self._append_batch, batch))

    def _append_batch(self, batch: list[tuple[bytes, object]]) -> None:
        """Compress, lay out and write a batch (in the background thread).

        The work is done a column at a time (``map`` and list slicing run in
        C), not a record at a time: on a stretch of new pages that do not
        compress this thread's share of the GIL is what an import waits for.
        Records are written with ``writev`` straight from the pages' buffers,
        no copy into a staging buffer. Pages in a stretch that does not
        compress are not tried one by one (see ``RAW_STREAK``).
        """
        self._direct = True
        digests = [d for d, _p in batch]
        pages = [p for _d, p in batch]
        sizes = list(map(len, pages))
        if sizes and max(sizes) > MAX_PAGE:
            raise StoreError(f"a page of {max(sizes)} bytes is larger than a pack record may hold")
        payloads = self._payloads(pages, sizes)
        stored = list(map(len, payloads))
        codecs = [CODEC_RAW if a == b else CODEC_LZ4 for a, b in zip(sizes, stored)]
        heads = list(map(_pack_fixed, repeat(REC_MAGIC, len(batch)), codecs, digests, sizes, stored))
        heads = [h + _pack_u32(_xxh32(h)) for h in heads]
        lengths = [REC_HEADER.size + n for n in stored]
        k = 0
        while k < len(batch):
            if self._fd is None or self._pos >= self.target_size:
                self._open_next()
            # records up to the first that starts at or past the pack's target size
            starts = list(accumulate(lengths[k:], initial=self._pos))
            j = k + max(1, bisect_left(starts, self.target_size, hi=len(starts) - 1))
            pid = self._pack_id
            self.locations.update(zip(digests[k:j], zip(repeat(pid), starts, lengths[k:j])))
            iov: list = [None] * (2 * (j - k))
            iov[0::2] = heads[k:j]
            iov[1::2] = payloads[k:j]
            size = starts[j - k] - self._pos
            for a in range(0, len(iov), _IOV_MAX):
                _write_all(self._fd, iov[a:a + _IOV_MAX])
            self._pos += size
            self.bytes_written += size
            self._unsynced += size
            if self._unsynced >= self.SYNC_EVERY:
                self._start_sync()
            k = j

    def _start_sync(self) -> None:
        """Start the disk on what was written, so commit's fsync has little left
        to wait for: an ``fdatasync`` in a thread of its own, so this writer
        goes on laying out records meanwhile (one at a time; skipped while the
        last one runs). Its error comes out of a later call or of commit."""
        prev = self._sync
        if prev is not None:
            if not prev.done():
                return
            prev.result()
        if self._syncer is None:
            self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sbtui-pack-sync")
        self._sync = self._syncer.submit(os.fdatasync, self._fd)
        self._unsynced = 0

    def _wait_sync(self) -> None:
        """Wait for the background fdatasync (before the descriptor closes)."""
        sync, self._sync = self._sync, None
        if sync is not None:
            sync.result()

    def _payloads(self, pages: list, sizes: list[int]) -> list:
        """Each page's stored form: its lz4 block where that is shorter, else the page."""
        streak = self._raw_streak
        out = []
        for p, n in zip(pages, sizes):
            if streak < self.RAW_STREAK or streak % self.RAW_PROBE == 0:
                packed = _compress(p, store_size=False)
                if len(packed) < n:
                    out.append(packed)
                    streak = 0
                    continue
            streak += 1
            out.append(p)
        self._raw_streak = streak
        return out

    def _flush(self) -> None:
        if self._buf and self._fd is not None:
            # bound the memory queued behind a slow disk
            while len(self._pending) >= self.MAX_QUEUED:
                self._pending.popleft().result()
            self._pending.append(self._io.submit(_write_all, self._fd, bytes(self._buf)))
            self._buf.clear()

    def _drain(self) -> None:
        """Wait for every queued write; re-raise the first error."""
        while self._pending:
            self._pending.popleft().result()

    def _close_current(self) -> None:
        if self._fd is not None:
            self._flush()
            if not self._direct:   # the background thread must not wait for itself
                self._drain()
            self._wait_sync()
            os.fsync(self._fd)
            os.close(self._fd)
            self._lengths[self._pack_id] = self._pos
            self._fd = None
            self._unsynced = 0

    def commit(self) -> dict[int, int]:
        """Make every appended record durable; returns {pack id: length}."""
        try:
            self._drain()            # append_pages batches first: they append and roll packs
            self._direct = False
            self._close_current()
        finally:
            self._io.shutdown(wait=True)
            if self._syncer is not None:
                self._syncer.shutdown(wait=True)
        if self._created:
            fsync_dir(self.directory)   # the new packs' names, too
        return dict(self._lengths)

    def abort(self) -> None:
        for fut in self._pending:   # let queued writes finish before cutting them off
            fut.cancel() or fut.exception()
        self._pending.clear()
        self._io.shutdown(wait=True)
        if self._syncer is not None:
            self._syncer.shutdown(wait=True)   # its fdatasync uses the descriptor
            self._sync = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._buf.clear()
        for pack_id, length in self._touched.items():
            path = self.directory / pack_name(pack_id)
            if pack_id in self._created:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            else:
                os.truncate(path, length)


def _write_all(fd: int, data) -> None:
    """Write all of ``data``: one bytes-like object, or a list of them (one
    ``writev``, at most ``_IOV_MAX`` of them; the rest of a short write is
    written from a copy)."""
    if isinstance(data, list):
        total = sum(map(len, data))
        done = os.writev(fd, data)
        if done == total:
            return
        data = b"".join(data)[done:]
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def iter_pack_ids(directory: Path) -> Iterator[int]:
    for name in os.listdir(directory):
        pid = parse_pack_name(name)
        if pid is not None:
            yield pid
