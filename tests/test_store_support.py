"""Helpers for the store tests: synthetic QEMU migration streams with known content.

:func:`build_stream` writes a stream in QEMU 10's real wire format (header,
configuration, an iterative ``ram`` section with MEM_SIZE, PAGE and ZERO
records, one opaque device section, EOF, VMDESCRIPTION), so the store is
tested through the real codec without booting QEMU. The page contents are
chosen by the tests, which therefore know exactly how many zero pages and
intra-/inter-checkpoint duplicates each stream holds.

No tests here: pytest collects this module and finds none.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import struct
from pathlib import Path

PAGE = 4096
RAM_SID = 2
DEV_SID = 3


@functools.lru_cache(maxsize=4096)
def page(seed: int | str) -> bytes:
    """A deterministic, non-zero, incompressible 4 KiB page."""
    key = int.from_bytes(hashlib.sha256(str(seed).encode()).digest()[:8], "little")
    return random.Random(key).randbytes(PAGE)


def text_page(seed: int | str) -> bytes:
    """A compressible non-zero page."""
    return (f"page {seed} ".encode() * PAGE)[:PAGE]


def _name(s: str) -> bytes:
    b = s.encode()
    return bytes([len(b)]) + b


def build_stream(blocks: list[tuple[str, int]], records: list[tuple[str, int, bytes | None]],
                 *, machine: str = "pc-q35-10.0", device: bytes = b"\x01\x02cpu-state\x03" * 50,
                 parts: int = 1, vmdesc: bool = True) -> bytes:
    """A QEMU migration stream with ``records`` = (block, byte offset, page or None).

    ``parts`` splits the records over that many PART sections (QEMU's
    iterations); a page may appear twice across them (sent again).
    """
    out = bytearray(b"QEVM" + struct.pack(">I", 3))
    m = machine.encode()
    out += b"\x07" + struct.pack(">I", len(m)) + m
    # START ram: the block list
    out += b"\x01" + struct.pack(">I", RAM_SID) + _name("ram") + struct.pack(">II", 0, 4)
    total = sum(length for _n, length in blocks)
    out += struct.pack(">Q", total | 0x04)
    for name, length in blocks:
        out += _name(name) + struct.pack(">Q", length)
    out += struct.pack(">Q", 0x10) + b"\x7e" + struct.pack(">I", RAM_SID)
    per = max(1, -(-len(records) // max(parts, 1)))
    chunks = [records[i:i + per] for i in range(0, len(records), per)] or [[]]
    for chunk in chunks:
        out += b"\x02" + struct.pack(">I", RAM_SID)
        last = None
        for block, offset, data in chunk:
            cont = 0x20 if block == last else 0
            flags = (0x08 if data is not None else 0x02) | cont
            out += struct.pack(">Q", offset | flags)
            if not cont:
                out += _name(block)
            last = block
            if data is None:
                out += b"\x00"
            else:
                assert len(data) == PAGE
                out += data
        out += struct.pack(">Q", 0x10) + b"\x7e" + struct.pack(">I", RAM_SID)
    out += b"\x03" + struct.pack(">I", RAM_SID) + struct.pack(">Q", 0x10) + b"\x7e" + struct.pack(">I", RAM_SID)
    out += b"\x04" + struct.pack(">I", DEV_SID) + _name("cpu") + struct.pack(">II", 0, 1)
    out += device + b"\x7e" + struct.pack(">I", DEV_SID)
    out += b"\x00"
    if vmdesc:
        desc = json.dumps({"page_size": PAGE, "devices": [{"name": "cpu"}]}).encode()
        out += b"\x06" + struct.pack(">I", len(desc)) + desc
    return bytes(out)


def snapshot(contents: list[bytes | None], *, block: str = "pc.ram", extra_rom: bool = True,
             **kw) -> bytes:
    """A stream whose main block holds ``contents`` page by page (None = zero page)."""
    blocks = [(block, len(contents) * PAGE)]
    records = [(block, i * PAGE, c) for i, c in enumerate(contents)]
    if extra_rom:
        blocks.append(("pc.bios", 2 * PAGE))
        records += [("pc.bios", 0, text_page("bios0")), ("pc.bios", PAGE, text_page("bios1"))]
    return build_stream(blocks, records, **kw)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to compare a store before and after)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
