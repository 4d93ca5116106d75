"""Disassembly around the program counter, with kernel symbols.

Each line: a ``►`` at the PC, a ``●`` at a breakpoint, the address, ``<symbol+offset>``,
the raw bytes when the panel is wide enough, and the instruction with its
mnemonic, registers and immediates coloured from the theme.
"""

from __future__ import annotations

import re

from textual.content import Content
from textual.markup import escape
from textual.widgets import Static

from engine.api import DisasmLine

_TOKEN = re.compile(r"(%[a-z0-9]+)|(\$?0x[0-9a-f]+|\$\d+)|([a-z_][a-z0-9_.]*)")


def highlight_operands(text: str) -> str:
    mnemonic, _, operands = text.partition(" ")
    out = [f"[b $primary]{escape(mnemonic)}[/]", " " if operands else ""]
    pos = 0
    for m in _TOKEN.finditer(operands):
        out.append(escape(operands[pos:m.start()]))
        reg, imm, sym = m.groups()
        if reg:
            out.append(f"[$secondary]{reg}[/]")
        elif imm:
            out.append(f"[$accent]{escape(imm)}[/]")
        else:
            out.append(f"[$warning]{escape(sym)}[/]")
        pos = m.end()
    out.append(escape(operands[pos:]))
    return "".join(out)


class DisassemblyView(Static):
    def show(self, lines: list[DisasmLine], pc: int, breakpoints: set[int], raw: bool = False) -> None:
        out = []
        sym_width = min(28, max((len(f"<{l.symbol}+{l.offset}>") for l in lines if l.symbol), default=0))
        for line in lines:
            at_pc = line.address == pc
            mark = "[b $error]●[/]" if line.address in breakpoints else " "
            arrow = "[b $accent]►[/]" if at_pc else " "
            where = f"<{line.symbol}+{line.offset}>" if line.symbol else ""
            addr_style = "b $accent" if at_pc else "$text-muted"
            text = f"{mark}{arrow} [{addr_style}]{line.address:016x}[/] [$secondary]{escape(where):<{sym_width}}[/] "
            if raw:
                text += f"[dim]{line.raw.hex(' '):<21}[/] "
            text += highlight_operands(line.text)
            if at_pc:
                text = f"[on $boost]{text}[/]"
            out.append(text)
        self.update(Content.from_markup("\n".join(out) if out else "[dim]no code[/]"))
