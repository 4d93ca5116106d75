"""The codec's run-based fast path on synthetic streams (no QEMU).

``runs()`` must hand out exactly the records ``pages()`` does, grouped into
runs (consecutive pages of one block, all ZERO or all PAGE); a page source
with a ``runs`` method must rebuild the same bytes as the per-page source;
errors found while a run is being recognised must still name the offset of
the record at fault; and a run source that answers wrongly is refused.
"""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import IntegrityError, StreamError, TruncatedStreamError
from engine.stream import migration
from engine.stream.migration import assemble_stream, split_stream
from engine.stream.model import PAGE_SIZE, PageRun
from streams import StreamBuilder, standard_stream

BLOCKS = [("pc.ram", 600 * 4096), ("pc.bios", 8 * 4096), ("/rom@etc/acpi/tables", 3 * 4096)]


class _Trickle(io.RawIOBase):
    """Hands out at most ``n`` bytes per read, like a pipe."""

    def __init__(self, data: bytes, n: int):
        self.data, self.n, self.pos = data, n, 0

    def readable(self):
        return True

    def readinto(self, b):
        chunk = self.data[self.pos:self.pos + min(self.n, len(b))]
        b[:len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)


class _ReadOnly:
    """A source with ``read`` only (no ``readinto``)."""

    def __init__(self, data: bytes, n: int):
        self.f, self.n = io.BytesIO(data), n

    def read(self, size=-1):
        return self.f.read(min(size, self.n) if size >= 0 else self.n)


def _src(data: bytes, chunk):
    if chunk is None:
        return io.BytesIO(data)
    kind, n = chunk
    return _Trickle(data, n) if kind == "readinto" else _ReadOnly(data, n)


def split_runs(data: bytes, chunk=None):
    sp = split_stream(_src(data, chunk))
    runs = list(sp.runs())
    return sp, runs


def page_data(seed: int) -> bytes:
    return (seed.to_bytes(4, "big") * 1024)[:PAGE_SIZE]


class RunSource:
    """A run source answering from the split's runs, optionally in odd shapes:
    zero runs cut into single records, generators, data pages in lists."""

    def __init__(self, runs: list[PageRun], *, split_zeros: bool = False, generators: bool = False,
                 lists: bool = False):
        self.pieces: dict[int, object] = {}   # record index -> page bytes or None
        for run in runs:
            for k in range(run.count):
                self.pieces[run.index + k] = None if run.zero else bytes(run.page(k))
        self.split_zeros = split_zeros
        self.generators = generators
        self.lists = lists
        self.calls: list[tuple[int, str, int, int]] = []

    def __call__(self, index, block, offset):
        raise AssertionError("a page source with runs() must not be called per page")

    def runs(self, index, block, offset, count):
        self.calls.append((index, block, offset, count))
        out: list = []
        for i in range(index, index + count):
            d = self.pieces[i]
            if d is None:
                if out and isinstance(out[-1], int) and not self.split_zeros:
                    out[-1] += 1
                else:
                    out.append(1)
            elif self.lists:
                if out and isinstance(out[-1], list):
                    out[-1].append(d)
                else:
                    out.append([d])
            else:
                out.append(d)
        return iter(out) if self.generators else out


def check_runs(runs: list[PageRun], recs) -> None:
    """Runs are well formed and expand to exactly ``recs``."""
    expanded = [r for run in runs for r in run.records()]
    assert [(r.index, r.block, r.offset, r.data) for r in expanded] == \
        [(r.index, r.block, r.offset, r.data) for r in recs]
    for run in runs:
        assert run.count >= 1
        if not run.zero:
            assert all(bytes(run.page(k)) == recs[run.index + k].data for k in range(run.count))
            assert run.data.readonly


# -- runs and pages agree ---------------------------------------------------------

def test_runs_expand_to_the_pages_and_share_the_skeleton():
    data = standard_stream(1).build()
    sp_pages = split_stream(io.BytesIO(data))
    recs = list(sp_pages.pages())
    sp_runs, runs = split_runs(data)
    check_runs(runs, recs)
    assert sp_runs.skeleton == sp_pages.skeleton
    assert (sp_runs.machine, sp_runs.blocks, sp_runs.raw_bytes) == \
        (sp_pages.machine, sp_pages.blocks, sp_pages.raw_bytes)
    assert len(runs) < len(recs)


def test_long_runs_of_zero_and_data_records_are_one_run_each():
    b = StreamBuilder(blocks=[("pc.ram", 30000 * 4096)]).header().configuration().ram_start()
    pages = [("pc.ram", i * 4096, None) for i in range(20000)]
    pages += [("pc.ram", i * 4096, page_data(i)) for i in range(20000, 20100)]
    pages += [("pc.ram", i * 4096, None) for i in range(20100, 30000)]
    b.ram_part(1, pages, end=True)
    data = b.eof().build()
    sp, runs = split_runs(data)
    assert [(r.index, r.offset >> 12, r.count, r.zero) for r in runs] == \
        [(0, 0, 20000, True), (20000, 20000, 100, False), (20100, 20100, 9900, True)]
    assert runs[1].stride == 4096 + 8     # views into the read buffer, headers skipped
    assert bytes(runs[1].page(99)) == page_data(20099)
    with pytest.raises(IndexError):
        runs[1].page(100)
    with pytest.raises(ValueError):
        runs[0].page(0)


def test_a_run_ends_where_the_records_stop_continuing_it():
    b = StreamBuilder(blocks=[("pc.ram", 64 * 4096), ("pc.bios", 8 * 4096)]).header().ram_start()
    b.ram_part(1, [("pc.ram", 0, None), ("pc.ram", 4096, None),
                   ("pc.ram", 3 * 4096, None),                     # a gap: new run
                   ("pc.ram", 4 * 4096, None, 7),                  # fill byte 7: its own run
                   ("pc.ram", 5 * 4096, None),
                   ("pc.ram", 6 * 4096, page_data(6)),             # PAGE after ZERO: new run
                   ("pc.ram", 7 * 4096, page_data(7), 0, True),    # named again: new run
                   ("pc.bios", 0, page_data(1)), ("pc.bios", 4096, page_data(2)),
                   ("pc.ram", 8 * 4096, page_data(8))], end=True)
    data = b.eof().build()
    sp, runs = split_runs(data)
    assert [(r.block, r.offset >> 12, r.count, r.zero) for r in runs] == [
        ("pc.ram", 0, 2, True), ("pc.ram", 3, 1, True), ("pc.ram", 4, 1, True),
        ("pc.ram", 5, 1, True), ("pc.ram", 6, 1, False), ("pc.ram", 7, 1, False),
        ("pc.bios", 0, 2, False), ("pc.ram", 8, 1, False)]
    out = io.BytesIO()
    assemble_stream(sp.skeleton, RunSource(runs), out)
    assert out.getvalue() == data


def test_runs_and_pages_share_one_pass():
    sp = split_stream(io.BytesIO(standard_stream().build()))
    list(sp.runs())
    with pytest.raises(StreamError, match="only once"):
        sp.pages()
    with pytest.raises(StreamError, match="only once"):
        sp.runs()


# -- hypothesis: run-rich random streams -------------------------------------------

run_st = st.tuples(
    st.sampled_from(range(len(BLOCKS))),
    st.integers(0, 599),                           # first page (wrapped into the block)
    st.integers(1, 400),                           # records in the run
    st.sampled_from(["zero", "zero", "page", "mixed"]),
    st.sampled_from([None, None, None, 5]),        # a record with a non-zero fill byte
    st.booleans(),                                 # force the block name on the first record
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sections=st.lists(st.lists(run_st, max_size=6), min_size=1, max_size=4),
       chunk=st.sampled_from([None, ("readinto", 1), ("readinto", 4097), ("readinto", 9000),
                              ("read", 13), ("read", 70000)]),
       split_zeros=st.booleans(), generators=st.booleans(), lists=st.booleans())
def test_random_run_rich_streams_split_and_reassemble_identically(sections, chunk, split_zeros,
                                                                  generators, lists):
    b = StreamBuilder(blocks=BLOCKS).header().configuration().ram_start(1)
    seed = 0
    for n, sec in enumerate(sections):
        pages = []
        for bi, first, count, kind, odd_fill, named in sec:
            name, length = BLOCKS[bi]
            npages = length // 4096
            for k in range(count):
                pg = (first + k) % npages
                seed += 1
                zero = kind == "zero" or (kind == "mixed" and seed % 3 == 0)
                fill = odd_fill if (odd_fill and k == count // 2) else 0
                pages.append((name, pg * 4096, None if zero else page_data(seed), fill,
                              True if (named and k == 0) else None))
        b.ram_part(1, pages, end=n == len(sections) - 1, flush=n == 0)
    b.device(9, "cpu", b"\x01" * 50)
    data = b.eof().build()

    sp_pages = split_stream(io.BytesIO(data))
    recs = list(sp_pages.pages())
    assert [(r.block, r.offset, r.data) for r in recs] == b.expected
    sp, runs = split_runs(data, chunk)
    check_runs(runs, recs)
    assert sp.skeleton == sp_pages.skeleton

    src = RunSource(runs, split_zeros=split_zeros, generators=generators, lists=lists)
    out = io.BytesIO()
    n = assemble_stream(sp.skeleton, src, out)
    assert out.getvalue() == data and n == len(data)
    out = io.BytesIO()
    assert assemble_stream(sp.skeleton, RunSource(runs, lists=not lists), out,
                           check_hash=False) == len(data)
    assert out.getvalue() == data
    # asked in stream order, each record once, and never more than a request's worth
    covered = [i for index, _b, _o, count in src.calls for i in range(index, index + count)]
    assert covered == list(range(len(recs)))
    assert all(count <= migration._RUN_REQUEST for *_x, count in src.calls)


# -- errors still name the record at fault ------------------------------------------

def _zero_then_pages() -> tuple[bytes, int, int]:
    """A stream with a zero run then a data run; returns it and where each run starts."""
    b = StreamBuilder(blocks=[("pc.ram", 300 * 4096)]).header().configuration().ram_start()
    b.u8(0x03).u32(1)
    start_zero = len(b.out)
    for i in range(200):
        b.page("pc.ram", i * 4096, None)
    start_pages = len(b.out)
    for i in range(200, 230):
        b.page("pc.ram", i * 4096, page_data(i))
    b.eos().footer(1)
    return b.eof().build(), start_zero, start_pages


@pytest.mark.parametrize("chunk", [None, ("readinto", 4097)])
def test_truncation_inside_a_run_names_the_record_it_cut(chunk):
    data, zero_at, pages_at = _zero_then_pages()
    first_zero = zero_at + 8 + 1 + len("pc.ram") + 1      # the named first record is longer
    for cut in (first_zero + 9 * 57 + 3, first_zero + 9 * 150, pages_at + 5,
                pages_at + 4104 * 7 + 100, pages_at + 4104 * 29 + 8):
        if cut < pages_at:
            rec = first_zero + (cut - first_zero) // 9 * 9
        else:
            rec = pages_at + (cut - pages_at) // 4104 * 4104
        with pytest.raises(TruncatedStreamError) as info:
            list(split_stream(_src(data[:cut], chunk)).runs())
        # the offset is in the record that was cut, never before it
        assert rec <= info.value.offset <= cut, (cut, rec, info.value.offset)


def test_records_handed_out_before_an_error_come_first_then_the_error():
    data, _z, pages_at = _zero_then_pages()
    cut = pages_at + 4104 * 10 + 50
    it = split_stream(io.BytesIO(data[:cut])).runs()
    got = []
    with pytest.raises(TruncatedStreamError):
        for run in it:
            got.append(run)
    assert sum(r.count for r in got) == 200 + 10


def test_a_run_stops_at_the_block_end_and_the_record_beyond_is_refused_with_its_offset():
    b = StreamBuilder(blocks=[("pc.ram", 10 * 4096)]).header().configuration().ram_start()
    b.u8(0x03).u32(1)
    for i in range(10):
        b.page("pc.ram", i * 4096, None)
    beyond = len(b.out)
    b.page("pc.ram", 10 * 4096, None)
    b.eos().footer(1)
    data = b.eof().build()
    with pytest.raises(StreamError, match="beyond RAM block") as info:
        list(split_stream(io.BytesIO(data)).runs())
    assert info.value.offset == beyond


def test_a_bad_record_after_a_data_run_names_its_own_offset():
    b = StreamBuilder(blocks=[("pc.ram", 64 * 4096)]).header().configuration().ram_start()
    b.u8(0x03).u32(1)
    for i in range(5):
        b.page("pc.ram", i * 4096, page_data(i))
    bad = len(b.out)
    b.u64(5 * 4096 | 0x40 | 0x20)          # XBZRLE, refused
    data = b.build()
    with pytest.raises(StreamError, match="XBZRLE") as info:
        list(split_stream(io.BytesIO(data)).runs())
    assert info.value.offset == bad


# -- a run source that answers wrongly ------------------------------------------------

def _split_std():
    data = standard_stream().build()
    sp, runs = split_runs(data)
    return data, sp, runs


def test_run_source_with_too_few_or_too_many_records_is_refused():
    _d, sp, runs = _split_std()
    good = RunSource(runs)

    class Short(RunSource):
        def runs(self, index, block, offset, count):
            return list(good.runs(index, block, offset, count))[:-1]

    class Long(RunSource):
        def runs(self, index, block, offset, count):
            return list(good.runs(index, block, offset, count)) + [1]

    class ZeroCount(RunSource):
        def runs(self, index, block, offset, count):
            return [0] + list(good.runs(index, block, offset, count))

    for bad, what in ((Short, "answered"), (Long, "ZERO records|more than"), (ZeroCount, "ZERO records")):
        with pytest.raises(StreamError, match=what):
            assemble_stream(sp.skeleton, bad(runs), io.BytesIO())


def test_run_source_with_a_short_page_or_other_content_is_refused():
    _d, sp, runs = _split_std()
    good = RunSource(runs)

    class Short(RunSource):
        def runs(self, index, block, offset, count):
            return [p if isinstance(p, int) else p[:100] for p in good.runs(index, block, offset, count)]

    class Other(RunSource):
        def runs(self, index, block, offset, count):
            return [p if isinstance(p, int) else bytes(4096) for p in good.runs(index, block, offset, count)]

    with pytest.raises(StreamError, match="returned 100 bytes"):
        assemble_stream(sp.skeleton, Short(runs), io.BytesIO())
    with pytest.raises(IntegrityError, match="differs from the original"):
        assemble_stream(sp.skeleton, Other(runs), io.BytesIO())


def test_a_plain_page_source_still_works_without_runs():
    data, sp, runs = _split_std()
    by_index = {}
    for run in runs:
        for r in run.records():
            by_index[r.index] = r.data
    out = io.BytesIO()
    assemble_stream(sp.skeleton, lambda i, b, o: by_index[i], out)
    assert out.getvalue() == data


def test_list_pieces_are_checked_like_single_pages():
    _d, sp, runs = _split_std()
    good = RunSource(runs, lists=True)

    class Short(RunSource):
        def runs(self, index, block, offset, count):
            out = good.runs(index, block, offset, count)
            return [p if isinstance(p, int) else p[:-1] + [p[-1][:10]] for p in out]

    class Long(RunSource):
        def runs(self, index, block, offset, count):
            out = good.runs(index, block, offset, count)
            return out + [[bytes(4096)]]

    with pytest.raises(StreamError, match="returned 10 bytes for page record"):
        assemble_stream(sp.skeleton, Short(runs), io.BytesIO())
    with pytest.raises(StreamError, match="more than"):
        assemble_stream(sp.skeleton, Long(runs), io.BytesIO())


def test_without_the_hash_check_other_content_is_the_callers_to_find_but_lengths_still_count():
    data, sp, runs = _split_std()

    class Other(RunSource):
        def runs(self, index, block, offset, count):
            return [p if isinstance(p, int) else bytes(4096) for p in super().runs(index, block, offset, count)]

    out = io.BytesIO()
    assert assemble_stream(sp.skeleton, Other(runs), out, check_hash=False) == len(data)
    assert out.getvalue() != data
    with pytest.raises(IntegrityError):
        assemble_stream(sp.skeleton, Other(runs), io.BytesIO())
