"""A deterministic fake engine session, for the app's tests, screenshots and demos.

:class:`FakeSession` implements :class:`engine.api.Session` without QEMU, gdb or
files: a synthetic recording of ``checkpoints`` intervals of a 4 GiB x86_64
guest, whose dirty pages have structure (a boot phase that zeroes memory, an
idle phase with a few hot kernel pages, workload phases that sweep anonymous
memory and the page cache), markers at phase changes and a Linux-like console.
Its :class:`FakeDebugger` replays a periodic synthetic kernel execution: the
program counter, registers, memory and backtrace are pure functions of the
instruction count, so ``stepi`` then ``reverse_stepi`` gives back exactly the
same state, and breakpoints/watchpoints hit at the same places every time.

Everything is a function of the constructor's arguments (no clock, no global
random state). ``live=True`` adds a :class:`FakeLiveControl` and a thread that
appends a checkpoint every ``live_interval`` seconds while "running";
``close()`` stops it. ``latency`` makes replay operations sleep (in the
calling thread worker) so progress can be seen; tests keep it at 0.
``fail_replay`` makes ``start_replay`` raise, to exercise error paths.
``go_live`` returns a new live fake session (kept in ``golive_sessions``,
closed with this one); ``fail_golive`` makes it raise.
The recording also implements :class:`engine.api.AnalysisView`
(``sbtui/fake_analysis.py``): ``analyses`` are stored as if run before,
``fail_intervals`` fail in every simulation, and ``latency`` paces
``simulate`` too.
"""

from __future__ import annotations

import asyncio
import threading
import time
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, replace
from random import Random

from engine.api import (
    Breakpoint, BreakpointKind, CheckpointRow, DisasmLine, Frame, GuestState,
    MachineInfo, Marker, PageMarks, ProgressCallback, RamRegion, RecordingEvent,
    RecordingStatus, ReplayProgress, StopEvent, StopReason, Unsubscribe,
)
from engine.errors import NotFoundError, ReplayError, UsageError
from sbtui.fake_analysis import FakeAnalyses

MASK64 = (1 << 64) - 1
GiB = 1 << 30
INTERVAL_NS = 100_000_000          # one checkpoint per 100 ms of guest time


def mix64(*values: int) -> int:
    """splitmix64 over the values: a cheap, stable hash."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (v & MASK64)) * 0xBF58476D1CE4E5B9 & MASK64
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & MASK64
        x ^= x >> 31
    return x


# --------------------------------------------------------------------------
# The synthetic recording
# --------------------------------------------------------------------------

# (first checkpoint fraction, name, marker text)
PHASES = (
    (0.00, "boot", "boot: kernel started"),
    (0.03, "idle", "sbmark: init done, shell ready"),
    (0.15, "build", "sbmark: workload kernel-build start"),
    (0.40, "idle", "sbmark: workload kernel-build done"),
    (0.50, "memtest", "sbmark: workload memstress start"),
    (0.70, "idle", "sbmark: workload memstress done"),
    (0.85, "io", "sbmark: workload dd start"),
    (0.95, "idle", "sbmark: workload dd done"),
)


@dataclass(frozen=True)
class _Piece:
    """Part of a dirty set: range(start, stop, step), or ``count`` pages picked
    from [start, stop) with ``seed`` (materialized only when asked)."""

    start: int
    stop: int
    step: int = 1
    count: int = 0
    seed: int = 0

    def size(self) -> int:
        return self.count if self.count else len(range(self.start, self.stop, self.step))


class _Layout:
    """Where the synthetic guest keeps things, in page indices, scaled to RAM."""

    def __init__(self, pages: int):
        s = pages / (1 << 20)
        def p(x: float) -> int:
            return int(x * s)
        self.pages = pages
        self.kernel = (p(0x1000), p(0x1800))          # kernel text+data
        self.slab = (p(0x4000), p(0xC000))
        self.log = (p(0xC000), p(0xC040))              # printk ring
        self.pagecache = (p(0x20000), p(0x60000))
        self.anon = (p(0x60000), p(0xE0000))
        self.stacks = (p(0xF0000), p(0xF4000))
        self.top = (p(0xFF000), pages)                 # firmware, ACPI


class FakeRecording(FakeAnalyses):
    """Implements :class:`engine.api.RecordingView` (and ``AnalysisView``,
    see :class:`FakeAnalyses`) over synthetic data."""

    def __init__(self, checkpoints: int, ram_pages: int, seed: int, *, latency: float = 0.0,
                 fail_intervals: tuple[int, ...] = (), analyses: tuple[str, ...] = ()):
        self._seed = seed
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[RecordingEvent], None]] = []
        self._layout = _Layout(ram_pages)
        below = min(ram_pages * 4096, 2 * GiB)
        regions = [RamRegion(0, 0, below)]
        if ram_pages * 4096 > below:
            regions.append(RamRegion(below, 4 * GiB, ram_pages * 4096 - below))
        self._machine = MachineInfo(
            arch="x86_64", machine="pc-q35-10.0", cpus=2, ram_bytes=ram_pages * 4096,
            regions=tuple(regions), kernel="Linux 6.6.58-sbtui (fake)")
        self._planned = checkpoints        # how many the phase plan is laid out for
        self._rows: list[CheckpointRow] = []
        self._pieces: dict[int, list[_Piece]] = {}
        self._console: list[str] = []
        self._console_lines: list[tuple[int, str]] = []   # (icount, line)
        self._markers: list[Marker] = []
        self.state = GuestState.RECORDED
        self.rate_hz = 0.0
        self._boot_console()
        for _ in range(checkpoints):
            self._append_checkpoint()
        self._init_analyses(latency=latency, fail_intervals=fail_intervals, analyses=analyses)

    # -- generation -------------------------------------------------------
    def _phase(self, index: int) -> tuple[int, str]:
        frac = (index % self._planned) / max(1, self._planned)
        k = max(i for i, (start, _, _) in enumerate(PHASES) if start <= frac)
        return k, PHASES[k][1]

    def _spec(self, index: int) -> list[_Piece]:
        """The dirty set of interval ``index`` as sorted, disjoint pieces."""
        L = self._layout
        rng = Random(mix64(self._seed, index))
        k, phase = self._phase(index)
        pieces: list[_Piece] = []
        def scatter(region: tuple[int, int], count: int) -> None:
            lo, hi = region
            count = min(count, hi - lo)
            if count > 0:
                pieces.append(_Piece(lo, hi, count=count, seed=rng.getrandbits(32)))
        def sweep(region: tuple[int, int], width: int, pos: int, step: int = 1) -> None:
            lo, hi = region
            span = hi - lo
            width = min(width, span)
            a = lo + (pos % max(1, span - width + 1))
            pieces.append(_Piece(a, a + width, step))
        boot_len = max(1, int(0.03 * self._planned))
        if phase == "boot":
            # the kernel zeroes and touches memory front to back while booting
            chunk = L.pages // boot_len
            a = (index % self._planned) * chunk
            scatter(L.kernel, 400 + rng.randrange(200))
            lo = max(a, L.kernel[1])
            if lo < min(a + chunk, L.pages):
                pieces.append(_Piece(lo, min(a + chunk, L.top[0]), 1))
            pieces.sort(key=lambda p: p.start)
            return pieces
        scatter(L.kernel, 20 + rng.randrange(60 if phase == "idle" else 300))
        scatter(L.slab, 10 + rng.randrange(40 if phase == "idle" else 2000))
        sweep(L.log, 2 + rng.randrange(4), index)
        if phase == "build":
            sweep(L.pagecache, 1500 + rng.randrange(3000), index * 997)
            sweep(L.anon, 8000 + rng.randrange(20000), index * 7919, 2)
        elif phase == "memtest":
            sweep(L.anon, 60000 + rng.randrange(60000), index * 40503)
        elif phase == "io":
            sweep(L.pagecache, 20000 + rng.randrange(20000), index * 20011)
        else:
            scatter(L.anon, rng.randrange(50))
        scatter(L.stacks, 16 + rng.randrange(64))
        if rng.random() < 0.02:
            scatter(L.top, 3)
        return pieces

    def _append_checkpoint(self) -> CheckpointRow:
        index = len(self._rows)
        pieces = self._spec(index)
        self._pieces[index] = pieces
        dirty = sum(p.size() for p in pieces)
        rng = Random(mix64(self._seed, index, 1))
        k, phase = self._phase(index)
        prev = self._rows[-1] if self._rows else None
        ips = {"boot": 0.6e9, "idle": 0.05e9, "build": 0.9e9, "memtest": 0.8e9, "io": 0.4e9}[phase]
        icount = (prev.icount if prev else 0) + int(ips * (0.7 + 0.6 * rng.random()) * INTERVAL_NS / 1e9)
        zero = len(range(0, dirty, 9))
        dup = len(range(4, dirty, 6))
        dup_intra = dup // 3
        new = max(0, dirty - zero - dup)
        row = CheckpointRow(
            id=f"{mix64(self._seed, index, 2):016x}"[:12], index=index, icount=icount,
            guest_time_ns=(index + 1) * INTERVAL_NS,
            wall_time=1_700_000_000.0 + index * 0.125,
            downtime_ms=round(1.5 + dirty / 20000 + rng.random(), 2),
            pages_dirty=dirty, pages_new=new,
            stored_bytes=int(new * (900 + 2000 * rng.random())),
            dup_intra=dup_intra, dup_inter=dup - dup_intra, zero_pages=zero)
        self._rows.append(row)
        start = PHASES[k][0]
        if index == int(start * self._planned) and index < self._planned:
            self._markers.append(Marker(prev.icount if prev else 0, row.guest_time_ns - INTERVAL_NS, PHASES[k][2]))
            self._log(prev.icount if prev else 0, row.guest_time_ns, PHASES[k][2])
        elif index % 50 == 25:
            self._log(icount, row.guest_time_ns,
                      f"sbmark: heartbeat {index // 50} {phase} load={rng.randrange(100)}%")
        return row

    def _boot_console(self) -> None:
        for i, line in enumerate(BOOT_LOG):
            self._log(i * 40_000, i * 9_000_000, line, stamp=False)

    def _log(self, icount: int, guest_ns: int, text: str, stamp: bool = True) -> None:
        line = f"[{guest_ns / 1e9:12.6f}] {text}" if stamp else text
        self._console_lines.append((icount, line))
        self._console.append(line + "\n")

    def _materialize(self, index: int) -> array:
        out = array("I")
        for p in self._pieces[index]:
            if p.count:
                out.extend(sorted(Random(p.seed).sample(range(p.start, p.stop), p.count)))
            else:
                out.extend(range(p.start, p.stop, p.step))
        return out

    def _index(self, checkpoint_id: str) -> int:
        for row in self._rows:
            if row.id == checkpoint_id:
                return row.index
        raise NotFoundError(f"no checkpoint {checkpoint_id!r} in this recording")

    # -- RecordingView ------------------------------------------------------
    @property
    def machine(self) -> MachineInfo:
        return self._machine

    def status(self) -> RecordingStatus:
        with self._lock:
            last = self._rows[-1] if self._rows else None
            stored = self._stored_total()
            return RecordingStatus(
                state=self.state, icount=last.icount if last else 0,
                guest_time_ns=last.guest_time_ns if last else 0,
                checkpoints=len(self._rows), checkpoint_rate_hz=self.rate_hz,
                store_bytes=stored, logical_bytes=self._logical_total())

    def _stored_total(self) -> int:
        return 64 * 1024 * 1024 + sum(r.stored_bytes for r in self._rows)

    def _logical_total(self) -> int:
        return self._machine.ram_bytes + sum(r.pages_dirty for r in self._rows) * 4096

    def checkpoints(self, start: int = 0) -> list[CheckpointRow]:
        with self._lock:
            return self._rows[start:]

    def row(self, index: int) -> CheckpointRow:
        return self._rows[index]

    def dirty_pages(self, checkpoint_id: str) -> array:
        return self._materialize(self._index(checkpoint_id))

    def page_marks(self, checkpoint_id: str) -> PageMarks:
        dirty = self.dirty_pages(checkpoint_id)
        return PageMarks(zero=dirty[::9], duplicate=dirty[4::6])

    def markers(self) -> list[Marker]:
        with self._lock:
            return list(self._markers)

    def console_text(self, start: int = 0) -> str:
        with self._lock:
            return "".join(self._console)[start:]

    def console_until(self, icount: int) -> str:
        with self._lock:
            keys = [ic for ic, _ in self._console_lines]
            n = bisect_right(keys, icount)
            return "".join(line + "\n" for _, line in self._console_lines[:n])

    def subscribe(self, callback: Callable[[RecordingEvent], None]) -> Unsubscribe:
        self._subscribers.append(callback)
        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)
        return unsubscribe

    # -- live growth --------------------------------------------------------
    def _emit(self, kind: str) -> None:
        for cb in list(self._subscribers):
            cb(RecordingEvent(kind))

    def grow(self) -> CheckpointRow:
        with self._lock:
            before = len(self._console)
            row = self._append_checkpoint()
            console_changed = len(self._console) != before
        self._emit("checkpoint")
        if console_changed:
            self._emit("console")
        return row

    def append_console(self, text: str) -> None:
        with self._lock:
            self._console.append(text)
            last = self._rows[-1].icount if self._rows else 0
            for line in text.splitlines():
                self._console_lines.append((last, line))
        self._emit("console")

    def set_state(self, state: GuestState) -> None:
        self.state = state
        self._emit("state")


BOOT_LOG = [
    "SeaBIOS (version 1.16.3-debian-1.16.3-2)",
    "Booting from ROM..",
    "[    0.000000] Linux version 6.6.58-sbtui (sbtui@build) (gcc 12.2.0) #1 SMP PREEMPT_DYNAMIC",
    "[    0.000000] Command line: console=ttyS0 quiet sbtui.marker=0x510",
    "[    0.000000] BIOS-provided physical RAM map:",
    "[    0.000000] BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
    "[    0.000000] BIOS-e820: [mem 0x0000000000100000-0x000000007ffdffff] usable",
    "[    0.000000] BIOS-e820: [mem 0x0000000100000000-0x000000017fffffff] usable",
    "[    0.000000] DMI: QEMU Standard PC (Q35 + ICH9, 2009), BIOS 1.16.3 04/01/2014",
    "[    0.004211] tsc: Detected 2495.998 MHz processor",
    "[    0.031602] Memory: 3979436K/4193784K available (16384K kernel code)",
    "[    0.052100] smp: Brought up 1 node, 2 CPUs",
    "[    0.311871] Serial: 8250/16550 driver, 4 ports, IRQ sharing enabled",
    "[    0.312500] 00:05: ttyS0 at I/O 0x3f8 (irq = 4, base_baud = 115200) is a 16550A",
    "[    0.421022] Freeing unused kernel image (initmem) memory: 2728K",
    "[    0.421900] Run /init as init process",
    "sbtui guest init: mounting /proc /sys /dev",
    "sbtui guest init: marker port 0x510 ready",
]


# --------------------------------------------------------------------------
# The synthetic kernel the fake debugger replays
# --------------------------------------------------------------------------

TEXT_BASE = 0xFFFFFFFF81000000
DATA_SYMBOLS = {
    "jiffies": 0xFFFFFFFF82A05000,
    "jiffies_64": 0xFFFFFFFF82A05000,
    "linux_banner": 0xFFFFFFFF82200100,
    "init_task": 0xFFFFFFFF82A0C940,
    "per_cpu_offset": 0xFFFFFFFF82A01A00,
}
BANNER = b"Linux version 6.6.58-sbtui (sbtui@build) (gcc 12.2.0) #1 SMP PREEMPT_DYNAMIC\n\0"
STACK_TOP = 0xFFFFC90000013F58
GPR = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
       "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")

# function -> (source file, first line, instructions)
# instruction: (text, length, writes, kind, arg)
#   kind: "op", "call" (arg callee), "ret", "store" (arg data symbol),
#         "loop" (arg (back_to_index, iterations))
I = tuple
PROGRAM: dict[str, tuple[str, int, list[I]]] = {
    "do_idle": ("kernel/sched/idle.c", 260, [
        ("push   %rbp", 1, ("rsp",), "op", None),
        ("mov    %rsp,%rbp", 3, ("rbp",), "op", None),
        ("push   %rbx", 1, ("rsp",), "op", None),
        ("mov    %gs:0x1fe40,%rbx", 9, ("rbx",), "op", None),
        ("call   tick_nohz_idle_enter", 5, ("rax", "rcx"), "call", "tick_nohz_idle_enter"),
        ("mov    0x18(%rbx),%rax", 4, ("rax",), "op", None),
        ("test   $0x8,%al", 2, ("rflags",), "op", None),
        ("jne    do_idle+0x8e", 2, (), "op", None),
        ("call   cpuidle_idle_call", 5, ("rax", "rdx"), "call", "cpuidle_idle_call"),
        ("call   tick_sched_handle", 5, ("rax",), "call", "tick_sched_handle"),
        ("call   tick_nohz_idle_exit", 5, ("rax", "rcx"), "call", "tick_nohz_idle_exit"),
        ("mov    %gs:0x1fe40,%rdi", 9, ("rdi",), "op", None),
        ("call   schedule_idle", 5, ("rax", "rsi"), "call", "schedule_idle"),
        ("pop    %rbx", 1, ("rbx", "rsp"), "op", None),
        ("pop    %rbp", 1, ("rbp", "rsp"), "op", None),
        ("jmp    do_idle", 5, (), "loop", (0, 0)),
    ]),
    "tick_nohz_idle_enter": ("kernel/time/tick-sched.c", 1190, [
        ("nopl   0x0(%rax,%rax,1)", 5, (), "op", None),
        ("push   %rbx", 1, ("rsp",), "op", None),
        ("mov    $0x1,%edi", 5, ("rdi",), "op", None),
        ("call   local_irq_disable", 5, (), "call", "local_irq_disable"),
        ("mov    %gs:0x1e940,%rbx", 9, ("rbx",), "op", None),
        ("orb    $0x2,0x4c(%rbx)", 4, ("rflags",), "op", None),
        ("call   ktime_get", 5, ("rax", "rdx"), "call", "ktime_get"),
        ("mov    %rax,0x60(%rbx)", 4, (), "op", None),
        ("pop    %rbx", 1, ("rbx", "rsp"), "op", None),
        ("ret", 1, ("rsp",), "ret", None),
    ]),
    "local_irq_disable": ("arch/x86/include/asm/irqflags.h", 47, [
        ("cli", 1, ("rflags",), "op", None),
        ("ret", 1, ("rsp",), "ret", None),
    ]),
    "ktime_get": ("kernel/time/timekeeping.c", 838, [
        ("push   %rbx", 1, ("rsp",), "op", None),
        ("mov    0x1a2c4f1(%rip),%ebx", 6, ("rbx",), "op", None),
        ("rdtsc", 2, ("rax", "rdx"), "op", None),
        ("shl    $0x20,%rdx", 4, ("rdx", "rflags"), "op", None),
        ("or     %rdx,%rax", 3, ("rax", "rflags"), "op", None),
        ("sub    0x1a2c4e1(%rip),%rax", 7, ("rax", "rflags"), "op", None),
        ("imul   0x1a2c4e9(%rip),%rax", 8, ("rax", "rflags"), "op", None),
        ("shr    $0x18,%rax", 4, ("rax", "rflags"), "op", None),
        ("cmp    0x1a2c4f1(%rip),%ebx", 6, ("rflags",), "op", None),
        ("jne    ktime_get+0x6", 2, (), "loop", (1, 1)),
        ("pop    %rbx", 1, ("rbx", "rsp"), "op", None),
        ("ret", 1, ("rsp",), "ret", None),
    ]),
    "cpuidle_idle_call": ("kernel/sched/idle.c", 167, [
        ("push   %r12", 2, ("rsp",), "op", None),
        ("push   %rbp", 1, ("rsp",), "op", None),
        ("mov    %gs:0x1fe48,%rbp", 9, ("rbp",), "op", None),
        ("call   need_resched", 5, ("rax",), "call", "need_resched"),
        ("test   %al,%al", 2, ("rflags",), "op", None),
        ("jne    cpuidle_idle_call+0x58", 2, (), "op", None),
        ("call   default_idle_call", 5, ("rax",), "call", "default_idle_call"),
        ("pop    %rbp", 1, ("rbp", "rsp"), "op", None),
        ("pop    %r12", 2, ("r12", "rsp"), "op", None),
        ("ret", 1, ("rsp",), "ret", None),
    ]),
    "need_resched": ("include/linux/sched.h", 2089, [
        ("mov    %gs:0x1fe40,%rax", 9, ("rax",), "op", None),
        ("mov    (%rax),%rax", 3, ("rax",), "op", None),
        ("shr    $0x3,%rax", 4, ("rax", "rflags"), "op", None),
        ("and    $0x1,%eax", 3, ("rax", "rflags"), "op", None),
        ("ret", 1, ("rsp",), "ret", None),
    ]),
    "default_idle_call": ("kernel/sched/idle.c", 95, [
        ("push   %rbx", 1, ("rsp",), "op", None),
        ("mov    %gs:0x1fe40,%rbx", 9, ("rbx",), "op", None),
        ("call   arch_cpu_idle", 5, (), "call", "arch_cpu_idle"),
        ("mov    $0x1,%eax", 5, ("rax",), "op", None),
        ("pop    %rbx", 1, ("rbx", "rsp"), "op", None),
        ("ret", 1, ("rsp",), "ret", None),
    ]),
    "arch_cpu_idle": ("arch/x86/kernel/process.c", 743, [
        ("call   native_safe_halt", 5, (), "call", "native_safe_halt"),
        ("ret", 1, ("rsp",), "ret", None),
    ]),
    "native_safe_halt": ("arch/x86/include/asm/irqflags.h", 48, [
        ("verw   0x1d8e2a1(%rip)", 7, ("rflags",), "op", None),
        ("sti", 1, ("rflags",), "op", None),
        ("hlt", 1, (), "op", None),
        ("ret", 1, ("rsp",), "ret", None),
    ]),
    "tick_sched_handle": ("kernel/time/tick-sched.c", 253, [
        ("push   %rbx", 1, ("rsp",), "op", None),
        ("mov    %rdi,%rbx", 3, ("rbx",), "op", None),
        ("call   do_timer", 5, ("rax",), "call", "do_timer"),
        ("call   update_process_times", 5, ("rax", "rcx"), "call", "update_process_times"),
        ("pop    %rbx", 1, ("rbx", "rsp"), "op", None),
        ("ret", 1, ("rsp",), "ret", None),
    ]),
    "do_timer": ("kernel/time/timekeeping.c", 2292, [
        ("mov    0x1a04f39(%rip),%rax", 7, ("rax",), "op", None),
        ("add    %rdi,%rax", 3, ("rax", "rflags"), "op", None),
        ("mov    %rax,0x1a04f2f(%rip)        # jiffies_64", 7, (), "store", "jiffies"),
        ("call   calc_global_load", 5, ("rax",), "call", "calc_global_load"),
        ("ret", 1, ("rsp",), "ret", None),
    ]),
    "calc_global_load": ("kernel/sched/loadavg.c", 351, [
        ("mov    0x1a04f21(%rip),%rax", 7, ("rax",), "op", None),
        ("cmp    %rax,0x1a2b3c1(%rip)", 7, ("rflags",), "op", None),
        ("js     calc_global_load+0x1e", 2, (), "op", None),
        ("ret", 1, ("rsp",), "ret", None),
    ]),
    "update_process_times": ("kernel/time/timer.c", 2070, [
        ("push   %rbp", 1, ("rsp",), "op", None),
        ("mov    %gs:0x1fe40,%rbp", 9, ("rbp",), "op", None),
        ("mov    %edi,%esi", 2, ("rsi",), "op", None),
        ("call   account_process_tick", 5, ("rax", "rdx"), "call", "account_process_tick"),
        ("call   run_local_timers", 5, ("rax",), "call", "run_local_timers"),
        ("call   scheduler_tick", 5, ("rax", "rcx", "rdx"), "call", "scheduler_tick"),
        ("pop    %rbp", 1, ("rbp", "rsp"), "op", None),
        ("ret", 1, ("rsp",), "ret", None),
    ]),
    "account_process_tick": ("kernel/sched/cputime.c", 475, [
        ("mov    0x8(%rbp),%rax", 4, ("rax",), "op", None),
        ("add    $0x3d0900,%rax", 6, ("rax", "rflags"), "op", None),
        ("mov    %rax,0x8(%rbp)", 4, (), "op", None),
        ("ret", 1, ("rsp",), "ret", None),
    ]),
    "run_local_timers": ("kernel/time/timer.c", 2050, [
        ("call   hrtimer_run_queues", 5, ("rax",), "call", "hrtimer_run_queues"),
        ("mov    %gs:0x1d2c0,%rax", 9, ("rax",), "op", None),
        ("cmp    %rax,0x1a04f21(%rip)", 7, ("rflags",), "op", None),
        ("ret", 1, ("rsp",), "ret", None),
    ]),
    "hrtimer_run_queues": ("kernel/time/hrtimer.c", 1878, [
        ("mov    %gs:0x1e900,%rdx", 9, ("rdx",), "op", None),
        ("test   %rdx,%rdx", 3, ("rflags",), "op", None),
        ("ret", 1, ("rsp",), "ret", None),
    ]),
    "scheduler_tick": ("kernel/sched/core.c", 5660, [
        ("push   %r12", 2, ("rsp",), "op", None),
        ("mov    %gs:0x1fe50,%r12", 9, ("r12",), "op", None),
        ("mov    0x968(%r12),%rax", 8, ("rax",), "op", None),
        ("call   *0x98(%rax)", 6, ("rax",), "call", "task_tick_idle"),
        ("inc    0x1c(%r12)", 5, ("rflags",), "op", None),
        ("pop    %r12", 2, ("r12", "rsp"), "op", None),
        ("ret", 1, ("rsp",), "ret", None),
    ]),
    "task_tick_idle": ("kernel/sched/idle.c", 480, [
        ("ret", 1, ("rsp",), "ret", None),
    ]),
    "tick_nohz_idle_exit": ("kernel/time/tick-sched.c", 1320, [
        ("push   %rbx", 1, ("rsp",), "op", None),
        ("mov    %gs:0x1e940,%rbx", 9, ("rbx",), "op", None),
        ("andb   $0xfd,0x4c(%rbx)", 4, ("rflags",), "op", None),
        ("call   ktime_get", 5, ("rax", "rdx"), "call", "ktime_get"),
        ("mov    %rax,0x68(%rbx)", 4, (), "op", None),
        ("sti", 1, ("rflags",), "op", None),
        ("pop    %rbx", 1, ("rbx", "rsp"), "op", None),
        ("ret", 1, ("rsp",), "ret", None),
    ]),
    "schedule_idle": ("kernel/sched/core.c", 6780, [
        ("push   %rbp", 1, ("rsp",), "op", None),
        ("mov    %rdi,%rbp", 3, ("rbp",), "op", None),
        ("call   __schedule", 5, ("rax", "rbx", "rcx", "rdx", "rsi"), "call", "__schedule"),
        ("mov    0x0(%rbp),%rax", 4, ("rax",), "op", None),
        ("test   $0x8,%al", 2, ("rflags",), "op", None),
        ("jne    schedule_idle+0x6", 2, (), "op", None),
        ("pop    %rbp", 1, ("rbp", "rsp"), "op", None),
        ("ret", 1, ("rsp",), "ret", None),
    ]),
    "__schedule": ("kernel/sched/core.c", 6580, [
        ("push   %r15", 2, ("rsp",), "op", None),
        ("push   %r14", 2, ("rsp",), "op", None),
        ("mov    %gs:0x1fe50,%r14", 9, ("r14",), "op", None),
        ("mov    %gs:0x1fe40,%r15", 9, ("r15",), "op", None),
        ("lock incl 0x8(%r14)", 5, ("rflags",), "op", None),
        ("mov    0x970(%r14),%rsi", 7, ("rsi",), "op", None),
        ("mov    0x8(%rsi),%rdx", 4, ("rdx",), "op", None),
        ("cmp    %rsi,%r15", 3, ("rflags",), "op", None),
        ("je     __schedule+0x2c", 2, (), "op", None),
        ("mov    %r15,%rdi", 3, ("rdi",), "op", None),
        ("call   pick_next_task_fair", 5, ("rax",), "call", "pick_next_task_fair"),
        ("lock decl 0x8(%r14)", 5, ("rflags",), "op", None),
        ("pop    %r14", 2, ("r14", "rsp"), "op", None),
        ("pop    %r15", 2, ("r15", "rsp"), "op", None),
        ("ret", 1, ("rsp",), "ret", None),
    ]),
    "pick_next_task_fair": ("kernel/sched/fair.c", 8280, [
        ("mov    0x50(%rdi),%rax", 4, ("rax",), "op", None),
        ("test   %rax,%rax", 3, ("rflags",), "op", None),
        ("je     pick_next_task_fair+0x1a", 2, (), "op", None),
        ("mov    0x18(%rax),%rcx", 4, ("rcx",), "op", None),
        ("dec    %rcx", 3, ("rcx", "rflags"), "op", None),
        ("jne    pick_next_task_fair+0xb", 2, (), "loop", (3, 5)),
        ("xor    %eax,%eax", 2, ("rax", "rflags"), "op", None),
        ("ret", 1, ("rsp",), "ret", None),
    ]),
}
OUTER_FRAMES = (
    ("cpu_startup_entry", "kernel/sched/idle.c", 379),
    ("rest_init", "init/main.c", 712),
    ("arch_call_rest_init", "init/main.c", 832),
    ("start_kernel", "init/main.c", 1088),
    ("x86_64_start_reservations", "arch/x86/kernel/head64.c", 555),
    ("x86_64_start_kernel", "arch/x86/kernel/head64.c", 536),
    ("secondary_startup_64_no_verify", "arch/x86/kernel/head_64.S", 433),
)
FLAG_MASK = 0x8D5    # CF PF AF ZF SF OF


@dataclass(frozen=True)
class _Insn:
    address: int
    function: str
    index: int
    offset: int
    text: str
    length: int
    writes: tuple[str, ...]
    kind: str
    arg: object
    line: int

    def raw(self) -> bytes:
        h = mix64(self.address)
        return bytes((h >> (8 * i)) & 0xFF for i in range(self.length))


@dataclass(frozen=True)
class _Step:
    insn: _Insn
    stack: tuple[_Insn, ...]        # call instructions of the callers, outermost first


class FakeKernel:
    """The synthetic kernel: code layout, symbols and the periodic trace."""

    def __init__(self) -> None:
        self.insns: list[_Insn] = []
        self.functions: dict[str, list[_Insn]] = {}
        self.symbols: dict[str, int] = {}
        addr = TEXT_BASE + 0x10_0000
        for name, (file, line, body) in PROGRAM.items():
            addr = (addr + 15) & ~15
            self.symbols[name] = addr
            start = addr
            out = []
            for i, (text, length, writes, kind, arg) in enumerate(body):
                insn = _Insn(addr, name, i, addr - start, text, length, tuple(writes), kind, arg,
                             line + i // 2)
                out.append(insn)
                addr += length
            self.functions[name] = out
            self.insns.extend(out)
        self.text_end = addr
        outer = TEXT_BASE + 0x4_0000
        for name, _, _ in OUTER_FRAMES:
            self.symbols[name] = outer
            outer += 0x240
        self.symbols.update(DATA_SYMBOLS)
        self.addresses = [i.address for i in self.insns]
        self.trace = self._run()
        self.period = len(self.trace)
        # per-register write positions inside one period
        self.writes: dict[str, list[int]] = {}
        for pos, step in enumerate(self.trace):
            for reg in step.insn.writes:
                self.writes.setdefault(reg, []).append(pos)
        self.stores = [pos for pos, s in enumerate(self.trace) if s.insn.kind == "store"]
        by_addr = sorted(self.symbols.items(), key=lambda kv: kv[1])
        self._sym_addrs = [a for _, a in by_addr]
        self._sym_names = [n for n, _ in by_addr]

    def _run(self) -> list[_Step]:
        """One iteration of do_idle's loop, instruction by instruction."""
        trace: list[_Step] = []
        stack: list[_Insn] = []
        fn, i = "do_idle", 0
        loops: dict[int, int] = {}
        while True:
            insn = self.functions[fn][i]
            trace.append(_Step(insn, tuple(stack)))
            if insn.kind == "call":
                stack.append(insn)
                fn, i = insn.arg, 0
            elif insn.kind == "ret":
                caller = stack.pop()
                fn, i = caller.function, caller.index + 1
            elif insn.kind == "loop":
                back, times = insn.arg
                if fn == "do_idle" and not stack:
                    return trace
                done = loops.get(insn.address, 0)
                if done < times:
                    loops[insn.address] = done + 1
                    i = back
                else:
                    loops.pop(insn.address, None)
                    i += 1
            else:
                i += 1

    def symbolize(self, address: int) -> tuple[str, int]:
        k = bisect_right(self._sym_addrs, address) - 1
        if k < 0 or address - self._sym_addrs[k] > 0x10000:
            return "", 0
        return self._sym_names[k], address - self._sym_addrs[k]

    def insn_at(self, address: int) -> int:
        """Index into ``insns`` of the instruction at or covering ``address``."""
        k = bisect_right(self.addresses, address) - 1
        if k < 0:
            raise UsageError(f"cannot access memory at address {address:#x}")
        return k


KERNEL = FakeKernel()


class FakeDebugger:
    """Implements :class:`engine.api.Debugger` over :class:`FakeKernel`.

    State is one number, the instruction count; every query is a pure function
    of it (and of the breakpoints), which is what makes reverse execution exact.
    """

    def __init__(self, recording: FakeRecording, checkpoint: CheckpointRow, latency: float = 0.0):
        self._rec = recording
        self._checkpoint_id = checkpoint.id
        self._icount = checkpoint.icount
        self._latency = latency
        self._lock = threading.RLock()
        self._bps: dict[int, Breakpoint] = {}
        self._next_bp = 1
        self._closed = False
        self.phase = mix64(recording._seed, 7) % KERNEL.period

    # -- helpers -------------------------------------------------------------
    def _check(self) -> None:
        if self._closed:
            raise ReplayError("the replay was closed")

    def _end(self) -> int:
        rows = self._rec.checkpoints()
        return rows[-1].icount if rows else 0

    def _pos(self, icount: int) -> tuple[int, int]:
        n = icount + self.phase
        return n // KERNEL.period, n % KERNEL.period

    def _step(self, icount: int) -> _Step:
        return KERNEL.trace[self._pos(icount)[1]]

    def _last_write(self, reg: str, icount: int) -> int | None:
        """icount of the latest instruction at or before ``icount - 1`` that wrote ``reg``
        (registers show the state *before* the instruction at ``icount``)."""
        positions = KERNEL.writes.get(reg)
        if not positions or icount <= 0:
            return None
        cycle, pos = self._pos(icount - 1)
        k = bisect_right(positions, pos) - 1
        if k >= 0:
            w = cycle * KERNEL.period + positions[k]
        else:
            w = (cycle - 1) * KERNEL.period + positions[-1]
        w -= self.phase
        return w if w >= 0 else None

    def _sleep(self, progress: ProgressCallback | None, phase: str, steps: int = 8) -> None:
        for k in range(steps + 1):
            if progress:
                progress(ReplayProgress(phase, k / steps))
            if self._latency and k < steps:
                time.sleep(self._latency / steps)

    def _stop(self, reason: StopReason, detail: str = "") -> StopEvent:
        return StopEvent(reason, self._icount, self._step(self._icount).insn.address, detail)

    def _hit(self, icount: int) -> Breakpoint | None:
        step = self._step(icount)
        for bp in self._bps.values():
            if not bp.enabled:
                continue
            if bp.kind is BreakpointKind.BREAKPOINT and bp.address == step.insn.address:
                return bp
            if bp.kind is not BreakpointKind.BREAKPOINT and icount > 0:
                # a write watchpoint stops after the store that changed it
                prev = self._step(icount - 1).insn
                if prev.kind == "store" and DATA_SYMBOLS.get(prev.arg) == bp.address:
                    return bp
        return None

    def _count_hit(self, bp: Breakpoint) -> StopEvent:
        self._bps[bp.number] = replace(bp, hits=bp.hits + 1)
        if bp.kind is BreakpointKind.BREAKPOINT:
            name = KERNEL.symbolize(bp.address)[0]
            return self._stop(StopReason.BREAKPOINT, f"breakpoint {bp.number}, {name}")
        return self._stop(StopReason.WATCHPOINT, f"watchpoint {bp.number}: {bp.location}")

    # -- Debugger: state ------------------------------------------------------
    @property
    def checkpoint_id(self) -> str:
        return self._checkpoint_id

    @property
    def icount(self) -> int:
        return self._icount

    def registers(self) -> dict[str, int]:
        with self._lock:
            self._check()
            n = self._icount
            step = self._step(n)
            regs: dict[str, int] = {}
            for k, name in enumerate(GPR):
                w = self._last_write(name, n)
                h = mix64(k, w if w is not None else -1)
                if name in ("rsp", "rbp"):
                    continue
                if name in ("rdi", "rsi", "rbx", "r12", "r14", "r15"):
                    regs[name] = 0xFFFF888000000000 | (h & 0x7FFFFF8) | ((h >> 40) & 0x3) << 28
                elif name in ("rax", "rcx", "rdx"):
                    regs[name] = h & (0xFFFF if h & 1 else 0xFFFFFFFF)
                else:
                    regs[name] = h if h & 3 else 0
            depth = len(step.stack)
            regs["rsp"] = STACK_TOP - 0x28 * depth - (8 * (step.insn.index % 3))
            regs["rbp"] = STACK_TOP - 0x28 * max(0, depth - 1) + 0x10
            regs["rip"] = step.insn.address
            w = self._last_write("rflags", n)
            regs["rflags"] = 0x202 | (mix64(99, w if w is not None else 0) & FLAG_MASK)
            regs.update(cs=0x10, ss=0x18, ds=0, es=0, fs=0, gs=0,
                        fs_base=0, gs_base=0xFFFF88807DC00000,
                        cr0=0x80050033, cr2=0x7F3A2C001000, cr3=0x10A4E000 | (self._pos(n)[0] & 1) << 12,
                        cr4=0x3506F0, efer=0xD01)
            return regs

    def disassemble(self, address: int, count: int, before: int = 0) -> list[DisasmLine]:
        with self._lock:
            self._check()
            k = KERNEL.insn_at(address)
            lo = max(0, k - before)
            return [DisasmLine(i.address, i.function, i.offset, i.raw(), i.text)
                    for i in KERNEL.insns[lo:k + count]]

    def read_memory(self, address: int, length: int, physical: bool = False) -> bytes:
        with self._lock:
            self._check()
            if length < 0 or length > 1 << 20:
                raise UsageError(f"cannot read {length} bytes at once")
            if physical:
                limit = self._rec.machine.ram_bytes + 2 * GiB
                if address < 0 or address + length > limit:
                    raise UsageError(f"cannot access physical memory at {address:#x}")
            elif address < 0x1000 or (0x0000800000000000 <= address < 0xFFFF800000000000):
                raise UsageError(f"cannot access memory at address {address:#x}")
            return bytes(self._byte(a, physical) for a in range(address, address + length))

    def _byte(self, a: int, physical: bool) -> int:
        if not physical:
            if KERNEL.addresses[0] <= a < KERNEL.text_end:
                insn = KERNEL.insns[KERNEL.insn_at(a)]
                return insn.raw()[a - insn.address]
            base = DATA_SYMBOLS["linux_banner"]
            if base <= a < base + len(BANNER):
                return BANNER[a - base]
            j = DATA_SYMBOLS["jiffies"]
            if j <= a < j + 8:
                value = 0xFFFB6C20 + self._jiffies()
                return (value >> (8 * (a - j))) & 0xFF
        word = mix64(a >> 3, 1 if physical else 0)
        if word % 5 < 2:
            return 0
        if word % 5 == 2:   # some ASCII, as in real memory
            return 0x20 + (mix64(a) % 95)
        return (word >> (8 * (a & 7))) & 0xFF

    def _jiffies(self) -> int:
        n = self._icount
        if n <= 0:
            return 0
        cycle, pos = self._pos(n - 1)
        return cycle * len(KERNEL.stores) + bisect_right(KERNEL.stores, pos)

    def backtrace(self, limit: int = 32) -> list[Frame]:
        with self._lock:
            self._check()
            step = self._step(self._icount)
            frames = [Frame(0, step.insn.address, step.insn.function,
                            PROGRAM[step.insn.function][0], step.insn.line)]
            for call in reversed(step.stack):
                frames.append(Frame(len(frames), call.address + call.length, call.function,
                                    PROGRAM[call.function][0], call.line))
            for name, file, line in OUTER_FRAMES:
                frames.append(Frame(len(frames), KERNEL.symbols[name] + 0x1d, name, file, line))
            return frames[:limit]

    def lookup_symbol(self, name: str) -> int:
        name = name.strip()
        if name.startswith("&"):
            name = name[1:]
        if name in KERNEL.symbols:
            return KERNEL.symbols[name]
        if name.startswith("$"):
            regs = self.registers()
            if name[1:] in regs:
                return regs[name[1:]]
        try:
            return int(name, 0)
        except ValueError:
            raise UsageError(f'No symbol "{name}" in current context.') from None

    def symbolize(self, address: int) -> tuple[str, int]:
        return KERNEL.symbolize(address)

    def console_text(self, start: int = 0) -> str:
        return self._rec.console_until(self._icount)[start:]

    # -- breakpoints ---------------------------------------------------------
    def breakpoints(self) -> list[Breakpoint]:
        with self._lock:
            return [self._bps[k] for k in sorted(self._bps)]

    def add_breakpoint(self, location: str) -> Breakpoint:
        with self._lock:
            loc = location.strip()
            addr = self.lookup_symbol(loc[1:] if loc.startswith("*") else loc)
            bp = Breakpoint(self._next_bp, BreakpointKind.BREAKPOINT, loc, addr)
            self._bps[bp.number] = bp
            self._next_bp += 1
            return bp

    def add_watchpoint(self, expression: str, kind: BreakpointKind = BreakpointKind.WATCH) -> Breakpoint:
        with self._lock:
            addr = self.lookup_symbol(expression)
            bp = Breakpoint(self._next_bp, kind, expression.strip(), addr, length=8)
            self._bps[bp.number] = bp
            self._next_bp += 1
            return bp

    def delete_breakpoint(self, number: int) -> None:
        with self._lock:
            if self._bps.pop(number, None) is None:
                raise UsageError(f"No breakpoint number {number}.")

    def enable_breakpoint(self, number: int, enabled: bool) -> None:
        with self._lock:
            if number not in self._bps:
                raise UsageError(f"No breakpoint number {number}.")
            self._bps[number] = replace(self._bps[number], enabled=enabled)

    # -- execution -----------------------------------------------------------
    def _forward(self, done: Callable[[int], bool], limit: int,
                 progress: ProgressCallback | None = None, phase: str = "") -> StopEvent:
        end = self._end()
        n = self._icount
        for k in range(limit):
            if n >= end:
                self._icount = end
                return self._stop(StopReason.END)
            n += 1
            self._icount = n
            bp = self._hit(n)
            if bp is not None:
                return self._count_hit(bp)
            if done(n):
                return self._stop(StopReason.STEP)
            if progress and k % 256 == 0:
                progress(ReplayProgress(phase, k / limit))
        return self._stop(StopReason.STEP)

    def stepi(self) -> StopEvent:
        with self._lock:
            self._check()
            return self._forward(lambda n: True, 1)

    def step(self) -> StopEvent:
        with self._lock:
            self._check()
            line = self._step(self._icount).insn
            return self._forward(lambda n: (s := self._step(n).insn).line != line.line
                                 or s.function != line.function, KERNEL.period)

    def next(self) -> StopEvent:
        with self._lock:
            self._check()
            start = self._step(self._icount)
            depth = len(start.stack)
            def done(n: int) -> bool:
                s = self._step(n)
                return len(s.stack) <= depth and (s.insn.line != start.insn.line
                                                  or s.insn.function != start.insn.function)
            return self._forward(done, KERNEL.period)

    def finish(self) -> StopEvent:
        with self._lock:
            self._check()
            depth = len(self._step(self._icount).stack)
            if depth == 0:
                raise UsageError('"finish" not meaningful in the outermost frame.')
            return self._forward(lambda n: len(self._step(n).stack) < depth, KERNEL.period * 2)

    def cont(self, progress: ProgressCallback | None = None) -> StopEvent:
        with self._lock:
            self._check()
            self._sleep(progress, "continuing", 4)
            if not any(b.enabled for b in self._bps.values()):
                self._icount = self._end()
                return self._stop(StopReason.END, "end of recording")
            return self._forward(lambda n: False, KERNEL.period + 1, progress, "continuing")

    def reverse_stepi(self) -> StopEvent:
        with self._lock:
            self._check()
            if self._icount <= 0:
                return self._stop(StopReason.START, "at the start of the recording")
            self._icount -= 1
            return self._stop(StopReason.STEP)

    def reverse_continue(self, progress: ProgressCallback | None = None) -> StopEvent:
        with self._lock:
            self._check()
            self._sleep(progress, "reverse: restoring the previous checkpoint", 4)
            n = self._icount
            for _ in range(KERNEL.period + 1):
                if n <= 0:
                    break
                n -= 1
                bp = self._hit(n)
                if bp is not None:
                    self._icount = n
                    return self._count_hit(bp)
            if n <= 0 or not any(b.enabled for b in self._bps.values()):
                self._icount = 0
                return self._stop(StopReason.START, "at the start of the recording")
            self._icount = n
            return self._stop(StopReason.STEP)

    def goto_icount(self, icount: int, progress: ProgressCallback | None = None) -> StopEvent:
        with self._lock:
            self._check()
            end = self._end()
            if not 0 <= icount <= end:
                raise UsageError(f"icount {icount:,} is outside the recording (0..{end:,})")
            rows = self._rec.checkpoints()
            k = bisect_left([r.icount for r in rows], icount)
            near = rows[min(k, len(rows) - 1)]
            self._sleep(progress, f"restoring checkpoint #{near.index}", 6)
            self._sleep(progress, f"replaying to icount {icount:,}", 6)
            self._icount = icount
            return self._stop(StopReason.TARGET, f"icount {icount:,}")

    def goto_checkpoint(self, checkpoint_id: str, progress: ProgressCallback | None = None) -> StopEvent:
        index = self._rec._index(checkpoint_id)
        row = self._rec.row(index)
        event = self.goto_icount(row.icount, progress)
        self._checkpoint_id = row.id
        return replace(event, detail=f"checkpoint #{row.index}")

    def close(self) -> None:
        self._closed = True


# --------------------------------------------------------------------------
# Live control and the session
# --------------------------------------------------------------------------

class FakeLiveControl:
    """Implements :class:`engine.api.LiveControl`: a background thread grows
    the recording while "running"."""

    def __init__(self, recording: FakeRecording, interval: float):
        self._rec = recording
        self._interval = interval
        self._running = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-live", daemon=True)
        self.sent: list[str] = []
        recording.rate_hz = 1.0 / interval
        recording.state = GuestState.RUNNING
        self._running.set()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            if self._running.is_set():
                self._rec.grow()

    async def pause(self) -> None:
        self._running.clear()
        self._rec.rate_hz = 0.0
        self._rec.set_state(GuestState.PAUSED)

    async def resume(self) -> None:
        self._running.set()
        self._rec.rate_hz = 1.0 / self._interval
        self._rec.set_state(GuestState.RUNNING)

    async def checkpoint_now(self) -> CheckpointRow:
        return await asyncio.to_thread(self._rec.grow)

    async def send_console(self, text: str) -> None:
        self.sent.append(text)
        self._rec.append_console(f"# {text.rstrip()}\n")

    def close(self) -> None:
        self._stop.set()
        self._running.clear()
        if self._thread.is_alive():
            self._thread.join(timeout=2)


class FakeSession:
    """Implements :class:`engine.api.Session` with synthetic data (see module doc)."""

    def __init__(self, checkpoints: int = 600, *, ram_pages: int = 1 << 20, seed: int = 1,
                 live: bool = False, live_interval: float = 0.5, latency: float = 0.0,
                 fail_replay: bool = False, name: str = "fake",
                 fail_intervals: tuple[int, ...] = (), analyses: tuple[str, ...] = (),
                 fail_golive: bool = False):
        self._name = name
        self._recording = FakeRecording(checkpoints, ram_pages, seed, latency=latency,
                                        fail_intervals=fail_intervals, analyses=analyses)
        self._latency = latency
        self._fail_replay = fail_replay
        self._live = FakeLiveControl(self._recording, live_interval) if live else None
        self._debuggers: list[FakeDebugger] = []
        self._seed = seed
        self._ram_pages = ram_pages
        self._live_interval = live_interval
        self.fail_golive = fail_golive
        self.golive_sessions: list[FakeSession] = []   # every session go_live returned
        self.closed = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def recording(self) -> FakeRecording:
        return self._recording

    @property
    def live(self) -> FakeLiveControl | None:
        return self._live

    @property
    def path(self) -> str:
        return f"/fake/{self._name}"

    def go_live(self, checkpoint_id: str, progress: ProgressCallback | None = None) -> "FakeSession":
        """A new live fake session "started from" the checkpoint: one checkpoint,
        growing every ``live_interval``; its console says where it came from.
        ``fail_golive`` raises instead (after the progress), like a QEMU that failed."""
        index = self._recording._index(checkpoint_id)
        steps = 10
        for k in range(steps + 1):
            if progress:
                progress(ReplayProgress(f"loading checkpoint #{index}", k / steps))
            if self._latency and k < steps:
                time.sleep(self._latency / steps)
        if self.fail_golive:
            raise UsageError(f"checkpoint #{index} cannot go live (fake failure for testing)")
        child = FakeSession(1, ram_pages=self._ram_pages, seed=self._seed + index + 1, live=True,
                            live_interval=self._live_interval, latency=self._latency,
                            name=f"{self._name}-golive-{index}")
        child.recording.append_console(f"sbtui: went live from checkpoint #{index} of {self._name}\n")
        self.golive_sessions.append(child)
        return child

    def start_replay(self, checkpoint_id: str, progress: ProgressCallback | None = None) -> FakeDebugger:
        index = self._recording._index(checkpoint_id)
        row = self._recording.row(index)
        steps = 10
        for k in range(steps + 1):
            if progress:
                progress(ReplayProgress(f"restoring checkpoint #{index}", k / steps))
            if self._latency and k < steps:
                time.sleep(self._latency / steps)
        if self._fail_replay:
            raise ReplayError(
                f"replay from checkpoint #{index} ({checkpoint_id}) diverged at icount "
                f"{row.icount + 1234:,}: expected interrupt at the recorded icount "
                "(fake failure for testing)")
        dbg = FakeDebugger(self._recording, row, self._latency)
        self._debuggers.append(dbg)
        return dbg

    def close(self) -> None:
        for child in self.golive_sessions:
            child.close()
        for dbg in self._debuggers:
            dbg.close()
        if self._live:
            self._live.close()
        self.closed = True
