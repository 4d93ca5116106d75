"""Kernel symbols without debug info: System.map in, a symbol-only ELF out.

gdb has no command that reads a ``System.map``. It does read ELF symbol
tables, so :func:`write_symbol_elf` writes a minimal ELF64 file holding only
a ``.symtab``/``.strtab`` and section headers that describe where the symbols
live (``SHT_NOBITS``: no contents, so gdb always reads code and data from the
target, never from the file). Loaded with ``symbol-file``, it makes gdb print
``<function+offset>`` for the PC, in disassembly and in backtraces, and
accept ``*do_idle`` or ``&jiffies`` in expressions and breakpoints.

Promises:

* :func:`parse_system_map` reads ``nm -n``/System.map/``/proc/kallsyms``
  lines (``ADDRESS TYPE NAME [module]``; other lines are ignored); absolute (``A``) and undefined
  (``U``) symbols are skipped (on x86-64 the per-CPU offsets are absolute).
  A file without a single usable symbol (Debian ships a one-line
  placeholder) raises :class:`GdbError` saying so.
* A symbol's size is the distance to the next higher address, capped at
  :data:`MAX_SYMBOL_SIZE`, so an address past the end of the last symbol of
  a region is not attributed to it.
* Sections are maximal runs of symbols of one class (code: ``T t W w``;
  everything else is data) without a capped gap; they never overlap (a
  symbol sharing an address with another class's symbol joins its section).
* :meth:`SymbolTable.symbolize` answers ``(name, offset)`` in Python with the
  same rules, so a UI can label addresses without a gdb round trip.
* :func:`symbol_file_for` caches the ELF by the map's content hash.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from engine.errors import GdbError

MAX_SYMBOL_SIZE = 1 << 20
CODE_TYPES = frozenset("TtWw")
SKIP_TYPES = frozenset("AaUu")
_LINE = re.compile(r"^\s*([0-9a-fA-F]+)\s+([A-Za-z?])\s+(\S+)(?:\s+\[\S+\])?\s*$")

# ELF constants (System V gABI)
_ET_EXEC = 2
_EM_X86_64 = 62
_SHT_SYMTAB, _SHT_STRTAB, _SHT_NOBITS = 2, 3, 8
_SHF_WRITE, _SHF_ALLOC, _SHF_EXECINSTR = 0x1, 0x2, 0x4
_STB_LOCAL, _STB_GLOBAL, _STB_WEAK = 0, 1, 2
_STT_OBJECT, _STT_FUNC = 1, 2
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_SHN_LIMIT = 0xFF00
_ELF_FORMAT = b"sbtui-symbol-elf-2\n"  # part of the cache key: bump when the output changes


@dataclass(frozen=True, slots=True)
class Symbol:
    address: int
    type: str          # the nm letter: T t D d B b R r W w V v ...
    name: str
    size: int = 0

    @property
    def is_code(self) -> bool:
        return self.type in CODE_TYPES

    @property
    def is_global(self) -> bool:
        return self.type.isupper()


def parse_system_map(text: str, *, source: str = "System.map") -> list[Symbol]:
    """Symbols sorted by address, with sizes (see the module doc)."""
    raw: list[tuple[int, str, str]] = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        kind = m.group(2)
        if kind in SKIP_TYPES:
            continue
        raw.append((int(m.group(1), 16), kind, m.group(3)))
    if not raw:
        hint = ""
        if "real System.map is in" in text:
            hint = (" (this is Debian's placeholder: the real map is in the -dbg package, "
                    "or read /proc/kallsyms from a guest booted with nokaslr)")
        raise GdbError(f"{source} holds no usable symbols{hint}")
    raw.sort(key=lambda r: r[0])
    addresses = sorted({r[0] for r in raw})
    next_of = {a: b for a, b in zip(addresses, addresses[1:])}
    out = []
    for address, kind, name in raw:
        nxt = next_of.get(address)
        size = min(nxt - address, MAX_SYMBOL_SIZE) if nxt is not None else 0
        out.append(Symbol(address, kind, name, size))
    return out


def load_system_map(path: str | Path) -> "SymbolTable":
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise GdbError(f"cannot read the symbol map {path}: {exc.strerror or exc}") from None
    return SymbolTable(parse_system_map(text, source=str(path)))


class SymbolTable:
    """Kernel symbols in memory: name -> address and address -> ``(name, offset)``."""

    def __init__(self, symbols: Iterable[Symbol]):
        self.symbols: list[Symbol] = sorted(symbols, key=lambda s: s.address)
        self._addresses = [s.address for s in self.symbols]
        self._by_name: dict[str, Symbol] = {}
        for sym in self.symbols:
            have = self._by_name.get(sym.name)
            # A global wins over a local static of the same name.
            if have is None or (sym.is_global and not have.is_global):
                self._by_name[sym.name] = sym

    def __len__(self) -> int:
        return len(self.symbols)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> Symbol | None:
        return self._by_name.get(name)

    def address_of(self, name: str) -> int | None:
        sym = self._by_name.get(name)
        return sym.address if sym is not None else None

    def containing(self, address: int) -> Symbol | None:
        """The symbol whose ``[address, address+size)`` holds ``address``.

        Of several symbols at one address the first global one is preferred
        (``_text`` and ``startup_64`` share theirs; gdb picks one too).
        """
        i = bisect.bisect_right(self._addresses, address) - 1
        if i < 0:
            return None
        start = self._addresses[i]
        j = bisect.bisect_left(self._addresses, start)
        group = self.symbols[j:i + 1]
        best = next((s for s in group if s.is_global), group[0])
        if address - start >= max(best.size, 1):
            return None
        return best

    def symbolize(self, address: int) -> tuple[str, int]:
        """``(name, offset)``, or ``("", 0)`` when no symbol covers ``address``."""
        sym = self.containing(address)
        return (sym.name, address - sym.address) if sym is not None else ("", 0)


# --------------------------------------------------------------------------
# The ELF writer
# --------------------------------------------------------------------------

def _runs(symbols: list[Symbol]) -> list[tuple[bool, int, int]]:
    """``(is_code, start, end)`` section extents, sorted and disjoint."""
    runs: list[list] = []
    for sym in symbols:
        end = sym.address + max(sym.size, 1)
        if runs and sym.address < runs[-1][2]:
            # Shares an address with the run's last symbol (e.g. a code and a
            # data symbol at one address): joins it, since sections must not
            # overlap. Its own ELF type still says code or data.
            runs[-1][2] = max(runs[-1][2], end)
        elif runs and runs[-1][0] == sym.is_code and sym.address == runs[-1][2]:
            runs[-1][2] = end
        else:
            runs.append([sym.is_code, sym.address, end])
    # Keep clear of the section-index limit: merge neighbours of the same
    # class until it fits (gaps become part of a section; harmless).
    while len(runs) >= _SHN_LIMIT - 8:
        merged: list[list] = []
        for run in runs:
            if merged and merged[-1][0] == run[0]:
                merged[-1][2] = run[2]
            else:
                merged.append(run)
        if len(merged) == len(runs):
            break
        runs = merged
    return [(bool(r[0]), r[1], r[2]) for r in runs]


def elf_bytes(symbols: list[Symbol]) -> bytes:
    """A minimal ELF64 x86-64 file holding ``symbols`` (see the module doc)."""
    symbols = sorted(symbols, key=lambda s: s.address)
    runs = _runs(symbols)
    starts = [r[1] for r in runs]

    shstr = bytearray(b"\0")

    def shname(name: str) -> int:
        off = len(shstr)
        shstr.extend(name.encode() + b"\0")
        return off

    text_name, data_name = shname(".text"), shname(".data")
    symtab_name, strtab_name, shstrtab_name = shname(".symtab"), shname(".strtab"), shname(".shstrtab")

    strtab = bytearray(b"\0")
    name_off: dict[str, int] = {}

    def strname(name: str) -> int:
        off = name_off.get(name)
        if off is None:
            off = name_off[name] = len(strtab)
            strtab.extend(name.encode("utf-8", "replace") + b"\0")
        return off

    # Sections: 0 null, 1..n the runs, then .symtab, .strtab, .shstrtab.
    first_run = 1
    symtab_idx = first_run + len(runs)
    strtab_idx, shstrtab_idx = symtab_idx + 1, symtab_idx + 2

    def entry(sym: Symbol) -> bytes:
        i = bisect.bisect_right(starts, sym.address) - 1
        shndx = first_run + max(i, 0)
        if sym.type in "WwVv":
            bind = _STB_WEAK
        else:
            bind = _STB_GLOBAL if sym.is_global else _STB_LOCAL
        stype = _STT_FUNC if sym.is_code else _STT_OBJECT
        return _SYM.pack(strname(sym.name), (bind << 4) | stype, 0, shndx, sym.address, sym.size)

    locals_ = [s for s in symbols if not (s.is_global or s.type in "WwVv")]
    globals_ = [s for s in symbols if s.is_global or s.type in "WwVv"]
    symtab = bytearray(_SYM.pack(0, 0, 0, 0, 0, 0))
    for sym in locals_:
        symtab += entry(sym)
    first_global = 1 + len(locals_)
    for sym in globals_:
        symtab += entry(sym)

    off_symtab = _EHDR.size
    off_strtab = off_symtab + len(symtab)
    off_shstr = off_strtab + len(strtab)
    off_sh = (off_shstr + len(shstr) + 7) & ~7
    headers = [_SHDR.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)]
    for is_code, start, end in runs:
        flags = _SHF_ALLOC | (_SHF_EXECINSTR if is_code else _SHF_WRITE)
        headers.append(_SHDR.pack(text_name if is_code else data_name, _SHT_NOBITS, flags,
                                  start, off_sh, end - start, 0, 0, 16 if is_code else 8, 0))
    headers.append(_SHDR.pack(symtab_name, _SHT_SYMTAB, 0, 0, off_symtab, len(symtab),
                              strtab_idx, first_global, 8, _SYM.size))
    headers.append(_SHDR.pack(strtab_name, _SHT_STRTAB, 0, 0, off_strtab, len(strtab), 0, 0, 1, 0))
    headers.append(_SHDR.pack(shstrtab_name, _SHT_STRTAB, 0, 0, off_shstr, len(shstr), 0, 0, 1, 0))
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8  # 64-bit, little endian, v1, SysV
    ehdr = _EHDR.pack(ident, _ET_EXEC, _EM_X86_64, 1, 0, 0, off_sh, 0, _EHDR.size,
                      0, 0, _SHDR.size, len(headers), shstrtab_idx)
    pad = b"\0" * (off_sh - (off_shstr + len(shstr)))
    return b"".join([ehdr, bytes(symtab), bytes(strtab), bytes(shstr), pad, *headers])


def write_symbol_elf(symbols: list[Symbol], path: str | Path) -> Path:
    """Write :func:`elf_bytes` to ``path`` atomically (temporary file, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(elf_bytes(symbols))
    tmp.replace(path)
    return path


def symbol_file_for(system_map: str | Path, cache: str | Path | None = None) -> Path:
    """The symbol ELF for ``system_map``, built once per map content and cached.

    ``cache`` defaults to ``<sbtui cache>/gdb-symbols``.
    """
    system_map = Path(system_map)
    try:
        data = system_map.read_bytes()
    except OSError as exc:
        raise GdbError(f"cannot read the symbol map {system_map}: {exc.strerror or exc}") from None
    if cache is None:
        from engine import paths
        cache = paths.cache_dir() / "gdb-symbols"
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(_ELF_FORMAT + data).hexdigest()[:20]
    out = cache / f"symbols-{digest}.elf"
    if not out.is_file():
        symbols = parse_system_map(data.decode("utf-8", "replace"), source=str(system_map))
        write_symbol_elf(symbols, out)
    return out
