"""Is KVM really usable here? A probe boot decides; ``choose_accel`` uses the answer.

``/dev/kvm`` existing proves little: on this project's machines it is a
paravirtual KVM under which a distribution kernel hangs right after the boot
ROM, and ``-cpu host``/``-cpu max`` abort on an MSR (shared/notes/qemu-facts.md).
So :func:`probe_kvm` first checks the device (open, ``KVM_GET_API_VERSION``),
then boots the demo guest under ``-accel kvm`` with QEMU's default CPU model
and waits for its ready line, bounded by ``timeout``. Only a guest that got
there counts as usable.

Promises: the probe never takes longer than about ``timeout`` plus a few
seconds of shutdown, leaves no QEMU behind, and never raises for "KVM does not
work" (that is a :class:`KvmProbe` with ``usable=False`` and a one-line
reason). Answers are cached per (QEMU binary, kernel, initrd) for the life of
the process and for :data:`CACHE_TTL` seconds in ``cache_dir()/kvm-probe.json``.
``$SBTUI_ACCEL=tcg`` makes :func:`choose_accel` skip the probe.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine import paths
from engine.errors import QemuError, QemuTimeoutError, SbtuiError
from engine.qemu.binaries import find_qemu
from engine.qemu.machine import MachineSpec
from engine.qemu.process import QemuProcess

KVM_DEVICE = "/dev/kvm"
KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
DEFAULT_TIMEOUT = 15.0
CACHE_TTL = 600.0
CACHE_FILE = "kvm-probe.json"
ACCEL_ENV = "SBTUI_ACCEL"

_memo: dict[str, "KvmProbe"] = {}
# One lock per event loop: an asyncio.Lock may not be shared between loops.
_locks: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class KvmProbe:
    """The answer: ``usable``, a one-line ``detail``, and how long finding out took."""

    usable: bool
    detail: str
    seconds: float = 0.0
    booted: bool = False    # a probe boot was attempted (not only the device check)
    cached: bool = False


def kvm_device_status(device: str = KVM_DEVICE) -> tuple[bool, str]:
    """Whether ``device`` opens read-write and speaks KVM API version 12."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False, f"{device} does not exist (no KVM module loaded, or no hardware virtualization)"
    except PermissionError:
        return False, f"{device} is not accessible to this user (add the user to group 'kvm')"
    except OSError as err:
        return False, f"{device} cannot be opened: {os.strerror(err.errno or errno.EIO)}"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as err:
        return False, f"{device} does not answer KVM_GET_API_VERSION: {err.strerror}"
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return False, f"{device} speaks KVM API version {version}, not {KVM_API_VERSION}"
    return True, f"{device} opens and speaks KVM API {version}"


def _file_id(path: str | Path) -> str:
    p = Path(path).resolve()
    try:
        st = p.stat()
        return f"{p}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return f"{p}:missing"


def _cache_key(qemu: str, kernel: str, initrd: str | None) -> str:
    return "|".join([_file_id(qemu), _file_id(kernel), _file_id(initrd) if initrd else "-"])


def _read_disk_cache(key: str) -> KvmProbe | None:
    try:
        data = json.loads((paths.cache_dir() / CACHE_FILE).read_text())
        entry = data[key]
        if time.time() - float(entry["at"]) > CACHE_TTL:
            return None
        return KvmProbe(usable=bool(entry["usable"]), detail=str(entry["detail"]),
                        seconds=float(entry["seconds"]), booted=bool(entry["booted"]), cached=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no cache, or one we cannot read: probe again


def _write_disk_cache(key: str, probe: KvmProbe) -> None:
    path = paths.cache_dir() / CACHE_FILE
    try:
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            data = {}
        now = time.time()
        data = {k: v for k, v in data.items()
                if isinstance(v, dict) and now - float(v.get("at", 0)) <= CACHE_TTL}
        entry: dict[str, Any] = asdict(probe)
        entry.pop("cached")
        entry["at"] = now
        data[key] = entry
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # the cache is an optimisation only


def _first_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("===")]
    for ln in lines:
        if "error" in ln.lower() or "fail" in ln.lower() or "assert" in ln.lower():
            return ln
    return lines[-1] if lines else "(no output)"


async def _boot_probe(qemu: str, guest: Any, timeout: float) -> KvmProbe:
    from engine.guest import READY_LINE_PREFIX

    # Default CPU model: -cpu host and -cpu max abort on MSR 0x10a here.
    spec = MachineSpec(accel="kvm", kernel=str(guest.kernel), initrd=str(guest.initrd),
                       append=guest.append_for("idle"), no_reboot=True)
    started = time.monotonic()
    vm = QemuProcess(spec, qemu_binary=qemu, launch_timeout=timeout)
    try:
        await vm.launch()
        try:
            await vm.console.wait_for(READY_LINE_PREFIX, timeout=max(1.0, timeout - vm.launch_seconds))
        except QemuTimeoutError:
            got = len(vm.console.output)
            how = ("no console output: the guest hung after the boot ROM" if got == 0
                   else f"it stalled after {got} bytes of console output")
            return KvmProbe(False, f"the demo guest did not boot under KVM within {timeout:g} s "
                                   f"({how})", time.monotonic() - started, booted=True)
        return KvmProbe(True, f"the demo guest booted to its ready line under KVM in "
                              f"{time.monotonic() - started:.1f} s",
                        time.monotonic() - started, booted=True)
    except QemuError as err:
        code = f" (exit code {err.exit_code})" if err.exit_code is not None else ""
        return KvmProbe(False, f"QEMU failed under -accel kvm{code}: "
                               f"{_first_error_line(err.log_tail or str(err))}",
                        time.monotonic() - started, booted=True)
    finally:
        # A vCPU stuck in KVM may ignore 'quit'; shutdown escalates to SIGKILL.
        await vm.shutdown(timeout=2.0)


async def probe_kvm(*, qemu_binary: str | None = None, guest: Any = None,
                    timeout: float = DEFAULT_TIMEOUT, use_cache: bool = True) -> KvmProbe:
    """Find out whether KVM boots the demo guest here (see the module docstring)."""
    started = time.monotonic()
    ok, detail = kvm_device_status()
    if not ok:
        return KvmProbe(False, detail, time.monotonic() - started)
    try:
        qemu = find_qemu(qemu_binary)
        if guest is None:
            from engine.guest import build_demo_guest
            guest = await asyncio.to_thread(build_demo_guest)
    except (SbtuiError, ImportError) as err:
        return KvmProbe(False, f"cannot run the KVM probe boot: {str(err).splitlines()[0]}",
                        time.monotonic() - started)
    key = _cache_key(qemu, str(guest.kernel), str(guest.initrd) if guest.initrd else None)
    lock = _locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock:  # one probe at a time; later callers get its answer
        if use_cache:
            hit = _memo.get(key) or _read_disk_cache(key)
            if hit is not None:
                _memo[key] = hit
                return hit if hit.cached else KvmProbe(**{**asdict(hit), "cached": True})
        probe = await _boot_probe(qemu, guest, timeout)
        _memo[key] = probe
        _write_disk_cache(key, probe)
        return probe


async def choose_accel(*, qemu_binary: str | None = None, guest: Any = None,
                       timeout: float = DEFAULT_TIMEOUT) -> str:
    """``"kvm"`` when the probe boot succeeded, else ``"tcg"``."""
    if os.environ.get(ACCEL_ENV, "").lower() == "tcg":
        return "tcg"
    probe = await probe_kvm(qemu_binary=qemu_binary, guest=guest, timeout=timeout)
    return "kvm" if probe.usable else "tcg"
