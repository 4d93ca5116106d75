"""Builds the demo guest (kernel + initramfs) and caches it by the hash of its inputs.

:func:`build_demo_guest` returns :class:`GuestArtifacts`. The cache entry is
``cache_dir()/guest/<key>/`` where ``key`` hashes every input: the contents
and executable bits of all files under ``guest-tools/``, the busybox binary,
the kernel package name and version, the C compiler's version and static
libc, the default kernel command line and :data:`FORMAT_VERSION`. A warm call
hashes those (a few milliseconds), finds the entry and returns; apt is not
asked (see :mod:`engine.guest.kernel` for how the kernel version is
remembered). A cold call builds in a temporary directory next to the entries
and renames it into place, so a crash mid-build leaves no half entry; a file
lock makes concurrent builders wait for one another instead of downloading
twice.

The initramfs is a gzip-compressed cpio newc archive written by
:mod:`engine.guest.cpio`: ``/init`` and the workloads from ``guest-tools/``,
busybox with a symlink per applet, ``sbtool`` (``sbmark``, ``memchurn``,
``sbgen``) compiled from ``guest-tools/src`` with ``cc -static -O2``, and
``/dev/console``, ``/dev/ttyS0``, ``/dev/null`` so init has a console before
devtmpfs is mounted. gzip, because the compressed image is what sits in guest
RAM until the kernel has unpacked and freed it: a third of the pages in every
checkpoint and a third of the file, for about 0.1 s of decompression at
boot. gzip -6 with mtime 0 keeps the file byte-for-byte reproducible (-9 took
three times as long for 0.4 % less).
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from engine import paths
from engine.errors import GuestBuildError, UsageError
from engine.guest import kernel as kernel_mod
from engine.guest import symbols
from engine.guest.cpio import CpioWriter

FORMAT_VERSION = 2  # bump whenever the builder writes different bytes from the same inputs
READY_LINE_PREFIX = "sbtui-guest: ready"
FINISHED_LINE_PREFIX = "sbtui-guest: finished"
MARK_LINE_PREFIX = "sbtui-mark: "
DEFAULT_WORKLOAD = "idle"
# nokaslr: kernel symbols from System.map are the running addresses.
# panic=-1: a panicking guest reboots at once (QEMU -no-reboot makes that an exit).
# mitigations=off: without it the kernel switches page tables on every system
#   call (KPTI on TCG's CPU model), which costs TCG a TLB flush each time.
# no_timer_check noapictimer: skip the boot's two timer busy-waits (the IO-APIC
#   timer check and the local APIC timer's 100 ms calibration; the tick then
#   comes from the PIT). Each turn of such a loop (rdtsc, compare, PAUSE) ends
#   TCG's execution loop and logs a clock-warp checkpoint: 3.2 million of them
#   in the demo guest's boot, every ~10 instructions, and replay spends about
#   4 us on each (record much less). An 8 s idle recording replayed in 20 s
#   with them and 9-10 s without.
BASE_APPEND = "console=ttyS0 nokaslr panic=-1 mitigations=off quiet no_timer_check noapictimer"
# Parameters a workload accepts, as they appear on the kernel command line.
WORKLOAD_PARAMS = ("duration", "mem")

GUEST_TOOLS_ENV = "SBTUI_GUEST_TOOLS"
BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
_MANIFEST = "manifest.json"
# Applets of guest-tools/src/sbtool.c, each a symlink in /bin.
SBTOOL_APPLETS = ("sbmark", "memchurn", "sbgen", "sbdump")


@dataclass(frozen=True)
class GuestArtifacts:
    """A built demo guest: what ``-kernel``, ``-initrd`` and ``-append`` take."""

    kernel: Path
    initrd: Path
    system_map: Path | None
    append: str
    workloads: tuple[str, ...] = field(default=())

    def append_for(self, workload: str, **params) -> str:
        """The kernel command line that runs ``workload`` with ``params``.

        ``params`` are ``duration`` (seconds) and ``mem`` (MiB), whole numbers
        from 1 up; a ``None`` value leaves the parameter out.
        """
        if workload not in self.workloads:
            raise UsageError(f"unknown workload {workload!r}; the demo guest has: "
                             f"{', '.join(self.workloads)}")
        words = [w for w in self.append.split() if not w.startswith("sbtui.")]
        words.append(f"sbtui.workload={workload}")
        for name, value in params.items():
            if name not in WORKLOAD_PARAMS:
                raise UsageError(f"unknown workload parameter {name!r}; known: "
                                 f"{', '.join(WORKLOAD_PARAMS)}")
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"workload parameter {name}={value!r}: expected a whole "
                                 f"number from 1 up")
            words.append(f"sbtui.{name}={value}")
        return " ".join(words)

    def to_json(self) -> dict:
        return {
            "kernel": str(self.kernel),
            "initrd": str(self.initrd),
            "system_map": str(self.system_map) if self.system_map else None,
            "append": self.append,
            "workloads": list(self.workloads),
        }


def guest_tools_dir() -> Path:
    """The ``guest-tools/`` directory of this checkout (``$SBTUI_GUEST_TOOLS`` overrides)."""
    override = os.environ.get(GUEST_TOOLS_ENV)
    d = Path(override) if override else Path(__file__).resolve().parents[2] / "guest-tools"
    if not (d / "init").is_file():
        raise GuestBuildError(f"{d} holds no guest-tools (no 'init' file); set "
                              f"{GUEST_TOOLS_ENV} to the guest-tools directory of a checkout")
    return d


def find_busybox() -> Path:
    for p in BUSYBOX_CANDIDATES:
        if p.is_file() and _is_static_elf(p):
            return p
    raise GuestBuildError("no statically linked busybox at /bin/busybox: install the "
                          "busybox-static package (apt-get install busybox-static)")


def _is_static_elf(path: Path) -> bool:
    """True for a 64-bit little-endian ELF without a PT_INTERP (dynamic loader) header."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return False
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def _workload_names(tools: Path) -> tuple[str, ...]:
    d = tools / "workloads"
    names = sorted(p.name for p in d.iterdir()
                   if p.is_file() and os.access(p, os.X_OK) and re.fullmatch(r"[a-z0-9_-]+", p.name))
    if not names:
        raise GuestBuildError(f"{d} holds no executable workload scripts")
    return tuple(names)


def _tool_files(tools: Path) -> list[Path]:
    return sorted(p for p in tools.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts
                  and not any(part.startswith(".") for part in p.relative_to(tools).parts))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _compiler_identity() -> dict:
    cc = shutil.which("cc")
    if cc is None:
        raise GuestBuildError("no C compiler: the guest's sbmark and memchurn are compiled with "
                              "`cc -static`; install gcc and libc6-dev")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.splitlines()[:1]
        libc_a = subprocess.run([cc, "-print-file-name=libc.a"], capture_output=True,
                                text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        raise GuestBuildError(f"cannot run the C compiler {cc}: {err}") from None
    ident = {"cc": cc, "version": version[0] if version else ""}
    try:
        st = os.stat(libc_a)
        ident["libc_a"] = f"{os.path.realpath(libc_a)}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        raise GuestBuildError(f"no static C library ({libc_a or 'libc.a'} is missing): "
                              f"install libc6-dev") from None
    return ident


@dataclass(frozen=True)
class _Inputs:
    tools: Path
    busybox: Path
    package: kernel_mod.KernelPackage
    description: dict

    @property
    def key(self) -> str:
        blob = json.dumps(self.description, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:20]


def _gather_inputs(guest_root: Path, say: Callable[[str], None]) -> _Inputs:
    tools = guest_tools_dir()
    busybox = find_busybox()
    package = kernel_mod.resolve_kernel_package(memo_dir=guest_root / "kernels", on_fallback=say)
    description = {
        "format": FORMAT_VERSION,
        "append": BASE_APPEND,
        "tools": [[str(p.relative_to(tools)), os.access(p, os.X_OK), _sha256_file(p)]
                  for p in _tool_files(tools)],
        "busybox": _sha256_file(busybox),
        "kernel": [package.name, package.version],
        "compiler": _compiler_identity(),
    }
    return _Inputs(tools, busybox, package, description)


def _load_entry(entry: Path) -> GuestArtifacts | None:
    try:
        manifest = json.loads((entry / _MANIFEST).read_text())
        art = GuestArtifacts(
            kernel=entry / manifest["kernel"],
            initrd=entry / manifest["initrd"],
            system_map=entry / manifest["system_map"] if manifest.get("system_map") else None,
            append=manifest["append"],
            workloads=tuple(manifest["workloads"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if manifest.get("format") != FORMAT_VERSION:
        return None
    if not art.kernel.is_file() or not art.initrd.is_file():
        return None
    if art.system_map is not None and not art.system_map.is_file():
        return None
    return art


@contextmanager
def _build_lock(guest_root: Path) -> Iterator[None]:
    guest_root.mkdir(parents=True, exist_ok=True)
    with open(guest_root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_demo_guest(*, force: bool = False,
                     progress: Callable[[str], None] | None = None) -> GuestArtifacts:
    """The demo guest, from the cache when its inputs are unchanged, else built now."""
    say = progress or (lambda _msg: None)
    guest_root = paths.cache_dir() / "guest"
    inputs = _gather_inputs(guest_root, say)
    entry = guest_root / inputs.key
    if not force:
        art = _load_entry(entry)
        if art is not None:
            return art
    with _build_lock(guest_root):
        if not force:
            art = _load_entry(entry)  # another process may have built it while we waited
            if art is not None:
                return art
        _remove_stale_temporaries(guest_root)
        started = time.monotonic()
        say(f"building the demo guest {inputs.key} in {entry}")
        kfiles = kernel_mod.fetch_kernel(inputs.package, guest_root / "kernels",
                                         force=force, progress=say)
        with tempfile.TemporaryDirectory(prefix=".build-", dir=guest_root) as tmpname:
            tmp = Path(tmpname)
            out = tmp / "entry"
            out.mkdir()
            _build_entry(inputs, kfiles, out, tmp, say)
            manifest = json.loads((out / _MANIFEST).read_text())
            manifest["build_seconds"] = round(time.monotonic() - started, 2)
            (out / _MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            if entry.exists():
                os.rename(entry, tmp / "old")  # force: the old entry goes with the temp dir
            os.rename(out, entry)
        art = _load_entry(entry)
        if art is None:
            raise GuestBuildError(f"the guest just built in {entry} does not load back")
        say(f"demo guest ready in {time.monotonic() - started:.1f} s: "
            f"initrd {art.initrd.stat().st_size / 1e6:.1f} MB")
        return art


def _remove_stale_temporaries(guest_root: Path) -> None:
    """Remove what a killed builder left behind; only called while holding the build lock,
    so no live builder owns any of these."""
    for pattern in (".build-*", "kernels/.fetch-*"):
        for p in guest_root.glob(pattern):
            shutil.rmtree(p, ignore_errors=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _compile_sbtool(src: Path, out: Path) -> None:
    sources = sorted(str(p) for p in src.glob("*.c"))
    if not sources:
        raise GuestBuildError(f"{src} holds no C sources")
    argv = ["cc", "-static", "-O2", "-s", "-Wall", "-o", str(out), *sources]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise GuestBuildError("no C compiler `cc`: install gcc and libc6-dev") from None
    except subprocess.TimeoutExpired:
        raise GuestBuildError(f"`{' '.join(argv)}` did not finish in 300 s") from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise GuestBuildError(f"compiling the guest tools failed (exit {proc.returncode}): "
                              f"{' '.join(argv)}\n{tail}")


def _busybox_applets(busybox: Path) -> list[str]:
    try:
        proc = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                              timeout=30)
    except OSError as err:
        raise GuestBuildError(f"cannot run {busybox}: {err}") from None
    applets = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not applets:
        raise GuestBuildError(f"`{busybox} --list-full` listed no applets (exit {proc.returncode})")
    return sorted(applets)


def _build_entry(inputs: _Inputs, kfiles: kernel_mod.KernelFiles, out: Path, tmp: Path,
                 say: Callable[[str], None]) -> None:
    tools = inputs.tools
    say(f"compiling sbtool ({', '.join(SBTOOL_APPLETS)}) with cc -static -O2")
    sbtool = tmp / "sbtool"
    _compile_sbtool(tools / "src", sbtool)

    say("writing the initramfs")
    workloads = _workload_names(tools)
    if DEFAULT_WORKLOAD not in workloads:
        raise GuestBuildError(f"{tools / 'workloads'} has no {DEFAULT_WORKLOAD!r} workload, "
                              f"the default")
    raw = io.BytesIO()
    with CpioWriter(raw) as cpio:
        for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "root"):
            cpio.add_dir(d)
        cpio.add_dir("tmp", 0o1777)
        cpio.add_chardev("dev/console", 5, 1, 0o600)
        cpio.add_chardev("dev/ttyS0", 4, 64, 0o660)
        cpio.add_chardev("dev/null", 1, 3, 0o666)
        cpio.add_file("init", (tools / "init").read_bytes(), 0o755)
        cpio.add_file("bin/busybox", inputs.busybox.read_bytes(), 0o755)
        ours = {"bin/busybox", "bin/sbtool", *(f"bin/{a}" for a in SBTOOL_APPLETS)}
        for applet in _busybox_applets(inputs.busybox):
            if applet in ours or applet in ("sbin/init", "linuxrc"):
                continue  # /init is ours; a fallback init would hide a broken one
            cpio.add_symlink(applet, "/bin/busybox")
        cpio.add_file("bin/sbtool", sbtool.read_bytes(), 0o755)
        for name in SBTOOL_APPLETS:
            cpio.add_symlink(f"bin/{name}", "sbtool")
        cpio.add_file("usr/lib/sbtui/lib.sh", (tools / "lib.sh").read_bytes(), 0o644)
        for sub in ("workloads", "tasks"):
            cpio.add_dir(f"usr/lib/sbtui/{sub}")
            for p in sorted((tools / sub).iterdir()):
                if p.is_file():
                    cpio.add_file(f"usr/lib/sbtui/{sub}/{p.name}", p.read_bytes(),
                                  0o755 if os.access(p, os.X_OK) else 0o644)
        cpio.add_file("etc/sbtui-guest", f"key={inputs.key}\nkernel={kfiles.package.name} "
                      f"{kfiles.package.version}\n".encode(), 0o644)
    initrd = out / "initrd.img"
    initrd.write_bytes(gzip.compress(raw.getvalue(), compresslevel=6, mtime=0))

    kernel_name = kfiles.vmlinuz.name
    _link_or_copy(kfiles.vmlinuz, out / kernel_name)
    system_map = kfiles.system_map
    if symbols.is_placeholder(system_map):
        # Kept beside the kernel: it depends on the kernel alone, so a change
        # to guest-tools does not cost another symbol-dump boot.
        system_map = kfiles.vmlinuz.parent / f"System.map-{kfiles.package.release}"
        count = symbols.capture_system_map(out / kernel_name, initrd, BASE_APPEND, system_map,
                                           progress=say)
        say(f"kernel symbols: {count} (System.map from /proc/kallsyms)")
    map_name = system_map.name
    _link_or_copy(system_map, out / map_name)

    manifest = {
        "format": FORMAT_VERSION,
        "key": inputs.key,
        "kernel": kernel_name,
        "initrd": initrd.name,
        "system_map": map_name,
        "append": f"{BASE_APPEND} sbtui.workload={DEFAULT_WORKLOAD}",
        "workloads": list(workloads),
        "kernel_package": [kfiles.package.name, kfiles.package.version],
        "initrd_bytes": initrd.stat().st_size,
        "initrd_uncompressed_bytes": len(raw.getvalue()),
        "inputs": inputs.description,
    }
    (out / _MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
