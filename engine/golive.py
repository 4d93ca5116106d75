"""Go live: a normal VM (no replay) started from any checkpoint of a recording.

To explore "what if" from a moment of a recording: the checkpoint's state is
loaded into a QEMU that does not replay,
which then runs freely: new input, no log, still with ``-icount`` (the state
holds icount timers a QEMU without it cannot load, so this is TCG). ::

    async with LiveFromCheckpoint(rec, rec.checkpoint(3)) as live:
        await live.vm.console.wait_for("...", timeout=30)

Promises: the guest resumes where the checkpoint left it (its memory, devices
and console carry on); the recorded machine is used, minus record/replay
(``rr=`` and the ``replay`` section of the state, which such a QEMU does not
know); the state is streamed from the store over a pipe; the VM is shut
down when the ``async with`` ends, also on error and cancellation.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from engine.qemu import QemuProcess, find_qemu
from engine.qemu.incoming import load_stream
from engine.recording.format import CheckpointEntry, Recording
from engine.stream.sections import copy_without


class LiveFromCheckpoint:
    """Owns one plain QEMU started from a checkpoint."""

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
        self.workdir = Path(tempfile.mkdtemp(prefix="sbtui-golive-"))
        # -icount stays (no record/replay): the state holds icount timers that a
        # QEMU without icount has nowhere to load (vmstate.c asserts).
        spec = self.rec.machine_spec().replace(
            rr=None, rrfile=None, rrsnapshot=None,
            incoming_defer=True, paused=True, vmstate_image=None,
            debugcon_path=str(self.workdir / "debugcon.out"))
        self.vm = QemuProcess(spec, workdir=self.workdir / "qemu", qemu_binary=find_qemu(),
                              console_path=self.console_path)
        await self.vm.launch()
        state = self.workdir / "state"
        # The store streams the checkpoint; describe() needs a seekable copy.
        await asyncio.to_thread(self._export, state)

        def feed(dst) -> None:
            with open(state, "rb") as src:
                copy_without(src, dst, ["replay"])

        await load_stream(self.vm, feed, what=f"checkpoint {self.checkpoint.index} as a live VM")
        state.unlink()
        await self.vm.qmp("cont")

    def _export(self, path: Path) -> None:
        with open(path, "wb") as f:
            self.rec.store.export_stream(self.checkpoint.store_id, f)

    async def close(self) -> None:
        vm, self.vm = self.vm, None
        try:
            if vm is not None:
                await vm.shutdown(timeout=5.0)
        finally:
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
