"""Helpers for the recorder's QEMU tests (no tests here: pytest finds none).

* the tiny multiboot guest (``tinyguest.py``) as a second, fast guest;
* :func:`tagged_qemus`: run code with ``$SBTUI_QEMU_TAG`` set, then prove no
  QEMU with that tag is left;
* :func:`sbtui_proc`: the ``sbtui`` command as a child process;
* :func:`shift_icount`: a fault-injection hook that stores a checkpoint whose
  state restores at the wrong instruction count (an unrestorable checkpoint);
* :func:`wait_until`: a bounded wait on a condition.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO, Callable

from engine.qemu.process import TAG_ENV
from procs import assert_no_qemu, new_tag

REPO = Path(__file__).resolve().parents[1]
TIMER_ICOUNT = b"\x0ctimer/icount"


@contextlib.contextmanager
def tagged_qemus(timeout: float = 15.0):
    """Set a fresh QEMU tag for the block; afterwards no QEMU with it may run."""
    tag = new_tag()
    old = os.environ.get(TAG_ENV)
    os.environ[TAG_ENV] = tag
    try:
        yield tag
    finally:
        if old is None:
            os.environ.pop(TAG_ENV, None)
        else:
            os.environ[TAG_ENV] = old
    assert_no_qemu(tag, timeout=timeout)


def sbtui_proc(*args: str, tag: str | None = None, env: dict | None = None,
               **kwargs) -> subprocess.Popen:
    full = {**os.environ, **(env or {})}
    if tag:
        full[TAG_ENV] = tag
    return subprocess.Popen([sys.executable, "-m", "sbtui", *args], cwd=REPO, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def sbtui_run(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    proc = sbtui_proc(*args, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_until(predicate: Callable[[], object], what: str, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def checkpoint_lines(rec_path: Path) -> int:
    try:
        return (rec_path / "checkpoints.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def manifest(rec_path: Path) -> dict:
    return json.loads((rec_path / "recording.json").read_text())


def shift_icount(indices: set[int], delta: int = 1000) -> Callable[[int, BinaryIO], BinaryIO]:
    """A ``stream_hook`` that moves the saved instruction counter of the checkpoints in
    ``indices`` by ``delta``: such a checkpoint restores, but not where the recording
    says it was taken, so its proof fails as 'restore' and the recorder must rebuild it."""

    def hook(index: int, src: BinaryIO) -> BinaryIO:
        if index not in indices:
            return src
        data = bytearray(src.read())
        at = data.find(TIMER_ICOUNT)
        assert at >= 0, "no timer/icount subsection in the stream"
        field = at + len(TIMER_ICOUNT) + 4 + 8   # version_id, then qemu_icount_bias, then qemu_icount
        (icount,) = struct.unpack_from(">q", data, field)
        struct.pack_into(">q", data, field, icount + delta)
        return io.BytesIO(bytes(data))
    return hook
