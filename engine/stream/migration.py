"""QEMU 10 migration stream codec: split a stream into pages + skeleton, and back.

Contract (see :mod:`engine.stream.model`):

* :func:`split_stream` reads a stream once, front to back, and hands out its
  RAM page records in stream order, one by one (``pages()``) or grouped into
  runs (``runs()``: views into the read buffer, no copies); everything else
  (header, configuration, section headers and footers, RAM block list,
  device state, commands, the trailing VMDESCRIPTION JSON) goes into the
  *skeleton* byte for byte.
* :func:`assemble_stream` rebuilds the stream from the skeleton and a page
  source, asked per record or, when it has a ``runs`` method, per run. The
  result is byte-identical to the input of :func:`split_stream` when the
  page source hands back what the split handed out; the skeleton carries the
  stream's length and xxh3-64 hash, and a mismatch raises
  :class:`~engine.errors.IntegrityError` after writing.

Runs are where the speed is: after a page record has been parsed in full,
the records that continue it (CONTINUE, the next page, the same kind, fill
byte 0) are recognised by comparing the buffer with the bytes they must
have, built with C-level ``array`` operations; reassembly writes a zero run
from the same template. So Python works per run, not per record, and a
1 GiB guest's 200 k zero records cost a few dozen calls. Whatever does not
continue a run (a gap, another block, a non-zero fill byte, a malformed
record) starts a new one through the full parse, which raises the errors.
* :func:`iter_ram_pages` and :func:`describe` are the same parser used for
  analyses and diagnostics.

Any input that does not parse raises :class:`~engine.errors.StreamError`
(:class:`~engine.errors.TruncatedStreamError` when the input ends early)
naming the byte offset and what was expected there. ``pages()`` and
``runs()`` never end quietly on a bad or short stream: the exception comes
out of the iteration, so a consumer that imports pages as they come can
discard the partial import.

The wire format (QEMU 10.0: migration/savevm.c, migration/ram.c):

* ``QEVM`` + be32 version 3, then an optional configuration section (0x07:
  be32 length + machine name, then subsections 0x05 for target page bits,
  validated capabilities and UUID);
* sections: START 0x01 / FULL 0x04 (be32 id, u8 length + idstr, be32
  instance, be32 version), PART 0x02 / END 0x03 (be32 id), each followed by
  its body and a footer 0x7e + be32 id; COMMAND 0x08 (be16 cmd, be16 length,
  data); EOF 0x00, optionally followed by VMDESCRIPTION 0x06 (be32 length, JSON);
* the ``ram`` section body is a list of be64 ``offset | flags`` records:
  MEM_SIZE 0x04 (block list: u8 length + name, be64 used length, plus be64
  address when ``x-ignore-shared`` is on), ZERO 0x02 (one fill byte), PAGE
  0x08 (4096 bytes), CONTINUE 0x20 (same block as the previous record,
  otherwise u8 length + block name follow), EOS 0x10, MULTIFD_FLUSH 0x200.

Not supported, each refused with a StreamError naming flag/command and
offset: XBZRLE pages (0x40), RDMA hooks (0x80), the removed compression
flags, ``mapped-ram`` streams, and postcopy-RAM streams (their block list
layout depends on host page sizes the stream does not record).

Device sections are opaque: their end is found by the section footer (0x7e +
be32 id) followed by a well-formed next section header. Streams written
without section footers (machine types before 2.3) are therefore refused.

The one truncation that cannot be told from a complete stream is a cut right
after the EOF marker: what is lost is the optional VMDESCRIPTION JSON, which
QEMU never needs to load a stream (``suppress-vmdesc`` streams end there).

Skeleton format (version 1): ``b"SBSK"`` + be16 version, then one msgpack map
``{"machine", "raw_bytes", "xxh3", "blocks": [[name, length]...], "records",
"fills": [[record index, fill byte]...], "items": [...]}`` where each item is
either raw bytes (copied verbatim) or a run ``[block index, named, first page
number, count]``: ``count`` page records of one block at consecutive pages,
the first carrying the block name when ``named`` (1) and CONTINUE otherwise,
the rest CONTINUE. ZERO records are written with fill byte 0 unless ``fills``
says otherwise.
"""

from __future__ import annotations

import os
import struct
import sys
import threading
from array import array
from bisect import bisect_left
from collections import OrderedDict
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import msgpack
import xxhash

from engine.errors import IntegrityError, StreamError, TruncatedStreamError
from engine.stream.model import PAGE_SIZE, PageRecord, PageRun, PageSource, RamBlock

QEMU_VM_FILE_MAGIC = 0x5145564D  # "QEVM"
QEMU_VM_FILE_VERSION = 3
QEMU_VM_FILE_VERSION_COMPAT = 2

SEC_EOF = 0x00
SEC_START = 0x01
SEC_PART = 0x02
SEC_END = 0x03
SEC_FULL = 0x04
SEC_SUBSECTION = 0x05
SEC_VMDESCRIPTION = 0x06
SEC_CONFIGURATION = 0x07
SEC_COMMAND = 0x08
SEC_FOOTER = 0x7E

SECTION_NAMES = {
    SEC_EOF: "EOF", SEC_START: "START", SEC_PART: "PART", SEC_END: "END",
    SEC_FULL: "FULL", SEC_SUBSECTION: "SUBSECTION", SEC_VMDESCRIPTION: "VMDESCRIPTION",
    SEC_CONFIGURATION: "CONFIGURATION", SEC_COMMAND: "COMMAND",
}

FLAG_ZERO = 0x002
FLAG_MEM_SIZE = 0x004
FLAG_PAGE = 0x008
FLAG_EOS = 0x010
FLAG_CONTINUE = 0x020
FLAG_XBZRLE = 0x040
FLAG_HOOK = 0x080
FLAG_MULTIFD_FLUSH = 0x200
_FLAGS_MASK = PAGE_SIZE - 1
_ADDR_MASK = ~_FLAGS_MASK & 0xFFFFFFFFFFFFFFFF

# MIG_CMD_* from migration/savevm.c: name and fixed data length (None: variable).
COMMANDS: dict[int, tuple[str, int | None]] = {
    1: ("OPEN_RETURN_PATH", 0),
    2: ("PING", 4),
    3: ("POSTCOPY_ADVISE", None),
    4: ("POSTCOPY_LISTEN", 0),
    5: ("POSTCOPY_RUN", 0),
    6: ("POSTCOPY_RAM_DISCARD", None),
    7: ("PACKAGED", 4),
    8: ("ENABLE_COLO", 0),
    9: ("POSTCOPY_RESUME", 0),
    10: ("RECV_BITMAP", None),
    11: ("SWITCHOVER_START", 0),
}
CMD_POSTCOPY_ADVISE = 3
CMD_PACKAGED = 7

SKELETON_MAGIC = b"SBSK"
SKELETON_VERSION = 1
_SKEL_HEADER = struct.Struct(">4sH")

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_CHUNK = 1 << 20
_SPARES = 16         # read buffers a reader keeps for reuse, at most...
_SPARES_RESTING = 2  # ...the newest of them not yet reused
# The longest thing that can follow a section footer and must be seen to
# accept it: type, be32 id, u8 length, 255-byte idstr, be32 instance, be32 version.
_LOOKAHEAD = 1 + 4 + 1 + 255 + 8

# Runs: after one page record has been parsed in full, the records that
# continue it (CONTINUE, same kind, next page, fill byte 0) are recognised in
# bulk by comparing their bytes with the headers they must have, built with
# C-level array operations, so Python works per run and not per record.
_ZERO_CONT = FLAG_ZERO | FLAG_CONTINUE
_PAGE_CONT = FLAG_PAGE | FLAG_CONTINUE
_ZERO_REC = 8 + 1
_PAGE_REC = 8 + PAGE_SIZE
_LITTLE = sys.byteorder == "little"
_WINDOW_PAGES = 4096          # records of one template window (16 MiB of guest RAM)
_TEMPLATES_KEPT = 160         # windows kept (about 5 MiB), least recently used dropped


def _headers(first: int, n: int) -> bytes:
    """``n`` big-endian u64 record headers: ``first``, ``first + 4096``, ..."""
    a = array("Q", range(first, first + n * PAGE_SIZE, PAGE_SIZE))
    if _LITTLE:
        a.byteswap()
    return a.tobytes()


_templates: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
_templates_lock = threading.Lock()


def _window(flags: int, unit: int, w: int) -> bytes:
    """The records of pages ``w * 4096 .. w * 4096 + 4095`` with CONTINUE ``flags``:
    ``unit`` 9 for ZERO records (fill byte 0), 8 for record headers alone.

    Within a window, a header's upper five bytes are the window number and
    the lower three follow the page, so a window is the first one with five
    byte columns overwritten: built once, then kept.
    """
    key = (flags, unit, w)
    with _templates_lock:   # threads share the codec (an import beside an export)
        t = _templates.get(key)
        if t is not None:
            _templates.move_to_end(key)
            return t
    if w == 0:
        hb = _headers(flags, _WINDOW_PAGES)
        out = bytearray(unit * _WINDOW_PAGES)
        for j in range(8):
            out[j::unit] = hb[j::8]
    else:
        out = bytearray(_window(flags, unit, 0))
        for j, byte in enumerate(w.to_bytes(5, "big")):
            out[j::unit] = bytes([byte]) * _WINDOW_PAGES
    t = bytes(out)
    with _templates_lock:
        _templates[key] = t
        if len(_templates) > _TEMPLATES_KEPT:
            _templates.popitem(last=False)
    return t


def _template_pieces(flags: int, unit: int, page: int, n: int) -> Iterator[memoryview]:
    """The records of ``n`` pages from ``page`` on, as views of window templates."""
    while n > 0:
        w, off = divmod(page, _WINDOW_PAGES)
        k = min(n, _WINDOW_PAGES - off)
        yield memoryview(_window(flags, unit, w))[off * unit:(off + k) * unit]
        page += k
        n -= k


def _matching(buf, p: int, expected, unit: int, n: int) -> int:
    """How many leading ``unit``-byte records of ``expected`` (``n`` of them)
    ``buf`` holds from ``p`` on: memcmp work, a binary search on a mismatch."""
    if buf.startswith(expected, p):
        return n
    view = memoryview(expected)
    lo, hi = 0, n     # lo records are known to match, hi not
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if buf.startswith(view[:mid * unit], p):
            lo = mid
        else:
            hi = mid
    return lo


def _continuing(buf, p: int, flags: int, unit: int, page: int, limit: int) -> int:
    """How many of the next ``limit`` records at ``buf[p:]`` (``unit`` bytes
    each) are the templates' records for pages ``page``, ``page + 1``..."""
    total = 0
    for view in _template_pieces(flags, unit, page, limit):
        k = len(view) // unit
        got = _matching(buf, p + total * unit, view, unit, k)
        total += got
        if got < k:
            break
    return total


def _more_zero(buf, p: int, page: int, limit: int) -> int:
    """ZERO records (fill 0, CONTINUE) for pages ``page``, ``page + 1``... at ``buf[p:]``."""
    return _continuing(buf, p, _ZERO_CONT, _ZERO_REC, page, limit)


def _more_pages(buf, p: int, page: int, limit: int) -> int:
    """PAGE records (CONTINUE) for pages ``page``, ``page + 1``... at ``buf[p:]``:
    their headers are gathered with strided slices and compared at once."""
    actual = bytearray(8 * limit)
    span = _PAGE_REC * (limit - 1) + 1
    for j in range(8):
        actual[j::8] = buf[p + j:p + j + span:_PAGE_REC]
    return _continuing(actual, 0, _PAGE_CONT, 8, page, limit)


@dataclass(frozen=True, slots=True)
class SectionInfo:
    """One top-level element of a stream, as :func:`describe` lists it."""

    type: str               # START, PART, END, FULL, CONFIGURATION, COMMAND, EOF, VMDESCRIPTION
    idstr: str              # section idstr; the machine name; the command name; "" otherwise
    section_id: int | None
    instance: int | None
    version: int | None
    offset: int             # of the type byte
    length: int             # through the footer, when there is one


class _Reader:
    """A forward-only buffered reader that knows stream offsets and hashes what it reads."""

    __slots__ = ("src", "readinto", "buf", "pos", "mark", "base", "eof", "hasher", "spares")

    def __init__(self, src: BinaryIO):
        self.src = src
        self.readinto = getattr(src, "readinto", None)
        self.buf: bytes | bytearray = b""
        self.pos = 0
        # Bytes from ``mark`` to ``pos`` are read but not yet handed to the
        # skeleton; they stay in the buffer until committed (mark <= pos).
        self.mark = 0
        self.base = 0  # stream offset of buf[0]
        self.eof = False
        self.hasher = xxhash.xxh3_64()
        self.spares: list[bytearray] = []   # buffers fill() replaced, oldest first

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def fill(self, n: int) -> bool:
        """Make ``n`` bytes available from ``pos``; False when the input ends first."""
        while len(self.buf) - self.pos < n:
            if self.eof:
                return False
            # Drop what was consumed and committed, so memory stays bounded by
            # one section (plus one chunk). Each fill takes another buffer (views
            # handed out in runs keep the old one) and reads straight into it.
            drop = self.mark
            keep = len(self.buf) - drop
            want = max(_CHUNK, n - (len(self.buf) - self.pos))
            nb = self._spare(keep + want)
            got = 0
            with memoryview(nb) as view:
                view[:keep] = memoryview(self.buf)[drop:]
                got = self._read_into(view[keep:])
                if got:
                    self.hasher.update(view[keep:keep + got])
            if not got:
                self.eof = True
                return False
            if got < want:
                del nb[keep + got:]
            self.base += drop
            if isinstance(self.buf, bytearray):
                self.spares.append(self.buf)
                if len(self.spares) > _SPARES:
                    del self.spares[0]
            self.buf = nb
            self.pos -= drop
            self.mark = 0
        return True

    def _spare(self, size: int) -> bytearray:
        """A buffer of ``size`` bytes, contents undefined: an earlier one that no
        view refers to any more (a consumer done with its runs' pages), else a
        new one. Reuse matters: the kernel faults a new megabyte in page by
        page, which costs several times what reading it does. The newest
        spares are left alone, so a caller still holding one (not a view of it)
        across a fill reads what it read before."""
        spares = self.spares
        for i in range(len(spares) - _SPARES_RESTING):
            b = spares[i]
            try:   # a resize is refused while a view of the buffer is alive
                if len(b) > size:
                    del b[size:]      # within its allocation: no copy
                elif len(b) < size:
                    b.extend(bytes(size - len(b)))
                else:
                    del b[-1:]        # a resize that costs nothing, to ask
                    b.append(0)
            except BufferError:
                continue
            del spares[i]
            return b
        return bytearray(size)

    def _read_into(self, view: memoryview) -> int:
        """Fill ``view`` from the source; fewer bytes only at the end of the input."""
        got = 0
        size = len(view)
        while got < size:
            if self.readinto is not None:
                n = self.readinto(view[got:])
            else:
                chunk = self.src.read(size - got)
                n = len(chunk)
                view[got:got + n] = chunk
            if not n:   # end of input (None, from a non-blocking source, counts as none)
                self.eof = True
                break
            got += n
        return got

    def need(self, n: int, what: str) -> None:
        if not self.fill(n):
            left = len(self.buf) - self.pos
            raise TruncatedStreamError(
                f"stream ends inside {what}: expected {n} bytes, {left} left", self.offset)

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        p = self.pos
        self.pos = p + n
        return bytes(self.buf[p:p + n])

    def u8(self, what: str) -> int:
        self.need(1, what)
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def u16(self, what: str) -> int:
        self.need(2, what)
        (v,) = _U16.unpack_from(self.buf, self.pos)
        self.pos += 2
        return v

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def counted_string(self, what: str) -> bytes:
        n = self.u8(f"length of {what}")
        return self.take(n, what)

    def at_end(self) -> bool:
        return not self.fill(1)

    def digest(self) -> str:
        """xxh3-64 of every byte read from the source: the whole stream once the
        parser has seen its end (trailing bytes are refused, never left unread)."""
        return self.hasher.hexdigest()


class _Skeleton:
    """Builds the skeleton's item list: raw bytes and page runs."""

    def __init__(self):
        self.items: list = []
        self.raw = bytearray()
        self.run: list | None = None  # [block index, named, first page, count], live in items
        self.fills: list[list[int]] = []

    def add_raw(self, data: bytes) -> None:
        self.run = None
        self.raw += data

    def add_page(self, block: int, named: bool, page: int, count: int = 1) -> None:
        """``count`` page records at consecutive pages, the first named when ``named``."""
        run = self.run
        if run is not None and not named and run[0] == block and run[2] + run[3] == page:
            run[3] += count
            return
        if self.raw:
            self.items.append(bytes(self.raw))
            self.raw.clear()
        self.run = [block, 1 if named else 0, page, count]
        self.items.append(self.run)

    def finish(self) -> list:
        if self.raw:
            self.items.append(bytes(self.raw))
            self.raw.clear()
        self.run = None
        return self.items


def _name(raw: bytes) -> str:
    return raw.decode("latin-1")


class _Parser:
    """One pass over a stream. Yields page records; fills in the rest as it goes."""

    def __init__(self, src: BinaryIO, *, keep_skeleton: bool = True):
        self.r = _Reader(src)
        self.skel = _Skeleton() if keep_skeleton else None
        self.machine = ""
        self.blocks: list[RamBlock] = []
        self.block_index: dict[bytes, int] = {}
        self.block_pages: list[int] = []     # pages of each block (its length rounded up)
        self.sections: dict[int, str] = {}   # section id -> idstr, from START/FULL
        self.infos: list[SectionInfo] = []
        self.ignore_shared = False
        self.records = 0
        self.last_block = -1                 # block of the previous page record (CONTINUE)
        self.done = False

    # -- helpers ----------------------------------------------------------

    def _commit(self) -> None:
        """Hand the bytes read since the last commit to the skeleton verbatim."""
        r = self.r
        if self.skel is not None and r.pos > r.mark:
            self.skel.add_raw(r.buf[r.mark:r.pos])
        r.mark = r.pos

    def _info(self, type_: int, idstr: str, sid, inst, ver, offset: int) -> None:
        self.infos.append(SectionInfo(SECTION_NAMES[type_], idstr, sid, inst, ver,
                                      offset, self.r.offset - offset))

    # -- top level --------------------------------------------------------

    def parse(self) -> Iterator[PageRun]:
        r = self.r
        r.need(8, "the stream header (QEVM + version)")
        magic = r.u32("magic")
        if magic != QEMU_VM_FILE_MAGIC:
            raise StreamError(f"not a QEMU migration stream: magic {magic:#010x}, "
                              f"expected {QEMU_VM_FILE_MAGIC:#010x} ('QEVM')", 0)
        version = r.u32("stream version")
        if version != QEMU_VM_FILE_VERSION:
            old = " (the obsolete v2 format)" if version == QEMU_VM_FILE_VERSION_COMPAT else ""
            raise StreamError(f"unsupported stream version {version}{old}, "
                              f"expected {QEMU_VM_FILE_VERSION}", 4)
        self._commit()
        first = True
        while True:
            offset = r.offset
            t = r.u8("a section type byte (every stream ends with EOF 0x00)")
            if t == SEC_CONFIGURATION:
                if not first:
                    raise StreamError("configuration section (0x07) after other sections; "
                                      "it must directly follow the header", offset)
                self._configuration(offset)
            elif t in (SEC_START, SEC_FULL):
                yield from self._section_start_full(t, offset)
            elif t in (SEC_PART, SEC_END):
                yield from self._section_part_end(t, offset)
            elif t == SEC_COMMAND:
                self._command(offset)
            elif t == SEC_EOF:
                self._commit()
                self._info(t, "", None, None, None, offset)
                self._trailer()
                self.done = True
                return
            else:
                known = ", ".join(f"{k:#04x} {v}" for k, v in SECTION_NAMES.items()
                                  if k not in (SEC_SUBSECTION, SEC_VMDESCRIPTION))
                raise StreamError(f"unknown section type {t:#04x}; expected one of {known}", offset)
            first = False

    def _trailer(self) -> None:
        r = self.r
        if r.at_end():
            return
        offset = r.offset
        t = r.u8("the section type after EOF")
        if t != SEC_VMDESCRIPTION:
            raise StreamError(f"unexpected byte {t:#04x} after the EOF section; expected "
                              f"VMDESCRIPTION (0x06) or the end of the stream", offset)
        n = r.u32("VMDESCRIPTION length")
        # JSON up to 4 GiB would be absurd; QEMU's is tens of KB.
        if n > 64 << 20:
            raise StreamError(f"VMDESCRIPTION length {n} is implausible (over 64 MiB)", offset + 1)
        r.take(n, "the VMDESCRIPTION JSON")
        self._commit()
        self._info(t, "", None, None, None, offset)
        if not r.at_end():
            raise StreamError(f"{len(r.buf) - r.pos}+ bytes of trailing data after the "
                              "VMDESCRIPTION; expected the end of the stream", r.offset)

    def _configuration(self, offset: int) -> None:
        r = self.r
        n = r.u32("configuration: machine name length")
        if n > 255:
            raise StreamError(f"configuration: machine name length {n} is implausible", offset + 1)
        self.machine = _name(r.take(n, "configuration: machine name"))
        while True:
            if not r.fill(1):
                raise TruncatedStreamError("stream ends after the configuration section", r.offset)
            if r.buf[r.pos] != SEC_SUBSECTION:
                break
            sub_off = r.offset
            r.pos += 1
            name = _name(r.counted_string("configuration subsection name"))
            r.u32(f"version of configuration subsection {name!r}")
            if name == "configuration/target-page-bits":
                bits = r.u32("target page bits")
                if bits != 12:
                    raise StreamError(f"target page bits {bits}: only 4 KiB target pages (12) "
                                      "are supported", r.offset - 4)
            elif name == "configuration/capabilities":
                count = r.u32("capability count")
                for _ in range(count):
                    cap_off = r.offset
                    cap = _name(r.counted_string("capability name"))
                    if cap == "x-ignore-shared":
                        self.ignore_shared = True
                    elif cap == "mapped-ram":
                        raise StreamError("the stream was written with the mapped-ram capability; "
                                          "mapped-ram streams are not supported", cap_off)
            elif name == "configuration/uuid":
                r.take(16, "configuration UUID")
            else:
                raise StreamError(f"unknown configuration subsection {name!r}", sub_off)
        self._commit()
        self._info(SEC_CONFIGURATION, self.machine, None, None, None, offset)

    def _command(self, offset: int) -> None:
        r = self.r
        cmd = r.u16("command number")
        length = r.u16("command length")
        if cmd not in COMMANDS:
            raise StreamError(f"unknown command {cmd} (MIG_CMD_*; expected 1..{max(COMMANDS)})",
                              offset + 1)
        name, fixed = COMMANDS[cmd]
        if fixed is not None and length != fixed:
            raise StreamError(f"command {name} with length {length}, expected {fixed}", offset + 3)
        data = r.take(length, f"data of command {name}")
        if cmd == CMD_POSTCOPY_ADVISE and length:
            raise StreamError("postcopy-RAM stream (POSTCOPY_ADVISE command): not supported; "
                              "its RAM block list depends on host page sizes", offset)
        if cmd == CMD_PACKAGED:
            (n,) = _U32.unpack(data)
            r.take(n, "the packaged stream of a PACKAGED command")
        self._commit()
        self._info(SEC_COMMAND, name, None, None, None, offset)

    def _section_start_full(self, t: int, offset: int) -> Iterator[PageRun]:
        r = self.r
        kind = SECTION_NAMES[t]
        sid = r.u32(f"{kind} section id")
        idstr = _name(r.counted_string(f"idstr of {kind} section {sid}"))
        instance = r.u32(f"instance of section {sid} ({idstr!r})")
        version = r.u32(f"version of section {sid} ({idstr!r})")
        self.sections[sid] = idstr
        if idstr == "ram" and t == SEC_START:
            self._commit()
            yield from self._ram_records(sid, is_start=True)
            self._footer(sid, idstr)
            self._commit()
        else:
            if idstr == "ram":
                raise StreamError("a FULL section for 'ram': RAM is always an iterative section", offset)
            self._opaque_body(sid, idstr)
            self._commit()
        self._info(t, idstr, sid, instance, version, offset)

    def _section_part_end(self, t: int, offset: int) -> Iterator[PageRun]:
        r = self.r
        kind = SECTION_NAMES[t]
        sid = r.u32(f"{kind} section id")
        idstr = self.sections.get(sid)
        if idstr is None:
            raise StreamError(f"{kind} section for section id {sid}, which no START section opened",
                              offset + 1)
        if idstr == "ram":
            self._commit()
            yield from self._ram_records(sid, is_start=False)
            self._footer(sid, idstr)
            self._commit()
        else:
            self._opaque_body(sid, idstr)
            self._commit()
        self._info(t, idstr, sid, None, None, offset)

    def _footer(self, sid: int, idstr: str) -> None:
        r = self.r
        off = r.offset
        mark = r.u8(f"the footer of section {sid} ({idstr!r})")
        if mark != SEC_FOOTER:
            raise StreamError(f"expected the section footer 0x7e of section {sid} ({idstr!r}), "
                              f"found {mark:#04x}", off)
        got = r.u32(f"the footer of section {sid} ({idstr!r})")
        if got != sid:
            raise StreamError(f"footer names section {got}, expected {sid} ({idstr!r})", off + 1)

    # -- opaque sections --------------------------------------------------

    def _opaque_body(self, sid: int, idstr: str) -> None:
        """Skip a section body we do not parse, through its footer.

        The end is the first footer (0x7e + be32 id) that a well-formed element
        follows. When the input ends first, the error says why the last
        footer-like bytes were not taken for the footer.
        """
        r = self.r
        marker = bytes([SEC_FOOTER]) + _U32.pack(sid)
        body_offset = r.offset
        search = 0
        rejected: tuple[int, bool, str] | None = None  # (offset, input ran out, why)
        while True:
            idx = r.buf.find(marker, r.pos + search)
            if idx < 0:
                search = max(0, len(r.buf) - r.pos - len(marker) + 1)
                if r.fill(len(r.buf) - r.pos + 1):
                    continue
                end = r.offset + len(r.buf) - r.pos
                if rejected is not None and not rejected[1]:
                    raise StreamError(
                        f"section {sid} ({idstr!r}) from offset {body_offset}: the footer at "
                        f"offset {rejected[0]} is followed by {rejected[2]}", rejected[0] + 5)
                raise TruncatedStreamError(
                    f"stream ends inside section {sid} ({idstr!r}), which started at offset "
                    f"{body_offset}: no section footer (0x7e + id {sid}) followed by a "
                    "well-formed element", end)
            rel = idx - r.pos
            nxt = rel + len(marker)
            r.fill(nxt + _LOOKAHEAD)  # False near the end of input; _next_element copes
            why, short = self._next_element(r.pos + nxt)
            if why is None:
                r.pos += nxt
                return
            rejected = (r.offset + rel, short, why)
            search = rel + 1

    def _next_element(self, p: int) -> tuple[str | None, bool]:
        """Does a well-formed element start at buffer position ``p`` (after a candidate footer)?

        Returns ``(None, _)`` when it does, else ``(why not, whether the input ran out)``.
        """
        buf = self.r.buf
        avail = len(buf) - p
        if avail < 1:
            return "the end of the stream (it must end with EOF 0x00)", True
        t = buf[p]
        if t == SEC_EOF:
            if avail == 1:
                return None, False
            if buf[p + 1] != SEC_VMDESCRIPTION:
                return (f"EOF and then byte {buf[p + 1]:#04x}: unexpected byte after the EOF "
                        "section; expected VMDESCRIPTION (0x06) or the end of the stream"), False
            if avail < 7:
                return "a VMDESCRIPTION cut short", True
            if buf[p + 6] != 0x7B:  # '{'
                return "a VMDESCRIPTION that does not start with '{'", False
            return None, False
        if t in (SEC_START, SEC_FULL):
            kind = SECTION_NAMES[t]
            if avail < 6:
                return f"a {kind} section header cut short", True
            n = buf[p + 5]
            if n == 0:
                return f"a {kind} section header with an empty idstr", False
            if avail < 6 + n + 8:
                return f"a {kind} section header cut short", True
            if not all(0x20 <= c < 0x7F for c in buf[p + 6:p + 6 + n]):
                return f"a {kind} section header whose idstr is not printable", False
            return None, False
        if t in (SEC_PART, SEC_END):
            kind = SECTION_NAMES[t]
            if avail < 5:
                return f"a {kind} section header cut short", True
            other = _U32.unpack_from(buf, p + 1)[0]
            if other not in self.sections:
                return f"a {kind} section for section id {other}, which no START opened", False
            return None, False
        if t == SEC_COMMAND:
            if avail < 5:
                return "a COMMAND cut short", True
            cmd, length = struct.unpack_from(">HH", buf, p + 1)
            if cmd not in COMMANDS:
                return f"unknown command {cmd}", False
            fixed = COMMANDS[cmd][1]
            if fixed is not None and fixed != length:
                return f"command {COMMANDS[cmd][0]} with length {length}, expected {fixed}", False
            return None, False
        return f"byte {t:#04x}, which starts no section (unknown section type)", False

    # -- RAM --------------------------------------------------------------

    def _mem_size(self, total: int, rec_off: int) -> None:
        r = self.r
        if self.blocks:
            raise StreamError("a second MEM_SIZE record; the RAM block list comes once", rec_off)
        remaining = total
        while remaining > 0:
            boff = r.offset
            name = r.counted_string("RAM block name in the MEM_SIZE list")
            length = r.u64(f"used length of RAM block {_name(name)!r}")
            if self.ignore_shared:
                r.u64(f"address of RAM block {_name(name)!r}")
            if length > remaining:
                raise StreamError(f"RAM block {_name(name)!r} of {length} bytes overruns the "
                                  f"MEM_SIZE total {total} ({remaining} left)", boff)
            if name in self.block_index:
                raise StreamError(f"RAM block {_name(name)!r} listed twice", boff)
            self.block_index[name] = len(self.blocks)
            self.blocks.append(RamBlock(_name(name), length))
            self.block_pages.append(-(-length // PAGE_SIZE))
            remaining -= length

    def _ram_records(self, sid: int, is_start: bool) -> Iterator[PageRun]:
        """The section's page records as runs; each run's first record is parsed
        in full, the rest recognised in bulk (see :func:`_more_zero`)."""
        r = self.r
        skel = self.skel
        blocks = self.blocks
        block_index = self.block_index
        unpack_u64 = _U64.unpack_from
        need = r.need
        while True:
            # Fast path: one whole record (header, name, page) is in the buffer.
            if not r.fill(8 + 256 + PAGE_SIZE):
                need(8, "a RAM record header")
            buf = r.buf
            p = r.pos
            rec_off = r.base + p
            (hdr,) = unpack_u64(buf, p)
            p += 8
            flags = hdr & _FLAGS_MASK
            kind = flags & ~FLAG_CONTINUE
            if kind == FLAG_PAGE or kind == FLAG_ZERO:
                if flags & FLAG_CONTINUE:
                    bi = self.last_block
                    named = False
                    if bi < 0:
                        raise StreamError("page record with CONTINUE (0x20) but no earlier "
                                          "record named a RAM block", rec_off)
                else:
                    r.pos = p
                    name = r.counted_string("the RAM block name of a page record")
                    buf = r.buf
                    p = r.pos
                    bi = block_index.get(name, -1)
                    if bi < 0:
                        known = ", ".join(b.name for b in blocks) or "none (no MEM_SIZE list yet)"
                        raise StreamError(f"page record names RAM block {_name(name)!r}, which the "
                                          f"MEM_SIZE list does not have (blocks: {known})", rec_off)
                    named = True
                    self.last_block = bi
                addr = hdr & _ADDR_MASK
                block = blocks[bi]
                if addr >= block.length:
                    raise StreamError(f"page at offset {addr:#x} is beyond RAM block "
                                      f"{block.name!r} ({block.length:#x} bytes)", rec_off)
                # records this run may still take: up to the block's end
                left = self.block_pages[bi] - (addr >> 12) - 1
                if kind == FLAG_PAGE:
                    if len(buf) - p < PAGE_SIZE:
                        r.pos = p
                        need(PAGE_SIZE, f"the 4096-byte PAGE record at {block.name}+{addr:#x}")
                        buf = r.buf
                        p = r.pos
                    start = p
                    p += PAGE_SIZE
                    count = 1
                    limit = min((len(buf) - p) // _PAGE_REC, left)
                    if limit > 0:
                        more = _more_pages(buf, p, (addr >> 12) + 1, limit)
                        count += more
                        p += more * _PAGE_REC
                    run = PageRun(self.records, block.name, addr, count,
                                  memoryview(buf).toreadonly(), start, _PAGE_REC)
                else:
                    if len(buf) - p < 1:
                        r.pos = p
                        need(1, f"the fill byte of the ZERO record at {block.name}+{addr:#x}")
                        buf = r.buf
                        p = r.pos
                    fill = buf[p]
                    p += 1
                    count = 1
                    if fill:
                        if skel is not None:
                            skel.fills.append([self.records, fill])
                    else:
                        limit = min((len(buf) - p) // _ZERO_REC, left)
                        if limit > 0:
                            more = _more_zero(buf, p, (addr >> 12) + 1, limit)
                            count += more
                            p += more * _ZERO_REC
                    run = PageRun(self.records, block.name, addr, count)
                # The records' bytes are not skeleton material: skip them.
                r.pos = r.mark = p
                if skel is not None:
                    skel.add_page(bi, named, addr >> 12, count)
                self.records += count
                yield run
                continue
            r.pos = p
            if kind == FLAG_EOS:
                self._commit()
                return
            if kind == FLAG_MEM_SIZE:
                if not is_start:
                    raise StreamError("MEM_SIZE record outside the ram START section", rec_off)
                self._mem_size(hdr & _ADDR_MASK, rec_off)
            elif kind == FLAG_MULTIFD_FLUSH:
                pass
            elif kind == FLAG_XBZRLE:
                raise StreamError("XBZRLE-compressed page (RAM flag 0x40): not supported; "
                                  "migrate without the xbzrle capability", rec_off)
            elif kind == FLAG_HOOK:
                raise StreamError("RDMA hook record (RAM flag 0x80): RDMA streams are not supported",
                                  rec_off)
            else:
                raise StreamError(f"unknown RAM record flags {flags:#05x} in section {sid} "
                                  "(known: ZERO 0x02, MEM_SIZE 0x04, PAGE 0x08, EOS 0x10, "
                                  "CONTINUE 0x20, MULTIFD_FLUSH 0x200)", rec_off)
            self._commit()


class _Split:
    """The :class:`engine.stream.model.SplitStream` that :func:`split_stream` returns.

    ``machine`` and ``blocks`` are live: set as soon as the configuration
    section and the RAM block list have been read (before the first page).
    """

    def __init__(self, src: BinaryIO):
        self._parser = _Parser(src)
        self._started = False
        self._skeleton: bytes | None = None

    @property
    def machine(self) -> str:
        return self._parser.machine

    @property
    def blocks(self) -> list[RamBlock]:
        return list(self._parser.blocks)

    @property
    def raw_bytes(self) -> int:
        """Bytes of the stream read so far; its length once ``pages()`` is exhausted."""
        return self._parser.r.offset

    @property
    def skeleton(self) -> bytes:
        if self._skeleton is None:
            raise StreamError("the skeleton is complete only after pages() has been exhausted")
        return self._skeleton

    def pages(self) -> Iterator[PageRecord]:
        """The page records one by one (payloads as bytes)."""
        return self._records(self._start("pages"))

    def runs(self) -> Iterator[PageRun]:
        """The page records as runs (payloads as views into the read buffer)."""
        return self._start("runs")

    def _start(self, what: str) -> Iterator[PageRun]:
        if self._started:
            raise StreamError(f"{what}() of a split stream can be iterated only once "
                              "(pages() and runs() share one pass)")
        self._started = True
        return self._run()

    @staticmethod
    def _records(runs: Iterator[PageRun]) -> Iterator[PageRecord]:
        for run in runs:
            yield from run.records()

    def _run(self) -> Iterator[PageRun]:
        p = self._parser
        yield from p.parse()
        assert p.done and p.skel is not None
        body = {
            "machine": p.machine,
            "raw_bytes": p.r.offset,
            "xxh3": p.r.digest(),
            "blocks": [[b.name, b.length] for b in p.blocks],
            "records": p.records,
            "fills": p.skel.fills,
            "items": p.skel.finish(),
        }
        self._skeleton = _SKEL_HEADER.pack(SKELETON_MAGIC, SKELETON_VERSION) + msgpack.packb(
            body, use_bin_type=True)


def split_stream(src: BinaryIO) -> _Split:
    """Split a migration stream into page records and a skeleton (one streaming pass).

    Iterate ``pages()`` to drive the parse; ``skeleton``, ``blocks``,
    ``machine`` and ``raw_bytes`` are filled in when it is exhausted.
    """
    return _Split(src)


def _load_skeleton(skeleton: bytes) -> dict:
    if len(skeleton) < _SKEL_HEADER.size:
        raise StreamError(f"skeleton of {len(skeleton)} bytes is too short for its header")
    magic, version = _SKEL_HEADER.unpack_from(skeleton)
    if magic != SKELETON_MAGIC:
        raise StreamError(f"not a stream skeleton: magic {magic!r}, expected {SKELETON_MAGIC!r}")
    if version != SKELETON_VERSION:
        raise StreamError(f"skeleton format version {version} is not supported "
                          f"(this build reads version {SKELETON_VERSION})")
    try:
        body = msgpack.unpackb(skeleton[_SKEL_HEADER.size:], raw=False, strict_map_key=False)
        for key in ("raw_bytes", "xxh3", "blocks", "records", "fills", "items"):
            body[key]
    except Exception as err:
        raise StreamError(f"skeleton body does not decode: {err}") from err
    return body


class RamFile:
    """Where a diverted RAM block's pages go: the file QEMU maps as that block
    (``memory-backend-file``, ``share=on``), ``size`` bytes, zero-filled when
    created. Writes follow stream order, so a page the stream sends twice
    ends as its last record says (a later ZERO record clears it)."""

    def __init__(self, block: str, fd: int, size: int):
        self.block = block
        self.fd = fd
        self.size = size
        self._written = bytearray(size >> 12)   # pages written so far

    def _check(self, addr: int, n: int) -> None:
        if addr < 0 or addr + n > self.size:
            raise StreamError(f"RAM block {self.block!r}: a record at {addr:#x} lies beyond "
                              f"its file of {self.size} bytes")

    def pages(self, addr: int, pages) -> None:
        n = len(pages) * PAGE_SIZE
        self._check(addr, n)
        os.pwrite(self.fd, pages[0] if len(pages) == 1 else b"".join(pages), addr)
        p = addr >> 12
        self._written[p:p + len(pages)] = b"\x01" * len(pages)

    def zero(self, addr: int, count: int) -> None:
        self._check(addr, count * PAGE_SIZE)
        p = addr >> 12
        if any(self._written[p:p + count]):     # rare: data first, then ZERO
            os.pwrite(self.fd, bytes(count * PAGE_SIZE), addr)
            self._written[p:p + count] = bytes(count)


def _diverting(run_source, ram: RamFile):
    """``run_source`` that also writes what it answers into ``ram``."""
    def runs(index: int, name: str, addr: int, want: int):
        for piece in run_source(index, name, addr, want):
            if piece.__class__ is int:
                if piece > 0:
                    ram.zero(addr, piece)
                    addr += piece * PAGE_SIZE
            else:
                pages = piece if piece.__class__ is list else (piece,)
                ram.pages(addr, pages)
                addr += len(pages) * PAGE_SIZE
            yield piece
    return runs


def assemble_stream(skeleton: bytes, page_source: PageSource, dst: BinaryIO, *,
                    check_hash: bool = True, divert: RamFile | None = None) -> int:
    """Write the stream described by ``skeleton`` to ``dst``; returns the bytes written.

    ``page_source(index, block, offset)`` is called once per page record in
    stream order and returns the 4096-byte payload (a PAGE record) or None (a
    ZERO record). A page source that also has a ``runs`` method (a
    :data:`~engine.stream.model.RunSource`) is asked once per run of records
    instead, and is never called per page. Raises :class:`IntegrityError`
    when the result's length or hash differs from the original stream's
    (after writing it); :class:`StreamError` when the page source answers
    with something that is not a page or covers the wrong number of records.
    ``check_hash=False`` leaves out the hash (not the length) for a caller
    that checks the bytes written with a hash of its own (the store does,
    with xxh3-128): one pass over the stream less.

    ``divert`` (needs a run source) writes the page records of its block into
    its file instead of ``dst``: a stream that QEMU loads into a machine
    whose RAM is that file already (QEMU leaves a page the stream does not
    send as it is). The records are still built and checked; ``dst`` must
    then have a ``hide(data)`` method, which gets their bytes in stream
    order, for a caller that hashes the whole stream. Returns the length of
    the whole stream either way.
    """
    body = _load_skeleton(skeleton)
    blocks = [(str(name), int(length)) for name, length in body["blocks"]]
    fills = {int(i): int(f) for i, f in body["fills"]}
    fill_at = sorted(fills)
    run_source = getattr(page_source, "runs", None)
    hasher = xxhash.xxh3_64() if check_hash else None
    out = bytearray()
    total = 0
    index = 0
    pack_u64 = _U64.pack
    page_hdr = FLAG_PAGE
    zero_hdr = FLAG_ZERO

    def emitter(write, buf: bytearray):
        """(emit, flush) that send bytes to ``write``, counted and hashed."""
        def emit(data) -> None:
            nonlocal total
            write(data)
            if hasher is not None:
                hasher.update(data)
            total += len(data)

        def flush() -> None:
            if buf:
                emit(buf)
                buf.clear()
        return emit, flush

    emit, flush = emitter(dst.write, out)
    hidden = bytearray()
    diverted = None
    if divert is not None:
        if run_source is None:
            raise StreamError("diverting a RAM block to a file needs a run source")
        diverted = _diverting(run_source, divert)
        emit_hidden, flush_hidden = emitter(dst.hide, hidden)   # type: ignore[attr-defined]

    for item in body["items"]:
        if isinstance(item, bytes):
            out += item
        else:
            try:
                bi, named, page, count = item
                name, _length = blocks[bi]
            except (ValueError, TypeError, IndexError) as err:
                raise StreamError(f"skeleton run {item!r} is malformed") from err
            name_bytes = name.encode("latin-1")
            counted = bytes([len(name_bytes)]) + name_bytes
            addr = page << 12
            if diverted is not None and name == divert.block:
                flush()     # what came before, in order
                index = _assemble_run(diverted, name, counted if named else None, index,
                                      addr, count, hidden, flush_hidden, emit_hidden, fills,
                                      fill_at)
                flush_hidden()
                continue
            if run_source is not None:
                index = _assemble_run(run_source, name, counted if named else None, index,
                                      addr, count, out, flush, emit, fills, fill_at)
                continue
            for k in range(count):
                data = page_source(index, name, addr)
                if k == 0 and named:
                    cont = 0
                    suffix = counted
                else:
                    cont = FLAG_CONTINUE
                    suffix = b""
                if data is None:
                    out += pack_u64(addr | zero_hdr | cont)
                    out += suffix
                    out.append(fills.get(index, 0))
                else:
                    if len(data) != PAGE_SIZE:
                        _check_pages((data,), 0, 1, index, name, addr, who="page source")
                    out += pack_u64(addr | page_hdr | cont)
                    out += suffix
                    out += data
                index += 1
                addr += PAGE_SIZE
                if len(out) >= _CHUNK:  # a run can span all of RAM: keep memory to one chunk
                    flush()
        if len(out) >= _CHUNK:
            flush()
    flush()
    if index != body["records"]:
        raise StreamError(f"skeleton holds {index} page records, its header says {body['records']}")
    digest = hasher.hexdigest() if hasher is not None else body["xxh3"]
    if total != body["raw_bytes"] or digest != body["xxh3"]:
        raise IntegrityError(
            f"reassembled stream differs from the original: {total} bytes with xxh3 "
            f"{digest}, expected {body['raw_bytes']} bytes with xxh3 {body['xxh3']} "
            "(the page source returned pages that were not the original ones)")
    return total


# Records asked of a run source at once: bounds what its answer holds (4 MiB
# of pages at most), while a long zero run costs one call per this many records.
_RUN_REQUEST = 1024
_LIST_PAGES = 256     # pages of a list piece written as one block (1 MiB)


def _check_pages(pages, got: int, want: int, index: int, name: str, addr: int, *,
                 who: str = "run source") -> None:
    """The checks every page answer passes, in one place: raise the StreamError
    for the first thing wrong with ``pages``, the payloads a page or run source
    answered for records ``index``, ``index + 1``... (at ``addr``, ``addr +
    PAGE_SIZE``...) of a request for ``want`` records, ``got`` of which it had
    answered before them.

    An answer may not hold more records than were asked for (checked first, for
    all of ``pages`` at once), and each payload is a whole page (a page
    source's ``None``, a ZERO record, never gets here). Callers test the
    common case inline and call this only when something is off, so the
    messages and their order live here while the fast path stays a compare.
    """
    if got + len(pages) > want:
        raise StreamError(f"{who} answered more than the {want} records of the run at page "
                          f"record {index - got} ({name})")
    for k, pg in enumerate(pages):
        if len(pg) != PAGE_SIZE:
            expected = f"{PAGE_SIZE} or None" if who == "page source" else f"{PAGE_SIZE}"
            raise StreamError(f"{who} returned {len(pg)} bytes for page record {index + k} "
                              f"({name}+{addr + k * PAGE_SIZE:#x}); expected {expected}")


def _assemble_run(run_source, name: str, counted: bytes | None, index: int, addr: int,
                  count: int, out: bytearray, flush, emit, fills: dict[int, int],
                  fill_at: list[int]) -> int:
    """Write ``count`` records of one skeleton run from a run source; returns the next index.

    ``counted`` is the block name (length-prefixed) the first record carries,
    or None when it continues the block of the record before.
    """
    pack_u64 = _U64.pack
    page_cont = _PAGE_CONT
    done = 0
    while done < count:
        want = min(count - done, _RUN_REQUEST)
        got = 0
        for piece in run_source(index, name, addr, want):
            if piece.__class__ is list and counted is None:
                # consecutive PAGE payloads: headers made by map(), records
                # interleaved by slice assignment, written as one block
                for a in range(0, len(piece), _LIST_PAGES):
                    pages = piece[a:a + _LIST_PAGES]
                    m = len(pages)
                    if got + m > want or set(map(len, pages)) != {PAGE_SIZE}:
                        _check_pages(pages, got, want, index, name, addr)
                    first = addr | page_cont
                    parts: list = [None] * (2 * m)
                    parts[0::2] = map(pack_u64, range(first, first + m * PAGE_SIZE, PAGE_SIZE))
                    parts[1::2] = pages
                    flush()
                    emit(b"".join(parts))
                    got += m
                    index += m
                    addr += m * PAGE_SIZE
                continue
            if piece.__class__ is int:
                z = piece
                if z <= 0 or got + z > want:
                    raise StreamError(f"run source answered {z} ZERO records at page record {index} "
                                      f"({name}+{addr:#x}) of a run of {want} with {want - got} left")
                got += z
                if counted is not None:     # the block's first record names it
                    out += pack_u64(addr | FLAG_ZERO)
                    out += counted
                    out.append(fills.get(index, 0))
                    counted = None
                    index += 1
                    addr += PAGE_SIZE
                    z -= 1
                if z and fill_at and bisect_left(fill_at, index) < len(fill_at) \
                        and fill_at[bisect_left(fill_at, index)] < index + z:
                    for _ in range(z):      # a fill byte other than 0 (QEMU writes 0)
                        out += pack_u64(addr | _ZERO_CONT)
                        out.append(fills.get(index, 0))
                        index += 1
                        addr += PAGE_SIZE
                    z = 0
                if z:
                    for view in _template_pieces(_ZERO_CONT, _ZERO_REC, addr >> 12, z):
                        out += view
                        if len(out) >= _CHUNK:
                            flush()
                    index += z
                    addr += z * PAGE_SIZE
                continue
            # PAGE payloads record by record: one page, or a list whose first
            # record names the block
            for pg in (piece if piece.__class__ is list else (piece,)):
                if got >= want or len(pg) != PAGE_SIZE:
                    _check_pages((pg,), got, want, index, name, addr)
                got += 1
                if counted is not None:
                    out += pack_u64(addr | FLAG_PAGE)
                    out += counted
                    counted = None
                else:
                    out += pack_u64(addr | page_cont)
                out += pg
                index += 1
                addr += PAGE_SIZE
            if len(out) >= _CHUNK:
                flush()
        if got != want:
            raise StreamError(f"run source answered {got} records for the run of {want} at page "
                              f"record {index - got} ({name}+{addr - got * PAGE_SIZE:#x})")
        done += want
    return index


def iter_ram_pages(src: BinaryIO) -> Iterator[tuple[str, int, bytes | None]]:
    """``(block, offset, data or None)`` for every page record, in stream order."""
    parser = _Parser(src, keep_skeleton=False)
    for run in parser.parse():
        for rec in run.records():
            yield rec.block, rec.offset, rec.data


def describe(src: BinaryIO) -> list[SectionInfo]:
    """Every top-level element of a stream, in order, with offsets and lengths."""
    parser = _Parser(src, keep_skeleton=False)
    for _ in parser.parse():
        pass
    return parser.infos


def stream_blocks(src: BinaryIO) -> tuple[str, list[RamBlock]]:
    """The machine name and RAM block list, reading only as far as the block list."""
    parser = _Parser(src, keep_skeleton=False)
    for _ in parser.parse():
        break
    return parser.machine, list(parser.blocks)
