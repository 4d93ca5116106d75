"""A memory view: 16 bytes per line in hex and ASCII, virtual or physical.

Zero bytes are dimmed and printable ASCII is coloured, the way hexdump users
scan for strings and pointers. The title says which address space is shown.
"""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

BYTES_PER_LINE = 16


def hex_line(address: int, chunk: bytes) -> Content:
    cells = []
    for i in range(BYTES_PER_LINE):
        if i == 8:
            cells.append("")
        if i < len(chunk):
            b = chunk[i]
            style = "dim" if b == 0 else ("$success" if 0x20 <= b < 0x7F else "$foreground")
            cells.append(f"[{style}]{b:02x}[/]")
        else:
            cells.append("  ")
    ascii_ = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk).ljust(BYTES_PER_LINE)
    # the bytes as text stay out of the markup: a trailing backslash would
    # escape the closing tag after it (and guest memory holds any byte)
    return (Content.from_markup(f"[$secondary]{address:016x}[/]  {' '.join(cells)}  [dim]│[/]")
            + Content(ascii_) + Content.from_markup("[dim]│[/]"))


class MemoryView(Static):
    def show(self, address: int, data: bytes, physical: bool, error: str = "") -> None:
        if error:
            self.update(Content.from_markup("[b $error]$message[/]", message=error))
            return
        lines = [hex_line(address + off, data[off:off + BYTES_PER_LINE])
                 for off in range(0, len(data), BYTES_PER_LINE)]
        self.update(Content("\n").join(lines))
