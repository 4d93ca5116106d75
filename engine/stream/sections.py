"""Copy a migration stream without some of its device sections.

A state recorded under record/replay carries a ``replay`` section that only a
QEMU in record/replay mode has registered; a plain QEMU refuses the whole
stream over it ("Unknown savevm section"). :func:`copy_without` drops such
FULL sections: it finds them with :func:`engine.stream.migration.describe`
(one pass over ``src``, which must be seekable) and copies everything else,
byte for byte, in a second pass. Sections are matched by id string, and
device sections name themselves, so the rest of the stream loads unchanged.
"""

from __future__ import annotations

from typing import BinaryIO, Iterable

from engine.stream.migration import describe

CHUNK = 1 << 20


def copy_without(src: BinaryIO, dst: BinaryIO, idstrs: Iterable[str]) -> list[str]:
    """Copy ``src`` to ``dst`` leaving out the FULL sections named ``idstrs``.

    Returns the id strings of the sections left out.
    """
    names = set(idstrs)
    start = src.tell()
    skip = [(s.offset, s.offset + s.length, s.idstr) for s in describe(src)
            if s.type == "FULL" and s.idstr in names]
    src.seek(start)
    pos = 0
    for begin, end, _ in skip:
        _copy(src, dst, begin - pos)
        src.seek(start + end)
        pos = end
    while chunk := src.read(CHUNK):
        dst.write(chunk)
    return [name for _, _, name in skip]


def _copy(src: BinaryIO, dst: BinaryIO, n: int) -> None:
    while n > 0:
        chunk = src.read(min(CHUNK, n))
        if not chunk:
            raise EOFError("stream ended inside a section it listed")
        dst.write(chunk)
        n -= len(chunk)
