"""End to end in a real terminal: tmux at 180x50 runs ``sbtui open --fake``,
Enter replays the selected checkpoint, the registers appear (bounded wait),
``q`` quits, and the sbtui process is gone afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SBTUI = ROOT / ".venv" / "bin" / "sbtui"

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


def wait_for_screen(session: str, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux("capture-pane", "-p", "-t", session)
        if needle in screen:
            return screen
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} not on screen after {timeout}s:\n{screen}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not running any more
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_open_enter_shows_registers_and_q_leaves_nothing_running(tmp_path):
    exe = str(SBTUI) if SBTUI.exists() else f"{sys.executable} -m sbtui"
    session = f"sbtui-e2e-{uuid.uuid4().hex[:8]}"
    pidfile = tmp_path / "pid"
    command = (f"cd {ROOT} && SBTUI_CONFIG_DIR={tmp_path / 'config'} TERM=xterm-256color "
               f"sh -c 'echo $$ > {pidfile}; exec {exe} open --fake --fake-latency 0.2'")
    tmux("new-session", "-d", "-s", session, "-x", "180", "-y", "50", command)
    try:
        wait_for_screen(session, "checkpoints (2,000)", timeout=60)
        pid = int(pidfile.read_text())
        assert alive(pid)
        tmux("send-keys", "-t", session, "Enter")
        screen = wait_for_screen(session, "rflags", timeout=60)
        assert "rip" in screen and "rsp" in screen and "disassembly" in screen
        # a lone ESC can be read as the start of an escape sequence when it
        # arrives next to other input, so it is sent again if the screen stays
        for attempt in range(3):
            tmux("send-keys", "-t", session, "Escape")
            try:
                wait_for_screen(session, "dirty pages", timeout=10)
                break
            except AssertionError:
                if attempt == 2:
                    raise
        tmux("send-keys", "-t", session, "q")
        deadline = time.monotonic() + 30
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(pid), "sbtui still running 30 s after q"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
