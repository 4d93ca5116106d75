"""Read internal snapshots (and the active disk) out of a qcow2 image without QEMU.

What it promises:

* :func:`list_snapshots` returns the snapshot table as :class:`Qcow2Snapshot`
  records (id, name, date, vm_clock, vm_state_size, disk size, icount, L1
  table, raw extra data), in table order.
* :func:`open_vmstate` returns a streaming, read-only file object that yields
  exactly ``vm_state_size`` bytes of one snapshot's VM state: the migration
  stream ``savevm`` wrote (``QEVM`` ...). Memory stays bounded (one cluster of
  read-ahead and a few cached L2 tables), whatever the state's size.
* :func:`read_guest` reads the active disk (guest view) through the active L1
  table, including compressed clusters; it exists to prove the mapping code.

Supported: qcow2 versions 2 and 3, any cluster size QEMU allows, standard and
extended L2 entries, zero clusters, compressed clusters with deflate (and zstd
only when the running Python has ``compression.zstd``), dirty images (the
refcounts are never read). Refused with :class:`~engine.errors.Qcow2Error`
naming the image and the feature: encryption, external data files, images
marked corrupt, unknown incompatible features, and guest reads that would need
a backing file. Every table read is bounds-checked against the file size, and
errors name the file, the offset and what was expected there.

Where the VM state lives (QEMU's ``qcow2_vm_state_offset``): at guest offset
``ceil(disk_size / (cluster_size * l2_entries)) << (cluster_bits + l2_bits)``
of the snapshot's L1 table, i.e. in the first L1 entry past the virtual disk.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from engine.errors import Qcow2Error

QCOW2_MAGIC = b"QFI\xfb"

# Incompatible feature bits (docs/interop/qcow2.txt).
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
_KNOWN_INCOMPAT = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2

_EXT_END = 0x00000000
_EXT_FEATURE_NAMES = 0x6803F857
_EXT_DATA_FILE = 0x44415441

COMPRESSION_DEFLATE = 0
COMPRESSION_ZSTD = 1

_L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
_L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
_OFLAG_COMPRESSED = 1 << 62
_OFLAG_ZERO = 1

# QEMU refuses snapshot tables and L1 tables past these sizes; so do we, so a
# corrupt count cannot make us allocate gigabytes.
_MAX_SNAPSHOTS = 65536
_MAX_L1_BYTES = 32 * 1024 * 1024
_L2_CACHE_TABLES = 16


@dataclass(frozen=True, slots=True)
class Qcow2Snapshot:
    """One entry of a qcow2 snapshot table."""

    id: str
    name: str
    date_sec: int               # wall-clock time the snapshot was taken: seconds since the Epoch
    date_nsec: int              # ... and nanoseconds
    vm_clock_ns: int            # guest run time at the snapshot
    vm_state_size: int          # bytes of VM state (0: disk-only snapshot)
    disk_size: int | None       # virtual disk size at the snapshot (extra data), if recorded
    icount: int | None          # record/replay instruction count, None when icount was off
    l1_table_offset: int
    l1_size: int
    extra_data: bytes           # the raw extra data, for fields this reader does not know
    table_offset: int           # where the entry starts in the image file

    @property
    def date(self) -> datetime:
        """The snapshot time as an aware UTC datetime (microsecond resolution)."""
        return datetime.fromtimestamp(self.date_sec, tz=timezone.utc).replace(
            microsecond=min(self.date_nsec // 1000, 999_999))


@dataclass(frozen=True, slots=True)
class Qcow2Header:
    version: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible_features: int
    compatible_features: int
    autoclear_features: int
    header_length: int
    compression_type: int
    backing_file: str | None
    extended_l2: bool

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def l2_bits(self) -> int:
        # An L2 entry is 8 bytes, or 16 with extended L2 entries.
        return self.cluster_bits - (4 if self.extended_l2 else 3)


class Qcow2Image:
    """An open qcow2 file: header, snapshot table and cluster mapping (read-only).

    A context manager; prefer the module functions for one-off reads.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._f: BinaryIO = open(self.path, "rb")
        except OSError as err:
            raise Qcow2Error(f"{self.path}: cannot open: {err.strerror}") from err
        try:
            self.file_size = os.fstat(self._f.fileno()).st_size
            self.header = self._read_header()
            self._l2_cache: OrderedDict[int, bytes] = OrderedDict()
            self._snapshots: list[Qcow2Snapshot] | None = None
        except BaseException:
            self._f.close()
            raise

    # -- plumbing ---------------------------------------------------------

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "Qcow2Image":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _err(self, message: str, offset: int | None = None) -> Qcow2Error:
        where = f" at offset {offset}" if offset is not None else ""
        return Qcow2Error(f"{self.path}{where}: {message}")

    def _pread(self, offset: int, length: int, what: str) -> bytes:
        if offset < 0 or offset + length > self.file_size:
            raise self._err(f"{what} ({length} bytes) lies outside the file "
                            f"({self.file_size} bytes)", offset)
        data = os.pread(self._f.fileno(), length, offset)
        if len(data) != length:
            raise self._err(f"short read of {what}: expected {length} bytes, got {len(data)}", offset)
        return data

    # -- header -----------------------------------------------------------

    def _read_header(self) -> Qcow2Header:
        if self.file_size < 72:
            raise self._err(f"too small for a qcow2 header ({self.file_size} bytes, expected at least 72)", 0)
        raw = self._pread(0, min(self.file_size, 4096), "header")
        if raw[:4] != QCOW2_MAGIC:
            raise self._err(f"not a qcow2 image: magic {raw[:4]!r}, expected {QCOW2_MAGIC!r}", 0)
        (version, backing_off, backing_len, cluster_bits, size, crypt, l1_size, l1_off,
         _rc_off, _rc_clusters, nb_snap, snap_off) = struct.unpack_from(">IQIIQIIQQIIQ", raw, 4)
        if version not in (2, 3):
            raise self._err(f"qcow2 version {version} is not supported (expected 2 or 3)", 4)
        if not 9 <= cluster_bits <= 21:
            raise self._err(f"cluster_bits {cluster_bits} out of range (expected 9..21)", 20)
        incompat = compat = autoclear = 0
        header_length = 72
        compression_type = COMPRESSION_DEFLATE
        if version == 3:
            if len(raw) < 104:
                raise self._err("version 3 header is shorter than 104 bytes", 72)
            incompat, compat, autoclear, _refcount_order, header_length = struct.unpack_from(">QQQII", raw, 72)
            if header_length < 104 or header_length % 8:
                raise self._err(f"header_length {header_length} invalid (expected >= 104, multiple of 8)", 100)
            if header_length > 104:
                compression_type = raw[104]
        names = self._feature_names(raw, header_length)
        unknown = incompat & ~_KNOWN_INCOMPAT
        if unknown:
            bits = [b for b in range(64) if unknown >> b & 1]
            labels = ", ".join(f"bit {b}" + (f" ({names[b]})" if b in names else "") for b in bits)
            raise self._err(f"unknown incompatible feature(s) {labels}; this reader cannot open the image", 72)
        if incompat & INCOMPAT_CORRUPT:
            raise self._err("image is marked corrupt (incompatible feature bit 1); "
                            "repair it with `qemu-img check -r all` first", 72)
        if incompat & INCOMPAT_DATA_FILE:
            raise self._err("image uses an external data file (incompatible feature bit 2); "
                            "external data files are not supported", 72)
        if bool(incompat & INCOMPAT_COMPRESSION) != (compression_type != COMPRESSION_DEFLATE):
            raise self._err(f"compression type bit and compression_type field ({compression_type}) disagree", 104)
        if compression_type not in (COMPRESSION_DEFLATE, COMPRESSION_ZSTD):
            raise self._err(f"unknown compression type {compression_type} (expected 0 deflate or 1 zstd)", 104)
        if crypt:
            raise self._err(f"image is encrypted (crypt_method {crypt}); encryption is not supported", 32)
        extended_l2 = bool(incompat & INCOMPAT_EXTL2)
        if extended_l2 and cluster_bits < 14:
            raise self._err(f"extended L2 entries need cluster_bits >= 14, got {cluster_bits}", 20)
        if l1_size * 8 > _MAX_L1_BYTES:
            raise self._err(f"active L1 table of {l1_size} entries is larger than QEMU allows", 36)
        if nb_snap > _MAX_SNAPSHOTS:
            raise self._err(f"{nb_snap} snapshots is more than QEMU allows ({_MAX_SNAPSHOTS})", 60)
        backing = None
        if backing_off:
            if backing_len > 1023:
                raise self._err(f"backing file name length {backing_len} exceeds 1023", 16)
            backing = self._pread(backing_off, backing_len, "backing file name").decode("utf-8", "replace")
        return Qcow2Header(
            version=version, cluster_bits=cluster_bits, size=size, crypt_method=crypt,
            l1_size=l1_size, l1_table_offset=l1_off, nb_snapshots=nb_snap,
            snapshots_offset=snap_off, incompatible_features=incompat,
            compatible_features=compat, autoclear_features=autoclear,
            header_length=header_length, compression_type=compression_type,
            backing_file=backing, extended_l2=extended_l2)

    def _feature_names(self, raw: bytes, header_length: int) -> dict[int, str]:
        """Incompatible feature names from the feature name table, for error messages."""
        names: dict[int, str] = {}
        pos = header_length
        while pos + 8 <= len(raw):
            ext_type, ext_len = struct.unpack_from(">II", raw, pos)
            if ext_type == _EXT_END:
                break
            data = raw[pos + 8:pos + 8 + ext_len]
            if ext_type == _EXT_FEATURE_NAMES:
                for i in range(0, len(data) - 47, 48):
                    if data[i] == 0:
                        names[data[i + 1]] = data[i + 2:i + 48].rstrip(b"\0").decode("ascii", "replace")
            pos += 8 + (ext_len + 7) // 8 * 8
        return names

    # -- snapshots --------------------------------------------------------

    def snapshots(self) -> list[Qcow2Snapshot]:
        if self._snapshots is None:
            self._snapshots = self._read_snapshot_table()
        return list(self._snapshots)

    def _read_snapshot_table(self) -> list[Qcow2Snapshot]:
        h = self.header
        out: list[Qcow2Snapshot] = []
        pos = h.snapshots_offset
        for i in range(h.nb_snapshots):
            fixed = self._pread(pos, 40, f"snapshot table entry {i}")
            (l1_off, l1_size, id_len, name_len, date_s, date_ns, vm_clock,
             vm_state32, extra_len) = struct.unpack(">QIHHIIQII", fixed)
            if h.version == 3 and extra_len < 16:
                raise self._err(f"snapshot table entry {i}: extra data of {extra_len} bytes, "
                                "version 3 requires at least 16", pos + 36)
            if extra_len > 1024:
                raise self._err(f"snapshot table entry {i}: extra data of {extra_len} bytes "
                                "(QEMU allows at most 1024)", pos + 36)
            var = self._pread(pos + 40, extra_len + id_len + name_len, f"snapshot table entry {i}")
            extra = var[:extra_len]
            vm_state_size = vm_state32
            disk_size = icount = None
            if extra_len >= 8:
                vm_state_size = struct.unpack_from(">Q", extra, 0)[0]
            if extra_len >= 16:
                disk_size = struct.unpack_from(">Q", extra, 8)[0]
            if extra_len >= 24:
                raw_icount = struct.unpack_from(">q", extra, 16)[0]
                icount = None if raw_icount == -1 else raw_icount
            if l1_size * 8 > _MAX_L1_BYTES:
                raise self._err(f"snapshot table entry {i}: L1 table of {l1_size} entries "
                                "is larger than QEMU allows", pos + 8)
            out.append(Qcow2Snapshot(
                id=var[extra_len:extra_len + id_len].decode("utf-8", "replace"),
                name=var[extra_len + id_len:].decode("utf-8", "replace"),
                date_sec=date_s, date_nsec=date_ns,
                vm_clock_ns=vm_clock, vm_state_size=vm_state_size, disk_size=disk_size,
                icount=icount, l1_table_offset=l1_off, l1_size=l1_size,
                extra_data=bytes(extra), table_offset=pos))
            entry_len = 40 + extra_len + id_len + name_len
            pos += (entry_len + 7) // 8 * 8
        return out

    def find_snapshot(self, id_or_name: str | int) -> Qcow2Snapshot:
        """The snapshot whose id or name is ``id_or_name`` (ids win, as in QEMU)."""
        key = str(id_or_name)
        snaps = self.snapshots()
        for match in ([s for s in snaps if s.id == key], [s for s in snaps if s.name == key]):
            if match:
                return match[0]
        have = ", ".join(f"{s.id}:{s.name}" for s in snaps) or "none"
        raise Qcow2Error(f"{self.path}: no snapshot with id or name {key!r} (snapshots: {have})")

    # -- mapping ----------------------------------------------------------

    def _load_l1(self, offset: int, size: int, what: str) -> tuple[int, ...]:
        if size == 0:
            return ()
        if offset % self.header.cluster_size:
            raise self._err(f"{what} is not cluster aligned", offset)
        return struct.unpack(f">{size}Q", self._pread(offset, size * 8, what))

    def _l2_table(self, offset: int) -> bytes:
        table = self._l2_cache.get(offset)
        if table is not None:
            self._l2_cache.move_to_end(offset)
            return table
        if offset % self.header.cluster_size:
            raise self._err("L2 table is not cluster aligned", offset)
        table = self._pread(offset, self.header.cluster_size, "L2 table")
        self._l2_cache[offset] = table
        if len(self._l2_cache) > _L2_CACHE_TABLES:
            self._l2_cache.popitem(last=False)
        return table

    def _decompress(self, l2_entry: int, guest_offset: int) -> bytes:
        h = self.header
        csize_shift = 62 - (h.cluster_bits - 8)
        csize_mask = (1 << (h.cluster_bits - 8)) - 1
        coffset = l2_entry & ((1 << csize_shift) - 1)
        nb_sectors = ((l2_entry >> csize_shift) & csize_mask) + 1
        csize = nb_sectors * 512 - (coffset & 511)
        # The last sector may run past the end of the file; QEMU tolerates that.
        csize = min(csize, self.file_size - coffset)
        data = self._pread(coffset, csize, f"compressed cluster for guest offset {guest_offset}")
        if h.compression_type == COMPRESSION_DEFLATE:
            try:
                d = zlib.decompressobj(-15)
                out = d.decompress(data, h.cluster_size)
            except zlib.error as err:
                raise self._err(f"compressed cluster for guest offset {guest_offset} "
                                f"does not inflate: {err}", coffset) from err
        else:
            try:
                from compression import zstd  # type: ignore[import-not-found]  # Python >= 3.14
            except ImportError:
                raise self._err("compressed cluster uses zstd (compression type 1), which this "
                                "Python cannot decode; convert the image with "
                                "`qemu-img convert -O qcow2 -o compression_type=zlib`", coffset) from None
            try:
                out = zstd.ZstdDecompressor().decompress(data, h.cluster_size)
            except Exception as err:
                raise self._err(f"zstd cluster does not decompress: {err}", coffset) from err
        if len(out) != h.cluster_size:
            raise self._err(f"compressed cluster for guest offset {guest_offset} inflated to "
                            f"{len(out)} bytes, expected {h.cluster_size}", coffset)
        return out

    def _extents(self, l1: tuple[int, ...], offset: int, length: int, *, allow_backing: bool):
        """Yield ``(host_offset | None, length, data | None)`` pieces covering the guest range.

        ``host_offset`` None with ``data`` None means zeros; ``data`` set means
        decompressed bytes. Pieces never cross a (sub)cluster boundary.
        """
        h = self.header
        cbits = h.cluster_bits
        csize = h.cluster_size
        l2_bits = h.l2_bits
        l2_entries = 1 << l2_bits
        entry_size = 16 if h.extended_l2 else 8
        sub_size = csize // 32 if h.extended_l2 else csize
        end = offset + length
        while offset < end:
            in_cluster = offset & (csize - 1)
            chunk = min(end - offset, csize - in_cluster)
            l1_index = offset >> (cbits + l2_bits)
            l1_entry = l1[l1_index] if l1_index < len(l1) else 0
            l2_offset = l1_entry & _L1E_OFFSET_MASK
            if not l2_offset:
                yield from self._unallocated(offset, chunk, allow_backing)
                offset += chunk
                continue
            l2 = self._l2_table(l2_offset)
            l2_index = (offset >> cbits) & (l2_entries - 1)
            (l2_entry,) = struct.unpack_from(">Q", l2, l2_index * entry_size)
            if l2_entry & _OFLAG_COMPRESSED:
                cluster = self._decompress(l2_entry, offset - in_cluster)
                yield None, chunk, cluster[in_cluster:in_cluster + chunk]
                offset += chunk
                continue
            host = l2_entry & _L2E_OFFSET_MASK
            if h.extended_l2:
                (bitmap,) = struct.unpack_from(">Q", l2, l2_index * entry_size + 8)
                # Subclusters: go piece by piece, each with its own state.
                sub = in_cluster // sub_size
                piece = min(chunk, (sub + 1) * sub_size - in_cluster)
                if bitmap >> sub & 1:
                    yield self._host(host, in_cluster, piece, offset), piece, None
                elif bitmap >> (32 + sub) & 1:
                    yield None, piece, None
                else:
                    yield from self._unallocated(offset, piece, allow_backing)
                offset += piece
                continue
            if h.version >= 3 and l2_entry & _OFLAG_ZERO:
                yield None, chunk, None
            elif host:
                yield self._host(host, in_cluster, chunk, offset), chunk, None
            else:
                yield from self._unallocated(offset, chunk, allow_backing)
            offset += chunk

    def _host(self, host_cluster: int, in_cluster: int, length: int, guest_offset: int) -> int:
        if host_cluster % self.header.cluster_size:
            raise self._err(f"data cluster for guest offset {guest_offset} is not cluster aligned "
                            f"(host offset {host_cluster})")
        start = host_cluster + in_cluster
        if start + length > self.file_size:
            raise self._err(f"data for guest offset {guest_offset} ({length} bytes) lies past "
                            f"the end of the file ({self.file_size} bytes)", start)
        return start

    def _unallocated(self, offset: int, length: int, allow_backing: bool):
        if self.header.backing_file is not None and not allow_backing:
            raise self._err(f"guest offset {offset} is not allocated in this image and would come "
                            f"from the backing file {self.header.backing_file!r}; "
                            "backing files are not supported")
        yield None, length, None

    def read(self, l1: tuple[int, ...], offset: int, length: int, *, allow_backing: bool) -> bytes:
        out = bytearray()
        for host, n, data in self._extents(l1, offset, length, allow_backing=allow_backing):
            if data is not None:
                out += data
            elif host is None:
                out += bytes(n)
            else:
                out += self._pread(host, n, f"data for guest offset {offset + len(out)}")
        return bytes(out)

    def active_l1(self) -> tuple[int, ...]:
        return self._load_l1(self.header.l1_table_offset, self.header.l1_size, "active L1 table")

    def vmstate_offset(self, snapshot: Qcow2Snapshot) -> int:
        h = self.header
        disk_size = snapshot.disk_size if snapshot.disk_size is not None else h.size
        shift = h.cluster_bits + h.l2_bits
        return ((disk_size + (1 << shift) - 1) >> shift) << shift


class VmstateReader(io.RawIOBase):
    """A read-only, forward-streaming view of one snapshot's VM state.

    Reads exactly ``size`` bytes, then EOF. Owns its :class:`Qcow2Image` and
    closes it on :meth:`close`.
    """

    def __init__(self, image: Qcow2Image, snapshot: Qcow2Snapshot):
        super().__init__()
        self.image = image
        self.snapshot = snapshot
        self.size = snapshot.vm_state_size
        self._base = image.vmstate_offset(snapshot)
        self._l1 = image._load_l1(snapshot.l1_table_offset, snapshot.l1_size,
                                  f"L1 table of snapshot {snapshot.id} ({snapshot.name})")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def readinto(self, b) -> int:
        want = min(len(b), self.size - self._pos)
        if want <= 0:
            return 0
        view = memoryview(b).cast("B")
        got = 0
        fd = self.image._f.fileno()
        # Coalesce host-contiguous pieces into one pread: savevm writes the
        # state into consecutive clusters, so this is usually one syscall.
        run_host = run_len = 0
        pieces = self.image._extents(self._l1, self._base + self._pos, want, allow_backing=True)

        def flush():
            nonlocal got, run_len
            if run_len:
                data = os.pread(fd, run_len, run_host)
                if len(data) != run_len:
                    raise self.image._err("short read of VM state", run_host)
                view[got:got + run_len] = data
                got += run_len
                run_len = 0

        for host, n, data in pieces:
            if host is not None and run_len and run_host + run_len == host:
                run_len += n
                continue
            flush()
            if host is not None:
                run_host, run_len = host, n
            elif data is not None:
                view[got:got + n] = data
                got += n
            else:
                view[got:got + n] = bytes(n)
                got += n
        flush()
        self._pos += got
        return got

    def close(self) -> None:
        if not self.closed:
            self.image.close()
        super().close()


def list_snapshots(path: str | os.PathLike) -> list[Qcow2Snapshot]:
    """Every internal snapshot of the qcow2 image at ``path``, in table order."""
    with Qcow2Image(path) as image:
        return image.snapshots()


def open_vmstate(path: str | os.PathLike, snapshot_id_or_name: str | int,
                 buffer_size: int = 1 << 20) -> BinaryIO:
    """A buffered reader of exactly ``vm_state_size`` bytes of a snapshot's VM state.

    Raises :class:`Qcow2Error` when there is no such snapshot or it holds no
    VM state (a disk-only snapshot). Close it when done (or use ``with``).
    """
    image = Qcow2Image(path)
    try:
        snap = image.find_snapshot(snapshot_id_or_name)
        if snap.vm_state_size == 0:
            raise Qcow2Error(f"{image.path}: snapshot {snap.id} ({snap.name}) holds no VM state "
                             "(a disk-only snapshot)")
        raw = VmstateReader(image, snap)
    except BaseException:
        image.close()
        raise
    return io.BufferedReader(raw, buffer_size=buffer_size)  # type: ignore[return-value]


def read_guest(path: str | os.PathLike, offset: int, length: int) -> bytes:
    """``length`` bytes of the active disk at guest ``offset`` (unallocated reads as zeros)."""
    with Qcow2Image(path) as image:
        if offset < 0 or length < 0 or offset + length > image.header.size:
            raise Qcow2Error(f"{image.path}: guest range {offset}+{length} lies outside the "
                             f"virtual disk ({image.header.size} bytes)")
        return image.read(image.active_l1(), offset, length, allow_backing=False)
