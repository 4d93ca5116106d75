"""Registers of the replayed vCPU, changed ones highlighted.

General purpose registers in as many columns as the panel's width holds (two
in the 50-column panel beside the disassembly, three or four when the panel
spans a narrow terminal), as gdb prints them (``0x`` and 16 hex digits), then
rip with its symbol, rflags decoded (``[ IF ZF ]``), segment selectors and
bases, and cr0/cr3/cr4/efer decoded. A register whose value differs from the
previous stop is shown in ``$warning`` bold. The text sits in a
:class:`RegistersPanel` (the framed ``#registers`` panel): when it is too
short for all of it, the blank separator lines go first and what still does
not fit scrolls (the panel takes the focus; arrows, page keys, the wheel).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.content import Content
from textual.widgets import Static

from engine.api import CR0_BITS, CR4_BITS, Registers, decode_bits, decode_rflags

LEFT = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp")
RIGHT = ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
GPRS = LEFT + RIGHT           # column-major: two columns are LEFT | RIGHT
CELL = 22                     # "rax 0x0123456789abcdef"
GAP = 2


class RegistersView(Static):
    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("", id=id, classes=classes)
        self.values: Registers = {}
        self.previous: Registers = {}
        self.symbol = ""

    def show(self, regs: Registers, symbol: str = "") -> None:
        self.previous, self.values = (self.values or regs), regs
        self.symbol = symbol
        self.update(self.render_registers(symbol))

    def refit(self) -> None:
        """Lay the registers out again for the panel's size (columns, blank lines)."""
        if self.values:
            self.update(self.render_registers(self.symbol))

    def on_resize(self) -> None:
        self.refit()

    def _room(self) -> tuple[int, int]:
        """Width and height there is for the text (the panel's, when inside one)."""
        frame = self.parent if isinstance(self.parent, RegistersPanel) else self
        return self.content_region.width, frame.content_region.height

    def changed(self) -> set[str]:
        return {k for k, v in self.values.items() if self.previous.get(k, v) != v}

    def render_registers(self, symbol: str = "") -> Content:
        regs, changed = self.values, self.changed()
        def reg(name: str, width: int = 16, label: int = 3) -> str:
            if name not in regs:
                return f"[dim]{name:<{label}} {'?':>{width + 2}}[/]"
            value = f"{regs[name]:#0{width + 2}x}"
            colour = "b $warning" if name in changed else "$foreground"
            return f"[$secondary]{name:<{label}}[/] [{colour}]{value}[/]"
        width = self._room()[0] or 46
        columns = max(1, min(4, (width + GAP) // (CELL + GAP)))
        rows = -(-len(GPRS) // columns)
        lines = ["  ".join(reg(GPRS[c * rows + r]) for c in range(columns) if c * rows + r < len(GPRS))
                 for r in range(rows)]
        lines.append("")
        rip = reg("rip")
        if symbol:
            rip += f" [$accent]<{symbol}>[/]"
        lines.append(rip)
        lines += self._decoded(reg('rflags', 8, 6), 17, decode_rflags(regs.get("rflags", 0)))
        for row in (("cs", "ss", "ds"), ("es", "fs", "gs")):
            segs = "  ".join(f"[$secondary]{s}[/] {regs[s]:#06x}" for s in row if s in regs)
            if segs:
                lines.append(segs)
        lines.append(f"{reg('fs_base', 16, 7)}")
        lines.append(f"{reg('gs_base', 16, 7)}")
        lines.append("")
        lines += self._decoded(reg('cr0', 8, 4), 15, decode_bits(regs.get('cr0', 0), CR0_BITS))
        lines.append(f"{reg('cr2', 16, 4)}")
        lines.append(f"{reg('cr3', 16, 4)}")
        lines += self._decoded(reg('cr4', 8, 4), 15, decode_bits(regs.get('cr4', 0), CR4_BITS))
        lines.append(f"{reg('efer', 8, 4)}")
        height = self._room()[1]
        if height and len(lines) > height:
            lines = [line for line in lines if line]
        return Content.from_markup("\n".join(lines))

    def _decoded(self, register: str, indent: int, names: list[str]) -> list[str]:
        """``register`` followed by ``[ NAMES ]``, wrapped under itself to the panel's width."""
        width = max(30, self._room()[0] or 46)
        rows: list[list[str]] = [[]]
        used = indent + 2
        for name in names:
            if rows[-1] and used + 1 + len(name) + 2 > width:
                rows.append([])
                used = indent + 2
            rows[-1].append(name)
            used += len(name) + 1
        out = []
        for k, row in enumerate(rows):
            opening = "\\[ " if k == 0 else "  "
            closing = " ]" if k == len(rows) - 1 else ""
            text = f"[$primary]{opening}{' '.join(row)}{closing}[/]"
            out.append(f"{register} {text}" if k == 0 else " " * (indent + 1) + text)
        return out


class RegistersPanel(VerticalScroll):
    """The framed, scrolling panel around a :class:`RegistersView`."""

    def compose(self) -> ComposeResult:
        yield RegistersView()

    def on_resize(self) -> None:
        # a shorter or taller panel changes which blank lines are kept
        self.query_one(RegistersView).refit()
