"""gdb for whole-machine debugging: the process owner and the debugger operations.

* :class:`GdbProcess` (``engine.gdb.process``) owns one gdb process and speaks
  gdb/MI with it: bounded waits, parsed records, errors from the
  :class:`~engine.errors.GdbError` tree, nothing left running.
* :class:`GdbDebugger` (``engine.gdb.debugger``) attaches it to a QEMU
  gdbstub and offers what a UI or a replay needs: registers, virtual and
  physical memory, disassembly, stepping, breakpoints, watchpoints, reverse
  execution pass-through and :meth:`GdbDebugger.snapshot` per stop.
* ``engine.gdb.symbols`` turns a System.map into a symbol-only ELF for gdb.

Blocking by design; never imports Textual.
"""

from engine.gdb.debugger import REGISTERS, GdbDebugger, GdbStop, StopState
from engine.gdb.process import GdbProcess, MiResult, MiStop, mi_quote, spawn
from engine.gdb.symbols import (
    Symbol,
    SymbolTable,
    elf_bytes,
    load_system_map,
    parse_system_map,
    symbol_file_for,
    write_symbol_elf,
)

__all__ = [
    "REGISTERS", "GdbDebugger", "GdbProcess", "GdbStop", "MiResult", "MiStop", "StopState",
    "Symbol", "SymbolTable", "elf_bytes", "load_system_map", "mi_quote", "parse_system_map",
    "spawn", "symbol_file_for", "write_symbol_elf",
]
