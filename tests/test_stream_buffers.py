"""The stream reader reuses its read buffers once no run's pages refer to them:
pages a consumer still holds never change under it, and a consumer that lets go
of its pages gets them read into the same few buffers (fresh memory is faulted
in by the kernel page by page, which cost an import more than reading)."""

from __future__ import annotations

import io

from engine.stream.migration import split_stream
from test_store_support import page, snapshot

PAGES = 3000   # about 12 MiB of records: a dozen buffer fills


def _stream() -> tuple[bytes, list[bytes]]:
    contents = [page(f"buf{i}") if i % 7 else None for i in range(PAGES)]
    return snapshot(contents), contents


def test_pages_held_across_many_fills_never_change():
    data, contents = _stream()
    held = [(run, [run.page(k) for k in range(run.count)])
            for run in split_stream(io.BytesIO(data)).runs() if not run.zero and
            run.block == "pc.ram"]
    assert len({id(run.data.obj) for run, _ in held}) > 8     # every buffer kept alive
    for run, pages in held:
        first = run.offset // 4096
        assert [bytes(p) for p in pages] == contents[first:first + run.count]


def test_buffers_are_reused_once_their_pages_are_let_go():
    data, contents = _stream()
    buffers = {}    # the buffer objects themselves (kept alive, so ids stay distinct)
    for run in split_stream(io.BytesIO(data)).runs():
        if run.zero or run.block != "pc.ram":
            continue
        buffers[id(run.data.obj)] = run.data.obj
        first = run.offset // 4096
        assert bytes(run.page(run.count - 1)) == contents[first + run.count - 1]
        run = None                      # the consumer is done with these pages
    assert 1 < len(buffers) <= 4        # a dozen fills into the same few buffers
