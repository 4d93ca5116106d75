"""cpio "newc" archives (the format of a Linux initramfs): a writer and a reader.

The writer is deterministic: the same calls give the same bytes. Every entry
has mtime 0, uid and gid 0, nlink 1 (2 for directories), device 0:0, and an
inode number counted from 1 in the order entries are added. Missing parent
directories are added (mode 0755) before their first child, because the
kernel's initramfs unpacker does not create them. ``close()`` writes the
``TRAILER!!!`` entry; it does not close the underlying file.

The reader returns every entry up to the trailer and raises
:class:`~engine.errors.GuestBuildError` naming the source, byte offset and
what was expected when the bytes are not a well-formed newc archive. It reads
plain archives only; decompress a gzip initramfs first (:func:`read_initramfs`
does that for files).
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from engine.errors import GuestBuildError

MAGIC = b"070701"
HEADER_SIZE = 110  # 6-byte magic + 13 fields of 8 hex digits
TRAILER = "TRAILER!!!"
_FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
           "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check")


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


@dataclass(frozen=True)
class CpioEntry:
    """One archive member as stored. ``data`` is a file's contents or a symlink's target."""

    name: str
    mode: int
    ino: int = 0
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    mtime: int = 0
    rdevmajor: int = 0
    rdevminor: int = 0
    data: bytes = b""

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_chardev(self) -> bool:
        return stat.S_ISCHR(self.mode)

    @property
    def permissions(self) -> int:
        return stat.S_IMODE(self.mode)


def _normalize(path: str) -> str:
    """Archive names are relative ("bin/sh"); "/bin/sh" and "./bin/sh" mean the same."""
    if not isinstance(path, str) or not path:
        raise GuestBuildError(f"cpio: empty or non-string member name {path!r}")
    parts = [p for p in PurePosixPath(path).parts if p not in ("/", ".")]
    if not parts:
        raise GuestBuildError(f"cpio: member name {path!r} names the archive root")
    if ".." in parts:
        raise GuestBuildError(f"cpio: member name {path!r} contains '..'")
    name = "/".join(parts)
    if "\0" in name:
        raise GuestBuildError(f"cpio: member name {path!r} contains a NUL byte")
    if name == TRAILER:
        raise GuestBuildError(f"cpio: member name {TRAILER!r} is reserved for the trailer")
    return name


class CpioWriter:
    """Writes a newc archive to a binary file object, entry by entry."""

    def __init__(self, out: BinaryIO):
        self._out = out
        self._next_ino = 1
        self._kinds: dict[str, int] = {}  # name -> S_IFMT of what was added
        self._closed = False

    # -- public API --------------------------------------------------------

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        name = _normalize(path)
        if self._kinds.get(name) == stat.S_IFDIR:
            return  # already there (perhaps as an implied parent): adding it again is harmless
        self._add(name, stat.S_IFDIR | (mode & 0o7777), b"", nlink=2)

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._add(_normalize(path), stat.S_IFREG | (mode & 0o7777), bytes(data))

    def add_symlink(self, path: str, target: str) -> None:
        if not target:
            raise GuestBuildError(f"cpio: symlink {path!r} has an empty target")
        self._add(_normalize(path), stat.S_IFLNK | 0o777, target.encode())

    def add_chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._add(_normalize(path), stat.S_IFCHR | (mode & 0o7777), b"",
                  rdev=(major, minor))

    def add_blockdev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._add(_normalize(path), stat.S_IFBLK | (mode & 0o7777), b"",
                  rdev=(major, minor))

    def close(self) -> None:
        """Write the trailer. The archive is complete afterwards; adding more is an error."""
        if self._closed:
            return
        self._write_entry(TRAILER, 0, 0, b"", nlink=1, rdev=(0, 0))
        self._closed = True

    def __enter__(self) -> "CpioWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()

    # -- internals ---------------------------------------------------------

    def _add(self, name: str, mode: int, data: bytes, *, nlink: int = 1,
             rdev: tuple[int, int] = (0, 0)) -> None:
        if self._closed:
            raise GuestBuildError(f"cpio: cannot add {name!r}: the archive is already closed")
        if name in self._kinds:
            raise GuestBuildError(f"cpio: duplicate member {name!r}")
        parent = PurePosixPath(name).parent
        if str(parent) != ".":
            kind = self._kinds.get(str(parent))
            if kind is None:
                self.add_dir(str(parent))
            elif kind != stat.S_IFDIR:
                raise GuestBuildError(
                    f"cpio: cannot add {name!r}: its parent {str(parent)!r} is not a directory")
        ino = self._next_ino
        self._next_ino += 1
        self._kinds[name] = stat.S_IFMT(mode)
        self._write_entry(name, ino, mode, data, nlink=nlink, rdev=rdev)

    def _write_entry(self, name: str, ino: int, mode: int, data: bytes, *,
                     nlink: int, rdev: tuple[int, int]) -> None:
        encoded = name.encode() + b"\0"
        values = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0)
        for field, value in zip(_FIELDS, values):
            if not 0 <= value <= 0xFFFFFFFF:
                raise GuestBuildError(f"cpio: {name!r}: field {field}={value} does not fit 32 bits")
        header = MAGIC + b"".join(b"%08X" % v for v in values)
        self._out.write(header + encoded + b"\0" * _pad4(HEADER_SIZE + len(encoded)))
        self._out.write(data + b"\0" * _pad4(len(data)))


def read_cpio(data: bytes, *, source: str = "<bytes>") -> list[CpioEntry]:
    """Every entry of a newc archive, in archive order, without the trailer."""
    entries: list[CpioEntry] = []
    pos = 0
    view = memoryview(data)
    while True:
        if pos + HEADER_SIZE > len(data):
            raise GuestBuildError(
                f"cpio {source}: truncated at offset {pos}: expected a {HEADER_SIZE}-byte "
                f"newc header, {len(data) - pos} bytes left (no {TRAILER} entry)")
        magic = bytes(view[pos:pos + 6])
        if magic != MAGIC:
            raise GuestBuildError(
                f"cpio {source}: bad magic {magic!r} at offset {pos}: expected {MAGIC!r} (newc)")
        fields: dict[str, int] = {}
        for i, field in enumerate(_FIELDS):
            raw = bytes(view[pos + 6 + 8 * i:pos + 14 + 8 * i])
            try:
                fields[field] = int(raw, 16)
            except ValueError:
                raise GuestBuildError(
                    f"cpio {source}: field {field} at offset {pos + 6 + 8 * i} is {raw!r}: "
                    f"expected 8 hex digits") from None
        name_start = pos + HEADER_SIZE
        name_end = name_start + fields["namesize"]
        if fields["namesize"] == 0 or name_end > len(data):
            raise GuestBuildError(
                f"cpio {source}: member name at offset {name_start} runs past the end "
                f"(namesize {fields['namesize']}, archive {len(data)} bytes)")
        raw_name = bytes(view[name_start:name_end])
        if not raw_name.endswith(b"\0"):
            raise GuestBuildError(
                f"cpio {source}: member name at offset {name_start} is not NUL-terminated")
        name = raw_name[:-1].decode("utf-8", errors="surrogateescape")
        data_start = name_end + _pad4(HEADER_SIZE + fields["namesize"])
        data_end = data_start + fields["filesize"]
        if data_end > len(data):
            raise GuestBuildError(
                f"cpio {source}: contents of {name!r} at offset {data_start} run past the end "
                f"(filesize {fields['filesize']}, archive {len(data)} bytes)")
        if name == TRAILER:
            return entries
        entries.append(CpioEntry(
            name=name, mode=fields["mode"], ino=fields["ino"], uid=fields["uid"],
            gid=fields["gid"], nlink=fields["nlink"], mtime=fields["mtime"],
            rdevmajor=fields["rdevmajor"], rdevminor=fields["rdevminor"],
            data=bytes(view[data_start:data_end])))
        pos = data_end + _pad4(fields["filesize"])


def read_initramfs(path: Path) -> list[CpioEntry]:
    """The entries of an initramfs file, gzip-compressed or plain."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise GuestBuildError(f"initramfs {path}: gzip data is damaged: {err}") from None
    return read_cpio(raw, source=str(path))
