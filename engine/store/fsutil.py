"""File-system primitives the store relies on for crash safety.

* :func:`atomic_write` puts a whole file into place or nothing: the bytes go
  to a temporary name in the same directory, are fsynced, renamed over the
  final name, and the directory is fsynced so the rename itself is durable.
  Temporary names start with :data:`TMP_PREFIX`, so a crash leaves only files
  that :func:`remove_leftovers` recognises and deletes.
* :class:`WriterLock` is the store's one-writer lock: an ``flock`` on a lock
  file, taken with a bounded wait. ``flock`` belongs to the open file
  description, so two ``Store`` objects in one process exclude each other just
  as two processes do, and the kernel drops it when its owner dies (kill -9
  included), so a crashed writer never leaves the store locked.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from engine.errors import StoreError

TMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | bytearray | memoryview, *, sync_dir: bool = True) -> None:
    """Write ``data`` as ``path`` so a reader sees the old file or the whole new one."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quiet(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quiet(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def remove_leftovers(directory: Path) -> list[Path]:
    """Delete temporary files an interrupted writer left in ``directory``."""
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        if name.startswith(TMP_PREFIX):
            _unlink_quiet(directory / name)
            removed.append(directory / name)
    return removed


def list_leftovers(directory: Path) -> list[Path]:
    try:
        return sorted(directory / n for n in os.listdir(directory) if n.startswith(TMP_PREFIX))
    except FileNotFoundError:
        return []


def _unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class WriterLock:
    """Exclusive, process-crash-safe lock on ``path`` (a context manager).

    ``acquire(timeout)`` polls a non-blocking ``flock`` so a second writer gets
    a clear :class:`StoreError` instead of hanging forever.
    """

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            raise StoreError(f"{self.path}: writer lock is already held by this store object")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise StoreError(f"{self.path}: cannot lock: {err}") from err
        self._fd = fd
        return True

    def acquire(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"store is busy: another writer holds {self.path} "
                    f"(waited {timeout:g} s; only one import, gc or delete at a time)")
            time.sleep(delay)  # polling a lock held by another process: no event to wait on
            delay = min(delay * 2, 0.1)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> "WriterLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
