"""Real migration streams from a real QEMU, for tests.

Every helper here starts ``qemu-system-x86_64`` under TCG with
``-nodefaults -display none -net none``, drives it over QMP (the sync
``qemu.qmp.legacy`` wrapper on a UNIX socket) and always ends it: QMP ``quit``
first, then SIGTERM, then SIGKILL, in ``finally``, so no QEMU outlives the
helper, also on an exception or Ctrl-C.

What it makes:

* :func:`make_savevm_qcow2` — an orphan qcow2 "vmstate" node holding one or
  more internal snapshots written by HMP ``savevm`` (the way the recorder
  checkpoints), for the qcow2 reader and the codec;
* :func:`make_migrate_file` — a stream written by QMP ``migrate`` to a
  ``file:`` URI, optionally with the ``background-snapshot`` capability;
* :func:`incoming_vm` — a QEMU that loaded a stream with ``-incoming defer``
  and ``migrate-incoming file:...``, paused, ready to be inspected.

Guest memory that is not all zero without a kernel: ``blob_mib`` MiB of seeded
pseudo-random bytes (with some repeated and some zero pages among them) are
put into guest RAM at ``BLOB_ADDR`` with QEMU's generic ``loader`` device, so
a BIOS-only VM already gives realistic PAGE records and a known pattern to
read back with ``pmemsave``. A kernel and initrd (the demo guest) can be
passed instead, or as well.

This module carries its own tiny, synchronous QEMU owner (:class:`Qemu`), so
the codec's tests do not depend on the project's asyncio owner in
``engine/qemu``; like that one, it names its QEMUs ``sbtui-[TAG-]...`` and
QEMU dies with the Python that started it (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from qemu.qmp import ConnectError
from qemu.qmp.legacy import QEMUMonitorProtocol

QEMU = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
QEMU_IMG = shutil.which("qemu-img") or "qemu-img"

# Guest-physical address of the pseudo-random blob: above the BIOS areas and
# below 64 MiB, so even the smallest test guest holds it.
BLOB_ADDR = 0x1000000


_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before any fork


def _die_with_parent(parent_pid: int):
    def preexec() -> None:
        # QEMU gets SIGKILL when this Python dies, even by SIGKILL.
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(127)
    return preexec


def qemu_name() -> str:
    """``-name`` for a helper QEMU, ``sbtui-[$SBTUI_QEMU_TAG-]streams-UNIQUE`` like the owner's."""
    tag = os.environ.get("SBTUI_QEMU_TAG")
    unique = "streams-" + uuid.uuid4().hex[:12]
    return f"sbtui-{tag}-{unique}" if tag else f"sbtui-{unique}"


class QemuHelperError(RuntimeError):
    """A test helper could not get what it wanted out of QEMU (log tail included)."""


def qemu_available() -> bool:
    return shutil.which("qemu-system-x86_64") is not None and shutil.which("qemu-img") is not None


def make_blob(path: Path, mib: int, seed: int = 0) -> bytes:
    """Write ``mib`` MiB of guest data: mostly random pages, 1/8 repeats, 1/8 zero.

    Returns the bytes written, so tests can compare guest memory against it.
    """
    rng = random.Random(seed)
    pages = []
    npages = mib * 256
    for i in range(npages):
        kind = rng.random()
        if kind < 0.125:
            pages.append(bytes(4096))
        elif kind < 0.25 and pages:
            pages.append(pages[rng.randrange(len(pages))])
        else:
            pages.append(rng.randbytes(4096))
    data = b"".join(pages)
    path.write_bytes(data)
    return data


@dataclass
class VmSpec:
    """How to start the test VM; the same spec must be used to load its streams."""

    machine: str = "q35"
    memory_mib: int = 64
    kernel: Path | None = None
    initrd: Path | None = None
    append: str | None = None
    blob: Path | None = None
    extra: Sequence[str] = ()
    serial: bool = False  # a serial port exists (device state must match on load)

    def argv(self, serial_file: Path | None = None) -> list[str]:
        if serial_file is not None:
            serial = f"file:{serial_file}"
        else:
            serial = "null" if self.serial else "none"
        argv = [
            QEMU, "-nodefaults", "-display", "none", "-net", "none",
            "-accel", "tcg", "-machine", self.machine, "-m", str(self.memory_mib),
            "-smp", "1", "-serial", serial, "-parallel", "none",
        ]
        if self.kernel is not None:
            argv += ["-kernel", str(self.kernel)]
        if self.initrd is not None:
            argv += ["-initrd", str(self.initrd)]
        if self.append is not None:
            argv += ["-append", self.append]
        if self.blob is not None:
            argv += ["-device", f"loader,file={self.blob},addr={BLOB_ADDR:#x},force-raw=on"]
        return argv + list(self.extra)


class Qemu:
    """One QEMU process with a QMP connection; a context manager that always ends it."""

    def __init__(self, argv: list[str], workdir: Path, name: str = "qemu"):
        self.workdir = workdir
        self.qmp_path = workdir / f"{name}.qmp"
        self.log_path = workdir / f"{name}.log"
        self.argv = argv + [
            "-name", qemu_name(),
            "-chardev", f"socket,id=qmp0,path={self.qmp_path},server=on,wait=off",
            "-mon", "chardev=qmp0,mode=control",
        ]
        self.proc: subprocess.Popen | None = None
        self.qmp: QEMUMonitorProtocol | None = None

    def __enter__(self) -> "Qemu":
        try:
            self.launch()
        except BaseException:
            self.shutdown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def fail(self, message: str) -> QemuHelperError:
        return QemuHelperError(f"{message}\nargv: {' '.join(self.argv)}\n--- log ---\n{self.log_tail()}")

    def launch(self, timeout: float = 30.0) -> None:
        self.qmp_path.unlink(missing_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent(os.getpid()))
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise self.fail(f"QEMU exited with {self.proc.returncode} before QMP was up")
            if self.qmp_path.exists():
                qmp = QEMUMonitorProtocol(str(self.qmp_path))
                try:
                    qmp.connect()
                except (OSError, ConnectError):
                    # The socket file exists a moment before QEMU listens on it.
                    qmp.close()
                else:
                    self.qmp = qmp
                    self.qmp.settimeout(120.0)
                    return
            if time.monotonic() > deadline:
                raise self.fail("QMP socket did not come up")
            time.sleep(0.02)  # polling a condition (socket appears), bounded by the deadline

    def cmd(self, name: str, **args):
        assert self.qmp is not None
        try:
            reply = self.qmp.cmd_raw(name, args or None)
        except Exception as err:  # QEMU died or the socket broke
            raise self.fail(f"QMP {name} failed: {err!r}") from err
        if "error" in reply:
            raise self.fail(f"QMP {name} {args} -> {reply['error']}")
        return reply["return"]

    def hmp(self, line: str) -> str:
        out = self.cmd("human-monitor-command", **{"command-line": line})
        if out.strip():
            # HMP reports errors as text; every command used here prints nothing on success.
            raise self.fail(f"HMP {line!r} said: {out.strip()}")
        return out

    def wait_for(self, predicate, what: str, timeout: float = 120.0, interval: float = 0.02):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if self.proc is not None and self.proc.poll() is not None:
                raise self.fail(f"QEMU exited while waiting for {what}")
            if time.monotonic() > deadline:
                raise self.fail(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)  # polling a condition, bounded by the deadline

    def wait_migration(self, timeout: float = 300.0) -> dict:
        def done():
            info = self.cmd("query-migrate")
            status = info.get("status")
            if status in ("failed", "cancelled"):
                raise self.fail(f"migration {status}: {info.get('error-desc', '')}")
            return info if status == "completed" else None
        return self.wait_for(done, "migration to complete", timeout=timeout)

    def shutdown(self, timeout: float = 10.0) -> None:
        proc = self.proc
        try:
            if self.qmp is not None and proc is not None and proc.poll() is None:
                try:
                    self.qmp.settimeout(timeout)
                    self.qmp.cmd_raw("quit")
                except Exception:
                    pass  # it is going away; the signals below make sure
        finally:
            if self.qmp is not None:
                try:
                    self.qmp.close()
                except Exception:
                    pass
                self.qmp = None
            if proc is not None and proc.poll() is None:
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
            self.qmp_path.unlink(missing_ok=True)


def vmstate_node_args(image: Path) -> list[str]:
    """The orphan qcow2 node that ``savevm`` writes VM state into (no device uses it)."""
    return [
        "-blockdev", f"driver=file,filename={image},node-name=vmstate-file",
        "-blockdev", "driver=qcow2,file=vmstate-file,node-name=vmstate",
    ]


def create_qcow2(path: Path, size: str = "1M", *extra: str) -> None:
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", *extra, str(path), size],
                   check=True, capture_output=True)


@dataclass
class SavevmImage:
    """A qcow2 file with internal snapshots, and the VM it was taken from."""

    image: Path
    names: list[str]
    spec: VmSpec
    blob_data: bytes | None = None
    registers: dict[str, str] = field(default_factory=dict)  # name -> `info registers` at savevm


def _raise_bandwidth(vm: Qemu) -> None:
    # The default 32 MiB/s limit makes a 1 GiB stream take half a minute.
    vm.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})


def make_savevm_qcow2(tmp: Path, *, machine: str = "q35", memory_mib: int = 64,
                      kernel: Path | None = None, initrd: Path | None = None,
                      append: str | None = None, blob_mib: int = 4, seed: int = 0,
                      snapshots: int = 1, interval_s: float = 0.0, run: bool = False,
                      ready: str | None = None, ready_timeout: float = 120.0,
                      image_size: str = "1M", image_opts: str | None = None,
                      name: str = "savevm", extra: Sequence[str] = ()) -> SavevmImage:
    """Boot a VM, take ``snapshots`` internal snapshots with HMP ``savevm``, quit.

    The VM is paused for each ``savevm`` and left running in between when
    ``run`` (or a kernel) is given, for ``interval_s`` seconds. With
    ``ready``, the serial console goes to ``<name>.serial`` and the first
    snapshot waits until that text appears there (e.g. the demo guest's
    ``sbtui-guest: ready`` line). ``image_size`` and ``image_opts`` (``-o``
    of ``qemu-img create``) shape the qcow2 file the state goes into.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    image = tmp / f"{name}.qcow2"
    create_qcow2(image, image_size, *(["-o", image_opts] if image_opts else []))
    blob = blob_data = None
    if blob_mib:
        blob = tmp / f"{name}.blob"
        blob_data = make_blob(blob, blob_mib, seed)
    spec = VmSpec(machine=machine, memory_mib=memory_mib, kernel=kernel, initrd=initrd,
                  append=append, blob=blob, extra=tuple(extra), serial=bool(ready))
    running = run or kernel is not None
    serial = tmp / f"{name}.serial" if ready else None
    argv = spec.argv(serial) + vmstate_node_args(image) + ([] if running else ["-S"])
    result = SavevmImage(image=image, names=[], spec=spec, blob_data=blob_data)
    with Qemu(argv, tmp, name) as vm:
        if ready and serial is not None:
            marker = ready.encode()
            vm.wait_for(lambda: serial.exists() and marker in serial.read_bytes(),
                        f"{ready!r} on the serial console", timeout=ready_timeout, interval=0.1)
        for i in range(snapshots):
            if running:
                # Let the guest run between checkpoints, as the recorder does.
                time.sleep(interval_s)
                vm.cmd("stop")
            snap = f"snap{i}"
            vm.hmp(f"savevm {snap}")
            result.registers[snap] = vm.cmd("human-monitor-command",
                                            **{"command-line": "info registers"})
            result.names.append(snap)
            if running:
                vm.cmd("cont")
    return result


@dataclass
class MigrateFile:
    path: Path
    spec: VmSpec
    blob_data: bytes | None = None
    registers: str = ""


def make_migrate_file(tmp: Path, *, machine: str = "q35", memory_mib: int = 64,
                      kernel: Path | None = None, initrd: Path | None = None,
                      append: str | None = None, blob_mib: int = 4, seed: int = 0,
                      background: bool = False, run_s: float = 0.0,
                      also_savevm: bool = False, name: str = "migrate",
                      extra: Sequence[str] = ()) -> MigrateFile:
    """Write a stream with QMP ``migrate`` to ``file:<tmp>/<name>.mig``.

    Plain ``migrate`` runs on a paused VM (so the stream is one precopy pass
    and the registers can be compared); with ``background`` the VM is running
    and the ``background-snapshot`` capability is on. With ``also_savevm`` a
    ``savevm snap0`` of the same paused state goes into ``<name>.qcow2`` first.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / f"{name}.mig"
    blob = blob_data = None
    if blob_mib:
        blob = tmp / f"{name}.blob"
        blob_data = make_blob(blob, blob_mib, seed)
    spec = VmSpec(machine=machine, memory_mib=memory_mib, kernel=kernel, initrd=initrd,
                  append=append, blob=blob, extra=tuple(extra))
    argv = spec.argv()
    if also_savevm:
        image = tmp / f"{name}.qcow2"
        create_qcow2(image)
        argv += vmstate_node_args(image)
    if not background:
        argv.append("-S")
    result = MigrateFile(path=out, spec=spec, blob_data=blob_data)
    with Qemu(argv, tmp, name) as vm:
        _raise_bandwidth(vm)
        if background:
            vm.cmd("migrate-set-capabilities", capabilities=[
                {"capability": "background-snapshot", "state": True}])
            time.sleep(run_s)  # let the guest run before the snapshot point
        else:
            if also_savevm:
                vm.hmp("savevm snap0")
        result.registers = vm.cmd("human-monitor-command", **{"command-line": "info registers"})
        vm.cmd("migrate", uri=f"file:{out}")
        vm.wait_migration()
    return result


@contextmanager
def incoming_vm(tmp: Path, spec: VmSpec, stream: Path, name: str = "incoming",
                timeout: float = 300.0) -> Iterator[Qemu]:
    """A QEMU that loaded ``stream`` (``-incoming defer``, ``migrate-incoming file:``), paused.

    ``-S`` keeps it paused after the load even when the stream was taken of a
    running guest, so what it loaded can be inspected before it runs on.
    """
    argv = spec.argv() + ["-S", "-incoming", "defer"]
    with Qemu(argv, tmp, name) as vm:
        vm.cmd("migrate-incoming", uri=f"file:{stream}")
        vm.wait_migration(timeout=timeout)
        status = vm.cmd("query-status")["status"]
        if status not in ("paused", "postmigrate", "prelaunch"):
            raise vm.fail(f"loaded VM is {status}, expected it paused")
        yield vm


def pmemsave(vm: Qemu, tmp: Path, addr: int, size: int, name: str = "mem.bin") -> bytes:
    path = tmp / name
    path.unlink(missing_ok=True)
    vm.cmd("pmemsave", val=addr, size=size, filename=str(path))
    return path.read_bytes()


def live_qemu_pids() -> set[int]:
    """PIDs of qemu-system processes started by this test process (children only)."""
    me = os.getpid()
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and b"qemu-system" in cmd:
            pids.add(int(entry.name))
    return pids


# -- a per-process cache, so a test session makes each stream once ----------

_cache_root: Path | None = None
_cache: dict = {}


def cache_root() -> Path:
    """A temporary directory for cached streams, removed when the process exits."""
    global _cache_root
    if _cache_root is None:
        _cache_root = Path(tempfile.mkdtemp(prefix="sbtui-streams-"))
        atexit.register(shutil.rmtree, _cache_root, True)
    return _cache_root


def _cached(kind: str, make, **kwargs):
    key = (kind, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items())))
    if key not in _cache:
        sub = cache_root() / f"{kind}-{len(_cache)}"
        _cache[key] = make(sub, **kwargs)
    return _cache[key]


def cached_savevm(**kwargs) -> SavevmImage:
    """:func:`make_savevm_qcow2` once per distinct arguments per process."""
    return _cached("savevm", make_savevm_qcow2, **kwargs)


def cached_migrate(**kwargs) -> MigrateFile:
    """:func:`make_migrate_file` once per distinct arguments per process."""
    return _cached("migrate", make_migrate_file, **kwargs)


# -- synthetic streams, byte by byte, for unit tests -------------------------

class StreamBuilder:
    """Writes a migration stream the way QEMU 10 lays it out, record by record.

    ``expected`` collects ``(block, offset, data or None)`` for every page
    record written, in order, to compare against what the codec hands out.
    Nothing here checks that the result makes sense: tests build broken
    streams with it too.
    """

    def __init__(self, blocks: Sequence[tuple[str, int]] = (("pc.ram", 64 * 4096), ("pc.bios", 4 * 4096))):
        self.blocks = list(blocks)
        self.out = bytearray()
        self.expected: list[tuple[str, int, bytes | None]] = []
        self._last_block: str | None = None

    def raw(self, data: bytes) -> "StreamBuilder":
        self.out += data
        return self

    def u8(self, v: int) -> "StreamBuilder":
        return self.raw(bytes([v]))

    def u16(self, v: int) -> "StreamBuilder":
        return self.raw(v.to_bytes(2, "big"))

    def u32(self, v: int) -> "StreamBuilder":
        return self.raw(v.to_bytes(4, "big"))

    def u64(self, v: int) -> "StreamBuilder":
        return self.raw(v.to_bytes(8, "big"))

    def counted(self, s: str | bytes) -> "StreamBuilder":
        b = s.encode() if isinstance(s, str) else s
        return self.u8(len(b)).raw(b)

    def header(self, magic: int = 0x5145564D, version: int = 3) -> "StreamBuilder":
        return self.u32(magic).u32(version)

    def configuration(self, machine: str = "pc-q35-10.0", *, page_bits: int | None = None,
                      capabilities: Sequence[str] = (), uuid: bytes | None = None) -> "StreamBuilder":
        self.u8(0x07).u32(len(machine)).raw(machine.encode())
        if page_bits is not None:
            self.u8(0x05).counted("configuration/target-page-bits").u32(1).u32(page_bits)
        if capabilities:
            self.u8(0x05).counted("configuration/capabilities").u32(1).u32(len(capabilities))
            for cap in capabilities:
                self.counted(cap)
        if uuid is not None:
            self.u8(0x05).counted("configuration/uuid").u32(1).raw(uuid)
        return self

    def section_start(self, kind: int, sid: int, idstr: str, instance: int = 0,
                      version: int = 4) -> "StreamBuilder":
        return self.u8(kind).u32(sid).counted(idstr).u32(instance).u32(version)

    def footer(self, sid: int) -> "StreamBuilder":
        return self.u8(0x7E).u32(sid)

    def mem_size(self, *, addresses: bool = False) -> "StreamBuilder":
        self.u64(sum(n for _, n in self.blocks) | 0x04)
        for name, length in self.blocks:
            self.counted(name).u64(length)
            if addresses:
                self.u64(0)
        return self

    def eos(self) -> "StreamBuilder":
        return self.u64(0x10)

    def ram_start(self, sid: int = 1, *, addresses: bool = False) -> "StreamBuilder":
        return self.section_start(0x01, sid, "ram").mem_size(addresses=addresses).eos().footer(sid)

    def page(self, block: str, offset: int, data: bytes | None = None, *, fill: int = 0,
             named: bool | None = None, expect: bool = True) -> "StreamBuilder":
        """One ZERO (``data`` None) or PAGE record; ``named`` None: as QEMU does it."""
        if named is None:
            named = block != self._last_block
        flags = (0x02 if data is None else 0x08) | (0 if named else 0x20)
        self.u64(offset | flags)
        if named:
            self.counted(block)
        self._last_block = block
        if data is None:
            self.u8(fill)
        else:
            assert len(data) == 4096
            self.raw(data)
        if expect:
            self.expected.append((block, offset, data))
        return self

    def ram_part(self, sid: int = 1, pages: Sequence[tuple] = (), *, end: bool = False,
                 flush: bool = False) -> "StreamBuilder":
        """A PART (or END) ram section of ``pages``: ``(block, offset, data[, fill[, named]])``."""
        self.u8(0x03 if end else 0x02).u32(sid)
        for p in pages:
            block, offset, data, *rest = p
            fill = rest[0] if rest else 0
            named = rest[1] if len(rest) > 1 else None
            self.page(block, offset, data, fill=fill, named=named)
        if flush:
            self.u64(0x200)
        return self.eos().footer(sid)

    def device(self, sid: int, idstr: str, body: bytes, *, instance: int = 0,
               version: int = 1) -> "StreamBuilder":
        return self.section_start(0x04, sid, idstr, instance, version).raw(body).footer(sid)

    def command(self, cmd: int, data: bytes = b"") -> "StreamBuilder":
        return self.u8(0x08).u16(cmd).u16(len(data)).raw(data)

    def eof(self, vmdesc: bytes | None = b'{"page_size": 4096, "devices": []}') -> "StreamBuilder":
        self.u8(0x00)
        if vmdesc is not None:
            self.u8(0x06).u32(len(vmdesc)).raw(vmdesc)
        return self

    def build(self) -> bytes:
        return bytes(self.out)


def standard_stream(seed: int = 0, *, vmdesc: bool = True) -> StreamBuilder:
    """A small, typical stream: config, ram START/PART/END, a command, devices, EOF, JSON."""
    rng = random.Random(seed)
    b = StreamBuilder()
    b.header().configuration()
    b.ram_start(1)
    pages = [("pc.ram", i * 4096, rng.randbytes(4096) if i % 3 else None) for i in range(40)]
    b.ram_part(1, pages[:25])
    b.ram_part(1, pages[25:] + [("pc.bios", 0, rng.randbytes(4096)), ("pc.bios", 4096, None)])
    b.command(11)
    b.ram_part(1, [("pc.ram", 45 * 4096, rng.randbytes(4096))], end=True)
    b.device(0, "timer", rng.randbytes(40))
    b.device(3, "cpu", rng.randbytes(300).replace(b"\x7e", b"\x7f"), version=12)
    b.device(7, "0000:00:00.0/mch", bytes(100))
    b.eof(b'{"page_size": 4096, "devices": []}' if vmdesc else None)
    return b
