"""Boot the demo guest headless under TCG in a plain QEMU subprocess.

This is the small runner behind ``sbtui guest boot``, the build-time symbol
capture and the guest's own tests; recording and replay use the real QEMU
owner in ``engine/qemu``. :class:`DemoBoot` owns exactly one QEMU process and
is a context manager: leaving the ``with`` block (normally, by an exception or
by Ctrl-C) stops QEMU, first with SIGTERM (QEMU exits cleanly on it), then
SIGKILL. QEMU runs in its own session so a Ctrl-C in the terminal reaches only
us, and we decide how QEMU ends; if we are killed outright, the kernel kills
QEMU (PR_SET_PDEATHSIG). QEMU gets ``-name sbtui-[$SBTUI_QEMU_TAG-]UNIQUE``
like every QEMU of ``engine.qemu``.

The machine is the one the project replays reliably (see
``/work/shared/notes/qemu-facts.md``): ``q35,hpet=off``, TCG, no network, no
defaults. The serial console goes to ``console.log`` and the debug console
port 0x402 (``sbmark``) to ``debugcon.log`` in the given work directory
(SeaBIOS writes its own boot log to that port first: guest marks start at
the line ``guest-ready workload=NAME``);
QEMU's own messages go to ``qemu.log``, whose tail every error carries.
Waits are bounded and poll the log files; nothing sleeps blindly.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

from engine.errors import QemuDiedError, QemuLaunchError, QemuTimeoutError
from engine.qemu.process import process_name

QEMU_BINARY = "qemu-system-x86_64"
DEBUGCON_PORT = 0x402
_POLL = 0.05
_PR_SET_PDEATHSIG = 1


def demo_qemu_argv(kernel: Path, initrd: Path, append: str, *, console: Path,
                   debugcon: Path | None = None, ram_mib: int = 256,
                   qemu: str = QEMU_BINARY, name: str | None = None) -> list[str]:
    """The QEMU command line that boots the demo guest headless under TCG."""
    argv = [qemu]
    if name:
        argv += ["-name", name]
    argv += [
        "-machine", "q35,hpet=off", "-accel", "tcg", "-m", str(ram_mib),
        "-nodefaults", "-no-user-config", "-display", "none", "-net", "none",
        # A panicking guest (panic=-1 reboots) ends QEMU instead of looping.
        "-no-reboot",
        "-serial", f"file:{console}",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
    ]
    if debugcon is not None:
        argv += ["-chardev", f"file,id=sbtui-debugcon,path={debugcon}",
                 "-device", f"isa-debugcon,iobase={DEBUGCON_PORT:#x},chardev=sbtui-debugcon"]
    return argv


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: own session (Ctrl-C in the terminal reaches only us), and
    SIGKILL from the kernel if we die without our clean-up running (SIGKILL)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork

    def preexec() -> None:
        os.setsid()
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # died between fork and prctl
            os._exit(127)
    return preexec


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class DemoBoot:
    """One QEMU running the demo guest; use as ``with DemoBoot(...) as vm:``."""

    def __init__(self, kernel: Path, initrd: Path, append: str, workdir: Path, *,
                 ram_mib: int = 256, debugcon: bool = True, qemu: str = QEMU_BINARY):
        self.workdir = Path(workdir)
        self.console_log = self.workdir / "console.log"
        self.debugcon_log = self.workdir / "debugcon.log" if debugcon else None
        self.qemu_log = self.workdir / "qemu.log"
        # The same -name scheme as engine.qemu, so tests find their own QEMUs.
        self.name = process_name()
        self.argv = demo_qemu_argv(kernel, initrd, append, console=self.console_log,
                                   debugcon=self.debugcon_log, ram_mib=ram_mib, qemu=qemu,
                                   name=self.name)
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None

    # -- lifetime ----------------------------------------------------------

    def launch(self) -> "DemoBoot":
        if self.proc is not None:
            raise RuntimeError("DemoBoot.launch() called twice")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for p in (self.console_log, self.debugcon_log):
            if p is not None:
                p.write_bytes(b"")  # exists from the start, so readers need no special case
        with open(self.qemu_log, "wb") as log:
            try:
                self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT,
                                             preexec_fn=_die_with_parent(os.getpid()))
            except OSError as err:
                raise QemuLaunchError(f"cannot start {self.argv[0]}: {err}",
                                      argv=self.argv) from None
        self.started_at = time.monotonic()
        return self

    def shutdown(self, timeout: float = 5.0) -> int | None:
        """Stop QEMU if it still runs (SIGTERM, then SIGKILL). Returns its exit code."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            if proc.poll() is None:  # interrupted while waiting: never leave it behind
                proc.kill()
                proc.wait()
        return proc.returncode

    def __enter__(self) -> "DemoBoot":
        return self.launch()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.shutdown()

    # -- observing ---------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def exit_code(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def console_text(self) -> str:
        return self.console_log.read_text(errors="replace")

    def debugcon_text(self) -> str:
        if self.debugcon_log is None:
            return ""
        return self.debugcon_log.read_text(errors="replace")

    def _error(self, cls, message: str):
        return cls(f"{message}\n--- guest console (last lines) ---\n{_tail(self.console_log)}",
                   argv=self.argv, exit_code=self.exit_code(), log_tail=_tail(self.qemu_log))

    def wait_for_console(self, pattern: str | re.Pattern, timeout: float) -> re.Match:
        """Wait until the console output matches ``pattern`` (a regex, MULTILINE)."""
        rx = re.compile(pattern, re.M) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.console_text())
            if m:
                return m
            if self.exit_code() is not None:
                m = rx.search(self.console_text())  # the last words may land as it exits
                if m:
                    return m
                raise self._error(QemuDiedError,
                                  f"QEMU exited before the console showed /{rx.pattern}/")
            if time.monotonic() >= deadline:
                raise self._error(QemuTimeoutError,
                                  f"the console did not show /{rx.pattern}/ within {timeout:.0f} s")
            time.sleep(_POLL)

    def wait_exit(self, timeout: float) -> int:
        """Wait until QEMU exits by itself (e.g. the guest powered off); its exit code."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise self._error(QemuTimeoutError,
                              f"QEMU did not exit within {timeout:.0f} s") from None

    def stream_console(self, write: Callable[[str], None], *,
                       timeout: float | None = None) -> int | None:
        """Copy console output to ``write`` as it arrives, until QEMU exits (or ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        with open(self.console_log, "rb") as f:
            while True:
                chunk = f.read()
                if chunk:
                    write(decoder.decode(chunk))
                    continue
                if self.exit_code() is not None:
                    text = decoder.decode(f.read(), final=True)
                    if text:
                        write(text)
                    return self.exit_code()
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                time.sleep(_POLL)


def qemu_available(qemu: str = QEMU_BINARY) -> bool:
    return any(os.access(Path(d) / qemu, os.X_OK)
               for d in os.environ.get("PATH", "").split(os.pathsep) if d)
