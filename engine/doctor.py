"""The checks behind ``sbtui doctor``: can sbtui run here, and what to do if not.

:func:`run_checks` returns one :class:`Check` per item, each with ``ok``, a
one-line ``detail`` and, when it fails, a ``fix`` (what to do). ``required``
checks decide whether the project can run (:func:`can_run`); the others are
warnings (KVM: without it TCG still works, only slower).

Every check is bounded: one small TCG VM (BIOS only, record mode, a qcow2 VM
state node) answers the record/replay, background-snapshot and qcow2 vmstate
checks, while the KVM probe boot runs next to it; the whole run stays under
about ``kvm_timeout`` plus a few seconds. Checks never raise: a broken
environment is a failed check, not a traceback.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from engine.errors import SbtuiError
from engine.qemu.binaries import INSTALL_HINT, find_qemu, find_qemu_img, qemu_version
from engine.qemu.kvm import DEFAULT_TIMEOUT, kvm_device_status, probe_kvm
from engine.qemu.machine import MachineSpec
from engine.qemu.process import QemuProcess

MIN_QEMU = (8, 2)
SETUP = "run 'bash scripts/setup.sh'"
VM_TIMEOUT = 20.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    required: bool = True
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def can_run(checks: list[Check]) -> bool:
    """True when every required check passed."""
    return all(c.ok for c in checks if c.required)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _check_qemu() -> tuple[Check, str | None]:
    try:
        binary = find_qemu()
        version = qemu_version(binary)
    except SbtuiError as err:
        return Check("qemu", False, _one_line(err), fix=f"{SETUP} ({INSTALL_HINT})"), None
    text = ".".join(map(str, version))
    if version[:2] < MIN_QEMU:
        return Check("qemu", False, f"QEMU {text} at {binary} is older than 8.2",
                     fix=f"install QEMU 8.2 or newer (10.x is tested): {SETUP}"), None
    return Check("qemu", True, f"QEMU {text} at {binary}"), binary


def _check_qemu_img() -> tuple[Check, str | None]:
    try:
        binary = find_qemu_img()
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20)
        first = out.stdout.strip().splitlines()[0] if out.stdout.strip() else "no version"
    except (SbtuiError, OSError, subprocess.TimeoutExpired) as err:
        return Check("qemu-img", False, _one_line(err),
                     fix=f"install qemu-utils: {SETUP}"), None
    return Check("qemu-img", True, f"{first} at {binary}"), binary


def _check_gdb() -> Check:
    gdb = shutil.which("gdb")
    if gdb is None:
        return Check("gdb", False, "gdb not found on PATH", fix=f"install gdb: {SETUP}")
    try:
        out = subprocess.run([gdb, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return Check("gdb", False, f"'{gdb} --version' failed: {err}", fix=f"reinstall gdb: {SETUP}")
    first = out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
    if out.returncode != 0 or not first:
        return Check("gdb", False, f"'{gdb} --version' exited {out.returncode}",
                     fix=f"reinstall gdb: {SETUP}")
    return Check("gdb", True, f"{first} at {gdb}")


def _check_guest() -> tuple[Check, Any]:
    try:
        from engine.guest import build_demo_guest
    except ImportError as err:
        return Check("demo guest", False, f"the guest builder is missing: {err}",
                     fix="reinstall sbtui: " + SETUP), None
    started = time.monotonic()
    try:
        guest = build_demo_guest()
    except SbtuiError as err:
        return Check("demo guest", False, f"cannot build the demo guest: {_one_line(err)}",
                     fix="run 'sbtui guest build' to see the whole error"), None
    took = time.monotonic() - started
    how = "from the cache" if took < 2 else f"built in {took:.0f} s"
    return Check("demo guest", True,
                 f"{guest.kernel.name} + initrd {guest.initrd.stat().st_size / 1e6:.1f} MB ({how})"), guest


async def _vm_checks(qemu: str, qemu_img: str | None) -> list[Check]:
    """record/replay, background-snapshot and qcow2 vmstate, on one small TCG VM."""
    names = ("record/replay", "background-snapshot", "qcow2 vmstate")
    started = time.monotonic()
    results: dict[str, Check] = {}
    with tempfile.TemporaryDirectory(prefix="sbtui-doctor-") as tmpname:
        tmp = Path(tmpname)
        vmstate = None
        if qemu_img is not None:
            made = subprocess.run([qemu_img, "create", "-q", "-f", "qcow2",
                                   str(tmp / "vmstate.qcow2"), "1M"],
                                  capture_output=True, text=True, timeout=20)
            if made.returncode == 0:
                vmstate = str(tmp / "vmstate.qcow2")
            else:
                results["qcow2 vmstate"] = Check(
                    "qcow2 vmstate", False, f"qemu-img create failed: {made.stderr.strip()}",
                    fix=f"reinstall qemu-utils: {SETUP}")
        else:
            results["qcow2 vmstate"] = Check("qcow2 vmstate", False, "needs qemu-img",
                                             fix=f"install qemu-utils: {SETUP}")
        # BIOS only: enough for the record machinery, migration and savevm.
        spec = MachineSpec(memory_mib=64, icount_shift=3, rr="record",
                           rrfile=str(tmp / "replay.bin"), vmstate_image=vmstate)
        try:
            async with QemuProcess(spec, qemu_binary=qemu, launch_timeout=VM_TIMEOUT) as vm:
                replay = await vm.qmp("query-replay", timeout=VM_TIMEOUT)
                if replay.get("mode") == "record":
                    results["record/replay"] = Check(
                        "record/replay", True,
                        f"q35 records with -icount rr=record (icount {replay.get('icount')})")
                else:
                    results["record/replay"] = Check(
                        "record/replay", False, f"query-replay says mode {replay.get('mode')!r}",
                        fix="use QEMU 10.x built with TCG: " + SETUP)
                caps = await vm.qmp("query-migrate-capabilities", timeout=VM_TIMEOUT)
                if any(c.get("capability") == "background-snapshot" for c in caps):
                    results["background-snapshot"] = Check(
                        "background-snapshot", True, "the migration capability is present")
                else:
                    results["background-snapshot"] = Check(
                        "background-snapshot", False, "QEMU lacks the background-snapshot capability",
                        fix="install QEMU 8.2 or newer: " + SETUP)
                if vmstate is not None:
                    t0 = time.monotonic()
                    await vm.hmp("savevm sbtui-doctor", timeout=VM_TIMEOUT)
                    listed = await vm.hmp("info snapshots", timeout=VM_TIMEOUT)
                    if "sbtui-doctor" in listed:
                        results["qcow2 vmstate"] = Check(
                            "qcow2 vmstate", True,
                            f"savevm in record mode on an orphan qcow2 node works "
                            f"({(time.monotonic() - t0) * 1000:.0f} ms)")
                    else:
                        results["qcow2 vmstate"] = Check(
                            "qcow2 vmstate", False, "savevm returned but 'info snapshots' lacks it",
                            fix="use QEMU 10.x: " + SETUP)
        except SbtuiError as err:
            for name in names:
                if name not in results:
                    results[name] = Check(name, False, f"the check VM failed: {_one_line(err)}",
                                          fix="run 'sbtui doctor --json' and read QEMU's log tail "
                                              "in the detail; " + SETUP)
    took = time.monotonic() - started
    out = []
    for name in names:
        check = results.get(name) or Check(name, False, "not checked", fix=SETUP)
        check.seconds = round(took, 2)
        out.append(check)
    return out


async def _kvm_check(qemu: str | None, guest: Any, probe: bool, timeout: float) -> Check:
    started = time.monotonic()
    fix = "nothing needed: sbtui uses TCG (slower); for KVM use a host with working hardware virtualization"
    if not probe:
        ok, detail = kvm_device_status()
        return Check("kvm", False,
                     f"not probed (--no-kvm-probe); {detail}" if ok else detail,
                     fix=fix, required=False, seconds=round(time.monotonic() - started, 2))
    if qemu is None or guest is None:
        ok, detail = kvm_device_status()
        return Check("kvm", False, f"not probed (needs QEMU and the demo guest); {detail}",
                     fix=fix, required=False, seconds=round(time.monotonic() - started, 2))
    result = await probe_kvm(qemu_binary=qemu, guest=guest, timeout=timeout, use_cache=False)
    return Check("kvm", result.usable, ("usable: " if result.usable else "unusable: ") + result.detail,
                 fix=None if result.usable else fix, required=False,
                 seconds=round(time.monotonic() - started, 2))


async def run_checks(*, kvm_probe: bool = True, kvm_timeout: float = DEFAULT_TIMEOUT) -> list[Check]:
    """Run every check; never raises for a broken environment."""
    checks: list[Check] = []

    def timed(fn: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        result = fn()
        check = result[0] if isinstance(result, tuple) else result
        check.seconds = round(time.monotonic() - t0, 2)
        return result

    qemu_check, qemu = timed(_check_qemu)
    img_check, qemu_img = timed(_check_qemu_img)
    gdb_check = timed(_check_gdb)
    guest_check, guest = await asyncio.to_thread(timed, _check_guest)
    checks += [qemu_check, img_check]

    jobs: list[Awaitable[Any]] = [_kvm_check(qemu, guest, kvm_probe, kvm_timeout)]
    if qemu is not None:
        jobs.append(_vm_checks(qemu, qemu_img))
    done = await asyncio.gather(*jobs)
    kvm = done[0]
    if qemu is not None:
        checks += done[1]
    else:
        checks += [Check(n, False, "needs QEMU", fix=SETUP)
                   for n in ("record/replay", "background-snapshot", "qcow2 vmstate")]
    checks += [kvm, gdb_check, guest_check]
    return checks


def scheduler_checks(address: str, *, timeout: float = 60.0) -> list[Check]:
    """``sbtui doctor --scheduler ADDR``: can the Dask cluster at ``address`` run
    interval jobs? One check for the scheduler, one per worker, each worker
    probed by a task pinned to it that finds QEMU and qemu-img and starts a
    small VM (:func:`engine.parallel.dask.probe_workers`)."""
    started = time.monotonic()
    try:
        from engine.parallel.dask import connect, probe_workers
        client = connect(address)
    except SbtuiError as err:
        return [Check("dask scheduler", False, _one_line(err),
                      fix="start one with 'dask scheduler' (pip install 'sbtui[dask]') and pass "
                          "its address, e.g. tcp://HOST:8786",
                      seconds=round(time.monotonic() - started, 2))]
    try:
        probes = probe_workers(client, launch=True, timeout=timeout)
    except Exception as err:  # noqa: BLE001 - checks never raise
        client.close()
        return [Check("dask scheduler", False, f"{address}: probing the workers failed: {err}",
                      seconds=round(time.monotonic() - started, 2))]
    client.close()
    took = round(time.monotonic() - started, 2)
    checks = [Check("dask scheduler", bool(probes),
                    f"{address}: {len(probes)} worker{'s' if len(probes) != 1 else ''}",
                    fix=None if probes else f"start workers: 'dask worker {address} --nthreads 1'",
                    seconds=took)]
    for p in probes:
        where = f" ({p.host})" if p.host else ""
        checks.append(Check(f"worker {p.address}", p.ok, f"{p.address}{where}: {p.detail}",
                            fix=None if p.ok else "install QEMU 10 and sbtui on that host "
                                                  f"({SETUP}), or set SBTUI_QEMU for the worker",
                            seconds=round(p.seconds, 2)))
    return checks
