"""Give a QEMU's guest RAM its transparent huge pages back after a background snapshot.

Why: a ``background-snapshot`` pauses the guest while QEMU write-protects all
of guest RAM with userfaultfd (QEMU 10 ``ram_write_tracking_start``,
migration/ram.c). On huge pages that costs one entry per 2 MiB; but while the
snapshot streams, QEMU lifts the protection one 4 KiB host page at a time
(``ram_save_release_protection``), which splits every huge page. From the
second snapshot on, the pause write-protects 131072 small entries per 512 MiB
(4-12 ms on the project's machines, most of the pause). Collapsing the guest
RAM back into huge pages between snapshots (``process_madvise`` with
``MADV_COLLAPSE``, Linux 6.1 and later) brings that step back to under 0.1 ms.

What it costs: the kernel copies the split pages into new huge pages in the
caller's thread (about 0.1-0.3 s of CPU per 512 MiB on a busy 2-core machine),
and untouched guest RAM becomes resident (the guest's full size). It needs
CAP_SYS_NICE for another process; where it is refused or unknown,
:class:`HugePageCollapser` switches itself off and says why (``reason``).

The guest RAM is found in ``/proc/PID/smaps``: private anonymous read-write
mappings that are THP-eligible (QEMU asks for huge pages on guest RAM with
``MADV_HUGEPAGE``) and at least ``min_bytes`` long.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from pathlib import Path

SYS_PROCESS_MADVISE = 440       # x86_64 and the generic table (arm64, riscv)
MADV_COLLAPSE = 25
HUGE = 2 << 20
# Errors after which collapsing is never tried again for this process.
FATAL = {errno.EPERM: "not permitted (needs CAP_SYS_NICE)",
         errno.ENOSYS: "process_madvise is not available",
         errno.EINVAL: "MADV_COLLAPSE is not supported by this kernel",
         errno.ESRCH: "the QEMU process is gone",
         errno.EACCES: "not permitted"}


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def guest_ram_ranges(pid: int, *, min_bytes: int = 32 << 20,
                     smaps: str | None = None) -> list[tuple[int, int]]:
    """Huge-page-aligned (start, end) of the process's THP-eligible anonymous RW mappings."""
    text = smaps if smaps is not None else Path(f"/proc/{pid}/smaps").read_text()
    out: list[tuple[int, int]] = []
    cur: tuple[int, int] | None = None
    for line in text.splitlines():
        f = line.split()
        if not f:
            continue
        if "-" in f[0] and not f[0].endswith(":"):
            lo, hi = (int(x, 16) for x in f[0].split("-", 1))
            anon_rw = len(f) == 5 and f[1] == "rw-p"
            cur = (lo, hi) if anon_rw and hi - lo >= min_bytes else None
        elif f[0] == "THPeligible:" and cur is not None:
            lo, hi = (cur[0] + HUGE - 1) & ~(HUGE - 1), cur[1] & ~(HUGE - 1)
            if f[1:2] == ["1"] and hi > lo:
                out.append((lo, hi))
            cur = None
    return out


class HugePageCollapser:
    """Collapses one process's guest RAM back into huge pages; turns itself off on refusal."""

    def __init__(self, pid: int | None, *, syscall=None):
        self.pid = pid
        self.reason: str | None = None if pid else "the QEMU process id is unknown"
        self._syscall = syscall
        self._pidfd: int | None = None

    @property
    def available(self) -> bool:
        return self.reason is None

    def _call(self, pidfd: int, lo: int, hi: int) -> int:
        """process_madvise's result; -errno on failure."""
        if self._syscall is not None:
            return self._syscall(pidfd, lo, hi)
        libc = ctypes.CDLL(None, use_errno=True)
        iov = _IoVec(lo, hi - lo)
        r = libc.syscall(SYS_PROCESS_MADVISE, pidfd, ctypes.byref(iov), 1, MADV_COLLAPSE, 0)
        return r if r >= 0 else -ctypes.get_errno()

    def collapse(self) -> float | None:
        """Collapse now (blocking: run it in a thread). Seconds spent, or None when off."""
        if self.reason is not None:
            return None
        assert self.pid is not None
        t = time.monotonic()
        try:
            if self._pidfd is None:
                self._pidfd = os.pidfd_open(self.pid)
            ranges = guest_ram_ranges(self.pid)
        except (OSError, AttributeError) as err:
            self.reason = f"cannot look at process {self.pid} ({err})"
            return None
        if not ranges:
            self.reason = ("no THP-eligible guest RAM (transparent huge pages off, or a "
                           "memory backend that is not anonymous)")
            return None
        for lo, hi in ranges:
            r = self._call(self._pidfd, lo, hi)
            if r < 0 and -r in FATAL:
                self.reason = FATAL[-r]
                return None
            # EAGAIN (pages busy), ENOMEM (no free huge page): some ranges
            # stay split this time; the next round tries again.
        return time.monotonic() - t

    def close(self) -> None:
        fd, self._pidfd = self._pidfd, None
        if fd is not None:
            os.close(fd)
