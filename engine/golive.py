"""Go live: a normal VM (no replay) started from any checkpoint of a recording.

To explore "what if" from a moment of a recording: the checkpoint's state is
loaded into a QEMU that does not replay, which then runs freely (new input,
no replay log). Two ways, both through :func:`load_checkpoint`:

* :class:`LiveFromCheckpoint` runs the VM and records nothing::

      async with LiveFromCheckpoint(rec, rec.checkpoint(3)) as live:
          await live.vm.console.wait_for("...", timeout=30)

* :class:`GoLiveRecorder` records the new run as a live recording
  (background-snapshot checkpoints, the schedule and checkpointer of
  :class:`engine.recording.live.LiveRecorder`, which it is). Its manifest's
  ``source["golive"]`` names where it came from (:func:`origin_of`), its
  machine is the source's (guest files copied in), so it opens like any live
  recording and going live from one of its checkpoints works again.
  :func:`default_golive_path` names a new recording next to the source.

Which checkpoints can go live: those of a record-mode recording (the state
loses its ``replay`` section; ``-icount`` stays, because the state holds
icount timers a QEMU without it cannot load, so this is TCG), and those of a
live recording made by ``sbtui record --live`` or by going live (the machine
is the recorded one, with ``-icount`` only if it had it). Not those of
``sbtui attach``: sbtui does not know how the user's QEMU was started
(:func:`golive_spec` raises ``UsageError`` saying so).

Promises: the guest resumes where the checkpoint left it (memory, devices,
console carry on); the state is streamed from the store over a pipe; the VM
is shut down when the ``async with`` ends or the recorder's ``run`` returns,
also on error and cancellation; ``progress`` (called from the thread that
feeds QEMU, and the recorder's loop) says how far the load has come.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable

from engine.errors import UsageError
from engine.qemu import MachineSpec, QemuProcess, find_qemu
from engine.qemu.incoming import load_stream
from engine.recording.format import CheckpointEntry, Manifest, Recording
from engine.recording.live import EventCallback, LiveRecorder
from engine.stream.sections import copy_without

# (phase, fraction 0..1, or negative when unknown)
LoadProgress = Callable[[str, float], None]


def golive_spec(rec: Recording) -> MachineSpec:
    """The recorded machine as a plain QEMU (no record/replay, no gdb, no VM-state image).

    Its ``debugcon_path`` is still the source's: callers give their own (the
    device must stay, the file must not be the recording's). ``UsageError``
    when there is no machine to start: checkpoints of ``sbtui attach``.
    """
    m = rec.manifest
    if m.kind == "live" and not m.spec.get("kernel"):
        how = "a QEMU you started (sbtui attach)" if m.source.get("qmp_socket") else \
            "a QEMU whose machine it does not know"
        raise UsageError(
            f"{rec.path}: its checkpoints are of {how}; sbtui does not know that QEMU's command "
            "line (devices, firmware, kernel), so it cannot start a checkpoint as a new VM. "
            "Start a QEMU like yours with '-incoming defer' and load the checkpoint into it "
            "('sbtui store export' writes its migration stream)")
    spec = rec.machine_spec()
    if not spec.kernel:
        raise UsageError(f"{rec.path}: the recorded machine has no kernel; there is nothing to "
                         "start a checkpoint with")
    return spec.replace(rr=None, rrfile=None, rrsnapshot=None, vmstate_image=None, gdb=None,
                        incoming_defer=False, paused=False)


def origin_of(rec: Recording, checkpoint: CheckpointEntry) -> dict:
    """What a go-live recording's manifest says about where it came from."""
    return {"recording": str(Path(rec.path).absolute()), "kind": rec.manifest.kind,
            "checkpoint": checkpoint.index, "store_id": checkpoint.store_id,
            "icount": checkpoint.icount, "guest_time_ns": checkpoint.guest_time_ns,
            "started": time.time()}


def default_golive_path(rec: Recording, checkpoint: CheckpointEntry) -> Path:
    """``<REC>-golive-<K>-<YYYYmmdd-HHMMSS>`` next to the recording (a suffix when taken)."""
    base = Path(rec.path).absolute()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = base.with_name(f"{base.name}-golive-{checkpoint.index}-{stamp}")
    n = 2
    while path.exists():
        path = base.with_name(f"{base.name}-golive-{checkpoint.index}-{stamp}-{n}")
        n += 1
    return path


class _Counting:
    """A write-only file that reports how many of ``total`` bytes went through."""

    def __init__(self, dst: BinaryIO, total: int, progress: LoadProgress, what: str):
        self._dst, self._total, self._progress, self._what = dst, max(1, total), progress, what
        self._done = 0
        self._said = -1.0

    def write(self, data) -> int:
        n = self._dst.write(data)
        self._done += len(data)
        fraction = min(1.0, self._done / self._total)
        if fraction - self._said >= 0.02 or fraction >= 1.0:   # every 2 %: a few dozen calls
            self._said = fraction
            self._progress(self._what, fraction)
        return n


async def load_checkpoint(vm: QemuProcess, rec: Recording, checkpoint: CheckpointEntry, *,
                          progress: LoadProgress | None = None) -> None:
    """Load ``checkpoint`` into ``vm`` (started with ``-incoming defer``); it stays paused."""
    say = progress or (lambda _phase, _fraction: None)
    work = Path(tempfile.mkdtemp(prefix="sbtui-golive-state-"))
    try:
        state = work / "state"
        say(f"reading checkpoint #{checkpoint.index} from the store", -1.0)

        def export() -> None:
            # The store streams the checkpoint; copy_without needs a seekable copy.
            with open(state, "wb") as f:
                rec.store.export_stream(checkpoint.store_id, f)

        await asyncio.to_thread(export)
        total = state.stat().st_size
        what = f"loading checkpoint #{checkpoint.index} ({total >> 20} MiB)"

        def feed(dst) -> None:
            with open(state, "rb") as src:
                out = _Counting(dst, total, say, what) if progress is not None else dst
                copy_without(src, out, ["replay"])

        await load_stream(vm, feed, what=f"checkpoint {checkpoint.index} as a live VM")
    finally:
        shutil.rmtree(work, ignore_errors=True)


class LiveFromCheckpoint:
    """Owns one plain QEMU started from a checkpoint (nothing recorded)."""

    def __init__(self, rec: Recording, checkpoint: CheckpointEntry, *,
                 console_path: str | Path | None = None):
        self.rec = rec
        self.checkpoint = checkpoint
        self.console_path = console_path
        self.vm: QemuProcess | None = None
        self.workdir: Path | None = None

    async def __aenter__(self) -> "LiveFromCheckpoint":
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        spec = golive_spec(self.rec)
        self.workdir = Path(tempfile.mkdtemp(prefix="sbtui-golive-"))
        spec = spec.replace(incoming_defer=True, paused=True,
                            debugcon_path=str(self.workdir / "debugcon.out"))
        self.vm = QemuProcess(spec, workdir=self.workdir / "qemu", qemu_binary=find_qemu(),
                              console_path=self.console_path)
        await self.vm.launch()
        await load_checkpoint(self.vm, self.rec, self.checkpoint)
        await self.vm.qmp("cont")

    async def close(self) -> None:
        vm, self.vm = self.vm, None
        try:
            if vm is not None:
                await vm.shutdown(timeout=5.0)
        finally:
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)


class GoLiveRecorder(LiveRecorder):
    """Go live from ``checkpoint`` of ``source`` and record the new run into ``path``.

    A :class:`LiveRecorder` whose guest starts from the checkpoint instead of
    booting: same schedule (``interval``, ``duration``, ``checkpoint_now``,
    ``pause``/``resume``, ``stop``), same checkpointer, same console (ours).
    The recording keeps the source's machine (``-icount`` included when the
    source had it) and names the source in ``manifest.source["golive"]``.
    ``progress(phase, fraction)`` follows the start (reading, loading).
    """

    def __init__(self, source: Recording, checkpoint: CheckpointEntry, path: str | Path, *,
                 interval: float = 2.0, duration: float | None = None,
                 on_event: EventCallback | None = None, progress: LoadProgress | None = None,
                 qemu_binary: str | None = None, launch_timeout: float = 60.0,
                 close_source: bool = False):
        spec = golive_spec(source)
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UsageError(f"{path}: exists; the go-live recording needs a new path")
        # Guest files become the new recording's own (it must open without the source).
        guest = {k: v for k, v in source.manifest.guest.items()
                 if not (isinstance(v, dict) and "path" in v)}
        self._extra_files = {k: source.path / v["path"] for k, v in source.manifest.guest.items()
                             if isinstance(v, dict) and "path" in v and k not in ("kernel", "initrd")
                             and (source.path / v["path"]).is_file()}
        super().__init__(path, spec, interval=interval, duration=duration, guest_info=guest,
                         on_event=on_event, qemu_binary=qemu_binary, launch_timeout=launch_timeout)
        self.source = source
        self.checkpoint = checkpoint
        self.origin = origin_of(source, checkpoint)
        self.progress = progress or (lambda _phase, _fraction: None)
        self._close_source = close_source   # the caller opened ``source`` for this run only

    async def run(self):
        try:
            return await super().run()
        finally:
            if self._close_source:
                self.source.close()

    def _new_manifest(self, qemu_version_text: str) -> Manifest:
        manifest = super()._new_manifest(qemu_version_text)
        manifest.source = {"golive": dict(self.origin)}
        return manifest

    def _guest_files(self) -> dict[str, Path]:
        return {**super()._guest_files(), **self._extra_files}

    def _stored_spec(self, files) -> MachineSpec:
        # The state holds icount timers when the source ran with -icount: keep it.
        return super()._stored_spec(files).replace(icount_shift=self.spec.icount_shift)

    def _launch_spec(self, rec: Recording) -> MachineSpec:
        return rec.machine_spec().replace(incoming_defer=True, paused=True)

    async def _start_guest(self, vm: QemuProcess) -> None:
        await load_checkpoint(vm, self.source, self.checkpoint, progress=self.progress)
        await vm.qmp("cont")
        self.progress("running", 1.0)


__all__ = ["GoLiveRecorder", "LiveFromCheckpoint", "default_golive_path", "golive_spec",
           "load_checkpoint", "origin_of"]
