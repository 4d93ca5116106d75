"""``sbtui guest``: build the demo guest, or boot it headless and watch its console.

``sbtui guest build [--json] [--force]`` prints where the artifacts are (or,
with ``--json``, :meth:`GuestArtifacts.to_json`); progress goes to stderr.
``sbtui guest boot [--workload W] [--duration S] [--mem MIB]`` boots it under
TCG and copies the serial console to stdout until the guest powers off
(exit 0) or Ctrl-C, SIGTERM or SIGHUP (QEMU is stopped either way; exit 130).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from engine.guest import READY_LINE_PREFIX, build_demo_guest
from engine.guest.boot import DemoBoot


def _progress(msg: str) -> None:
    print(f"sbtui guest: {msg}", file=sys.stderr, flush=True)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("guest", help="build or boot the demo guest",
                       description="The demo guest: a Debian kernel and sbtui's own initramfs "
                                   "with deterministic workloads (memchurn, compress, idle).")
    gsub = p.add_subparsers(dest="guest_command", metavar="SUBCOMMAND")
    gsub.required = True

    b = gsub.add_parser("build", help="build the demo guest (or find it in the cache)",
                        description="Build the demo guest, or find it in the cache when its "
                                    "inputs are unchanged. Progress goes to stderr.")
    b.add_argument("--json", action="store_true",
                   help="print kernel, initrd, System.map, command line and workloads as JSON")
    b.add_argument("--force", action="store_true",
                   help="rebuild even if a cached build exists (downloads the kernel again)")
    b.set_defaults(func=_build)

    r = gsub.add_parser("boot", help="boot the demo guest headless under TCG, console to stdout",
                        description="Boot the demo guest under TCG (q35, no display, no "
                                    "network) and copy its serial console to stdout until it "
                                    "powers off or you press Ctrl-C.")
    r.add_argument("--workload", "-w", default="idle", metavar="NAME",
                   help="the workload to run (default: idle)")
    r.add_argument("--duration", type=int, metavar="SECONDS",
                   help="end the workload after this many seconds (then the guest powers off)")
    r.add_argument("--mem", type=int, metavar="MIB", help="the workload's working-set size")
    r.add_argument("--ram", type=int, default=256, metavar="MIB",
                   help="guest RAM in MiB (default: 256)")
    r.set_defaults(func=_boot)


def _build(args: argparse.Namespace) -> int:
    started = time.monotonic()
    art = build_demo_guest(force=args.force, progress=_progress)
    if args.json:
        print(json.dumps(art.to_json(), indent=2))
    else:
        print(f"kernel:     {art.kernel}")
        print(f"initrd:     {art.initrd}")
        print(f"System.map: {art.system_map or '-'}")
        print(f"append:     {art.append}")
        print(f"workloads:  {' '.join(art.workloads)}")
    _progress(f"done in {time.monotonic() - started:.2f} s")
    return 0


@contextmanager
def _terminate_as_interrupt():
    """SIGTERM and SIGHUP unwind like Ctrl-C, so QEMU is stopped by its owner, not orphaned."""
    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _boot(args: argparse.Namespace) -> int:
    art = build_demo_guest(progress=_progress)
    append = art.append_for(args.workload, duration=args.duration, mem=args.mem)
    with _terminate_as_interrupt(), \
            tempfile.TemporaryDirectory(prefix="sbtui-guest-boot-") as tmp:
        with DemoBoot(art.kernel, art.initrd, append, Path(tmp), ram_mib=args.ram) as vm:
            _progress(f"booting (Ctrl-C stops it): {' '.join(vm.argv)}")

            def write(text: str) -> None:
                sys.stdout.write(text)
                sys.stdout.flush()

            code = vm.stream_console(write)
            ready = READY_LINE_PREFIX in vm.console_text()
        _progress(f"QEMU exited with {code}" + ("" if ready else
                  f"; the guest never printed '{READY_LINE_PREFIX}'"))
    return 0 if code == 0 and ready else 1
