"""End to end in a real terminal (tmux at 180x50), with real processes:

* ``sbtui open REC`` on the demo recording: Enter on a checkpoint replays it
  and the registers appear (within 60 s), Escape goes back, ``q`` quits, and
  the sbtui process, its replay QEMU and its gdb are gone afterwards;
* ``sbtui demo --memory 128``: the demo guest is recorded and shown live, the
  checkpoints appear and grow, ``q`` quits (the console input does not take
  the key), the recording on disk is finished and one of its intervals
  verifies, and nothing is left running;
* ``sbtui record REC`` without ``--headless`` opens the same live screen.

Each sbtui runs with its own ``$SBTUI_QEMU_TAG``, so only its QEMUs count.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from engine.qemu.process import TAG_ENV
from procs import assert_no_qemu, new_tag, wait_for_qemu
from test_recording_support import sbtui_run

ROOT = Path(__file__).resolve().parent.parent
SBTUI = ROOT / ".venv" / "bin" / "sbtui"

pytestmark = [pytest.mark.qemu,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
              pytest.mark.skipif(not SBTUI.exists(), reason="no .venv/bin/sbtui (make setup)")]


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


def screen_of(session: str) -> str:
    return tmux("capture-pane", "-p", "-t", session)


def wait_for_screen(session: str, needle: str | re.Pattern, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = screen_of(session)
        if (needle.search(screen) if isinstance(needle, re.Pattern) else needle in screen):
            return screen
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} not on screen after {timeout}s:\n{screen}")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def children(pid: int) -> list[int]:
    """Every live descendant of ``pid``."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def gdbs_under(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        try:
            if Path(f"/proc/{child}/comm").read_text().strip() == "gdb":
                found.append(child)
        except OSError:
            pass
    return found


class Terminal:
    """One sbtui command in a detached tmux session of 180x50."""

    def __init__(self, tmp_path: Path, *args: str, tag: str, env: dict[str, str] | None = None):
        self.name = f"sbtui-e2e-{uuid.uuid4().hex[:8]}"
        self.pidfile = tmp_path / f"{self.name}.pid"
        env = (f"{TAG_ENV}={tag} SBTUI_CONFIG_DIR={tmp_path / 'config'} TERM=xterm-256color"
               + "".join(f" {k}={v}" for k, v in (env or {}).items()))
        # COLUMNS/LINES from the caller's environment would override the pane's
        # size (Textual sizes itself through shutil.get_terminal_size; CI exports
        # 80x25), so they are dropped and the pane's 180x50 counts.
        command = (f"cd {ROOT} && env -u COLUMNS -u LINES {env} sh -c 'echo $$ > {self.pidfile}; "
                   f"exec {SBTUI} {' '.join(args)}'; sleep 600")
        tmux("new-session", "-d", "-s", self.name, "-x", "180", "-y", "50", command)
        deadline = time.monotonic() + 10
        while not (self.pidfile.exists() and self.pidfile.read_text().strip()):
            assert time.monotonic() < deadline, "the tmux session did not start"
            time.sleep(0.05)
        self.pid = int(self.pidfile.read_text())

    def keys(self, *keys: str) -> None:
        tmux("send-keys", "-t", self.name, *keys)

    def wait(self, needle, timeout: float) -> str:
        return wait_for_screen(self.name, needle, timeout)

    def wait_exit(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(self.pid), (f"sbtui still running {timeout:g} s after q:\n"
                                     f"{screen_of(self.name)}")

    def close(self) -> None:
        if alive(self.pid):
            os.kill(self.pid, 9)
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def checkpoint_count(screen: str) -> int:
    m = re.search(r"checkpoints \((\d[\d,]*)\)", screen)
    return int(m.group(1).replace(",", "")) if m else -1


def test_open_a_recording_enter_shows_registers_and_q_leaves_nothing_running(demo_recording,
                                                                              tmp_path):
    tag = new_tag()
    term = Terminal(tmp_path, "open", str(demo_recording), tag=tag)
    try:
        term.wait("checkpoints (", timeout=60)
        term.keys("Down", "Down")
        term.wait(re.compile(r"#2 +icount"), timeout=10)      # the timeline names the selection
        term.keys("Enter")
        term.wait("rflags", timeout=60)
        for needle in ("rip", "cr0", "disassembly", "replaying from checkpoint #2"):
            term.wait(needle, timeout=10)                     # each on a capture of its own
        wait_for_qemu(tag)
        gdbs = gdbs_under(term.pid)
        assert gdbs, "no gdb under sbtui while its replay is shown"
        # a lone ESC can be read as the start of an escape sequence when it
        # arrives next to other input, so it is sent again if the screen stays
        for attempt in range(3):
            term.keys("Escape")
            try:
                term.wait("dirty pages", timeout=10)
                break
            except AssertionError:
                if attempt == 2:
                    raise
        term.keys("q")
        term.wait_exit(60)
    finally:
        term.close()
    assert_no_qemu(tag)
    assert not any(alive(pid) for pid in gdbs), "gdb outlived sbtui"


def test_demo_shows_the_recording_grow_and_q_leaves_a_replayable_recording(demo_guest, tmp_path):
    tag = new_tag()
    rec = tmp_path / "demo"
    term = Terminal(tmp_path, "demo", "--memory", "128", str(rec), tag=tag)
    try:
        screen = term.wait(re.compile(r"checkpoints \([1-9]"), timeout=90)
        # Each on a capture of its own: tmux can be caught mid-repaint (CI saw a
        # capture whose status line and console frame were not drawn yet).
        term.wait("running", timeout=10)
        term.wait("console (live)", timeout=10)
        term.wait("Type to console", timeout=10)              # the footer offers it, on i
        first = checkpoint_count(screen)
        term.wait(re.compile(rf"checkpoints \((?!{first}\))\d"), timeout=60)
        term.keys("q")
        term.wait("Stopping", timeout=10)
        term.wait_exit(240)                                   # QEMU quits, last proofs run
    finally:
        term.close()
    assert_no_qemu(tag)
    manifest = json.loads((rec / "recording.json").read_text())
    assert manifest["status"] in ("complete", "interrupted"), manifest["status"]
    assert manifest["error"] is None
    lines = (rec / "checkpoints.jsonl").read_text().splitlines()
    assert len({json.loads(line)["index"] for line in lines}) >= 2
    verify = sbtui_run("verify", str(rec), "--interval", "0", "--json", tag=tag, timeout=180)
    assert verify.returncode == 0, verify.stderr.decode()[-2000:]
    assert_no_qemu(tag)


def test_record_on_a_terminal_opens_the_live_screen(demo_guest, tmp_path):
    tag = new_tag()
    rec = tmp_path / "rec"
    term = Terminal(tmp_path, "record", str(rec), "--workload", "memchurn", "--memory", "128",
                    "--prove", "off", tag=tag)
    try:
        term.wait(re.compile(r"checkpoints \([1-9]"), timeout=90)
        term.wait("console (live)", timeout=10)               # each on a capture of its own
        term.wait("Checkpoint now", timeout=10)
        term.keys("q")
        term.wait_exit(120)
    finally:
        term.close()
    assert_no_qemu(tag)
    manifest = json.loads((rec / "recording.json").read_text())
    assert manifest["status"] in ("complete", "interrupted") and manifest["error"] is None
