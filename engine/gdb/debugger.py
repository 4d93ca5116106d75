"""Debugger operations on a QEMU gdbstub: the calls a UI or a replay makes per stop.

::

    with GdbDebugger() as dbg:
        dbg.connect("127.0.0.1:1234")
        dbg.load_symbols(system_map=guest.system_map)
        dbg.add_breakpoint("do_idle")          # hardware breakpoint at the entry
        dbg.cont(timeout=60)
        state = dbg.snapshot()                 # registers, changes, disassembly, backtrace

Promises:

* Blocking by design, safe to call from any thread (one :class:`GdbProcess`
  lock serialises them); the app calls it from thread workers. Every call has
  a timeout and raises :class:`GdbError` (or a subclass) rather than hang.
* Symbols: a ``vmlinux`` with debug info when given; otherwise a System.map
  turned into a symbol-only ELF (:mod:`engine.gdb.symbols`), so gdb shows
  ``<function+offset>`` in stops, disassembly and backtraces.
* Locations: a bare symbol or address means its *exact* address
  (``*do_idle``), never "after the prologue", which is what a kernel debugger
  wants and what gdb does for symbols without line info anyway. Breakpoints
  are hardware breakpoints by default: on QEMU's gdbstub they are the reliable
  kind for kernel code. A write watchpoint that gdb could only emulate in
  software (single-stepping the whole machine) is refused.
* Memory reads by virtual address (the current CR3) or by guest physical
  address (QEMU's ``Qqemu.PhyMemMode`` packet, switched back in ``finally``
  and with gdb's memory cache flushed on both sides). Unreadable memory raises
  :class:`UsageError` naming the address.
* Registers come back as ``{name: int}`` with gdb's ``eflags`` renamed
  ``rflags`` (see :data:`REGISTERS`); :meth:`snapshot` adds decoded flags and
  the names that changed since the previous stop.

Reverse execution, the contract with the replay layer:

* :meth:`reverse_stepi` and :meth:`reverse_continue` pass ``reverse-stepi`` /
  ``reverse-continue`` through to QEMU, which implements them only in replay
  mode with a snapshot in the replay's VM-state image. Anywhere else gdb
  refuses at once and :class:`GdbCommandError` carries gdb's message
  ("Target remote does not support this command.").
* Each has a timeout (default :data:`REVERSE_TIMEOUT`). On timeout the target
  is interrupted and :class:`GdbTimeoutError` is raised; the replay is then at
  an unspecified icount, or wedged: the caller must treat it as lost (shut
  that QEMU down and restore a checkpoint).
* Measured here (QEMU 10.0.2, gdb 13.1, ``q35,hpet=off``, replay started with
  ``rrsnapshot`` and ``-S``): each ``reverse-stepi`` replays from the
  snapshot, so it costs what replaying that distance costs: 6-40 ms a few
  instructions after the snapshot, 5-9 s at ``start_kernel`` 13 s of replay
  later. Registers after it matched the forward run exactly. But about one
  ``reverse-stepi`` in 90, and one ``reverse-continue`` in two, never
  returned, and the stub then ignored ``-exec-interrupt`` as well.
* The engine-level route does not depend on QEMU's reverse debugging: the
  replay layer restores the nearest checkpoint and runs to the stop before
  (``engine.debugger``: an icount plus a few stepi) with QMP ``replay-break``,
  then calls :meth:`invalidate` (QEMU's state
  changed behind gdb's back: registers and memory caches must be re-read) and
  :meth:`snapshot`. Stepping forward from there uses :meth:`stepi`.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from engine.api import (
    CR0_BITS,
    CR4_BITS,
    Breakpoint,
    BreakpointKind,
    DisasmLine,
    Frame,
    StopEvent,
    StopReason,
    decode_bits,
    decode_rflags,
)
from engine.errors import GdbCommandError, GdbError, UsageError
from engine.gdb.process import GdbProcess, MiStop, mi_quote
from engine.gdb.symbols import SymbolTable, load_system_map, symbol_file_for

TARGET_ARCH = "i386:x86-64"
CONNECT_TIMEOUT = 20.0
STEP_TIMEOUT = 30.0
REVERSE_TIMEOUT = 60.0
SYMBOLS_TIMEOUT = 300.0   # a vmlinux with full DWARF takes gdb a while

GENERAL_REGISTERS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                     "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
SEGMENT_REGISTERS = ("cs", "ss", "ds", "es", "fs", "gs")
# What a UI shows, in display order, under our names. QEMU's x86-64 target
# description has all of them; ones a stub lacks are simply left out.
REGISTERS = (GENERAL_REGISTERS + ("rip", "rflags") + SEGMENT_REGISTERS
             + ("fs_base", "gs_base", "k_gs_base", "cr0", "cr2", "cr3", "cr4", "cr8", "efer"))
_GDB_NAME = {"rflags": "eflags"}
_OUR_NAME = {v: k for k, v in _GDB_NAME.items()}

_IDENT = re.compile(r"^[A-Za-z_$][\w$.]*$")
_NUMBER = re.compile(r"^(0[xX][0-9a-fA-F]+|\d+)$")
_WATCH_TYPES = {1: "unsigned char", 2: "unsigned short", 4: "unsigned int", 8: "unsigned long"}
_MAX_INSN = 15                     # longest x86 instruction, bytes
_CONNECT_RETRY = 0.1
_LOWEST_CODE = 0x1000
_MAX_BACKTRACK = 4096              # disassemble from the symbol start if this close


# --------------------------------------------------------------------------
# What a stop looks like
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class GdbStop:
    """A parsed ``*stopped`` record.

    ``reason`` is gdb's (``breakpoint-hit``, ``watchpoint-trigger``,
    ``end-stepping-range``, ``function-finished``, ``signal-received``,
    ``no-history``, ...) or ``""`` when gdb gave none (the stop on attach).
    """

    reason: str
    pc: int
    function: str = ""
    signal: str = ""
    breakpoint: int | None = None
    watch_expression: str = ""
    old_value: str | None = None
    new_value: str | None = None
    reverse: bool = False
    seq: int = 0
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_mi(cls, stop: MiStop, *, reverse: bool = False,
                default_reason: str = "") -> "GdbStop":
        """``default_reason`` stands in when gdb gives none: it does so when a
        ``finish`` out of a function without debug info completes."""
        p = stop.payload
        frame = p.get("frame") or {}
        func = frame.get("func") or ""
        wpt = p.get("wpt") or p.get("hw-rwpt") or p.get("hw-awpt") or {}
        value = p.get("value") or {}
        bkptno = p.get("bkptno") or wpt.get("number")
        return cls(
            reason=str(p.get("reason") or default_reason),
            pc=_int(frame.get("addr"), 0),
            function="" if func == "??" else func,
            signal=str(p.get("signal-name") or ""),
            breakpoint=_int(bkptno, None),
            watch_expression=str(wpt.get("exp") or ""),
            old_value=value.get("old"),
            new_value=value.get("new", value.get("value")),
            reverse=reverse,
            seq=stop.seq,
            raw=dict(p),
        )

    @property
    def stop_reason(self) -> StopReason:
        """The facade's :class:`StopReason` for this stop."""
        r = self.reason
        if r == "breakpoint-hit":
            return StopReason.BREAKPOINT
        if "watchpoint" in r:
            return StopReason.WATCHPOINT
        if r in ("end-stepping-range", "function-finished", "location-reached"):
            return StopReason.STEP
        if r == "no-history":
            return StopReason.START if self.reverse else StopReason.END
        if r.startswith("exited"):
            return StopReason.END
        return StopReason.SIGNAL

    def describe(self) -> str:
        """A short line for a status bar: ``breakpoint 2, do_idle``."""
        where = self.function or f"{self.pc:#x}"
        r = self.reason
        if r == "breakpoint-hit":
            return f"breakpoint {self.breakpoint}, {where}"
        if "watchpoint" in r:
            change = ""
            if self.old_value is not None:
                change = f" ({self.old_value} -> {self.new_value})"
            elif self.new_value is not None:
                change = f" (= {self.new_value})"
            return f"watchpoint {self.breakpoint}: {self.watch_expression}{change}, at {where}"
        if r == "signal-received":
            return f"{self.signal or 'signal'}, at {where}"
        if r == "no-history":
            return f"{'start' if self.reverse else 'end'} of the replay history, at {where}"
        return f"{r.replace('-', ' ') if r else 'stopped'}, at {where}"

    def to_event(self, icount: int) -> StopEvent:
        """The facade's :class:`StopEvent`; the replay layer knows the icount."""
        return StopEvent(self.stop_reason, icount, self.pc, self.describe())


@dataclass(frozen=True)
class StopState:
    """Everything a UI shows after a stop, from one :meth:`GdbDebugger.snapshot`."""

    stop: GdbStop | None
    registers: dict[str, int]
    changed: frozenset[str]          # register names that differ from the previous stop
    pc: int
    symbol: str                      # "" when unknown
    offset: int
    flags: tuple[str, ...]           # decoded rflags
    cr0_flags: tuple[str, ...]
    cr4_flags: tuple[str, ...]
    disassembly: tuple[DisasmLine, ...]
    backtrace: tuple[Frame, ...]

    @property
    def pc_index(self) -> int | None:
        """Index of the PC's line in :attr:`disassembly`."""
        for i, line in enumerate(self.disassembly):
            if line.address == self.pc:
                return i
        return None

    @property
    def location(self) -> str:
        if not self.symbol:
            return f"{self.pc:#x}"
        return f"{self.symbol}+{self.offset:#x}" if self.offset else self.symbol


def _int(value: Any, default: Any) -> Any:
    if value is None:
        return default
    try:
        return int(str(value), 0)
    except ValueError:
        return default


# --------------------------------------------------------------------------
# The debugger
# --------------------------------------------------------------------------

class GdbDebugger:
    """A gdb session attached to one QEMU gdbstub. See the module docstring."""

    def __init__(self, gdb: GdbProcess | None = None, *,
                 step_timeout: float = STEP_TIMEOUT) -> None:
        self._own = gdb is None
        self.gdb = gdb if gdb is not None else GdbProcess()
        self.step_timeout = step_timeout
        self.symbols: SymbolTable | None = None
        self.symbol_file: Path | None = None
        self._reg_numbers: dict[str, int] = {}
        self._cur_seq: int | None = None
        self._cur_regs: dict[str, int] = {}
        self._prev_regs: dict[str, int] = {}
        self._connected = False
        self._last_reverse = False      # the direction of the last execution command
        self._last_gdbstop: GdbStop | None = None
        self._launcher: threading.Thread | None = None
        self._launch_error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> "GdbDebugger":
        self._ensure_launched()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start_launch(self, *, vmlinux: str | Path | None = None,
                     system_map: str | Path | None = None) -> None:
        """Start gdb (and load symbols, when given) in a background thread, so
        its start-up (0.1-0.4 s here) overlaps the caller's work, e.g. a
        restore. :meth:`connect`, :meth:`load_symbols` and ``with`` wait for
        it and raise its error if it failed; :meth:`close` waits for it too,
        so no gdb is left running. Does nothing if gdb is started already."""
        if not self._own or self.gdb.pid is not None or self._launcher is not None:
            return

        def run() -> None:
            try:
                self.gdb.launch()
                if vmlinux is not None or system_map is not None:
                    self.load_symbols(vmlinux=vmlinux, system_map=system_map)
            except BaseException as exc:  # noqa: BLE001 - raised by the next call
                self._launch_error = exc

        self._launcher = threading.Thread(target=run, name="sbtui-gdb-launch", daemon=True)
        self._launcher.start()

    def _ensure_launched(self) -> None:
        launcher = self._launcher
        if launcher is not None:
            if launcher is not threading.current_thread():
                launcher.join()   # bounded: every step of a launch has a timeout
                self._launcher = None
                err, self._launch_error = self._launch_error, None
                if err is not None:
                    raise err
            return
        if self._own and self.gdb.pid is None:
            self.gdb.launch()

    def close(self, timeout: float = 5.0) -> None:
        """Shut gdb down if this debugger started it (it detaches from QEMU)."""
        if self._launcher is not None and self._launcher is not threading.current_thread():
            self._launcher.join()
            self._launcher = None
        if self._own:
            self.gdb.shutdown(timeout)

    # -- attaching ---------------------------------------------------------

    def connect(self, target: str, timeout: float = CONNECT_TIMEOUT) -> GdbStop:
        """Attach to a gdbstub: ``HOST:PORT``, ``tcp:HOST:PORT`` (QEMU's ``-gdb``
        spelling works too) or the path of a unix socket. Returns the stop."""
        self._ensure_launched()
        spec = _remote_spec(target)
        deadline = time.monotonic() + timeout
        with self.gdb.lock:
            self.gdb.command(f"-gdb-set architecture {TARGET_ARCH}")
            before = self.gdb.stop_seq
            while True:
                # -target-select takes its argument verbatim (no MI quoting).
                try:
                    self.gdb.command(f"-target-select remote {spec}",
                                     timeout=max(0.1, deadline - time.monotonic()))
                    break
                except GdbCommandError as exc:
                    # QEMU may not be listening yet right after it was started.
                    refused = "refused" in (exc.gdb_message or "").lower()
                    if not refused or time.monotonic() + _CONNECT_RETRY >= deadline:
                        raise GdbCommandError(
                            f"cannot attach to the gdbstub at {spec}: {exc.gdb_message}",
                            command=exc.command, gdb_message=exc.gdb_message) from None
                    time.sleep(_CONNECT_RETRY)
            stop = self.gdb.wait_for_stop(before, max(0.1, deadline - time.monotonic()),
                                          command=f"attaching to {spec}")
            self._connected = True
            self._reg_numbers = {}
            self.invalidate()
            return GdbStop.from_mi(stop)

    def load_symbols(self, *, vmlinux: str | Path | None = None,
                     system_map: str | Path | None = None, offset: int = 0,
                     timeout: float = SYMBOLS_TIMEOUT) -> Path:
        """Load kernel symbols: ``vmlinux`` (with debug info) when given, else a
        System.map through a symbol ELF. ``offset`` is a KASLR slide (0 with
        ``nokaslr``). Returns the file gdb loaded."""
        self._ensure_launched()
        if vmlinux is not None:
            path = Path(vmlinux)
            if not path.is_file():
                raise UsageError(f"vmlinux {path} does not exist")
            table = None
        elif system_map is not None:
            table = load_system_map(system_map)
            if offset:
                from engine.gdb.symbols import Symbol
                table = SymbolTable(Symbol(s.address + offset, s.type, s.name, s.size)
                                    for s in table.symbols)
            path = symbol_file_for(system_map)
        else:
            raise UsageError("load_symbols needs a vmlinux or a System.map")
        with self.gdb.lock:
            # Before a connect gdb would guess the architecture from the file.
            self.gdb.command(f"-gdb-set architecture {TARGET_ARCH}")
            if offset:
                self.gdb.console(f"symbol-file -o {offset:#x} {path}", timeout=timeout)
            else:
                self.gdb.command(f"-file-symbol-file {mi_quote(str(path))}", timeout=timeout)
        self.symbols = table
        self.symbol_file = path
        return path

    def invalidate(self) -> None:
        """Forget what gdb and we cached about the target (after QEMU's state
        changed behind gdb's back, e.g. a checkpoint restore or replay-break)."""
        with self.gdb.lock:
            for cmd in ("maintenance flush register-cache", "maintenance flush dcache"):
                try:
                    self.gdb.console(cmd)
                except GdbCommandError:
                    pass
            self._cur_seq = None

    # -- registers ---------------------------------------------------------

    def register_names(self) -> list[str]:
        """The names the target offers, in gdb's numbering (ours for eflags)."""
        return list(self._numbers())

    def _numbers(self) -> dict[str, int]:
        if not self._reg_numbers:
            res = self.gdb.command("-data-list-register-names")
            names = res.payload.get("register-names") or []
            self._reg_numbers = {_OUR_NAME.get(n, n): i for i, n in enumerate(names) if n}
        return self._reg_numbers

    def registers(self, names: Sequence[str] = REGISTERS) -> dict[str, int]:
        """``{name: value}`` for ``names`` the target has (see :data:`REGISTERS`)."""
        numbers = self._numbers()
        wanted = [(n, numbers[n]) for n in names if n in numbers]
        if not wanted:
            return {}
        res = self.gdb.command("-data-list-register-values --skip-unavailable x "
                               + " ".join(str(num) for _, num in wanted))
        by_number = {num: name for name, num in wanted}
        out: dict[str, int] = {}
        values = {int(v["number"]): v.get("value") for v in res.payload.get("register-values", [])}
        for name, num in wanted:  # keep display order
            value = _int(values.get(num), None)
            if value is not None:
                out[by_number[num]] = value
        return out

    def pc(self) -> int:
        regs = self.registers(("rip",))
        if "rip" not in regs:
            raise GdbError("the target did not report rip")
        return regs["rip"]

    # -- symbols and expressions ------------------------------------------

    def evaluate(self, expression: str) -> str:
        """gdb's value of ``expression`` as text. ``UsageError`` when gdb cannot."""
        try:
            res = self.gdb.command(f"-data-evaluate-expression {mi_quote(expression)}")
        except GdbCommandError as exc:
            raise UsageError(f"cannot evaluate {expression!r}: {exc.gdb_message}") from None
        return str(res.payload.get("value", ""))

    def lookup_symbol(self, name: str) -> int:
        """Address of a symbol, or the value of an expression (``$rsp+8``)."""
        if self.symbols is not None:
            address = self.symbols.address_of(name)
            if address is not None:
                return address
        expr = f"&{_symbol_ref(name)}" if _IDENT.match(name) else f"({name})"
        text = self.evaluate(f"(unsigned long){expr}")
        value = _int(text.split()[0] if text else None, None)
        if value is None:
            raise UsageError(f"{name!r} is not a known symbol or an address expression "
                             f"(gdb says {text!r})")
        return value

    def symbolize(self, address: int) -> tuple[str, int]:
        """``(symbol, offset)`` for an address; ``("", 0)`` when unknown."""
        if self.symbols is not None:
            return self.symbols.symbolize(address)
        text = self.gdb.console(f"info symbol {address:#x}")
        m = re.match(r"^(\S+)(?: \+ (\d+))? in section", text.strip())
        if m is None:
            return ("", 0)
        return (m.group(1), int(m.group(2) or 0))

    # -- memory ------------------------------------------------------------

    def read_memory(self, address: int, length: int, *, physical: bool = False) -> bytes:
        """``length`` bytes at a virtual (current CR3) or guest physical address."""
        if length < 0 or address < 0:
            raise UsageError(f"bad memory range: {length} bytes at {address:#x}")
        if length == 0:
            return b""
        kind = "physical" if physical else "virtual"
        with self.gdb.lock:
            if physical:
                self._physical_mode(True)
            try:
                res = self.gdb.command(f"-data-read-memory-bytes {address:#x} {length}")
            except GdbCommandError as exc:
                raise UsageError(f"cannot read {length} bytes at {kind} address {address:#x}: "
                                 f"{exc.gdb_message}") from None
            finally:
                if physical:
                    self._physical_mode(False)
        data = bytearray()
        for block in sorted(res.payload.get("memory", []), key=lambda b: int(b["begin"], 16)):
            begin = int(block["begin"], 16) + int(block.get("offset", "0"), 16)
            if begin != address + len(data):
                break
            data += bytes.fromhex(block.get("contents", ""))
        if len(data) < length:
            raise UsageError(f"only {len(data)} of {length} bytes at {kind} address "
                             f"{address:#x} are readable")
        return bytes(data[:length])

    def _physical_mode(self, on: bool) -> None:
        # gdb caches target memory by address; a virtual and a physical
        # address can be equal numbers for different bytes.
        self.gdb.console("maintenance flush dcache")
        answer = self.gdb.console(f"maintenance packet Qqemu.PhyMemMode:{1 if on else 0}")
        if 'received: "OK"' not in answer:
            raise GdbError("the gdbstub does not support physical memory access "
                           "(QEMU's Qqemu.PhyMemMode packet); it answered: "
                           + (answer.strip() or "nothing"))

    # -- disassembly and backtrace -----------------------------------------

    def disassemble(self, address: int | None = None, count: int = 12,
                    before: int = 4) -> list[DisasmLine]:
        """``count`` instructions from ``address`` (default: the PC), preceded by up
        to ``before`` instructions that end there. x86 cannot be decoded
        backwards, so "before" comes from decoding forward from the containing
        symbol's start when that is near; otherwise it is left empty."""
        pc = self.pc() if address is None else address
        start = pc
        if before > 0:
            _, off = self.symbolize(pc)
            if 0 < off <= _MAX_BACKTRACK:
                start = pc - off
        end = pc + count * _MAX_INSN
        try:
            lines = self._disasm(start, end)
        except GdbCommandError:
            try:  # the range runs into unmapped memory: at least the instruction at pc
                lines = self._disasm(pc, pc + 1)
            except GdbCommandError as exc:
                raise UsageError(f"cannot disassemble at {pc:#x}: {exc.gdb_message}") from None
        idx = next((i for i, line in enumerate(lines) if line.address == pc), None)
        if idx is None:  # started mid-instruction: decode from pc only
            lines = self._disasm(pc, end)
            idx = 0
        return lines[max(0, idx - before):idx + count]

    def _disasm(self, start: int, end: int) -> list[DisasmLine]:
        res = self.gdb.command(f"-data-disassemble -s {start:#x} -e {end:#x} -- 2")
        out = []
        for insn in res.payload.get("asm_insns", []):
            func = insn.get("func-name") or ""
            out.append(DisasmLine(
                address=int(insn["address"], 16),
                symbol=func,
                offset=_int(insn.get("offset"), 0) if func else 0,
                raw=bytes.fromhex(insn.get("opcodes", "").replace(" ", "")),
                text=insn.get("inst", ""),
            ))
        return out

    def backtrace(self, limit: int = 16) -> list[Frame]:
        """Up to ``limit`` frames. Without debug info gdb unwinds by prologue
        analysis, so outer frames of kernel code may be wrong; the list stops
        where gdb's unwinding fails, or at the first outer frame without a
        symbol (or below 0x1000): past that, frames are guesses."""
        try:
            res = self.gdb.command(f"-stack-list-frames 0 {max(0, limit - 1)}")
        except GdbCommandError:
            pc = self.pc()
            return [Frame(0, pc, self.symbolize(pc)[0])]
        frames: list[Frame] = []
        for item in res.payload.get("stack", []):
            f = item.get("frame", item) if isinstance(item, dict) else {}
            func = f.get("func") or ""
            pc = _int(f.get("addr"), 0)
            func = "" if func == "??" else func
            if frames and (pc < _LOWEST_CODE or not func):
                break  # unwound into garbage: outer frames without a symbol are guesses
            frames.append(Frame(level=_int(f.get("level"), len(frames)),
                                pc=pc,
                                function=func,
                                file=f.get("fullname") or f.get("file") or "",
                                line=_int(f.get("line"), 0)))
        return frames

    # -- everything for one stop -------------------------------------------

    def snapshot(self, *, disasm_count: int = 12, disasm_before: int = 4,
                 backtrace_limit: int = 8) -> StopState:
        """Registers (with the names that changed since the previous stop),
        the PC's symbol, disassembly around the PC and a backtrace."""
        with self.gdb.lock:
            last = self.gdb.last_stop
            regs = self.registers()
            seq = self.gdb.stop_seq
            if seq != self._cur_seq:
                self._prev_regs, self._cur_regs, self._cur_seq = self._cur_regs, regs, seq
            else:
                self._cur_regs = regs
            prev = self._prev_regs
            changed = frozenset(k for k, v in regs.items() if prev and prev.get(k) != v)
            pc = regs.get("rip", 0)
            try:
                disasm = tuple(self.disassemble(pc, disasm_count, disasm_before))
            except UsageError:
                disasm = ()
            here = next((d for d in disasm if d.address == pc and d.symbol), None)
            symbol, offset = (here.symbol, here.offset) if here else self.symbolize(pc)
            frames = tuple(self.backtrace(backtrace_limit)) if backtrace_limit else ()
        stop = None
        if last is not None:
            mine = self._last_gdbstop
            stop = mine if mine is not None and mine.seq == last.seq else \
                GdbStop.from_mi(last, reverse=self._last_reverse)
        return StopState(
            stop=stop, registers=regs, changed=changed, pc=pc, symbol=symbol, offset=offset,
            flags=tuple(decode_rflags(regs.get("rflags", 0))),
            cr0_flags=tuple(decode_bits(regs.get("cr0", 0), CR0_BITS)),
            cr4_flags=tuple(decode_bits(regs.get("cr4", 0), CR4_BITS)),
            disassembly=disasm, backtrace=frames)

    # -- execution ---------------------------------------------------------

    def _exec(self, cmd: str, timeout: float | None, reverse: bool = False,
              default_reason: str = "end-stepping-range") -> GdbStop:
        self._last_reverse = reverse
        stop = self.gdb.execute(cmd, self.step_timeout if timeout is None else timeout)
        self._last_gdbstop = GdbStop.from_mi(stop, reverse=reverse,
                                             default_reason=default_reason)
        return self._last_gdbstop

    def stepi(self, timeout: float | None = None) -> GdbStop:
        return self._exec("-exec-step-instruction", timeout)

    def nexti(self, timeout: float | None = None) -> GdbStop:
        return self._exec("-exec-next-instruction", timeout)

    def step(self, timeout: float | None = None) -> GdbStop:
        """Source-line step. Without line info gdb runs to the end of the function."""
        return self._exec("-exec-step", timeout)

    def next(self, timeout: float | None = None) -> GdbStop:
        return self._exec("-exec-next", timeout)

    def finish(self, timeout: float | None = None) -> GdbStop:
        """Run to the return address of the current frame (gdb's unwinding)."""
        return self._exec("-exec-finish", timeout, default_reason="function-finished")

    def cont(self, timeout: float | None = None) -> GdbStop:
        """Continue until a stop. ``timeout=None`` waits until :meth:`interrupt`
        (from another thread), a breakpoint, gdb's exit or the target's end."""
        self._last_reverse = False
        self._last_gdbstop = GdbStop.from_mi(self.gdb.execute("-exec-continue", timeout))
        return self._last_gdbstop

    def resume(self) -> int:
        """Continue without waiting; pass the result to :meth:`wait`."""
        self._last_reverse = False
        return self.gdb.resume("-exec-continue")

    def wait(self, token: int, timeout: float | None) -> GdbStop:
        return GdbStop.from_mi(self.gdb.wait_for_stop(token, timeout, "-exec-continue"))

    def interrupt(self, timeout: float = 5.0) -> GdbStop | None:
        stop = self.gdb.interrupt(timeout)
        return GdbStop.from_mi(stop) if stop is not None else None

    @property
    def running(self) -> bool:
        return self.gdb.running

    def reverse_stepi(self, timeout: float = REVERSE_TIMEOUT) -> GdbStop:
        return self._exec("-exec-step-instruction --reverse", timeout, reverse=True)

    def reverse_continue(self, timeout: float = REVERSE_TIMEOUT) -> GdbStop:
        return self._exec("-exec-continue --reverse", timeout, reverse=True)

    # -- breakpoints and watchpoints ---------------------------------------

    def add_breakpoint(self, location: str | int, *, hardware: bool = True,
                       temporary: bool = False, condition: str | None = None) -> Breakpoint:
        """A breakpoint at a symbol, an address (int or ``0x...``) or any gdb
        location (``*expr``, ``file.c:123`` with a vmlinux)."""
        spec = _location(location)
        args = ["-break-insert"]
        if hardware:
            args.append("-h")
        if temporary:
            args.append("-t")
        if condition:
            args += ["-c", mi_quote(condition)]
        args.append(mi_quote(spec))
        try:
            res = self.gdb.command(" ".join(args))
        except GdbCommandError as exc:
            raise UsageError(f"cannot set a breakpoint at {location!r}: {exc.gdb_message}") from None
        return _to_breakpoint(res.payload.get("bkpt") or {})

    def add_watchpoint(self, target: str | int, kind: BreakpointKind = BreakpointKind.WATCH,
                       length: int = 8) -> Breakpoint:
        """A hardware watchpoint on ``length`` bytes at an address or symbol, or on
        any lvalue expression (``target`` that is neither)."""
        if kind is BreakpointKind.BREAKPOINT:
            raise UsageError("add_watchpoint needs a watch kind, not BREAKPOINT")
        if isinstance(target, int) or _NUMBER.match(str(target)):
            address = int(str(target), 0) if not isinstance(target, int) else target
            ctype = _WATCH_TYPES.get(length)
            if ctype is None:
                raise UsageError(f"watch length must be 1, 2, 4 or 8 bytes, not {length}")
            expr = f"*({ctype} *){address:#x}"
        elif _IDENT.match(target):
            ctype = _WATCH_TYPES.get(length)
            if ctype is None:
                raise UsageError(f"watch length must be 1, 2, 4 or 8 bytes, not {length}")
            expr = f"*({ctype} *)&{_symbol_ref(target)}"
        else:
            expr = target
        flag = {BreakpointKind.WATCH: "", BreakpointKind.RWATCH: "-r ",
                BreakpointKind.AWATCH: "-a "}[kind]
        with self.gdb.lock:
            try:
                res = self.gdb.command(f"-break-watch {flag}{mi_quote(expr)}")
            except GdbCommandError as exc:
                raise UsageError(f"cannot watch {target!r}: {exc.gdb_message}") from None
            wpt = (res.payload.get("wpt") or res.payload.get("hw-rwpt")
                   or res.payload.get("hw-awpt") or {})
            number = _int(wpt.get("number"), None)
            if number is None:
                raise GdbError(f"gdb set a watchpoint on {expr!r} but did not say which")
            info = self._breakpoint_info(number)
            if info is not None and info.get("type") == "watchpoint":
                # A software watchpoint single-steps the whole machine.
                self.gdb.command(f"-break-delete {number}")
                raise UsageError(f"gdb could watch {expr!r} only in software, which "
                                 f"single-steps the guest; watch a memory location of "
                                 f"1, 2, 4 or 8 bytes instead")
            bp = _to_breakpoint(info or {"number": str(number), "type": kind.value,
                                         "exp": expr, "enabled": "y"})
        try:
            address = self.lookup_symbol(f"&({expr})")
        except UsageError:
            address = 0
        return Breakpoint(bp.number, kind, str(target) if not isinstance(target, int)
                          else f"{target:#x}", address, bp.enabled, bp.hits, length)

    def _breakpoint_info(self, number: int) -> dict | None:
        for bkpt in self._break_table():
            if _int(bkpt.get("number"), None) == number:
                return bkpt
        return None

    def _break_table(self) -> list[dict]:
        res = self.gdb.command("-break-list")
        body = (res.payload.get("BreakpointTable") or {}).get("body") or []
        out = []
        for item in body:
            if isinstance(item, dict) and "bkpt" in item and isinstance(item["bkpt"], dict):
                item = item["bkpt"]
            if isinstance(item, dict):
                out.append(item)
        return out

    def breakpoints(self) -> list[Breakpoint]:
        return [_to_breakpoint(b) for b in self._break_table()]

    def delete_breakpoint(self, number: int) -> None:
        self.gdb.command(f"-break-delete {int(number)}")

    def delete_all_breakpoints(self) -> None:
        with self.gdb.lock:
            numbers = [b.number for b in self.breakpoints()]
            if numbers:
                self.gdb.command("-break-delete " + " ".join(map(str, numbers)))

    def enable_breakpoint(self, number: int, enabled: bool = True) -> None:
        self.gdb.command(f"-break-{'enable' if enabled else 'disable'} {int(number)}")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def _remote_spec(target: str) -> str:
    t = target.strip()
    if t.startswith("tcp:") and t.count(":") == 2:
        return t[len("tcp:"):]
    if t.startswith("unix:"):  # QEMU's -gdb unix:path=P,server=on,...
        rest = t[len("unix:"):].split(",")[0]
        t = rest[len("path="):] if rest.startswith("path=") else rest
    if any(c.isspace() for c in t):
        raise UsageError(f"gdbstub address {target!r}: gdb cannot take spaces here")
    if t.startswith("/") or t.startswith("."):
        if not Path(t).exists():
            raise UsageError(f"no gdbstub socket at {t}")
        return t
    if ":" not in t:
        raise UsageError(f"gdbstub address {target!r}: expected HOST:PORT or a socket path")
    return t


def _symbol_ref(name: str) -> str:
    # gdb's C parser reads "foo.isra.0" as member access; quoting makes it a name.
    return f"'{name}'" if "." in name else name


def _location(location: str | int) -> str:
    if isinstance(location, int):
        return f"*{location:#x}"
    loc = location.strip()
    if not loc:
        raise UsageError("empty breakpoint location")
    if _NUMBER.match(loc):
        return f"*{int(loc, 0):#x}"
    if _IDENT.match(loc):
        return f"*{_symbol_ref(loc)}"
    return loc


_KIND_BY_TYPE = {
    "breakpoint": BreakpointKind.BREAKPOINT,
    "hw breakpoint": BreakpointKind.BREAKPOINT,
    "hw watchpoint": BreakpointKind.WATCH,
    "watchpoint": BreakpointKind.WATCH,
    "read watchpoint": BreakpointKind.RWATCH,
    "acc watchpoint": BreakpointKind.AWATCH,
}


def _to_breakpoint(b: dict) -> Breakpoint:
    kind = _KIND_BY_TYPE.get(str(b.get("type", "")), BreakpointKind.BREAKPOINT)
    location = b.get("original-location") or b.get("exp") or b.get("what") or ""
    return Breakpoint(
        number=_int(b.get("number"), 0),
        kind=kind,
        location=str(location),
        address=_int(b.get("addr"), 0),
        enabled=b.get("enabled", "y") == "y",
        hits=_int(b.get("times"), 0),
    )


__all__ = ["GdbDebugger", "GdbStop", "StopState", "REGISTERS", "GENERAL_REGISTERS",
           "SEGMENT_REGISTERS", "TARGET_ARCH"]
