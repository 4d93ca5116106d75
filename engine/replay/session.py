"""A deterministic replay of a recording, started from one of its checkpoints.

:class:`ReplaySession` is the one owner of a replay QEMU::

    async with ReplaySession(rec, rec.checkpoint(3)) as rs:
        await rs.run_to(icount)          # exact: QMP replay-break
        stream = await rs.snapshot()     # the state here, as a migration stream
        await rs.run_to_end()            # until the log ends and QEMU exits

Promises:

* On entry the VM is paused at exactly the checkpoint's instruction count
  (checked with ``query-replay``; a mismatch is a :class:`ReplayError`). The
  state is streamed out of the page store (or from ``source``, e.g. a
  replay-mode snapshot a debugger took) through a pipe handed to QEMU with
  SCM_RIGHTS (``migrate-incoming fd:``): no temporary stream file, no shell.
  ``restore_s`` says how long that took.
* No ``loadvm`` in a running replay: QEMU 10 deadlocks there (the vCPU
  thread waits for the replay mutex that ``load_snapshot``'s run_on_cpu
  holds; seen 3 of 3 times, and it is the hang behind QEMU's own occasional
  reverse-stepi hang). Going back means a new session from a stream.
* The machine is the recorded one, with ``rr=replay``: same command line apart
  from ``rr=`` and the per-run plumbing (``-incoming defer``, ``-S``, a fresh
  VM-state image for snapshots, an optional gdb stub).
* A replay that stops advancing (the icount is stuck while the VM runs, as
  with a restored HPET, see qemu-facts.md) raises :class:`ReplayError` after
  ``stall_s`` seconds instead of hanging; so does a QEMU that dies.
* Leaving the ``async with`` (normally, on error or on cancellation) shuts
  QEMU down and removes the session's work directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable

from engine.errors import QemuError, QemuTimeoutError, ReplayError, SbtuiError
from engine.qemu import QemuProcess, find_qemu, find_qemu_img, qemu_version
from engine.qemu.incoming import load_stream
from engine.recording.format import CheckpointEntry, Recording
from engine.stream.qcow2 import open_vmstate

# How long a replay may go without its instruction count moving before it is
# declared stalled. Idle stretches replay instantly (the clock warps come from
# the log), so a real replay never sits still this long.
DEFAULT_STALL_S = 20.0
POLL_S = 0.25

Progress = Callable[[str], None]


def make_vmstate_image(path: Path) -> Path:
    """A small qcow2 that holds the VM state of replay-mode snapshots (facts: an orphan node)."""
    out = subprocess.run([find_qemu_img(), "create", "-q", "-f", "qcow2", str(path), "1M"],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise QemuError(f"qemu-img create {path} failed: {out.stderr.strip()}",
                        exit_code=out.returncode)
    return path


class ReplaySession:
    """One replay QEMU, restored from one checkpoint of a recording."""

    def __init__(self, rec: Recording, checkpoint: CheckpointEntry, *,
                 gdb: str | None = None, workdir: str | Path | None = None,
                 stall_s: float = DEFAULT_STALL_S, progress: Progress | None = None,
                 restore_timeout: float = 120.0,
                 source: Callable[[BinaryIO], object] | None = None,
                 start_icount: int | None = None):
        """``source``, when given, writes the state to restore (a migration
        stream taken from this recording's replay, e.g. a debugger's anchor)
        instead of the store's copy of ``checkpoint``; ``start_icount`` is then
        the instruction count that state is at."""
        self.rec = rec
        self.checkpoint = checkpoint
        self.source = source
        self.start_icount = checkpoint.icount if start_icount is None else start_icount
        self.gdb = gdb
        self.stall_s = stall_s
        self.restore_timeout = restore_timeout
        self._progress = progress or (lambda _msg: None)
        self._workdir_arg = Path(workdir) if workdir else None
        self.workdir: Path | None = None
        self.vm: QemuProcess | None = None
        self.restore_s: float | None = None
        self._snapshots = 0

    # -- lifetime ---------------------------------------------------------

    async def __aenter__(self) -> "ReplaySession":
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        binary = find_qemu()
        self.rec.check_qemu(qemu_version(binary))
        if self._workdir_arg is not None:
            self.workdir = self._workdir_arg
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="sbtui-replay-"))
        log = await asyncio.to_thread(self.rec.replay_log, self.workdir)
        vmstate = await asyncio.to_thread(make_vmstate_image, self.workdir / "vmstate.qcow2")
        spec = self.rec.machine_spec().with_rr("replay").replace(
            rrfile=str(log), vmstate_image=str(vmstate), incoming_defer=True, paused=True,
            debugcon_path=str(self.workdir / "debugcon.out"), gdb=self.gdb)
        self.vm = QemuProcess(spec, workdir=self.workdir / "qemu",
                              console_path=self.workdir / "console.out", qemu_binary=binary)
        t0 = time.monotonic()
        self._progress(f"starting replay QEMU for {self._what()}")
        await self.vm.launch()
        self._progress(f"restoring {self._what()} (icount {self.start_icount})")
        await self._load_checkpoint()
        self.restore_s = time.monotonic() - t0
        here = await self.icount()
        if here != self.start_icount:
            raise ReplayError(f"{self._what()} restored at icount {here}, "
                              f"but it was taken at {self.start_icount}")

    def _what(self) -> str:
        if self.source is None:
            return f"checkpoint {self.checkpoint.index}"
        return f"the snapshot at icount {self.start_icount}"

    async def _load_checkpoint(self) -> None:
        store = self.rec.store

        def feed(dst) -> None:
            if self.source is not None:
                self.source(dst)
            else:
                store.export_stream(self.checkpoint.store_id, dst)

        try:
            await load_stream(self._vm(), feed, what=self._what(), timeout=self.restore_timeout)
        except QemuTimeoutError as err:
            raise ReplayError(str(err).splitlines()[0]) from err
        # An incoming migration leaves block nodes inactive until the first
        # 'cont'; the VM-state image must be active for savevm at this point.
        await self._vm().qmp("blockdev-set-active", {"active": True})

    async def close(self) -> None:
        vm, self.vm = self.vm, None
        try:
            if vm is not None:
                await vm.shutdown(timeout=5.0)
        finally:
            if self.workdir is not None and self._workdir_arg is None:
                shutil.rmtree(self.workdir, ignore_errors=True)

    # -- where the replay stands -----------------------------------------

    def _vm(self) -> QemuProcess:
        if self.vm is None:
            raise ReplayError("the replay is not running")
        return self.vm

    async def icount(self) -> int:
        info = await self._vm().qmp("query-replay", timeout=10)
        return int(info["icount"])

    async def running(self) -> bool:
        info = await self._vm().qmp("query-status", timeout=10)
        return bool(info.get("running"))

    def console_bytes(self) -> bytes:
        """What the guest wrote to its serial console since the restore."""
        vm = self._vm()
        return vm.console.output if vm.console is not None else b""

    # -- moving forward ---------------------------------------------------

    async def run_to(self, icount: int, *, timeout: float | None = None) -> int:
        """Run forward until exactly ``icount``; returns it. Pauses there."""
        vm = self._vm()
        here = await self.icount()
        if icount < here:
            raise ReplayError(f"cannot run backwards from icount {here} to {icount}: "
                              "restore an earlier checkpoint")
        if icount == here:
            return here
        await vm.qmp("replay-break", {"icount": icount})
        try:
            with vm.listen("STOP", "SHUTDOWN") as events:
                await vm.qmp("cont")
                await self._wait_stop(events, target=icount, timeout=timeout)
        finally:
            if vm.alive:
                with contextlib.suppress(SbtuiError):
                    await vm.qmp("replay-delete-break")
        here = await self.icount()
        if here != icount:
            raise ReplayError(f"replay stopped at icount {here}, not at the requested {icount}")
        return here

    async def run_to_end(self, *, timeout: float | None = None) -> int:
        """Run until the replay log ends and QEMU exits; returns QEMU's exit code."""
        vm = self._vm()
        with vm.listen("STOP", "SHUTDOWN") as events:
            await vm.qmp("cont")
            try:
                await self._wait_stop(events, target=None, timeout=timeout)
            except QemuError:
                if vm.alive:
                    raise
        return await vm.wait_exit(timeout=30)

    async def _wait_stop(self, events, *, target: int | None, timeout: float | None) -> None:
        """Wait for STOP (or SHUTDOWN / exit when ``target`` is None), watching for stalls."""
        vm = self._vm()
        start = time.monotonic()
        last_icount = -1
        last_move = start
        while True:
            try:
                ev = await events.get(timeout=POLL_S)
            except QemuTimeoutError:
                ev = None
            except QemuError:
                if target is None and vm.returncode is not None:
                    return  # the log ended and QEMU left: what run_to_end waits for
                raise
            if ev is not None:
                name = ev.get("event")
                if name == "STOP" and target is not None:
                    return
                if name == "SHUTDOWN":
                    if target is None:
                        return
                    raise ReplayError(f"the replay shut down before reaching icount {target} "
                                      f"(at {await self.icount()}); the recording ends earlier")
                continue
            now = time.monotonic()
            if timeout is not None and now - start > timeout:
                raise ReplayError(f"the replay did not reach {'icount ' + str(target) if target else 'its end'} "
                                  f"within {timeout:g} s (at icount {await self.icount()})")
            here = await self.icount()
            if here != last_icount:
                last_icount, last_move = here, now
            elif now - last_move > self.stall_s:
                raise ReplayError(f"the replay stalled at icount {here}: no progress for "
                                  f"{self.stall_s:g} s (the checkpoint does not restore exactly)")

    # -- taking the state -------------------------------------------------

    @property
    def vmstate_image(self) -> Path:
        """The qcow2 holding this replay's snapshots (it outlives the session
        when the caller gave the work directory)."""
        assert self.workdir is not None
        return self.workdir / "vmstate.qcow2"

    async def save_snapshot(self, name: str) -> None:
        """``savevm NAME`` into :attr:`vmstate_image` (the VM must be paused)."""
        await self._vm().hmp(f"savevm {name}", timeout=120)

    async def snapshot(self) -> BinaryIO:
        """The paused VM's state now, as a migration stream (savevm in replay mode).

        The caller closes the returned reader.
        """
        vm = self._vm()
        if await self.running():
            raise ReplayError("snapshot needs a paused replay")
        self._snapshots += 1
        name = f"sbtui-{self._snapshots}"
        await self.save_snapshot(name)
        return await asyncio.to_thread(open_vmstate, self.vmstate_image, name)
