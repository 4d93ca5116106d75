"""Finding QEMU's programs and their versions.

``find_qemu()`` is ``$SBTUI_QEMU`` when set, else ``qemu-system-x86_64`` on
``PATH``; ``find_qemu_img()`` likewise with ``$SBTUI_QEMU_IMG``. A missing
program raises :class:`QemuLaunchError` that says how to install it.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess

from engine.errors import QemuError, QemuLaunchError

QEMU_ENV = "SBTUI_QEMU"
QEMU_IMG_ENV = "SBTUI_QEMU_IMG"
INSTALL_HINT = "run 'bash scripts/setup.sh' (installs QEMU 10 from bookworm-backports)"


def _find(name_or_path: str, what: str) -> str:
    found = shutil.which(name_or_path)
    if found is None:
        raise QemuLaunchError(f"{what} '{name_or_path}' not found; {INSTALL_HINT}")
    return found


def find_qemu(binary: str | None = None) -> str:
    """Absolute path of the QEMU system emulator to use."""
    return _find(binary or os.environ.get(QEMU_ENV) or "qemu-system-x86_64", "QEMU")


def find_qemu_img(binary: str | None = None) -> str:
    return _find(binary or os.environ.get(QEMU_IMG_ENV) or "qemu-img", "qemu-img")


@functools.lru_cache(maxsize=8)
def qemu_version(binary: str) -> tuple[int, int, int]:
    """``(major, minor, micro)`` from ``BINARY --version``."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise QemuError(f"'{binary} --version' failed: {err}") from err
    m = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", out.stdout)
    if out.returncode != 0 or m is None:
        raise QemuError(f"'{binary} --version' printed no version "
                        f"(exit code {out.returncode}): {out.stdout.strip() or out.stderr.strip()}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
