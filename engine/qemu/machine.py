"""What a virtual machine is: :class:`MachineSpec`, and the QEMU command line it makes.

A ``MachineSpec`` describes the machine only (memory, machine type, CPU,
kernel, record/replay, VM-state image, debug console, gdb stub). It does not
know the runtime plumbing the process owner adds (QMP monitor, where the serial
console's bytes go, the process name): :meth:`MachineSpec.argv` takes the
console's chardev backend as an argument so the owner can wire it.

Promises:

* ``argv()`` is a pure function of the spec: the same spec gives the same list.
* A spec and ``spec.with_rr("replay")`` give command lines that differ only in
  the ``rr=`` value of ``-icount`` (QEMU's record/replay requires identical
  machines; see shared/notes/qemu-facts.md).
* ``MachineSpec.from_dict(spec.to_dict()) == spec``; the dict holds JSON types
  only, so recordings store it in their manifest. Unknown or malformed fields
  raise :class:`engine.errors.UsageError` naming the field.
* The defaults are the ones that replay on this project's QEMU: ``q35`` with
  ``hpet=off``, TCG, no network.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from engine.errors import UsageError

# Serial console (COM1) and QEMU's debug console port, which the guest uses for
# markers. SeaBIOS also prints its log on 0x402 when it is present.
CONSOLE_CHARDEV_ID = "console"
DEBUGCON_IOBASE = 0x402
# The qcow2 node that holds VM state for savevm/snapshot-save. No device uses
# it ("orphan"), so it never changes what the guest sees.
VMSTATE_NODE = "vmstate"

ACCELS = ("tcg", "kvm")
RR_MODES = ("record", "replay")
SPEC_FORMAT = 1
# The name of guest RAM's block in migration streams (the default backend's id).
RAM_BLOCK = "pc.ram"


@dataclass(frozen=True)
class MachineSpec:
    """One QEMU x86-64 virtual machine. Frozen: derive variants with :meth:`replace`."""

    memory_mib: int = 256
    machine: str = "q35"
    # HPET off: snapshots restored into a replay stall with the HPET on (facts).
    machine_options: tuple[str, ...] = ("hpet=off",)
    accel: str = "tcg"
    cpu: str | None = None          # None: QEMU's default model for the accelerator
    smp: int = 1
    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None
    # Record/replay. ``rr`` needs ``icount_shift`` and ``rrfile``.
    icount_shift: int | None = None
    # sleep=off: an idle vCPU jumps the virtual clock to the next timer at once
    # instead of waiting in real time. Guest time then no longer follows wall
    # time, but QEMU logs no clock-warp checkpoint when the vCPU leaves its
    # execution loop, which a guest busy-wait does every ~10 instructions
    # (PAUSE) and replay pays ~4 us for (the demo guest boots without its two
    # busy-waits, so this matters for other guests; README).
    icount_sleep: bool = True
    rr: str | None = None           # "record", "replay" or None
    rrfile: str | None = None
    rrsnapshot: str | None = None   # replay: start from this snapshot in the vmstate image
    vmstate_image: str | None = None  # qcow2 file attached as the orphan node "vmstate"
    debugcon_path: str | None = None  # isa-debugcon (port 0x402) output file
    gdb: str | None = None          # -gdb device: "tcp:127.0.0.1:PORT" or "unix:PATH,server=on,wait=off"
    incoming_defer: bool = False    # -incoming defer: wait for migrate-incoming
    paused: bool = False            # -S: do not start the vCPUs
    no_reboot: bool = False         # -no-reboot: a guest reset exits QEMU
    log_items: tuple[str, ...] = ()  # -d items; QEMU writes them to stderr, i.e. the log
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        # Accept lists (from JSON or callers) but store tuples so the spec hashes.
        for name in ("machine_options", "log_items", "extra_args"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (tuple, list)):
                raise UsageError(f"machine spec: {name} must be a list of strings, got {value!r}")
            if not all(isinstance(v, str) for v in value):
                raise UsageError(f"machine spec: {name} must be a list of strings, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        def bad(msg: str) -> UsageError:
            return UsageError(f"machine spec: {msg}")

        if not isinstance(self.memory_mib, int) or self.memory_mib < 16:
            raise bad(f"memory_mib must be an integer >= 16, got {self.memory_mib!r}")
        if not isinstance(self.smp, int) or self.smp < 1:
            raise bad(f"smp must be a positive integer, got {self.smp!r}")
        if self.accel not in ACCELS:
            raise bad(f"accel must be one of {', '.join(ACCELS)}, got {self.accel!r}")
        if not isinstance(self.machine, str) or not self.machine or "," in self.machine:
            raise bad(f"machine must be a machine type such as 'q35', got {self.machine!r}")
        if self.rr is not None:
            if self.rr not in RR_MODES:
                raise bad(f"rr must be 'record', 'replay' or None, got {self.rr!r}")
            if self.icount_shift is None:
                raise bad("record/replay (rr) needs icount_shift")
            if not self.rrfile:
                raise bad("record/replay (rr) needs rrfile")
            if self.accel != "tcg":
                raise bad("record/replay needs accel 'tcg' (icount)")
        elif self.rrfile or self.rrsnapshot:
            raise bad("rrfile/rrsnapshot given without rr='record' or 'replay'")
        if self.rrsnapshot and not self.vmstate_image:
            raise bad("rrsnapshot needs vmstate_image (the snapshot lives in it)")
        if self.icount_shift is not None and (
                not isinstance(self.icount_shift, int) or not 0 <= self.icount_shift <= 10):
            raise bad(f"icount_shift must be an integer 0..10, got {self.icount_shift!r}")
        if self.icount_shift is not None and self.accel != "tcg":
            raise bad("icount needs accel 'tcg'")
        if (self.initrd or self.append) and not self.kernel:
            raise bad("initrd/append given without kernel")
        if self.gdb is not None and not (self.gdb.startswith("tcp:") or self.gdb.startswith("unix:")):
            raise bad(f"gdb must start with 'tcp:' or 'unix:', got {self.gdb!r}")
        # These land inside comma-separated QEMU options, where a comma in a
        # path would be misread as the next option. (-kernel/-initrd do not.)
        for name in ("rrfile", "rrsnapshot", "vmstate_image", "debugcon_path"):
            value = getattr(self, name)
            if value is not None and "," in value:
                raise bad(f"{name} must not contain a comma: {value!r}")

    # -- variants ---------------------------------------------------------

    def replace(self, **changes: Any) -> "MachineSpec":
        return dataclasses.replace(self, **changes)

    def with_rr(self, mode: str | None) -> "MachineSpec":
        """The same machine in another record/replay mode (only ``rr`` changes)."""
        return dataclasses.replace(self, rr=mode)

    def with_memory_file(self, path: str | Path) -> "MachineSpec":
        """The same machine with its RAM in the shared file ``path``
        (``memory-backend-file``, ``share=on``): the block keeps its name
        (``pc.ram``, the id of the default RAM backend), so recorded states
        load into it, and this process can read or write guest RAM there."""
        if "," in str(path):
            raise UsageError(f"the RAM file path {path} must not contain a comma")
        backend = (f"memory-backend-file,id={RAM_BLOCK},size={self.memory_mib}M,"
                   f"mem-path={path},share=on,prealloc=off")
        return dataclasses.replace(self, extra_args=(*self.extra_args, "-object", backend,
                                                     "-machine", f"memory-backend={RAM_BLOCK}"))

    # -- command line -----------------------------------------------------

    def argv(self, qemu_binary: str = "qemu-system-x86_64", *,
             console: str = "null") -> list[str]:
        """The QEMU command line for this machine.

        ``console`` is the chardev backend of COM1 without its id, e.g.
        ``"null"``, ``"socket,fd=5"`` or ``"file,path=/tmp/out"``; the process
        owner passes its own socket here.
        """
        machine = ",".join((self.machine, *self.machine_options))
        args = [qemu_binary,
                "-machine", machine,
                "-accel", self.accel]
        if self.cpu:
            args += ["-cpu", self.cpu]
        args += ["-m", str(self.memory_mib), "-smp", str(self.smp),
                 "-nodefaults", "-no-user-config", "-display", "none", "-net", "none"]
        if self.icount_shift is not None:
            icount = f"shift={self.icount_shift}"
            if not self.icount_sleep:
                icount += ",sleep=off"
            if self.rr:
                icount += f",rr={self.rr},rrfile={self.rrfile}"
                if self.rrsnapshot:
                    icount += f",rrsnapshot={self.rrsnapshot}"
            args += ["-icount", icount]
        if self.vmstate_image:
            args += ["-blockdev", f"driver=file,filename={self.vmstate_image},node-name={VMSTATE_NODE}-file",
                     "-blockdev", f"driver=qcow2,file={VMSTATE_NODE}-file,node-name={VMSTATE_NODE}"]
        if self.kernel:
            args += ["-kernel", self.kernel]
        if self.initrd:
            args += ["-initrd", self.initrd]
        if self.append is not None:
            args += ["-append", self.append]
        args += ["-chardev", f"{console},id={CONSOLE_CHARDEV_ID}",
                 "-serial", f"chardev:{CONSOLE_CHARDEV_ID}"]
        if self.debugcon_path:
            args += ["-chardev", f"file,id=debugcon,path={self.debugcon_path}",
                     "-device", f"isa-debugcon,iobase={DEBUGCON_IOBASE:#x},chardev=debugcon"]
        if self.gdb:
            args += ["-gdb", self.gdb]
        if self.log_items:
            args += ["-d", ",".join(self.log_items)]
        if self.paused:
            args.append("-S")
        if self.no_reboot:
            args.append("-no-reboot")
        if self.incoming_defer:
            args += ["-incoming", "defer"]
        args += list(self.extra_args)
        return args

    # -- manifest form ----------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (lists for tuples) with a format number."""
        out: dict[str, Any] = {"format": SPEC_FORMAT}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        if self.icount_sleep:
            del out["icount_sleep"]     # the default: manifests stay as they were before it
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MachineSpec":
        if not isinstance(data, Mapping):
            raise UsageError(f"machine spec: expected a mapping, got {type(data).__name__}")
        data = dict(data)
        fmt = data.pop("format", SPEC_FORMAT)
        if fmt != SPEC_FORMAT:
            raise UsageError(f"machine spec: format {fmt!r} is not supported (expected {SPEC_FORMAT})")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UsageError(f"machine spec: unknown field(s) {', '.join(unknown)}")
        for name, value in data.items():
            if not _type_ok(name, value):
                raise UsageError(f"machine spec: field {name} has the wrong type "
                                 f"({type(value).__name__}: {value!r})")
        return cls(**data)


def _type_ok(name: str, value: Any) -> bool:
    if value is None:
        return name in _NULLABLE
    expected = _FIELD_TYPES[name]
    if isinstance(value, bool) and expected is not bool:
        return False  # JSON true is not a memory size
    return isinstance(value, expected)


_FIELD_TYPES: dict[str, Any] = {
    "memory_mib": int, "machine": str, "machine_options": (list, tuple), "accel": str,
    "cpu": str, "smp": int, "kernel": str, "initrd": str, "append": str,
    "icount_shift": int, "icount_sleep": bool, "rr": str, "rrfile": str, "rrsnapshot": str,
    "vmstate_image": str, "debugcon_path": str, "gdb": str,
    "incoming_defer": bool, "paused": bool, "no_reboot": bool,
    "log_items": (list, tuple), "extra_args": (list, tuple),
}
_NULLABLE = {"cpu", "kernel", "initrd", "append", "icount_shift", "rr", "rrfile",
             "rrsnapshot", "vmstate_image", "debugcon_path", "gdb"}


def gdb_tcp(port: int, host: str = "127.0.0.1") -> str:
    """The ``gdb`` value for a stub on a TCP port (loopback by default)."""
    return f"tcp:{host}:{port}"
