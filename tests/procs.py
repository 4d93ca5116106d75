"""Test helpers that find QEMU processes by the marker in their command line.

Every QEMU that :class:`engine.qemu.QemuProcess` starts carries
``-name sbtui-[TAG-]UNIQUE``; ``TAG`` comes from ``$SBTUI_QEMU_TAG``. Tests
look for a marker of their own (a VM's name, or a tag they gave a child
process), so QEMUs that other people run on the same machine never count.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path


def new_tag() -> str:
    """A fresh tag for ``$SBTUI_QEMU_TAG`` (letters and digits only)."""
    return "t" + uuid.uuid4().hex[:12]


def qemu_processes(marker: str) -> list[tuple[int, str]]:
    """``(pid, command line)`` of each live qemu-system process whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if not raw:
            continue  # a zombie or a kernel thread: not running any more
        argv = raw.rstrip(b"\0").split(b"\0")
        if not os.path.basename(argv[0]).startswith(b"qemu-system"):
            continue
        cmdline = b" ".join(argv).decode("utf-8", "replace")
        if marker in cmdline:
            found.append((int(entry.name), cmdline))
    return found


def assert_no_qemu(marker: str, timeout: float = 10.0) -> None:
    """Fail unless no qemu-system process with ``marker`` remains within ``timeout`` s.

    Kills what it finds after failing, so one leak does not spoil later tests.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = qemu_processes(marker)
        if not left:
            return
        if time.monotonic() >= deadline:
            for pid, _ in left:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            lines = "\n".join(f"  pid {pid}: {cmd[:200]}" for pid, cmd in left)
            raise AssertionError(f"qemu processes with marker {marker!r} still running "
                                 f"after {timeout:g} s:\n{lines}")
        time.sleep(0.05)


def wait_for_qemu(marker: str, timeout: float = 10.0) -> list[tuple[int, str]]:
    """Wait until at least one qemu-system process with ``marker`` runs; return them."""
    deadline = time.monotonic() + timeout
    while True:
        found = qemu_processes(marker)
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"no qemu process with marker {marker!r} within {timeout:g} s")
        time.sleep(0.05)
