"""Checkpoint manifests: one file per checkpoint, ``checkpoints/NNNN.ckpt``.

A checkpoint exists exactly when its manifest is in place (written with
:func:`atomic_write`). The file is::

    b"SBTUICKP", u32 format version, u32 header length H
    header   H bytes of msgpack (a map, see :class:`Manifest`)
    16 bytes xxh3-128 of everything before
    blobs    the sections the header's ``blobs`` table locates

The header is small (ids, names, statistics, free-form metadata) so listing
checkpoints reads a few hundred bytes each. The large parts are blobs, each
read only when needed and each lz4-compressed with its checksum:

* ``skeleton``   the codec's skeleton of the stream;
* ``delta``      the page map as a delta against the parent (msgpack);
* ``full``       the whole page map, on keyframe checkpoints only (msgpack);
* ``superseded`` hashes of page records a stream sent twice (msgpack).

Everything read from disk is untrusted: msgpack is unpacked with size
limits, ext types refused, every field type- and range-checked, and any
failure becomes a :class:`StoreError` naming the file (never a crash, never
code execution: there is no pickle anywhere).
"""

from __future__ import annotations

import math
import re
import struct
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lz4.block
import msgpack
import xxhash

from engine.errors import FormatVersionError, IntegrityError, StoreError
from engine.store.pagemap import ENTRY, BlockDelta, Delta, PageMap

CKPT_MAGIC = b"SBTUICKP"
CKPT_VERSION = 1
CKPT_HEAD = struct.Struct("<8sII")
CHECK = 16
MAX_HEADER = 16 << 20
MAX_BLOB = 1 << 30
MAX_NAME = 4096
MAX_META_DEPTH = 16
# Pages a checkpoint's map may hold, over all blocks: 256 GiB of guest RAM.
# A page map costs 16 bytes a page in memory, so this bounds what a hostile
# manifest can make a reader allocate (1 GiB) and matches MAX_BLOB.
MAX_PAGES = 1 << 26
ID_RE = re.compile(r"\A[0-9]{4,12}\Z")
BLOB_NAMES = ("skeleton", "delta", "full", "superseded")


def checkpoint_id(n: int) -> str:
    return f"{n:04d}"


def valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_RE.match(value) is not None


@dataclass(slots=True)
class Blob:
    offset: int       # from the start of the blob area
    stored_len: int
    raw_len: int
    digest: bytes     # xxh3-128 of the stored bytes


@dataclass(slots=True)
class Manifest:
    """The header of a checkpoint manifest (what lists and stats need)."""

    id: str
    name: str
    parent: str | None
    created: float
    machine: str
    blocks: list[tuple[str, int]]
    raw_bytes: int
    stream_hash: bytes
    stats: dict[str, int]
    meta: dict[str, Any]
    blobs: dict[str, Blob] = field(default_factory=dict)
    path: Path | None = None
    blob_base: int = 0          # file offset of the blob area
    file_size: int = 0

    @property
    def is_keyframe(self) -> bool:
        """True when the manifest can be restored without its parent."""
        return self.parent is None or "full" in self.blobs


# -- writing ---------------------------------------------------------------

def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _lz4(data: bytes) -> bytes:
    return lz4.block.compress(data, store_size=False) if data else b""


def encode_delta(delta: Delta, classes: dict[str, bytes | None] | None = None) -> bytes:
    """A delta; ``classes`` optionally gives one byte per changed page (what it was)."""
    classes = classes or {}
    return _pack({name: [d.pages, d.indices.tobytes(), d.entries, classes.get(name)]
                  for name, d in delta.items()})


def encode_full(pm: PageMap) -> bytes:
    return _pack({name: pm._raw_blocks()[name] for name in pm.blocks()})


def encode_superseded(superseded: dict[int, bytes]) -> bytes:
    keys = sorted(superseded)
    return _pack([array("Q", keys).tobytes(), b"".join(superseded[k] for k in keys)])


def encode_manifest(m: Manifest, blobs: dict[str, bytes]) -> bytes:
    """Serialise ``m`` with its blobs (raw, uncompressed bytes)."""
    table = {}
    area = bytearray()
    for name, raw in blobs.items():
        if len(raw) > MAX_BLOB:
            raise StoreError(f"checkpoint {m.id}: {name} is {len(raw)} bytes, "
                             f"more than the {MAX_BLOB} a manifest blob may hold")
        stored = _lz4(raw)
        table[name] = [len(area), len(stored), len(raw), xxhash.xxh3_128_digest(stored)]
        area += stored
    header = _pack({
        "id": m.id, "name": m.name, "parent": m.parent, "created": m.created,
        "machine": m.machine, "blocks": [[n, length] for n, length in m.blocks],
        "raw_bytes": m.raw_bytes, "stream_hash": m.stream_hash,
        "stats": m.stats, "meta": m.meta, "blobs": table,
    })
    if len(header) > MAX_HEADER:
        raise StoreError(f"checkpoint {m.id}: manifest header is {len(header)} bytes "
                         f"(metadata too large; limit {MAX_HEADER})")
    head = CKPT_HEAD.pack(CKPT_MAGIC, CKPT_VERSION, len(header)) + header
    return head + xxhash.xxh3_128_digest(head) + bytes(area)


# -- reading ---------------------------------------------------------------

def _unpack(data: bytes, what: str, path: Path, limit: int) -> Any:
    def no_ext(code, payload):
        raise ValueError(f"msgpack extension type {code} is not allowed")
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True, ext_hook=no_ext,
            max_str_len=limit, max_bin_len=limit, max_array_len=limit,
            max_map_len=limit, max_ext_len=0)
    except Exception as err:  # noqa: BLE001 - hostile input may raise anything msgpack has
        raise StoreError(f"{path}: {what} is not valid msgpack ({type(err).__name__}: {err})") from None


class _Bad(Exception):
    pass


def _want(cond: bool, what: str) -> None:
    if not cond:
        raise _Bad(what)


def _is_int(v: object, lo: int = 0, hi: int = 1 << 63) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _check_meta(v: object, depth: int = 0) -> None:
    _want(depth <= MAX_META_DEPTH, "meta is nested too deeply")
    if v is None or isinstance(v, (bool, int, float, str, bytes)):
        return
    if isinstance(v, list):
        for x in v:
            _check_meta(x, depth + 1)
        return
    if isinstance(v, dict):
        for k, x in v.items():
            _want(isinstance(k, str), "meta keys must be strings")
            _check_meta(x, depth + 1)
        return
    raise _Bad(f"meta holds a value of type {type(v).__name__}")


def check_meta(meta: object) -> dict[str, Any]:
    """Validate free-form metadata (for writing and reading alike)."""
    try:
        _want(isinstance(meta, dict), "meta must be a map")
        _check_meta(meta)
    except _Bad as err:
        raise StoreError(f"bad checkpoint metadata: {err}") from None
    return meta  # type: ignore[return-value]


def read_manifest(path: Path, data: bytes | None = None) -> Manifest:
    """Parse and validate a manifest's header (blobs are read on demand)."""
    if data is None:
        with open(path, "rb") as f:
            data = f.read(CKPT_HEAD.size)
            if len(data) == CKPT_HEAD.size:
                _, _, hlen = CKPT_HEAD.unpack(data)
                if hlen <= MAX_HEADER:
                    data += f.read(hlen + CHECK)
            size = f.seek(0, 2)
    else:
        size = len(data)
    if len(data) < CKPT_HEAD.size:
        raise IntegrityError(f"manifest {path} is truncated ({len(data)} bytes)", offset=0)
    magic, version, hlen = CKPT_HEAD.unpack_from(data)
    if magic != CKPT_MAGIC:
        raise IntegrityError(f"{path} is not a checkpoint manifest (magic {magic!r})", offset=0)
    if version != CKPT_VERSION:
        raise FormatVersionError(f"{path}: manifest format version {version}, "
                                 f"this sbtui reads version {CKPT_VERSION}")
    if hlen > MAX_HEADER:
        raise StoreError(f"{path}: manifest header claims {hlen} bytes (limit {MAX_HEADER})")
    end = CKPT_HEAD.size + hlen
    if len(data) < end + CHECK:
        raise IntegrityError(f"manifest {path} is truncated: header needs {end + CHECK} bytes, "
                             f"file has {len(data)}", offset=len(data))
    if xxhash.xxh3_128_digest(data[:end]) != data[end:end + CHECK]:
        raise IntegrityError(f"manifest {path} fails its checksum", offset=end)
    obj = _unpack(data[CKPT_HEAD.size:end], "manifest header", path, hlen)
    try:
        m = _validate(obj)
    except _Bad as err:
        raise StoreError(f"{path}: bad manifest: {err}") from None
    m.path = path
    m.blob_base = end + CHECK
    m.file_size = size
    for name, blob in m.blobs.items():
        if m.blob_base + blob.offset + blob.stored_len > size:
            raise IntegrityError(f"manifest {path}: blob {name!r} runs past the end of the file",
                                 checkpoint=m.id, offset=m.blob_base + blob.offset)
    return m


def _validate(obj: object) -> Manifest:
    _want(isinstance(obj, dict), "header is not a map")
    assert isinstance(obj, dict)
    g = obj.get
    _want(valid_id(g("id")), "id must be a string of 4 to 12 digits")
    _want(isinstance(g("name"), str) and len(g("name")) <= MAX_NAME, "name must be a short string")
    _want(g("parent") is None or valid_id(g("parent")), "parent must be null or a checkpoint id")
    _want(g("parent") != g("id"), "checkpoint is its own parent")
    created = g("created")
    _want(isinstance(created, (int, float)) and not isinstance(created, bool)
          and math.isfinite(created), "created must be a number")
    _want(isinstance(g("machine"), str) and len(g("machine")) <= MAX_NAME, "machine must be a string")
    blocks = g("blocks")
    _want(isinstance(blocks, list), "blocks must be a list")
    for b in blocks:
        _want(isinstance(b, list) and len(b) == 2 and isinstance(b[0], str) and _is_int(b[1]),
              "each block must be [name, length]")
    _want(_is_int(g("raw_bytes")), "raw_bytes must be a non-negative integer")
    _want(isinstance(g("stream_hash"), bytes) and len(g("stream_hash")) == 16,
          "stream_hash must be 16 bytes")
    stats = g("stats")
    _want(isinstance(stats, dict) and all(isinstance(k, str) and _is_int(v) for k, v in stats.items()),
          "stats must map names to non-negative integers")
    meta = g("meta")
    _want(isinstance(meta, dict), "meta must be a map")
    _check_meta(meta)
    table = g("blobs")
    _want(isinstance(table, dict), "blobs must be a map")
    blobs = {}
    for name, spec in table.items():
        _want(name in BLOB_NAMES, f"unknown blob {name!r}")
        _want(isinstance(spec, list) and len(spec) == 4 and all(_is_int(x) for x in spec[:3])
              and isinstance(spec[3], bytes) and len(spec[3]) == 16,
              f"blob {name!r} must be [offset, stored length, raw length, 16-byte hash]")
        _want(spec[2] <= MAX_BLOB, f"blob {name!r} claims {spec[2]} bytes (limit {MAX_BLOB})")
        blobs[name] = Blob(spec[0], spec[1], spec[2], spec[3])
    for need in ("skeleton", "delta"):
        _want(need in blobs, f"blob {need!r} is missing")
    return Manifest(
        id=g("id"), name=g("name"), parent=g("parent"), created=float(created),
        machine=g("machine"), blocks=[(b[0], b[1]) for b in blocks], raw_bytes=g("raw_bytes"),
        stream_hash=g("stream_hash"), stats=dict(stats), meta=meta, blobs=blobs)


def read_blob(m: Manifest, name: str) -> bytes:
    """The raw bytes of a blob, checksum-verified; b"" if the manifest has none."""
    blob = m.blobs.get(name)
    if blob is None:
        return b""
    assert m.path is not None
    where = m.blob_base + blob.offset
    with open(m.path, "rb") as f:
        f.seek(where)
        stored = f.read(blob.stored_len)
    if len(stored) != blob.stored_len or xxhash.xxh3_128_digest(stored) != blob.digest:
        raise IntegrityError(f"{name} of manifest {m.path} fails its checksum",
                             checkpoint=m.id, offset=where)
    if blob.raw_len == 0:
        return b""
    try:
        raw = lz4.block.decompress(stored, uncompressed_size=blob.raw_len)
    except Exception as err:  # noqa: BLE001 - lz4 raises its own error types
        raise IntegrityError(f"{name} of manifest {m.path} does not decompress: {err}",
                             checkpoint=m.id, offset=where) from None
    if len(raw) != blob.raw_len:
        raise IntegrityError(f"{name} of manifest {m.path} is {len(raw)} bytes, "
                             f"expected {blob.raw_len}", checkpoint=m.id, offset=where)
    return raw


def read_delta(m: Manifest) -> dict[str, tuple[BlockDelta, bytes | None]]:
    """Per block, its delta and the page classes (one byte per changed page) if kept."""
    obj = _unpack(read_blob(m, "delta"), "page-map delta", m.path, MAX_BLOB)
    try:
        _want(isinstance(obj, dict), "delta is not a map")
        out: dict[str, tuple[BlockDelta, bytes | None]] = {}
        total = 0
        for name, spec in obj.items():
            _want(isinstance(spec, list) and len(spec) == 4 and _is_int(spec[0], 0, 1 << 32)
                  and isinstance(spec[1], bytes) and isinstance(spec[2], bytes)
                  and (spec[3] is None or isinstance(spec[3], bytes)),
                  f"delta of block {name!r} must be [pages, indices, entries, classes]")
            pages, raw_idx, entries, classes = spec
            total += pages
            _want(total <= MAX_PAGES, f"delta describes more than {MAX_PAGES} pages")
            _want(len(raw_idx) % 4 == 0 and len(entries) == len(raw_idx) // 4 * ENTRY,
                  f"delta of block {name!r}: indices and entries differ in count")
            idx = array("I")
            idx.frombytes(raw_idx)
            if idx.itemsize != 4:  # pragma: no cover - every platform we run on has 4-byte 'I'
                raise _Bad("platform 'I' arrays are not 4 bytes")
            _want(not idx or max(idx) < pages, f"delta of block {name!r} points past its {pages} pages")
            _want(classes is None or len(classes) == len(idx),
                  f"delta of block {name!r}: page classes and indices differ in count")
            out[name] = (BlockDelta(pages, idx, entries), classes)
        return out
    except _Bad as err:
        raise StoreError(f"{m.path}: bad page-map delta: {err}") from None


def read_full(m: Manifest) -> PageMap:
    obj = _unpack(read_blob(m, "full"), "page map", m.path, MAX_BLOB)
    try:
        _want(isinstance(obj, dict), "page map is not a map")
        for name, raw in obj.items():
            _want(isinstance(raw, bytes) and len(raw) % ENTRY == 0,
                  f"page map of block {name!r} must be whole 16-byte entries")
        return PageMap({name: bytearray(raw) for name, raw in obj.items()})
    except _Bad as err:
        raise StoreError(f"{m.path}: bad page map: {err}") from None


def read_superseded(m: Manifest) -> dict[int, bytes]:
    if "superseded" not in m.blobs:
        return {}
    obj = _unpack(read_blob(m, "superseded"), "superseded records", m.path, MAX_BLOB)
    try:
        _want(isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], bytes)
              and isinstance(obj[1], bytes) and len(obj[0]) % 8 == 0
              and len(obj[1]) == len(obj[0]) // 8 * ENTRY, "superseded must be [indices, entries]")
        keys = array("Q")
        keys.frombytes(obj[0])
        e = obj[1]
        return {k: e[i * ENTRY:i * ENTRY + ENTRY] for i, k in enumerate(keys)}
    except _Bad as err:
        raise StoreError(f"{m.path}: bad superseded records: {err}") from None


def read_skeleton(m: Manifest) -> bytes:
    return read_blob(m, "skeleton")
