"""Helpers for the parallel-replay tests (no tests here: pytest finds none).

:func:`dask_cluster` starts a real Dask cluster on 127.0.0.1: ``dask
scheduler`` and single-threaded ``dask worker`` processes (no nanny, so a
killed worker stays dead), each in its own session and with its own
environment (e.g. its own ``$SBTUI_QEMU_TAG``, to tell its QEMUs apart, or
an ``$SBTUI_QEMU`` that does not exist). Every process is killed when the
block ends, also after a failure; waits are bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.qemu.process import TAG_ENV

DASK = str(Path(sys.executable).with_name("dask"))


@dataclass
class Cluster:
    address: str
    workdir: Path
    scheduler: subprocess.Popen
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)   # name -> process

    def log(self, name: str) -> str:
        try:
            return (self.workdir / f"{name}.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def worker_addresses(self) -> dict[str, str]:
        """name -> address of the workers the scheduler knows now."""
        from distributed import Client
        with Client(self.address, timeout=20, set_as_default=False) as c:
            info = c.scheduler_info()["workers"]
        return {w.get("name"): addr for addr, w in info.items()}


def _start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_for_workers(address: str, n: int, timeout: float = 60.0) -> None:
    from distributed import Client
    with Client(address, timeout=20, set_as_default=False) as c:
        c.wait_for_workers(n, timeout=timeout)


@contextlib.contextmanager
def dask_cluster(workers: dict[str, dict[str, str]], *, timeout: float = 60.0):
    """A scheduler and one worker per entry of ``workers`` (name -> extra environment)."""
    workdir = Path(tempfile.mkdtemp(prefix="sbtui-dask-"))
    base_env = {k: v for k, v in os.environ.items() if k != TAG_ENV}
    base_env["DASK_DISTRIBUTED__WORKER__DAEMON"] = "False"
    sched_file = workdir / "scheduler.json"
    scheduler = _start([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0",
                        "--no-dashboard", "--scheduler-file", str(sched_file)],
                       workdir / "scheduler.log", base_env)
    cluster = Cluster("", workdir, scheduler)
    try:
        deadline = time.monotonic() + timeout
        while not sched_file.exists():
            if scheduler.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dask scheduler did not start:\n{cluster.log('scheduler')}")
            time.sleep(0.05)
        while True:
            try:
                cluster.address = json.loads(sched_file.read_text())["address"]
                break
            except (ValueError, KeyError):   # being written
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        for name, extra in workers.items():
            env = {**base_env, **extra}
            cluster.workers[name] = _start(
                [DASK, "worker", cluster.address, "--name", name, "--nthreads", "1",
                 "--nworkers", "1", "--no-nanny", "--host", "127.0.0.1", "--no-dashboard",
                 "--local-directory", str(workdir / name)],
                workdir / f"{name}.log", env)
        try:
            wait_for_workers(cluster.address, len(workers), timeout=timeout)
        except Exception as err:
            logs = "\n".join(f"--- {n} ---\n{cluster.log(n)}" for n in workers)
            raise AssertionError(f"dask workers did not join: {err}\n{logs}") from err
        yield cluster
    finally:
        for proc in cluster.workers.values():
            _kill(proc)
        _kill(scheduler)
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
