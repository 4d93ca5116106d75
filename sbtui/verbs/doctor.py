"""``sbtui doctor [--json] [--no-kvm-probe] [--kvm-timeout S] [--scheduler ADDR]``: check what sbtui relies on.

Prints one line per check (``ok``, ``warn`` or ``FAIL``, the name, a detail)
and, under each problem, what to do. ``--json`` prints a list of objects with
``name``, ``ok``, ``detail``, ``fix``, ``required`` and ``seconds`` instead.
Exits 0 when sbtui can run here (an unusable KVM is only a warning: TCG
works), 1 when a required check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from engine.doctor import can_run, run_checks
from engine.errors import UsageError
from engine.qemu.kvm import DEFAULT_TIMEOUT


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check QEMU, record/replay, KVM, gdb and the demo guest",
                       description="Check what sbtui relies on (QEMU >= 8.2, qemu-img, "
                                   "record/replay on q35, background snapshots, qcow2 VM state, "
                                   "KVM, gdb, the demo guest) and say what to do about each "
                                   "problem. Exits 0 when sbtui can run here.")
    p.add_argument("--json", action="store_true",
                   help="print the checks as a JSON list of {name, ok, detail, fix, required, seconds}")
    p.add_argument("--no-kvm-probe", action="store_true",
                   help="only look at /dev/kvm; do not boot the guest under KVM")
    p.add_argument("--kvm-timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"how long the KVM probe boot may take (default: {DEFAULT_TIMEOUT:g})")
    p.add_argument("--scheduler", metavar="ADDR",
                   help="also check that every worker of this Dask cluster (tcp://HOST:PORT) "
                        "can run interval jobs ('sbtui simulate --scheduler')")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if not 1 <= args.kvm_timeout <= 300:
        raise UsageError(f"--kvm-timeout must be between 1 and 300 seconds, got {args.kvm_timeout:g}")
    started = time.monotonic()
    checks = asyncio.run(run_checks(kvm_probe=not args.no_kvm_probe, kvm_timeout=args.kvm_timeout))
    if args.scheduler:
        from engine.doctor import scheduler_checks
        checks += scheduler_checks(args.scheduler)
    ok = can_run(checks)
    if args.json:
        print(json.dumps([c.to_dict() for c in checks], indent=2))
        return 0 if ok else 1
    width = max(len(c.name) for c in checks)
    for c in checks:
        status = "ok" if c.ok else ("FAIL" if c.required else "warn")
        print(f"{status:<5} {c.name:<{width}}  {c.detail}")
        if not c.ok and c.fix:
            print(f"{'':<5} {'':<{width}}  fix: {c.fix}")
    failed = sum(1 for c in checks if c.required and not c.ok)
    warned = sum(1 for c in checks if not c.required and not c.ok)
    took = time.monotonic() - started
    if ok:
        accel = next((c for c in checks if c.name == "kvm"), None)
        mode = "with KVM" if accel is not None and accel.ok else "with TCG"
        extra = f", {warned} warning{'s' if warned != 1 else ''}" if warned else ""
        print(f"\nsbtui can run here ({mode}){extra}; checked in {took:.1f} s.")
        return 0
    print(f"\nsbtui cannot run here: {failed} required check{'s' if failed != 1 else ''} "
          f"failed; checked in {took:.1f} s.")
    return 1
