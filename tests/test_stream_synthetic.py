"""The migration-stream codec on synthetic streams: round trips, every error class, truncation.

Pure unit tests (no QEMU): streams come from :class:`streams.StreamBuilder`,
which lays bytes out the way QEMU 10 does.
"""

from __future__ import annotations

import io
import random

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from engine.errors import IntegrityError, StreamError, TruncatedStreamError
from engine.stream.migration import (
    SKELETON_VERSION,
    assemble_stream,
    describe,
    iter_ram_pages,
    split_stream,
    stream_blocks,
)
from engine.stream.model import RamBlock
from streams import StreamBuilder, standard_stream


def split_all(data: bytes, chunked: int | None = None):
    src = io.BytesIO(data) if chunked is None else _Trickle(data, chunked)
    sp = split_stream(src)
    recs = list(sp.pages())
    return sp, recs


class _Trickle(io.RawIOBase):
    """A source that hands out at most ``n`` bytes per read, like a pipe."""

    def __init__(self, data: bytes, n: int):
        self.data, self.n, self.pos = data, n, 0

    def readable(self):
        return True

    def readinto(self, b):
        chunk = self.data[self.pos:self.pos + min(self.n, len(b))]
        b[:len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)


def roundtrip(data: bytes, chunked: int | None = None) -> tuple[bytes, object, list]:
    sp, recs = split_all(data, chunked)
    by_index = {r.index: r.data for r in recs}
    calls = []

    def source(index, block, offset):
        calls.append((index, block, offset))
        return by_index[index]

    out = io.BytesIO()
    n = assemble_stream(sp.skeleton, source, out)
    assert n == len(out.getvalue())
    assert calls == [(r.index, r.block, r.offset) for r in recs]
    return out.getvalue(), sp, recs


# -- round trips ----------------------------------------------------------------

def test_standard_stream_round_trips_byte_identical_and_hands_out_every_page():
    b = standard_stream()
    data = b.build()
    out, sp, recs = roundtrip(data)
    assert out == data
    assert [(r.block, r.offset, r.data) for r in recs] == b.expected
    assert [r.index for r in recs] == list(range(len(recs)))
    assert sp.machine == "pc-q35-10.0"
    assert sp.blocks == [RamBlock("pc.ram", 64 * 4096), RamBlock("pc.bios", 4 * 4096)]
    assert sp.raw_bytes == len(data)


def test_a_source_that_trickles_bytes_gives_the_same_split():
    data = standard_stream(3).build()
    out, sp, _ = roundtrip(data, chunked=7)
    assert out == data
    assert sp.skeleton == split_all(data)[0].skeleton


def test_nonzero_fill_bytes_and_explicit_block_names_round_trip():
    b = StreamBuilder().header().configuration().ram_start()
    b.ram_part(1, [("pc.ram", 0, None, 0xAB), ("pc.ram", 4096, None, 0, True),
                   ("pc.ram", 8192, None, 0xFF), ("pc.bios", 0, None)], end=True, flush=True)
    data = b.eof().build()
    out, _, recs = roundtrip(data)
    assert out == data
    assert [r.data for r in recs] == [None] * 4


def test_repeated_and_out_of_order_pages_keep_their_own_index():
    page = bytes(range(256)) * 16
    b = StreamBuilder().header().configuration().ram_start()
    b.ram_part(1, [("pc.ram", 8192, page), ("pc.ram", 0, None), ("pc.ram", 8192, page[::-1]),
                   ("pc.bios", 4096, page), ("pc.ram", 4096, None)], end=True)
    data = b.eof().build()
    out, _, recs = roundtrip(data)
    assert out == data
    assert [(r.index, r.offset) for r in recs] == [(0, 8192), (1, 0), (2, 8192), (3, 4096), (4, 4096)]
    assert recs[2].data == page[::-1]


def test_configuration_subsections_and_ignore_shared_block_addresses_parse():
    b = StreamBuilder().header().configuration(page_bits=12, capabilities=["x-ignore-shared"],
                                               uuid=bytes(range(16)))
    b.ram_start(addresses=True).ram_part(1, [("pc.ram", 0, bytes(4096))], end=True)
    data = b.eof().build()
    out, sp, _ = roundtrip(data)
    assert out == data
    assert [x.name for x in sp.blocks] == ["pc.ram", "pc.bios"]


def test_stream_without_configuration_or_vmdescription_round_trips():
    b = StreamBuilder().header().ram_start().ram_part(1, [("pc.ram", 0, None)], end=True)
    data = b.device(2, "timer", b"\x00" * 9).eof(vmdesc=None).build()
    out, sp, _ = roundtrip(data)
    assert out == data
    assert sp.machine == ""


def test_commands_and_non_ram_iterative_sections_stay_opaque():
    b = StreamBuilder().header().configuration()
    b.command(1).command(2, b"\x00\x00\x00\x07")
    b.command(7, (6).to_bytes(4, "big")).raw(b"packed")      # PACKAGED + its payload
    b.section_start(0x01, 9, "dirty-bitmap", version=1).raw(b"\x01\x02\x7e\x00").footer(9)
    b.ram_start(1).ram_part(1, [("pc.ram", 0, None)])
    b.u8(0x02).u32(9).raw(b"\x00\x00").footer(9)               # PART of the opaque section
    b.ram_part(1, [("pc.ram", 4096, bytes(4096))], end=True)
    data = b.eof().build()
    out, _, recs = roundtrip(data)
    assert out == data and len(recs) == 2
    kinds = [(s.type, s.idstr) for s in describe(io.BytesIO(data))]
    assert ("COMMAND", "PACKAGED") in kinds and ("PART", "dirty-bitmap") in kinds


def test_a_device_body_holding_its_own_footer_bytes_is_not_cut_there():
    # The footer pattern followed by something that is not a section header
    # must not end the section early.
    body = b"abc" + b"\x7e\x00\x00\x00\x05" + b"\xee" * 20 + b"\x7e\x00\x00\x00\x05\x04"
    b = StreamBuilder().header().configuration().ram_start()
    b.ram_part(1, [("pc.ram", 0, None)], end=True)
    b.device(5, "cpu", body).device(6, "apic", b"x" * 10)
    data = b.eof().build()
    out, _, _ = roundtrip(data)
    assert out == data
    infos = describe(io.BytesIO(data))
    cpu = next(s for s in infos if s.idstr == "cpu")
    assert cpu.length == 1 + 4 + 1 + 3 + 8 + len(body) + 5


def test_describe_lists_sections_with_offsets_that_tile_the_stream():
    data = standard_stream().build()
    infos = describe(io.BytesIO(data))
    assert infos[0].type == "CONFIGURATION" and infos[0].offset == 8
    pos = 8
    for s in infos:
        assert s.offset == pos
        pos += s.length
    assert pos == len(data)
    assert [s.type for s in infos[-2:]] == ["EOF", "VMDESCRIPTION"]
    ram = [s for s in infos if s.idstr == "ram"]
    assert [s.type for s in ram] == ["START", "PART", "PART", "END"]


def test_iter_ram_pages_and_stream_blocks_agree_with_split():
    b = standard_stream(5)
    data = b.build()
    assert list(iter_ram_pages(io.BytesIO(data))) == b.expected
    machine, blocks = stream_blocks(io.BytesIO(data))
    assert machine == "pc-q35-10.0" and [x.name for x in blocks] == ["pc.ram", "pc.bios"]


def test_skeleton_is_versioned_and_grows_with_runs_not_pages():
    def stream(npages: int) -> bytes:
        b = StreamBuilder(blocks=[("pc.ram", npages * 4096)]).header().configuration().ram_start()
        b.ram_part(1, [("pc.ram", i * 4096, None) for i in range(npages)], end=True)
        return b.eof().build()

    small = split_all(stream(10))[0].skeleton
    big = split_all(stream(20000))[0].skeleton
    assert small[:4] == b"SBSK" and int.from_bytes(small[4:6], "big") == SKELETON_VERSION
    assert len(big) - len(small) < 16          # one run either way
    body = msgpack.unpackb(big[6:])
    assert [i for i in body["items"] if isinstance(i, list)] == [[0, 1, 0, 20000]]


# -- hypothesis: random streams round trip ----------------------------------------

BLOCKS = [("pc.ram", 32 * 4096), ("pc.bios", 4 * 4096), ("/rom@etc/acpi/tables", 2 * 4096)]

page_st = st.tuples(
    st.sampled_from(range(len(BLOCKS))),
    st.integers(0, 31),
    st.one_of(st.none(), st.binary(min_size=1, max_size=8)),  # None: ZERO, else a seed for PAGE
    st.sampled_from([0, 0, 0, 1, 0xFF]),                      # fill byte of a ZERO record
    st.sampled_from([None, None, None, True]),                # block name: auto or forced
)
section_st = st.lists(page_st, max_size=12)
device_st = st.tuples(st.sampled_from(["timer", "cpu", "apic", "0000:00:1f.0/ich9_lpc"]),
                      st.binary(max_size=200))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sections=st.lists(section_st, min_size=1, max_size=5), devices=st.lists(device_st, max_size=4),
       config=st.booleans(), vmdesc=st.booleans(), commands=st.booleans(), flush=st.booleans(),
       chunk=st.sampled_from([None, 1, 13, 4097]))
def test_random_streams_round_trip(sections, devices, config, vmdesc, commands, flush, chunk):
    b = StreamBuilder(blocks=BLOCKS).header()
    if config:
        b.configuration("pc-i440fx-10.0")
    b.ram_start(1)
    for n, sec in enumerate(sections):
        pages = []
        for bi, pg, seed, fill, named in sec:
            name, length = BLOCKS[bi]
            data = None if seed is None else (seed * (4096 // len(seed) + 1))[:4096]
            pages.append((name, (pg * 4096) % length, data, fill, named))
        if commands and n == len(sections) - 1:
            b.command(11)
        b.ram_part(1, pages, end=n == len(sections) - 1, flush=flush)
    for k, (idstr, body) in enumerate(devices):
        # A body that holds its own footer followed by a valid header is
        # indistinguishable from two sections; QEMU's device state never
        # spells out a whole section header, so the generator avoids it.
        assume(b"\x7e" + (10 + k).to_bytes(4, "big") not in body)
        b.device(10 + k, idstr, body)
    b.eof(b'{"devices": []}' if vmdesc else None)
    data = b.build()
    out, sp, recs = roundtrip(data, chunked=chunk)
    assert out == data
    assert [(r.block, r.offset, r.data) for r in recs] == b.expected
    assert sp.raw_bytes == len(data)


# -- errors -----------------------------------------------------------------------

def _err(data: bytes) -> StreamError:
    with pytest.raises(StreamError) as info:
        split_all(data)
    return info.value


def _prefix() -> StreamBuilder:
    return StreamBuilder().header().configuration().ram_start()


def test_wrong_magic_names_offset_zero_and_the_expected_magic():
    e = _err(StreamBuilder().header(magic=0x51464900).build() + b"\x00")
    assert e.offset == 0 and "QEVM" in str(e)


@pytest.mark.parametrize("version,word", [(2, "obsolete"), (4, "expected 3")])
def test_unsupported_versions_are_refused(version, word):
    e = _err(StreamBuilder().header(version=version).build() + b"\x00")
    assert e.offset == 4 and word in str(e)


def test_unknown_section_type_names_type_and_offset():
    b = _prefix()
    at = len(b.out)
    e = _err(b.u8(0x09).build())
    assert e.offset == at and "0x09" in str(e)


@pytest.mark.parametrize("flags,word", [
    (0x100, "unknown RAM record flags 0x100"),
    (0x40, "XBZRLE"),
    (0x80, "RDMA"),
    (0x0A, "unknown RAM record flags 0x00a"),   # ZERO|PAGE together
    (0x01, "unknown RAM record flags 0x001"),
])
def test_unknown_or_unsupported_ram_flags_name_flag_and_offset(flags, word):
    b = _prefix().u8(0x02).u32(1)
    at = len(b.out)
    e = _err(b.u64(0x5000 | flags).counted("pc.ram").build() + bytes(5000))
    assert e.offset == at and word in str(e)


def test_continue_without_an_earlier_block_is_refused():
    b = _prefix().u8(0x02).u32(1)
    at = len(b.out)
    e = _err(b.page("pc.ram", 0, None, named=False).build())
    assert e.offset == at and "CONTINUE" in str(e)


def test_unknown_block_name_lists_the_known_blocks():
    b = _prefix().u8(0x02).u32(1)
    at = len(b.out)
    e = _err(b.page("vga.vram", 0, None).build())
    assert e.offset == at and "vga.vram" in str(e) and "pc.ram" in str(e)


def test_page_beyond_its_block_is_refused():
    b = _prefix().u8(0x02).u32(1)
    at = len(b.out)
    e = _err(b.page("pc.bios", 4 * 4096, None).build())
    assert e.offset == at and "beyond RAM block 'pc.bios'" in str(e)


def test_footer_with_the_wrong_section_id_is_refused():
    b = _prefix().u8(0x02).u32(1).page("pc.ram", 0, None).eos()
    at = len(b.out)
    e = _err(b.footer(2).build())
    assert e.offset == at + 1 and "expected 1" in str(e)


def test_missing_footer_is_refused():
    b = _prefix().u8(0x02).u32(1).page("pc.ram", 0, None).eos()
    at = len(b.out)
    e = _err(b.u8(0x00).build())
    assert e.offset == at and "footer" in str(e)


def test_part_of_a_section_nobody_started_is_refused():
    e = _err(StreamBuilder().header().configuration().u8(0x02).u32(4).build())
    assert "section id 4" in str(e)


def test_unknown_command_and_bad_command_length_are_refused():
    assert "unknown command 99" in str(_err(_prefix().command(99).build()))
    assert "PING with length 2" in str(_err(_prefix().command(2, b"xx").build()))


def test_postcopy_ram_stream_is_refused_by_name():
    e = _err(StreamBuilder().header().configuration().command(3, bytes(16)).build())
    assert "postcopy" in str(e) and e.offset == 24


def test_mapped_ram_capability_is_refused():
    e = _err(StreamBuilder().header().configuration(capabilities=["mapped-ram"]).build())
    assert "mapped-ram" in str(e)


def test_other_target_page_sizes_are_refused():
    e = _err(StreamBuilder().header().configuration(page_bits=16).build())
    assert "target page bits 16" in str(e)


def test_unknown_configuration_subsection_is_refused():
    b = StreamBuilder().header().configuration()
    e = _err(b.u8(0x05).counted("configuration/frobnicate").u32(1).build())
    assert "configuration/frobnicate" in str(e)


def test_mem_size_twice_or_outside_the_start_section_is_refused():
    b = StreamBuilder().header().configuration().section_start(0x01, 1, "ram").mem_size().mem_size()
    assert "second MEM_SIZE" in str(_err(b.build()))
    assert "outside the ram START" in str(_err(_prefix().u8(0x02).u32(1).mem_size().build()))


def test_mem_size_block_overrunning_the_total_is_refused():
    b = StreamBuilder().header().section_start(0x01, 1, "ram")
    e = _err(b.u64(4096 | 0x04).counted("pc.ram").u64(8192).build())
    assert "overruns" in str(e)


def test_trailing_data_after_the_vmdescription_is_refused():
    e = _err(standard_stream().build() + b"junk")
    assert "trailing" in str(e)


def test_data_after_eof_that_is_not_a_vmdescription_is_refused():
    e = _err(standard_stream(vmdesc=False).build() + b"\x01")
    assert "after the EOF" in str(e)


def test_truncation_at_every_offset_raises_truncated_stream_error():
    data = standard_stream(vmdesc=True).build()
    eof_end = next(s for s in describe(io.BytesIO(data)) if s.type == "EOF").offset + 1
    rng = random.Random(1)
    # Every offset near structure, a sample of offsets inside page payloads.
    cuts = set(range(0, 200)) | set(range(len(data) - 800, len(data)))
    cuts |= {rng.randrange(len(data)) for _ in range(300)}
    for cut in sorted(cuts):
        if cut == eof_end:
            # The one cut that leaves a complete stream (no VMDESCRIPTION): accepted.
            out, _, _ = roundtrip(data[:cut])
            assert out == data[:cut]
            continue
        with pytest.raises(TruncatedStreamError) as info:
            split_all(data[:cut])
        assert info.value.offset is not None and info.value.offset <= cut, cut


def test_pages_are_handed_out_before_a_later_error_and_the_error_still_comes():
    b = _prefix()
    b.ram_part(1, [("pc.ram", 0, bytes(4096)), ("pc.ram", 4096, None)])
    data = b.build()[:-3]
    sp = split_stream(io.BytesIO(data))
    it = sp.pages()
    assert next(it).index == 0 and next(it).index == 1
    with pytest.raises(TruncatedStreamError):
        next(it)
    with pytest.raises(StreamError):
        sp.skeleton


# -- the split object and the assembler refuse misuse ------------------------------

def test_skeleton_before_exhaustion_and_second_iteration_are_refused():
    sp = split_stream(io.BytesIO(standard_stream().build()))
    with pytest.raises(StreamError, match="exhausted"):
        sp.skeleton
    list(sp.pages())
    with pytest.raises(StreamError, match="only once"):
        sp.pages()


def test_assemble_detects_a_page_source_that_returns_other_pages():
    data = standard_stream().build()
    sp, recs = split_all(data)
    by_index = {r.index: r.data for r in recs}
    wrong = next(r.index for r in recs if r.data is not None)

    def source(i, block, offset):
        d = by_index[i]
        return bytes(4096) if i == wrong else d

    with pytest.raises(IntegrityError, match="differs from the original"):
        assemble_stream(sp.skeleton, source, io.BytesIO())
    with pytest.raises(IntegrityError):   # a PAGE where the stream had a ZERO record
        assemble_stream(sp.skeleton, lambda i, b, o: by_index[i] or bytes(4096), io.BytesIO())
    with pytest.raises(StreamError, match="returned 10 bytes"):
        assemble_stream(sp.skeleton, lambda i, b, o: b"x" * 10, io.BytesIO())


def test_assemble_refuses_foreign_or_newer_skeletons():
    data = standard_stream().build()
    sk = split_all(data)[0].skeleton
    with pytest.raises(StreamError, match="version 2 is not supported"):
        assemble_stream(b"SBSK\x00\x02" + sk[6:], lambda *a: None, io.BytesIO())
    with pytest.raises(StreamError, match="not a stream skeleton"):
        assemble_stream(b"PK\x03\x04xxxx", lambda *a: None, io.BytesIO())
    with pytest.raises(StreamError, match="does not decode"):
        assemble_stream(sk[:6] + b"\xc1garbage", lambda *a: None, io.BytesIO())


def test_machine_and_blocks_are_known_before_the_first_page():
    sp = split_stream(io.BytesIO(standard_stream().build()))
    it = sp.pages()
    first = next(it)
    assert first.index == 0
    assert sp.machine == "pc-q35-10.0" and [b.name for b in sp.blocks] == ["pc.ram", "pc.bios"]
    assert 0 < sp.raw_bytes
    list(it)
