"""The kernel's symbol table (System.map) for the debugger, read from a running guest.

Debian's kernel package ships a placeholder ``System.map`` (one line saying
the real one is in the ``-dbg`` package, a download of hundreds of MB). The
guest boots with ``nokaslr``, so the addresses in ``/proc/kallsyms`` are those
of every boot of that kernel. :func:`capture_system_map` boots the freshly
built guest once under TCG with ``sbtui.task=kallsyms``; the guest copies
``/proc/kallsyms`` to the debug console port, framed by ``kallsyms-begin`` and
``kallsyms-end`` marks, which sbmark writes as ``@TSC kallsyms-begin`` lines
(the firmware logs to the same port before that).
The result is written in System.map form: ``ADDRESS TYPE NAME`` sorted by
address, as ``nm -n`` prints it.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Callable

from engine.errors import GuestBuildError, QemuError
from engine.guest.boot import DemoBoot

PLACEHOLDER_TEXT = b"The real System.map is in"
# The frame lines: sbmark prefixes its text with the guest's TSC ("@<16 hex> ").
BEGIN = re.compile(rb"^(?:@[0-9a-f]{16} )?kallsyms-begin\n", re.MULTILINE)
END = re.compile(rb"^(?:@[0-9a-f]{16} )?kallsyms-end\n", re.MULTILINE)
# Symbols a usable x86-64 kernel map must have.
REQUIRED = ("_text", "start_kernel")
_LINE = re.compile(rb"^([0-9a-f]{16}) ([A-Za-z]) (\S+)(?:\t\[\S+\])?$")


def is_placeholder(path: Path | None) -> bool:
    """True when ``path`` is missing or Debian's one-line stand-in for System.map."""
    if path is None or not path.is_file():
        return True
    with open(path, "rb") as f:
        head = f.read(4096)
    return PLACEHOLDER_TEXT in head or head.count(b"\n") < 2


def parse_kallsyms_dump(raw: bytes, *, source: str) -> bytes:
    """System.map bytes from the debug console capture ``raw`` (see the module doc)."""
    begin = BEGIN.search(raw)
    if begin is None:
        raise GuestBuildError(f"{source}: no 'kallsyms-begin' line: the guest did not start "
                              f"the symbol dump")
    body_start = begin.end()
    end_match = END.search(raw, body_start)
    if end_match is None:
        raise GuestBuildError(f"{source}: no 'kallsyms-end' line after offset {body_start}: "
                              f"the symbol dump was cut short")
    end = end_match.start()
    entries: list[tuple[int, int, bytes]] = []
    offset = body_start
    for i, line in enumerate(raw[body_start:end].splitlines()):
        m = _LINE.match(line)
        if m is None:
            raise GuestBuildError(
                f"{source}: line {i + 1} of the symbol dump (offset {offset}) is {line[:80]!r}: "
                f"expected 'ADDRESS TYPE NAME' with a 16-digit hex address")
        entries.append((int(m.group(1), 16), i, line.split(b"\t")[0]))
        offset += len(line) + 1
    names = {e[2].split(b" ")[2] for e in entries}
    missing = [n for n in REQUIRED if n.encode() not in names]
    if missing:
        raise GuestBuildError(f"{source}: the symbol dump has {len(entries)} symbols but not "
                              f"{', '.join(missing)}")
    if all(e[0] == 0 for e in entries):
        raise GuestBuildError(f"{source}: every symbol address is 0 (kptr_restrict hid them)")
    entries.sort()
    return b"".join(e[2] + b"\n" for e in entries)


def capture_system_map(kernel: Path, initrd: Path, append_base: str, out: Path, *,
                       timeout: float = 300.0,
                       progress: Callable[[str], None] | None = None) -> int:
    """Boot the guest once to read its kernel's symbols into ``out``; the symbol count."""
    say = progress or (lambda _msg: None)
    say("booting the guest once under TCG to read the kernel's symbols (/proc/kallsyms)")
    with tempfile.TemporaryDirectory(prefix="sbtui-kallsyms-") as tmp:
        try:
            with DemoBoot(kernel, initrd, f"{append_base} sbtui.task=kallsyms", Path(tmp)) as vm:
                code = vm.wait_exit(timeout)
                raw = vm.debugcon_log.read_bytes() if vm.debugcon_log else b""
                console = vm.console_text()
        except QemuError as err:
            raise GuestBuildError(f"reading the kernel's symbols from a guest boot failed: "
                                  f"{err}") from None
        if code != 0 or "sbtui-guest: task kallsyms finished status=0" not in console:
            raise GuestBuildError(
                f"the symbol-dump boot of the guest failed (QEMU exit {code}); its console "
                f"ended:\n" + "\n".join(console.splitlines()[-15:]))
        data = parse_kallsyms_dump(raw, source="debug console of the symbol-dump boot")
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_bytes(data)
    tmp_out.replace(out)
    return data.count(b"\n")
