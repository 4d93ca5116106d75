"""Where sbtui keeps files that outlive a run: the per-user cache.

``cache_dir()`` is ``$XDG_CACHE_HOME/sbtui`` or ``~/.cache/sbtui``; tests may
point ``SBTUI_CACHE`` elsewhere. The directory is created on first use.

Work directories that a process makes for itself are named
``<prefix><pid>-<anything>``, so that :func:`remove_orphaned_dirs` can find
the ones whose process was killed outright (on tmpfs they would keep memory).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def cache_dir() -> Path:
    override = os.environ.get("SBTUI_CACHE")
    if override:
        base = Path(override)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "sbtui"
    base.mkdir(parents=True, exist_ok=True)
    return base


def remove_orphaned_dirs(base: Path, prefix: str) -> list[Path]:
    """Remove the directories ``<prefix><pid>-...`` in ``base`` whose process
    is gone; returns them. This process's own and other live processes' stay
    (also another user's, which signal 0 cannot reach); an unreadable ``base``
    is left alone."""
    removed: list[Path] = []
    try:
        entries = list(base.glob(f"{prefix}*-*"))
    except OSError:
        return removed
    for d in entries:
        pid_text = d.name[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or not d.is_dir():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
        except PermissionError:
            pass  # someone else's live process
    return removed
