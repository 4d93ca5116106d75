"""engine.paths.remove_orphaned_dirs: what the replay, recorder and job work
directories share (``<prefix><pid>-...``, removed once their process is gone)."""

from __future__ import annotations

import os
import subprocess
import sys

from engine.paths import remove_orphaned_dirs


def test_only_directories_of_dead_processes_with_the_prefix_go(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    live_pid = os.getppid()
    made = {name: tmp_path / name for name in (
        f"sbtui-x-{dead_pid}-a1",          # dead owner: goes
        f"sbtui-x-{os.getpid()}-b2",       # this process
        f"sbtui-x-{live_pid}-c3",          # a live process
        f"sbtui-y-{dead_pid}-d4",          # another prefix
        "sbtui-x-notapid-e5")}
    for d in made.values():
        d.mkdir()
    (tmp_path / f"sbtui-x-{dead_pid}-file").write_text("not a directory")
    removed = remove_orphaned_dirs(tmp_path, "sbtui-x-")
    assert removed == [made[f"sbtui-x-{dead_pid}-a1"]]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert f"sbtui-x-{dead_pid}-a1" not in left and len(left) == 5
    assert remove_orphaned_dirs(tmp_path / "missing", "sbtui-x-") == []
