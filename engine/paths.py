"""Where sbtui keeps files that outlive a run: the per-user cache.

``cache_dir()`` is ``$XDG_CACHE_HOME/sbtui`` or ``~/.cache/sbtui``; tests may
point ``SBTUI_CACHE`` elsewhere. The directory is created on first use.
"""

from __future__ import annotations

import os
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
