"""The VM-state image a QEMU's ``savevm`` writes to, made from a template; where it lives.

:func:`vmstate_image` writes the empty qcow2 a replay QEMU keeps its
replay-mode snapshots in, and the recorder its record-mode checkpoints (the
orphan ``vmstate`` node, see qemu-facts.md); :func:`scratch_base` is the
tmpfs both put it on when they can.
Every session needs a fresh one, and ``qemu-img create`` costs a process
start (10-25 ms here, more on a loaded machine) for what is always the same
few hundred KiB, so the bytes come from a template:

* made once with ``qemu-img create`` and kept in memory for the process
  (as its non-zero stretches: each copy is written sparse);
* also kept in the per-user cache (``cache_dir()/vmstate-template-*.qcow2``)
  so a new process (a CLI run, a verify worker) starts without qemu-img. The
  name carries what the bytes depend on (the qemu-img binary's path, size and
  mtime, the cluster size), so an upgrade makes a new template.

Promises: the template is published atomically (written to a private
temporary file, then renamed), so concurrent sessions, threads or processes
see either no template or a whole one; a cached file that does not look like
this module's qcow2 (wrong magic or size) is ignored and replaced. Each
session gets its own copy; the template itself is never handed to QEMU.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import tempfile
import threading
from pathlib import Path

from engine.errors import QemuError
from engine.paths import cache_dir
from engine.qemu.binaries import find_qemu_img

# 2 MiB clusters, as the recorder's image: savevm of a 256 MiB guest was
# 30-40 % faster than with the default 64 KiB.
CLUSTER_BYTES = 2 << 20
VIRTUAL_SIZE = "1M"
QCOW2_MAGIC = b"QFI\xfb"
_MAX_TEMPLATE = 64 << 20   # anything bigger is not an empty 1 MiB qcow2

_lock = threading.Lock()
_memo: dict[str, tuple[int, tuple[tuple[int, bytes], ...]]] = {}


def vmstate_image(path: Path) -> Path:
    """A fresh, empty VM-state qcow2 at ``path`` (which must not be in use).

    Written sparse: of the 6 MiB (three 2 MiB clusters) only the three
    metadata blocks hold data, and on tmpfs a hole costs no memory."""
    size, extents = _template()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        for offset, chunk in extents:
            f.seek(offset)
            f.write(chunk)
        f.truncate(size)
    return Path(path)


def template_bytes() -> bytes:
    """The empty image's bytes: from memory, else the cache, else qemu-img."""
    size, extents = _template()
    data = bytearray(size)
    for offset, chunk in extents:
        data[offset:offset + len(chunk)] = chunk
    return bytes(data)


def _template() -> tuple[int, tuple[tuple[int, bytes], ...]]:
    qemu_img = find_qemu_img()
    key = _key(qemu_img)
    with _lock:
        found = _memo.get(key)
        if found is None:
            data = _read_cached(key)
            if data is None:
                data = _create(qemu_img)
                _publish(key, data)
            found = _memo[key] = (len(data), _extents(data))
    return found


def _extents(data: bytes, block: int = 4096) -> tuple[tuple[int, bytes], ...]:
    """The non-zero ``block``-sized stretches of ``data`` as (offset, bytes)."""
    out: list[tuple[int, bytes]] = []
    zero = bytes(block)
    start = None
    for offset in range(0, len(data), block):
        nonzero = data[offset:offset + block] != zero[:len(data) - offset]
        if nonzero and start is None:
            start = offset
        elif not nonzero and start is not None:
            out.append((start, data[start:offset]))
            start = None
    if start is not None:
        out.append((start, data[start:]))
    return tuple(out)


def create_image(path: Path, qemu_img: str | None = None) -> Path:
    """``qemu-img create`` the VM-state image at ``path`` (no template)."""
    out = subprocess.run([qemu_img or find_qemu_img(), "create", "-q", "-f", "qcow2",
                          "-o", f"cluster_size={CLUSTER_BYTES}", str(path), VIRTUAL_SIZE],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise QemuError(f"qemu-img create {path} failed: {out.stderr.strip()}",
                        exit_code=out.returncode)
    return Path(path)


def _key(qemu_img: str) -> str:
    try:
        st = os.stat(qemu_img)
        ident = f"{os.path.realpath(qemu_img)}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        ident = qemu_img
    ident += f":{CLUSTER_BYTES}:{VIRTUAL_SIZE}"
    return hashlib.sha256(ident.encode()).hexdigest()[:20]


def _cache_path(key: str) -> Path | None:
    try:
        return cache_dir() / f"vmstate-template-{key}.qcow2"
    except OSError:
        return None  # no writable home: the in-memory template still works


def _valid(data: bytes) -> bool:
    return len(data) >= 512 and data[:4] == QCOW2_MAGIC


def _read_cached(key: str) -> bytes | None:
    path = _cache_path(key)
    if path is None:
        return None
    try:
        if path.stat().st_size > _MAX_TEMPLATE:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    return data if _valid(data) else None


def _create(qemu_img: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="sbtui-vmstate-") as tmp:
        image = create_image(Path(tmp) / "vmstate.qcow2", qemu_img)
        data = image.read_bytes()
    if not _valid(data):
        raise QemuError(f"qemu-img create made no qcow2 image ({len(data)} bytes)")
    return data


def _publish(key: str, data: bytes) -> None:
    path = _cache_path(key)
    if path is None:
        return
    try:
        fd, tmp = tempfile.mkstemp(prefix=".vmstate-template-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        pass  # a read-only cache: every process makes its own once



def scratch_base() -> Path | None:
    """tmpfs (``/dev/shm``) when writable: savevm writes and QEMU's flushes go
    at memory speed there; None when there is none (the caller picks a disk)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm
    return None
