"""The facade's :class:`engine.api.Debugger` for recordings: a replay under gdb.

A :class:`ReplayDebugger` owns one replay QEMU (``engine.replay.session``, run
on a private asyncio loop in a long-lived thread, because QMP is async and
this facade is sync) and one gdb (``engine.gdb``) attached to its gdbstub.

Time travel, without QEMU's own reverse debugging (measured here: about one
``reverse-stepi`` in 90 and one ``reverse-continue`` in 2 never returned):

* every position is an instruction count (QMP ``query-replay``);
* forward execution (stepi, next, finish, continue) is gdb's;
* going to icount N: run forward when N is ahead; otherwise start a new
  replay QEMU from the nearest state at or before N and replay to exactly N
  with QMP ``replay-break``. Those states are *anchors*: replay-mode
  ``savevm`` snapshots this debugger takes at the restored checkpoint and
  after every forward move longer than :data:`ANCHOR_SPAN` instructions,
  kept in its work directory and streamed into the new QEMU with
  ``migrate-incoming`` (``loadvm`` inside a replay deadlocks QEMU 10, see
  ``engine.replay.session``); or the recording's checkpoints. gdb re-attaches
  to each new QEMU (a few ms; its breakpoints are its own and carry over);
* QEMU 10's gdbstub sends no stop reply that gdb did not ask for
  (``allow_stop_reply``), so QMP may move the replay while gdb is idle; gdb's
  register and memory caches are then flushed (``GdbDebugger.invalidate``);
* an icount alone does not name a stop: an instruction that faults or is
  interrupted is not counted, so the step from it into the handler leaves
  the count as it was (measured: a page fault in ``clear_user_rep_good``, a
  timer interrupt), and a step has been seen to count 2. ``replay-break`` at N
  lands on one of the stops at N, which one depends on where the run started
  (measured: the faulting instruction from 16 instructions before, the
  handler from 5 before). A stop is therefore named by (icount, pc) and
  reached by replaying to icount - 1 (every stop there comes before every
  stop at N) and stepping forward until it (:meth:`_go_to_stop`);
* ``reverse_stepi`` goes back to the stop a forward stepi came from (each
  stepi remembers it); with no such memory, it steps forward from a few
  instructions earlier to learn it (:meth:`_walk`). Stepping back from a
  handler's first instruction thus shows the faulting instruction;
* ``reverse_continue`` replays the stretch before the current icount with the
  breakpoints armed, segment by segment backwards, and goes to the last hit.

Every method is sync and blocking (the app calls them from thread workers)
and serialized by one lock. ``close()`` stops gdb and QEMU and never raises.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from engine import api
from engine.errors import GdbError, ReplayError, SbtuiError, UsageError
from engine.gdb import GdbDebugger
from engine.qemu import gdb_tcp
from engine.recording.format import CheckpointEntry, Recording
from engine.replay.session import ReplaySession
from engine.stream.qcow2 import open_vmstate
from engine.stream.runstate import copy_with_runstate

T = TypeVar("T")

# A forward move longer than this leaves an anchor snapshot behind, so that
# stepping back from there replays at most this far.
ANCHOR_SPAN = 20_000_000
# Rough costs for choosing between an anchor and a checkpoint restart; the
# replay speed is re-measured after every long replay.
ANCHOR_RESTART_S = 0.6
RESTART_S = 2.5
INITIAL_RATE = 3e8          # instructions replayed per second, before measured
QMP_TIMEOUT = 300.0


class _LoopThread:
    """An asyncio loop in one long-lived thread. QEMU is launched from it, so
    PR_SET_PDEATHSIG (tied to the launching thread) lasts as long as we do."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever,
                                       name="sbtui-replay-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: float | None = QMP_TIMEOUT) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise ReplayError(f"the replay did not answer within {timeout:g} s") from None

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


@dataclass
class _Anchor:
    image: Path         # the qcow2 a replay saved it into
    name: str
    icount: int
    console_len: int    # bytes of console printed before it


# A stop: (icount, pc).
Stop = tuple[int, int]

# How far back (instructions) :meth:`ReplayDebugger._walk` starts stepping to
# learn the stops before one it has no memory of, and how many stepi a walk
# or a :meth:`ReplayDebugger._go_to_stop` takes at most (fault and interrupt
# entries add stops without adding counts).
WALK_SPAN = 16
STEP_LIMIT = 4 * WALK_SPAN + 64
# Stops whose predecessor is remembered for reverse_stepi.
CAME_FROM_MAX = 100_000


def system_map_of(rec: Recording, search: list[Path] | None = None) -> Path | None:
    """The guest kernel's System.map for symbols: the recording's own copy, else
    one beside an identical kernel (same name and sha256) in the demo-guest
    cache or ``/boot`` (the recorder does not copy it: without this, replays
    of ``sbtui demo`` recordings had no kernel symbols)."""
    entry = rec.manifest.guest.get("system_map")
    if isinstance(entry, dict) and entry.get("path"):
        return rec.path / entry["path"]
    kernel = rec.manifest.guest.get("kernel")
    name = kernel.get("name", "") if isinstance(kernel, dict) else ""
    digest = kernel.get("sha256") if isinstance(kernel, dict) else None
    if not (name.startswith("vmlinuz-") and digest):
        return None
    if search is None:
        from engine.paths import cache_dir
        search = sorted(p for p in (cache_dir() / "guest").glob("*") if p.is_dir()) + [Path("/boot")]
    seen: dict[tuple[int, int], bool] = {}     # the cache hard-links one kernel into each entry
    for folder in search:
        candidate, smap = folder / name, folder / f"System.map-{name[len('vmlinuz-'):]}"
        try:
            st = candidate.stat()
            if not smap.is_file():
                continue
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key not in seen:
            h = hashlib.sha256()
            with open(candidate, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            seen[key] = h.hexdigest() == digest
        if seen[key]:
            return smap
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReplayDebugger:
    """``api.Debugger`` over a replay of a recording. Build with :meth:`start`."""

    def __init__(self, rec: Recording, *, vmlinux: str | Path | None = None,
                 system_map: str | Path | None = None):
        self.rec = rec
        self._vmlinux = vmlinux
        self._system_map = system_map
        self._lock = threading.RLock()
        self._loop = _LoopThread()
        self._gdb = GdbDebugger()
        self._session: ReplaySession | None = None
        self._base: CheckpointEntry | None = None
        self._anchors: list[_Anchor] = []
        self._anchor_seq = 0
        self._icount = 0
        # For stops reached by stepi: the stop each came from.
        self._came_from: dict[Stop, Stop] = {}
        self._rate = INITIAL_RATE
        self._closed = False
        # What the guest printed up to the current icount: rewinding to an
        # anchor cuts it back, and the replay then prints the rest again.
        self._console = bytearray()
        self._console_seen = 0      # bytes of the session's raw output already taken in
        self._checkpoints = rec.checkpoints()
        if not self._checkpoints:
            raise ReplayError(f"{rec.path}: the recording has no checkpoint to replay from")
        self._end_icount = rec.manifest.end_icount
        self._workdir = Path(tempfile.mkdtemp(prefix="sbtui-debug-"))
        self._sessions = 0

    # -- building ----------------------------------------------------------

    @classmethod
    def start(cls, rec: Recording, checkpoint_id: str, *,
              progress: api.ProgressCallback | None = None,
              vmlinux: str | Path | None = None) -> "ReplayDebugger":
        """Restore ``checkpoint_id`` (store id or interval index) and stop at its
        first instruction, gdb attached."""
        dbg = cls(rec, vmlinux=vmlinux, system_map=system_map_of(rec))
        try:
            cp = rec.checkpoint(checkpoint_id)
            # gdb starts and reads the symbols while the checkpoint is restored.
            dbg._gdb.start_launch(vmlinux=dbg._vmlinux, system_map=dbg._system_map)
            dbg._restart(cp, progress)
        except BaseException:
            dbg.close()
            raise
        return dbg

    def _restart(self, cp: CheckpointEntry, progress: api.ProgressCallback | None,
                 anchor: _Anchor | None = None) -> None:
        """A new replay QEMU restored from checkpoint ``cp`` (or from ``anchor``,
        a state inside the interval ``cp`` starts); gdb (re)attached."""
        say = _progress(progress)
        old, self._session = self._session, None
        if old is not None:
            try:
                self._gdb.gdb.console("disconnect")
            except GdbError:
                pass
            self._loop.run(old.close(), timeout=60)
        where = f"icount {anchor.icount}" if anchor else f"checkpoint {cp.index}"
        say(f"restoring {where}", 0.0)
        port = _free_port()
        self._sessions += 1
        source = None
        if anchor is not None:
            def source(dst, a=anchor):
                # An anchor taken where gdb stopped the VM says "debug"; load it paused.
                with open_vmstate(a.image, a.name) as src:
                    copy_with_runstate(src, dst, "paused")
        session = ReplaySession(self.rec, cp, gdb=gdb_tcp(port),
                                workdir=self._workdir / f"replay-{self._sessions}",
                                progress=lambda m: say(m, -1.0), source=source,
                                start_icount=anchor.icount if anchor else None)
        try:
            self._loop.run(session.start())
        except BaseException:
            self._loop.run(session.close(), timeout=60)
            raise
        self._session = session
        self._base = cp
        if anchor is None:
            self._console = bytearray(self.rec.console_bytes()[:cp.console_offset])
        else:
            del self._console[anchor.console_len:]
        self._console_seen = 0
        say("attaching gdb", 0.9)
        self._gdb.connect(f"127.0.0.1:{port}")
        if self._gdb.symbol_file is None and (self._vmlinux or self._system_map):
            self._gdb.load_symbols(vmlinux=self._vmlinux, system_map=self._system_map)
        self._icount = anchor.icount if anchor else cp.icount
        if anchor is None and not any(a.icount == self._icount for a in self._anchors):
            self._anchor_here()
        say(f"at {where}", 1.0)

    # -- helpers -----------------------------------------------------------

    def _s(self) -> ReplaySession:
        if self._closed or self._session is None:
            raise ReplayError("this replay is closed")
        return self._session

    def _refresh_icount(self) -> int:
        self._icount = self._loop.run(self._s().icount())
        return self._icount

    def _sync_console(self) -> None:
        out = self._s().console_bytes()
        self._console += out[self._console_seen:]
        self._console_seen = len(out)

    def _anchor_here(self) -> None:
        s = self._s()
        self._anchor_seq += 1
        name = f"anchor-{self._anchor_seq}"
        self._loop.run(s.save_snapshot(name))
        self._sync_console()
        a = _Anchor(s.vmstate_image, name, self._icount, len(self._console))
        keys = [x.icount for x in self._anchors]
        self._anchors.insert(bisect.bisect_right(keys, a.icount), a)

    def _checkpoint_at_or_before(self, icount: int) -> CheckpointEntry:
        best = self._checkpoints[0]
        for cp in self._checkpoints:
            if cp.icount <= icount:
                best = cp
        return best

    def _replay_to(self, target: int, progress: api.ProgressCallback | None) -> None:
        """Move to exactly ``target``, by the cheapest route."""
        say = _progress(progress)
        if self._end_icount is not None and target > self._end_icount:
            raise UsageError(f"icount {target} lies after the end of the recording "
                             f"({self._end_icount})")
        if target < self._checkpoints[0].icount:
            raise UsageError(f"icount {target} lies before the recording's first checkpoint")
        here = self._icount
        anchors = [a for a in self._anchors if a.icount <= target]
        cp = self._checkpoint_at_or_before(target)
        options: list[tuple[float, str, Any]] = []
        if here <= target:
            options.append(((target - here) / self._rate, "forward", None))
        if anchors:
            a = anchors[-1]
            options.append((ANCHOR_RESTART_S + (target - a.icount) / self._rate, "anchor", a))
        if not anchors or cp.icount > anchors[-1].icount:
            options.append((RESTART_S + (target - cp.icount) / self._rate, "checkpoint", cp))
        cost, how, what = min(options, key=lambda o: o[0])
        start = here
        if how == "anchor":
            self._restart(self._checkpoint_at_or_before(what.icount), progress, anchor=what)
            start = what.icount
        elif how == "checkpoint":
            self._restart(what, progress)
            start = what.icount
        if target != start:
            say(f"replaying to icount {target}", -1.0)
            t0 = time.monotonic()
            try:
                self._loop.run(self._s().run_to(target), timeout=None)
            except SbtuiError:
                if not self._replay_exited(wait=3.0):
                    raise
                # The guest powered off (or the log ended) before the target:
                # QEMU left. Come back to where we were and say so.
                self._ran_off_end(here)
                raise UsageError(f"icount {target} lies past the end of the replay: the "
                                 f"guest powered off or the log ended first") from None
            took = time.monotonic() - t0
            if target - start > 1_000_000 and took > 0.05:
                self._rate = (target - start) / took
        self._gdb.invalidate()
        self._icount = target
        if target - start > ANCHOR_SPAN and not any(a.icount == target for a in self._anchors):
            self._anchor_here()

    def _after_forward(self, start: int) -> None:
        self._gdb.invalidate()
        self._refresh_icount()
        if self._icount - start > ANCHOR_SPAN:
            self._anchor_here()

    # -- stops -----------------------------------------------------------------

    def _stop(self) -> Stop:
        return self._icount, self._gdb.pc()

    def _remember(self, before: Stop, replace: bool = True) -> None:
        """After a stepi from stop ``before``: the current stop came from it.
        ``replace=False`` (the debugger's own stepping, which may start at a
        replay-break state no stepi stops at, e.g. inside a step that counts
        2) keeps what a stepi of the user's already taught."""
        here = self._stop()
        if not replace and here in self._came_from:
            return
        if len(self._came_from) >= CAME_FROM_MAX:
            self._came_from.pop(next(iter(self._came_from)))
        self._came_from[here] = before

    def _step_inside(self) -> None:
        """One stepi inside the recording (no end-of-log handling), remembered."""
        before = self._stop()
        self._gdb.stepi()
        self._gdb.invalidate()
        self._refresh_icount()
        self._remember(before, replace=False)

    def _step_to(self, stop: Stop, start: int,
                 progress: api.ProgressCallback | None = None) -> tuple[bool, Stop | None]:
        """Replay to ``start``, then stepi until at ``stop`` (True) or past its
        count (False); also the last stop with a lower count seen on the way."""
        icount, _ = stop
        self._replay_to(max(self._checkpoints[0].icount, start), progress)
        below = None
        for _ in range(STEP_LIMIT):
            here = self._stop()
            if here == stop:
                return True, below
            if here[0] > icount:
                break
            if here[0] < icount:
                below = here
            self._step_inside()
        return False, below

    def _go_to_stop(self, stop: Stop, progress: api.ProgressCallback | None = None) -> bool:
        """Go to ``stop``: replay to its icount - 1, then step until there.
        False when stepping passes it (a state inside a step that counts 2,
        which only replay-break reaches): then at replay-break's stop at its
        count."""
        icount, _ = stop
        if self._step_to(stop, icount - 1, progress)[0]:
            return True
        self._replay_to(icount, progress)
        return self._stop() == stop

    def _walk(self, stop: Stop) -> Stop | None:
        """The stop a stepi to ``stop`` comes from, learnt by stepping forward
        from :data:`WALK_SPAN` instructions before it; else (never stepped
        onto) the last stop with a lower count seen on the way."""
        reached, below = self._step_to(stop, stop[0] - WALK_SPAN)
        return self._came_from.get(stop, below) if reached else below

    def _forward(self, op: Callable[[], Any]) -> api.StopEvent:
        with self._lock:
            self._s()
            start = self._icount
            try:
                stop = op()
            except SbtuiError:
                if self._replay_exited():
                    return self._ran_off_end(start)
                raise
            ended = self._settle_forward(start)
            if ended is not None:
                return ended
            return stop.to_event(self._icount)

    def _settle_forward(self, start: int) -> api.StopEvent | None:
        """After a forward gdb command: take in the new position (anchoring a
        long move). If the replay ran off its log meanwhile, come back to
        ``start`` and return the END stop instead."""
        try:
            self._after_forward(start)
        except SbtuiError:
            if self._replay_exited(wait=3.0):
                return self._ran_off_end(start)
            raise
        return None

    def _replay_exited(self, wait: float = 0.0) -> bool:
        """Has the replay QEMU exited (waiting up to ``wait`` s for it: gdb may
        report the lost connection before the driver has seen the exit)?"""
        s = self._session
        if s is None or s.vm is None:
            return False
        if s.vm.returncode is None and wait > 0:
            try:
                self._loop.run(s.vm.wait_exit(wait), timeout=wait + 5)
            except SbtuiError:
                pass
        return s.vm.returncode is not None

    def _ran_off_end(self, start: int) -> api.StopEvent:
        """The replay reached the end of its log and QEMU left (a recording
        without a known end icount). Come back to where we were."""
        code = self._session.vm.returncode if self._session and self._session.vm else None
        if code not in (0, None):
            raise ReplayError(f"the replay QEMU exited with code {code} at about icount {start}")
        self._icount = -1  # no live position until restored
        anchors = [a for a in self._anchors if a.icount <= start]
        if anchors:
            self._restart(self._checkpoint_at_or_before(anchors[-1].icount), None, anchor=anchors[-1])
        else:
            self._restart(self._checkpoint_at_or_before(start), None)
        self._replay_to(start, None)
        return api.StopEvent(api.StopReason.END, self._icount, self._gdb.pc(),
                             "end of the recording (the replay's log ended)")

    # -- the facade: cheap -------------------------------------------------

    @property
    def checkpoint_id(self) -> str:
        return self._base.store_id if self._base else ""

    @property
    def icount(self) -> int:
        return self._icount

    # -- state ---------------------------------------------------------------

    def registers(self) -> api.Registers:
        with self._lock:
            return self._gdb.registers()

    def disassemble(self, address: int, count: int, before: int = 0) -> list[api.DisasmLine]:
        with self._lock:
            return self._gdb.disassemble(address, count, before)

    def read_memory(self, address: int, length: int, physical: bool = False) -> bytes:
        with self._lock:
            return self._gdb.read_memory(address, length, physical=physical)

    def backtrace(self, limit: int = 32) -> list[api.Frame]:
        with self._lock:
            return self._gdb.backtrace(limit)

    def lookup_symbol(self, name: str) -> int:
        with self._lock:
            return self._gdb.lookup_symbol(name)

    def symbolize(self, address: int) -> tuple[str, int]:
        with self._lock:
            return self._gdb.symbolize(address)

    def console_text(self, start: int = 0) -> str:
        """What the guest printed up to the current icount: the recording's console
        up to the restored checkpoint, then the replay's own output."""
        with self._lock:
            self._sync_console()
            return self._console.decode("utf-8", "replace")[start:]

    # -- breakpoints -----------------------------------------------------------

    def breakpoints(self) -> list[api.Breakpoint]:
        with self._lock:
            return self._gdb.breakpoints()

    def add_breakpoint(self, location: str) -> api.Breakpoint:
        with self._lock:
            return self._gdb.add_breakpoint(location)

    def add_watchpoint(self, expression: str,
                       kind: api.BreakpointKind = api.BreakpointKind.WATCH) -> api.Breakpoint:
        with self._lock:
            return self._gdb.add_watchpoint(expression, kind)

    def delete_breakpoint(self, number: int) -> None:
        with self._lock:
            self._gdb.delete_breakpoint(number)

    def enable_breakpoint(self, number: int, enabled: bool) -> None:
        with self._lock:
            self._gdb.enable_breakpoint(number, enabled)

    # -- forward ---------------------------------------------------------------

    def step(self) -> api.StopEvent:
        return self._forward(self._gdb.step)

    def next(self) -> api.StopEvent:
        return self._forward(self._gdb.next)

    def stepi(self) -> api.StopEvent:
        with self._lock:
            before = self._stop()
            event = self._forward(self._gdb.stepi)
            if event.reason is api.StopReason.STEP:
                self._remember(before)
            return event

    def finish(self) -> api.StopEvent:
        return self._forward(self._gdb.finish)

    def cont(self, progress: api.ProgressCallback | None = None) -> api.StopEvent:
        """Continue to a breakpoint or watchpoint, or to the end of the recording
        (a replay-break there, so the replay never runs off its log)."""
        with self._lock:
            s = self._s()
            start = self._icount
            end = self._end_icount
            _progress(progress)("continuing", -1.0)
            if end is not None and end > start:
                self._loop.run(s.vm.qmp("replay-break", {"icount": end}))
            try:
                stop = self._gdb.cont(timeout=None)
            except SbtuiError:
                if self._replay_exited():
                    return self._ran_off_end(start)
                raise
            finally:
                if end is not None and s.vm.alive:
                    try:
                        self._loop.run(s.vm.qmp("replay-delete-break"))
                    except SbtuiError:
                        pass
            ended = self._settle_forward(start)
            if ended is not None:
                return ended
            event = stop.to_event(self._icount)
            if end is not None and self._icount >= end:
                return api.StopEvent(api.StopReason.END, self._icount, stop.pc,
                                     "end of the recording")
            return event

    # -- backward and jumps -------------------------------------------------------

    def reverse_stepi(self) -> api.StopEvent:
        """Back to the stop a stepi from which leads here: from a handler's
        first instruction, the faulting or interrupted one."""
        with self._lock:
            self._s()
            here = self._stop()
            back = self._came_from.get(here)
            if back is None:
                if self._icount <= self._checkpoints[0].icount:
                    return api.StopEvent(api.StopReason.START, self._icount, here[1],
                                         "start of the recording")
                back = self._walk(here) or (here[0] - 1, -1)
            self._go_to_stop(back)
            return api.StopEvent(api.StopReason.STEP, self._icount, self._gdb.pc(),
                                 "stepped back one instruction")

    def reverse_continue(self, progress: api.ProgressCallback | None = None) -> api.StopEvent:
        """Back to the last breakpoint/watchpoint hit before here, or the start."""
        with self._lock:
            self._s()
            say = _progress(progress)
            here = self._icount
            upper = here
            while True:
                seg_start = self._segment_start(upper)
                if seg_start is None:
                    first = self._checkpoints[0].icount
                    self._replay_to(first, progress)
                    return api.StopEvent(api.StopReason.START, first, self._gdb.pc(),
                                         "start of the recording: no earlier hit")
                say(f"searching icount {seg_start}..{upper} for breakpoint hits", -1.0)
                self._replay_to(seg_start, progress)
                # Below the first stretch, hits at count ``upper`` itself count
                # too: the stretch searched before started at replay-break's
                # stop there, which may come after them.
                last_hit = self._last_hit_before(upper, inclusive=upper != here)
                if last_hit is not None:
                    icount, event = last_hit
                    self._go_to_stop((icount, event.pc), progress)
                    return event
                if seg_start <= self._checkpoints[0].icount:
                    return api.StopEvent(api.StopReason.START, self._icount, self._gdb.pc(),
                                         "start of the recording: no earlier hit")
                upper = seg_start

    def _segment_start(self, upper: int) -> int | None:
        """The nearest snapshot point (anchor or checkpoint) strictly before ``upper``."""
        points = [a.icount for a in self._anchors if a.icount < upper]
        points += [cp.icount for cp in self._checkpoints if cp.icount < upper]
        return max(points) if points else None

    def _last_hit_before(self, upper: int, inclusive: bool = False):
        """Run forward from here to ``upper`` with breakpoints armed; the last hit
        as ``(icount, StopEvent)``, or None. ``inclusive``: up to the last stop
        at count ``upper`` (a hit on an instruction that then faults shares
        its count with the handler's first instruction)."""
        s = self._s()
        last = None
        # gdb steps over a breakpoint under the PC when it resumes, so a hit
        # right where this stretch starts (an anchor taken at a stop) is seen here.
        pc = self._gdb.pc()
        for b in self._gdb.breakpoints():
            if b.enabled and b.kind is api.BreakpointKind.BREAKPOINT and b.address == pc:
                name, off = self._gdb.symbolize(pc)
                where = f"{name}+{off:#x}" if name and off else (name or f"{pc:#x}")
                last = (self._icount, api.StopEvent(api.StopReason.BREAKPOINT, self._icount, pc,
                                                    f"breakpoint {b.number}, {where}"))
        self._loop.run(s.vm.qmp("replay-break", {"icount": upper + 1 if inclusive else upper}))
        try:
            while True:
                stop = self._gdb.cont(timeout=None)
                self._gdb.invalidate()
                icount = self._refresh_icount()
                past = icount > upper if inclusive else icount >= upper
                if past or stop.stop_reason not in (api.StopReason.BREAKPOINT,
                                                    api.StopReason.WATCHPOINT):
                    break
                last = (icount, stop.to_event(icount))
        finally:
            if s.vm.alive:
                try:
                    self._loop.run(s.vm.qmp("replay-delete-break"))
                except SbtuiError:
                    pass
        return last

    def goto_icount(self, icount: int, progress: api.ProgressCallback | None = None) -> api.StopEvent:
        with self._lock:
            self._s()
            self._replay_to(int(icount), progress)
            return api.StopEvent(api.StopReason.TARGET, self._icount, self._gdb.pc(),
                                 f"at icount {self._icount}")

    def goto_checkpoint(self, checkpoint_id: str,
                        progress: api.ProgressCallback | None = None) -> api.StopEvent:
        with self._lock:
            cp = self.rec.checkpoint(checkpoint_id)
            self._s()
            self._replay_to(cp.icount, progress)
            return api.StopEvent(api.StopReason.TARGET, self._icount, self._gdb.pc(),
                                 f"at checkpoint {cp.index}")

    # -- ending ------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._gdb.close()
        except Exception:  # close never raises
            pass
        session, self._session = self._session, None
        if session is not None:
            try:
                self._loop.run(session.close(), timeout=60)
            except Exception:
                pass
        self._loop.close()
        shutil.rmtree(self._workdir, ignore_errors=True)


def _progress(cb: api.ProgressCallback | None) -> Callable[[str, float], None]:
    def say(phase: str, fraction: float) -> None:
        if cb is not None:
            cb(api.ReplayProgress(phase, fraction))
    return say
