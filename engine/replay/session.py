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

How the restore is kept quick (``timings`` holds each phase's seconds, also
logged at DEBUG level): the QEMU version check runs while the work files are
made and QEMU starts (it is awaited before any state is loaded, and a
version mismatch is the error reported even when QEMU itself failed first);
the VM-state image is copied from a template (:mod:`engine.qemu.vmstate`)
instead of a ``qemu-img`` run; a finished recording's replay log is used in
place, read-only (QEMU opens it ``rb``); the default work directory is on
tmpfs; the stream is produced from the start of :meth:`start` into a
bounded buffer (:class:`~engine.qemu.incoming.Prefetch`), so the export
overlaps making the files and starting QEMU; the wait for the loaded state is
event-driven (:func:`~engine.qemu.incoming.load_stream`). Guest RAM does not
go through the pipe: when the state comes from the store and the work
directory is on a tmpfs with room for all of guest RAM, the machine's RAM is a shared file there
(``memory-backend-file``) and the export writes the RAM pages into it
(:class:`~engine.stream.migration.RamFile`) while QEMU starts; QEMU then
loads only device state and the small blocks (firmware, ROMs), and leaves
RAM as the file has it (QEMU writes no guest RAM before a stream loads:
tests/test_replay_restore.py). The VM-state image is activated
(``blockdev-set-active``) only when a snapshot is taken: an active qcow2
makes the flush QEMU does when gdb attaches (``vm_stop``) cost an fdatasync,
40-140 ms on this machine's disk, on every attach.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable

from engine.errors import QemuError, QemuTimeoutError, ReplayError, SbtuiError
from engine.paths import remove_orphaned_dirs
from engine.qemu import QemuProcess, find_qemu, qemu_version
from engine.qemu.machine import RAM_BLOCK, MachineSpec
from engine.qemu.incoming import Prefetch, load_stream
from engine.recording.format import CheckpointEntry, Recording
from engine.qemu.vmstate import scratch_base, vmstate_image
from engine.stream.migration import RamFile
from engine.stream.qcow2 import open_vmstate

log = logging.getLogger(__name__)

# How long a replay may go without its instruction count moving before it is
# declared stalled. Idle stretches replay instantly (the clock warps come from
# the log), so a real replay never sits still this long.
DEFAULT_STALL_S = 20.0
POLL_S = 0.25

Progress = Callable[[str], None]


WORKDIR_PREFIX = "sbtui-replay-"
RAM_FILE = "ram"
# Free tmpfs beyond the guest's RAM size that a RAM file needs (else the pipe).
RAM_FILE_SPARE = 256 << 20


def make_vmstate_image(path: Path) -> Path:
    """A fresh qcow2 that holds the VM state of replay-mode snapshots (facts: an orphan node)."""
    return vmstate_image(path)


def remove_orphaned_workdirs(base: Path) -> None:
    """Remove work directories of sessions whose process was killed outright."""
    remove_orphaned_dirs(base, WORKDIR_PREFIX)


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
        self.timings: dict[str, float] = {}
        self._prefetch: Prefetch | None = None
        self._ram: RamFile | None = None
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
        t0 = time.monotonic()
        binary = find_qemu()
        version = asyncio.ensure_future(asyncio.to_thread(qemu_version, binary))
        checked = False
        try:
            self.workdir = self._make_workdir()
            log_path, vmstate = await _gather_threads(
                lambda: self.rec.replay_log(self.workdir),
                lambda: make_vmstate_image(self.workdir / "vmstate.qcow2"))
            recorded = self.rec.machine_spec()
            self._ram = self._ram_file(recorded)
            self._phase("replay log and VM-state image", t0)
            # The stream is produced from now on, while QEMU starts;
            # load_stream drains what is ready, then the rest. (Started after
            # the files: its Python work would hold up theirs for the GIL.)
            self._prefetch = Prefetch(self._feed)
            spec = recorded.with_rr("replay").replace(
                rrfile=str(log_path), vmstate_image=str(vmstate), incoming_defer=True,
                paused=True, debugcon_path=str(self.workdir / "debugcon.out"), gdb=self.gdb)
            if self._ram is not None:
                spec = spec.with_memory_file(self.workdir / RAM_FILE)
            self.vm = QemuProcess(spec, workdir=self.workdir / "qemu",
                                  console_path=self.workdir / "console.out", qemu_binary=binary)
            self._progress(f"starting replay QEMU for {self._what()}")
            t = time.monotonic()
            await self.vm.launch()
            self._phase("QEMU start until QMP ready", t)
            # Before any state goes in: a replay needs the recording's QEMU major.
            found = await version
            checked = True
            self.rec.check_qemu(found)
        except BaseException as err:
            if not checked:
                await _version_error_first(self.rec, version, err)
            raise
        self._progress(f"restoring {self._what()} (icount {self.start_icount})")
        await self._load_checkpoint()
        t = time.monotonic()
        here = await self.icount()
        self._phase("query-replay", t)
        self.restore_s = time.monotonic() - t0
        self._phase("restore in all", t0)
        if here != self.start_icount:
            raise ReplayError(f"{self._what()} restored at icount {here}, "
                              f"but it was taken at {self.start_icount}")

    def _ram_file(self, spec: MachineSpec) -> RamFile | None:
        """The file for guest RAM of the machine ``spec``, when the state's RAM
        pages go there (module doc)."""
        base = scratch_base()
        if (self.source is not None or base is None or self.workdir is None
                or not self.workdir.is_relative_to(base)
                or any("memory-backend" in a for a in spec.extra_args)):
            return None
        size = spec.memory_mib << 20
        st = os.statvfs(base)
        if st.f_bavail * st.f_frsize < size + RAM_FILE_SPARE:
            # a guest touching a page the full tmpfs cannot hold would die of SIGBUS
            return None
        fd = os.open(self.workdir / RAM_FILE, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     0o600)
        try:
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            raise
        return RamFile(RAM_BLOCK, fd, size)

    def _make_workdir(self) -> Path:
        if self._workdir_arg is not None:
            self._workdir_arg.mkdir(parents=True, exist_ok=True)
            return self._workdir_arg
        base = scratch_base()
        if base is not None:
            remove_orphaned_workdirs(base)
        return Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-", dir=base))

    def _phase(self, name: str, since: float) -> None:
        seconds = time.monotonic() - since
        self.timings[name] = seconds
        log.debug("replay of %s: %s %.3f s", self._what(), name, seconds)

    def _what(self) -> str:
        if self.source is None:
            return f"checkpoint {self.checkpoint.index}"
        return f"the snapshot at icount {self.start_icount}"

    def _feed(self, dst: BinaryIO) -> None:
        if self.source is not None:
            self.source(dst)
        else:
            self.rec.store.export_stream(self.checkpoint.store_id, dst, ram=self._ram)

    async def _load_checkpoint(self) -> None:
        assert self._prefetch is not None
        if self._prefetch.failed:   # e.g. a damaged store: no use streaming the rest
            raise self._prefetch.error  # type: ignore[misc]
        t = time.monotonic()
        try:
            await load_stream(self._vm(), self._prefetch, what=self._what(),
                              timeout=self.restore_timeout)
        except QemuTimeoutError as err:
            raise ReplayError(str(err).splitlines()[0]) from err
        self._phase("state streamed in (migrate-incoming until completed)", t)

    async def close(self) -> None:
        vm, self.vm = self.vm, None
        prefetch, self._prefetch = self._prefetch, None
        try:
            if vm is not None:
                await vm.shutdown(timeout=5.0)
        finally:
            try:
                if prefetch is not None:
                    await asyncio.to_thread(prefetch.cancel)
            finally:
                ram, self._ram = self._ram, None
                if ram is not None:
                    os.close(ram.fd)
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
        vm = self._vm()
        # An incoming migration leaves block nodes inactive until the first
        # QMP 'cont' (a gdb 'continue' does not activate them); savevm needs
        # the VM-state image active. Activating an active node is a no-op.
        await vm.qmp("blockdev-set-active", {"active": True})
        await vm.hmp(f"savevm {name}", timeout=120)

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


async def _gather_threads(*calls: Callable[[], object]) -> list:
    """Run ``calls`` in threads at once; raise the first failure only after all
    have finished (none is left writing into a directory being removed)."""
    results = await asyncio.gather(*(asyncio.to_thread(c) for c in calls),
                                   return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


async def _version_error_first(rec: Recording, version: asyncio.Future, err: BaseException) -> None:
    """When a start failed, a QEMU of another major version is the reason to
    report (its QEMU may fail in any way first). Raises that, else returns."""
    try:
        found = await asyncio.wait_for(asyncio.shield(version), 30)
    except BaseException:  # noqa: BLE001 - the original error stands
        return
    rec.check_qemu(found)  # raises RecordingError, chained to ``err`` by the except block
