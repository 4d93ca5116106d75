"""One file to move a recording: ``pack`` writes it, ``open_any`` reads a directory or such a file.

A packed recording is an uncompressed POSIX tar (the pages inside are already
lz4-compressed; compressing again buys little and costs time) holding the
recording's files under one top directory ``recording/``, with a first member
``recording/SBTUI-PACK`` that identifies the format. It holds the manifest,
the append-only logs, the replay log, console and debug-console output, the
guest files and the store; nothing else (no scratch or lock files).

``open_any(path)`` opens a directory as is. A file is unpacked once into the
cache (``cache_dir()/unpacked/<sha256 of the file>/``), then reused: the key is
the file's content hash, so a changed file is a new entry. Unpacking trusts
nothing in the archive: only regular files and directories under
``recording/`` are accepted (tarfile's ``data`` filter also refuses absolute
paths, ``..``, links and device files), and the unpacked tree must open as a
recording. It is written to a temporary name and renamed into place, so an
interrupted unpack leaves no half entry.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from engine import paths
from engine.errors import RecordingError, UsageError
from engine.recording.format import Recording

MAGIC_NAME = "SBTUI-PACK"
MAGIC_TEXT = b"sbtui packed recording\nformat: 1\n"
TOP = "recording"
# What belongs to a recording (top-level names); anything else stays behind.
_INCLUDE = ("recording.json", "checkpoints.jsonl", "markers.jsonl", "replay.log", "console.out",
            "debugcon.out", "qemu.log", "guest", "store")
_SKIP_IN_STORE = ("lock",)


def pack(rec_path: str | Path, out: str | Path) -> Path:
    """Write the recording at ``rec_path`` into the file ``out``; returns ``out``."""
    rec = Recording.open(rec_path)
    if rec.manifest.status == "recording":
        raise UsageError(f"{rec.path}: is still being recorded (status 'recording'); pack it when "
                         "it has ended")
    out = Path(out)
    if out.exists() and out.is_dir():
        raise UsageError(f"-o {out}: is a directory; give a file name")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo(f"{TOP}/{MAGIC_NAME}")
            info.size = len(MAGIC_TEXT)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(MAGIC_TEXT))
            for name in _INCLUDE:
                src = rec.path / name
                if not src.exists():
                    continue
                tar.add(src, arcname=f"{TOP}/{name}", recursive=True, filter=_member_filter)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _member_filter(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    name = Path(info.name).name
    if name in _SKIP_IN_STORE or name.startswith(".tmp-"):
        return None
    if not (info.isfile() or info.isdir()):
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def open_any(path: str | Path) -> Recording:
    """A recording from a directory or a packed file (unpacked into the cache once)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such recording (neither a directory nor a packed file)")
    if path.is_dir():
        return Recording.open(path)
    return Recording.open(unpack(path))


def unpack(path: str | Path, *, cache: Path | None = None) -> Path:
    """Unpack a packed recording into the cache; returns the recording directory."""
    path = Path(path)
    digest = _sha256(path)
    base = (cache or paths.cache_dir()) / "unpacked"
    base.mkdir(parents=True, exist_ok=True)
    final = base / digest[:32]
    if (final / TOP / "recording.json").is_file():
        return final / TOP
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=base))
    try:
        try:
            tar = tarfile.open(path, "r:")
        except (tarfile.TarError, OSError) as err:
            raise RecordingError(f"{path}: not a packed recording (not a tar file: {err})") from None
        with tar:
            members = tar.getmembers()
            if not members or members[0].name != f"{TOP}/{MAGIC_NAME}":
                raise RecordingError(f"{path}: not a packed recording (no {MAGIC_NAME} member first)")
            for m in members:
                parts = Path(m.name).parts
                if not parts or parts[0] != TOP or ".." in parts or m.name.startswith("/"):
                    raise RecordingError(f"{path}: refusing member {m.name!r} (outside '{TOP}/')")
                if not (m.isfile() or m.isdir()):
                    raise RecordingError(f"{path}: refusing member {m.name!r} (not a regular "
                                         "file or directory)")
            magic = tar.extractfile(members[0])
            if magic is None or magic.read(len(MAGIC_TEXT) + 1) != MAGIC_TEXT:
                raise RecordingError(f"{path}: unknown packed-recording format")
            try:
                tar.extractall(tmp, members=members, filter="data")
            except (tarfile.TarError, OSError) as err:
                raise RecordingError(f"{path}: unpacking failed: {err}") from err
        Recording.open(tmp / TOP)   # must be a recording before it is published
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process published the same file meanwhile: use theirs.
            if not (final / TOP / "recording.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / TOP


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
