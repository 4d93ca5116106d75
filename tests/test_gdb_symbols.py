"""System.map parsing, the symbol table and the symbol-only ELF that gdb loads.

The ELF is checked twice: structurally, by reading it back with a small
independent reader here, and by gdb itself (``info symbol`` and expressions
on the file, no target needed).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import GdbError
from engine.gdb import GdbProcess, SymbolTable, elf_bytes, parse_system_map, symbol_file_for
from engine.gdb.symbols import MAX_SYMBOL_SIZE, Symbol

SAMPLE = """\
0000000000000000 A fixed_percpu_data
0000000000001000 A cpu_debug_store
ffffffff81000000 T _text
ffffffff81000000 T startup_64
ffffffff81000040 t secondary_startup_64
ffffffff81000100 T do_idle
ffffffff81000180 t do_idle.isra.0
ffffffff81000200 W weak_fn
ffffffff81000300 T _etext
ffffffff82000000 D linux_banner
ffffffff82000040 d static_thing
ffffffff82000080 B jiffies
ffffffff82000088 b do_idle
                 U undefined_thing
"""


def read_elf(data: bytes) -> tuple[list[dict], list[dict], int]:
    """(sections, symbols, index of the first global) from an ELF64 LE file."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1
    (_, e_type, machine, _, _, _, shoff, _, _, _, _, shentsize, shnum,
     shstrndx) = struct.unpack_from("<16sHHIQQQIHHHHHH", data, 0)
    assert (e_type, machine, shentsize) == (2, 62, 64)
    raw = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * 64) for i in range(shnum)]
    shstr = raw[shstrndx]
    strtab_of = lambda sec, off: data[sec[4] + off:data.index(b"\0", sec[4] + off)].decode()
    sections = [dict(name=strtab_of(shstr, s[0]), type=s[1], flags=s[2], addr=s[3],
                     offset=s[4], size=s[5], link=s[6], info=s[7]) for s in raw]
    symtab = next(s for s in sections if s["type"] == 2)
    strtab = raw[symtab["link"]]
    symbols = []
    for i in range(symtab["size"] // 24):
        name, info, _, shndx, value, size = struct.unpack_from("<IBBHQQ", data,
                                                               symtab["offset"] + i * 24)
        symbols.append(dict(name=strtab_of(strtab, name), bind=info >> 4, type=info & 15,
                            shndx=shndx, value=value, size=size))
    return sections, symbols, symtab["info"]


def test_parse_skips_absolute_and_undefined_and_sizes_to_the_next_address():
    syms = parse_system_map(SAMPLE)
    names = [s.name for s in syms]
    assert "fixed_percpu_data" not in names and "undefined_thing" not in names
    assert [s.address for s in syms] == sorted(s.address for s in syms)
    by = {(s.name, s.type): s for s in syms}
    assert by[("startup_64", "T")].size == 0x40          # shares _text's address
    assert by[("do_idle", "T")].size == 0x80
    assert by[("_etext", "T")].size == MAX_SYMBOL_SIZE   # gap to the data is capped
    assert by[("do_idle", "b")].size == 0                # the last one


def test_placeholder_system_map_is_refused_with_a_reason():
    # What Debian's linux-image package ships as System.map.
    text = "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n"
    with pytest.raises(GdbError, match="placeholder") as err:
        parse_system_map(text, source="x.map")
    assert "x.map" in str(err.value) and "no usable symbols" in str(err.value)
    with pytest.raises(GdbError, match="no usable symbols"):
        parse_system_map("0000000000000000 A only_absolute\n")


def test_kallsyms_module_suffix_is_accepted():
    syms = parse_system_map("ffffffffc0000000 t e1000_probe\t[e1000]\n")
    assert [(s.name, s.address) for s in syms] == [("e1000_probe", 0xffffffffc0000000)]


def test_symbol_table_lookup_and_symbolize():
    table = SymbolTable(parse_system_map(SAMPLE))
    assert table.address_of("do_idle") == 0xffffffff81000100       # the global wins
    assert table.symbolize(0xffffffff81000104) == ("do_idle", 4)
    assert table.symbolize(0xffffffff81000000) in (("_text", 0), ("startup_64", 0))
    assert table.symbolize(0xffffffff81000190) == ("do_idle.isra.0", 0x10)
    assert table.symbolize(0x1000) == ("", 0)                       # below everything
    assert table.symbolize(0xffffffff81000300 + MAX_SYMBOL_SIZE) == ("", 0)  # past the cap
    assert "jiffies" in table and table.get("nope") is None


def test_elf_holds_every_symbol_in_a_covering_section():
    syms = parse_system_map(SAMPLE)
    sections, symbols, first_global = read_elf(elf_bytes(syms))
    assert symbols[0] == dict(name="", bind=0, type=0, shndx=0, value=0, size=0)
    got = sorted((s["name"], s["value"], s["size"]) for s in symbols[1:])
    assert got == sorted((s.name, s.address, s.size) for s in syms)
    # locals first, as sh_info promises
    assert all(s["bind"] == 0 for s in symbols[1:first_global])
    assert all(s["bind"] != 0 for s in symbols[first_global:])
    for s in symbols[1:]:
        sec = sections[s["shndx"]]
        assert sec["type"] == 8 and sec["addr"] <= s["value"] < sec["addr"] + sec["size"], s
        is_code = s["type"] == 2
        assert bool(sec["flags"] & 0x4) == is_code and sec["name"] == (".text" if is_code else ".data")
    alloc = sorted((s["addr"], s["addr"] + s["size"]) for s in sections if s["type"] == 8)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(alloc, alloc[1:]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0xffffffff80000000, 0xffffffff80000000 + (1 << 24)),
                          st.sampled_from("TtDdBbRrWw"),
                          st.from_regex(r"[a-z_][a-z0-9_.]{0,12}", fullmatch=True)),
                min_size=1, max_size=60))
def test_elf_round_trip_and_sections_never_overlap(entries):
    text = "".join(f"{a:016x} {t} {n}\n" for a, t, n in entries)
    syms = parse_system_map(text)
    sections, symbols, _ = read_elf(elf_bytes(syms))
    assert sorted((s["name"], s["value"]) for s in symbols[1:]) == sorted(
        (s.name, s.address) for s in syms)
    alloc = sorted((s["addr"], s["addr"] + s["size"]) for s in sections if s["type"] == 8)
    assert all(start < end for start, end in alloc)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(alloc, alloc[1:]))
    for s in symbols[1:]:
        sec = sections[s["shndx"]]
        assert sec["addr"] <= s["value"] < sec["addr"] + max(sec["size"], 1)


def test_symbol_file_is_cached_by_content(tmp_path):
    m = tmp_path / "System.map"
    m.write_text(SAMPLE)
    first = symbol_file_for(m, cache=tmp_path / "c")
    mtime = first.stat().st_mtime_ns
    assert symbol_file_for(m, cache=tmp_path / "c") == first
    assert first.stat().st_mtime_ns == mtime
    m.write_text(SAMPLE + "ffffffff82000100 D more\n")
    assert symbol_file_for(m, cache=tmp_path / "c") != first


@pytest.mark.gdb
def test_gdb_reads_the_symbol_elf(tmp_path):
    m = tmp_path / "System.map"
    m.write_text(SAMPLE)
    elf = symbol_file_for(m, cache=tmp_path)
    with GdbProcess() as gdb:
        gdb.command("-gdb-set architecture i386:x86-64")   # else "unsigned long" may be 32-bit
        gdb.command(f'-file-symbol-file "{elf}"')
        assert gdb.console("info symbol 0xffffffff81000104").strip() == \
            "do_idle + 4 in section .text"
        assert gdb.console("info symbol 0xffffffff82000044").strip() == \
            "static_thing + 4 in section .data"
        res = gdb.command('-data-evaluate-expression "(unsigned long)&jiffies"')
        assert int(res.payload["value"]) == 0xffffffff82000080
        res = gdb.command("-data-evaluate-expression \"(unsigned long)&'do_idle.isra.0'\"")
        assert int(res.payload["value"]) == 0xffffffff81000180


@pytest.mark.gdb
def test_demo_guest_map_gives_gdb_kernel_symbols(demo_guest, tmp_path):
    assert demo_guest.system_map is not None
    table = SymbolTable(parse_system_map(demo_guest.system_map.read_text()))
    assert len(table) > 10000
    idle = table.address_of("do_idle")
    assert idle is not None and idle >= 0xffffffff80000000
    elf = symbol_file_for(demo_guest.system_map, cache=tmp_path)
    with GdbProcess() as gdb:
        gdb.command(f'-file-symbol-file "{elf}"', timeout=60)
        assert gdb.console(f"info symbol {idle + 5:#x}").startswith("do_idle + 5 in section")
