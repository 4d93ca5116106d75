"""kill -9 of an importing process at random moments: the store must open, fsck
must find no damage (at most a torn tail and leftovers that the next writer
removes), and every checkpoint that completed must export byte for byte."""

from __future__ import annotations

import io
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.store import Store
from test_store_support import page, snapshot

REPO = Path(__file__).resolve().parent.parent
CHILD = r"""
import os, sys
sys.path[:0] = [sys.argv[1]]
from engine.store import Store
store = Store.open(sys.argv[2], pack_size=1 << 20)
print("ready", flush=True)
for path in sys.argv[3:]:
    print("start", os.path.basename(path), flush=True)
    with open(path, "rb") as src:
        info = store.import_stream(src, name=os.path.basename(path))
    print(info.id, info.name, flush=True)
"""
REPAIRABLE = ("torn tail", "not committed by any index segment", "left over by an interrupted writer")


def _streams(tmp: Path, count: int, pages: int) -> dict[str, bytes]:
    """Streams with new pages each, and some pages shared with the one before."""
    out = {}
    for k in range(count):
        contents = [page(f"{k}.{i}") if i % 4 else page(f"{k - 1}.{i + 1}") for i in range(pages)]
        contents[::17] = [None] * len(contents[::17])
        data = snapshot(contents)
        name = f"s{k}.mig"
        (tmp / name).write_bytes(data)
        out[name] = data
    return out


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"child said nothing for {timeout} s")
    return proc.stdout.readline().decode()


def test_kill_9_mid_import_leaves_every_complete_checkpoint_intact(tmp_path):
    streams = _streams(tmp_path, 4, 2048)
    # how long one import takes here, so the kills spread over an import's whole length:
    # a warm one (the child's victim never is its process's first) with the child's packs
    with Store.open(tmp_path / "timing", create=True, pack_size=1 << 20) as s:
        s.import_stream(io.BytesIO(streams["s0.mig"]), name="warm")
        t0 = time.monotonic()
        s.import_stream(io.BytesIO(streams["s1.mig"]), name="t")
        span = time.monotonic() - t0
    mid_import = 0
    for seed in range(6):
        mid_import += _kill_and_check(tmp_path / f"seed{seed}", random.Random(seed), dict(streams),
                                      tmp_path, span)
    # most kills must land inside an import, or the test proves little
    assert mid_import >= 3


def _kill_and_check(path: Path, rng: random.Random, streams: dict[str, bytes], tmp: Path,
                    span: float) -> bool:
    """One import run killed at a random moment; returns whether it died mid-import."""
    victim = f"s{rng.randrange(4)}.mig"
    first = snapshot([page(f"first{i}") for i in range(64)])
    with Store.open(path, create=True) as s:
        s.import_stream(io.BytesIO(first), name="first")
    streams["first"] = first

    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(REPO), str(path)] + [str(tmp / n) for n in streams
                                                                if n != "first"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)   # unbuffered: select sees every line
    try:
        assert _readline(proc, 60) == "ready\n"
        while (line := _readline(proc, 60)) != f"start {victim}\n":
            assert line, "child ended early"
        # the random moment is the point of the test: a kill at an arbitrary instruction
        time.sleep(rng.uniform(0.0, span))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = proc.stdout.read().decode()
    proc.stdout.close()
    proc.stderr.close()
    completed = {line.split()[1] for line in out.splitlines() if not line.startswith("start")}

    with Store.open(path, repair=False) as s:
        report = s.fsck()
        assert report.ok, report.lines()
        assert all(any(k in r for k in REPAIRABLE) for r in report.repairable), report.repairable
        names = {i.name for i in s.checkpoints()}
        assert completed | {"first"} <= names      # one more may have landed before the kill
        for info in s.checkpoints():
            out_buf = io.BytesIO()
            s.export_stream(info.id, out_buf)
            assert out_buf.getvalue() == streams[info.name]

    with Store.open(path) as s:               # repairs what the killed writer left
        report = s.fsck()
        assert report.ok and not report.repairable, report.lines()
        more = snapshot([page(f"after{i}") for i in range(32)])
        info = s.import_stream(io.BytesIO(more), name="after")
        out_buf = io.BytesIO()
        s.export_stream(info.id, out_buf)
        assert out_buf.getvalue() == more
        assert s.fsck().ok
    assert not [p for p in path.rglob(".tmp-*")]
    return victim not in completed


def test_torn_tail_is_reported_then_truncated_by_the_next_writer(tmp_path):
    """A deterministic torn tail: half a record appended past the committed length."""
    path = tmp_path / "st"
    data = snapshot([page(i) for i in range(10)])
    with Store.open(path, create=True) as s:
        s.import_stream(io.BytesIO(data), name="x")
    pack = sorted((path / "packs").glob("*.pack"))[-1]
    size = pack.stat().st_size
    with open(pack, "ab") as f:
        f.write(b"SBpg" + os.urandom(1000))
    (path / "packs" / "00000009.pack").write_bytes(b"SBTUIPAK" + os.urandom(50))
    (path / "checkpoints" / ".tmp-0001.ckpt.123").write_bytes(b"half a manifest")
    with Store.open(path, repair=False) as s:
        report = s.fsck()
        assert report.ok
        text = "\n".join(report.repairable)
        assert f"{pack.name}: torn tail of 1004 bytes" in text
        assert "00000009.pack: not committed" in text
        assert ".tmp-0001.ckpt.123" in text
        out = io.BytesIO()
        s.export_stream("0000", out)               # readers ignore the tail
        assert out.getvalue() == data
    with Store.open(path) as s:
        assert pack.stat().st_size == size
        assert not (path / "packs" / "00000009.pack").exists()
        assert s.fsck().repairable == []
