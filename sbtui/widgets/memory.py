"""A memory view: 16 bytes per line in hex and ASCII, virtual or physical.

Zero bytes are dimmed and printable ASCII is coloured, the way hexdump users
scan for strings and pointers. The title says which address space is shown.
A panel too narrow for 16 bytes with their ASCII shows 8 or 4 per line
(:func:`bytes_per_line`); the same bytes are laid out again when it resizes.
"""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

BYTES_PER_LINE = 16          # the most per line; the screen reads memory in these


def line_width(per_line: int) -> int:
    """Cells of one line of ``per_line`` bytes (an empty line is padded to it)."""
    return hex_line(0, b"", per_line).cell_length


def bytes_per_line(width: int) -> int:
    """The most of 16, 8, 4 bytes whose line fits ``width`` cells (4 at least)."""
    return next((n for n in (16, 8) if line_width(n) <= width), 4)


def hex_line(address: int, chunk: bytes, per_line: int = BYTES_PER_LINE) -> Content:
    cells = []
    for i in range(per_line):
        if i == 8:
            cells.append("")
        if i < len(chunk):
            b = chunk[i]
            style = "dim" if b == 0 else ("$success" if 0x20 <= b < 0x7F else "$foreground")
            cells.append(f"[{style}]{b:02x}[/]")
        else:
            cells.append("  ")
    ascii_ = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk).ljust(per_line)
    # the bytes as text stay out of the markup: a trailing backslash would
    # escape the closing tag after it (and guest memory holds any byte)
    return (Content.from_markup(f"[$secondary]{address:016x}[/]  {' '.join(cells)}  [dim]│[/]")
            + Content(ascii_) + Content.from_markup("[dim]│[/]"))


class MemoryView(Static):
    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("", id=id, classes=classes)
        self._shown: tuple[int, bytes, bool, str] | None = None

    @property
    def bytes_per_line(self) -> int:
        return bytes_per_line(self.content_region.width) if self.content_region.width else BYTES_PER_LINE

    def show(self, address: int, data: bytes, physical: bool, error: str = "") -> None:
        self._shown = (address, data, physical, error)
        if error:
            self.update(Content.from_markup("[b $error]$message[/]", message=error))
            return
        per_line = self.bytes_per_line
        lines = [hex_line(address + off, data[off:off + per_line], per_line)
                 for off in range(0, len(data), per_line)]
        self.update(Content("\n").join(lines))

    def on_resize(self) -> None:
        if self._shown is not None:
            self.show(*self._shown)
