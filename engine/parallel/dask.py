"""The Dask scheduler: interval jobs on a Dask distributed cluster (``--scheduler tcp://HOST:PORT``).

The cluster is the user's (``dask scheduler`` on one host, ``dask worker
tcp://HOST:8786 --nthreads 1`` on every host with QEMU and sbtui installed;
one thread per worker process because each job is one QEMU that wants a core
of its own). Workers need no shared file system: every job travels as bytes
(:mod:`engine.parallel.job`), the guest's kernel and initrd once per run, as
a task every job depends on (Dask copies its result from worker to worker,
and computes it again if every holder dies).

Promises:

* Before any job is sent, every worker is probed (:func:`probe_workers`):
  a worker that cannot run jobs (no QEMU, the wrong QEMU major for the
  recording, no sbtui) stops the run with an error naming the worker's
  address and what it lacks (a worker too busy to answer within the probe
  timeout does not: Dask gives it jobs when it is free). A job that still lands on such a worker (one
  that joined later) fails with the same kind of message.
* Jobs are Dask futures: ``client.submit`` with ``retries``, a priority that
  hands out the longest interval first, ``pure=False``; results come back
  through ``as_completed``. A worker that dies takes nothing with it: the
  scheduler holds each job's bytes and runs it on another worker (Dask's
  ``allowed-failures``, default 3; after that the interval fails with
  ``KilledWorker`` named in its detail). Workers report when a job starts
  with ``Worker.log_event`` on the topic :data:`TOPIC`, which the client
  follows (``subscribe_topic``) for the progress bar.
* Jobs are built on the client in a background thread, in plan order (the
  first while the workers are probed), and one job per worker thread is
  out at a time: Dask binds a task to a worker when it is submitted, and a
  job queued behind a long interval would leave another worker idle.
  Streams go lz4-framed unless the scheduler and every worker are on the
  loopback (``compress=None``, the default).
* The client connection is closed on every path; nothing is left running
  on the cluster (unfinished futures are cancelled).
"""

from __future__ import annotations

import asyncio
import os
import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from engine.errors import QemuLaunchError, SbtuiError, UsageError
from engine.parallel.job import JobResult, build_job, guest_files, run_job_bytes
from engine.parallel.simulate import EventSink, PlannedInterval, SchedulerEvent
from engine.recording.format import Recording

TOPIC = "sbtui-jobs"
CONNECT_TIMEOUT_S = 20.0
PROBE_TIMEOUT_S = 60.0
TICK_S = 1.0


def _is_loopback(address: str) -> bool:
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def _distributed():
    try:
        import distributed
    except ImportError:
        raise UsageError("--scheduler needs Dask: pip install 'sbtui[dask]' "
                         "(dask[distributed]) on this host and on every worker") from None
    return distributed


def connect(address: str, timeout: float = CONNECT_TIMEOUT_S):
    """A ``distributed.Client`` for the scheduler at ``address``; a clear error if none answers."""
    distributed = _distributed()
    if "://" not in address:
        address = f"tcp://{address}"
    try:
        return distributed.Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, asyncio.TimeoutError) as err:
        raise UsageError(f"no Dask scheduler answers at {address} ({err}); start one with "
                         "'dask scheduler' and give its address") from None


# --------------------------------------------------------------------------
# Probing workers
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class WorkerProbe:
    address: str
    host: str
    ok: bool
    detail: str
    seconds: float = 0.0
    answered: bool = True       # False: the probe did not run in time (a busy worker)


def _probe(launch: bool, want_major: int | None) -> dict[str, Any]:
    """Runs on a worker: can this process run interval jobs?"""
    t0 = time.monotonic()
    host = socket.gethostname()
    try:
        from engine.parallel.job import scratch_dir
        from engine.qemu import find_qemu, find_qemu_img, qemu_version
        binary = find_qemu()
        version = qemu_version(binary)
        find_qemu_img()
        text = ".".join(map(str, version))
        if want_major is not None and version[0] != want_major:
            return {"ok": False, "host": host, "seconds": time.monotonic() - t0,
                    "detail": f"QEMU {text} at {binary}, but the recording needs QEMU {want_major}.x "
                              "(set SBTUI_QEMU for the worker)"}
        scratch = scratch_dir()
        if not os.access(scratch, os.W_OK):
            return {"ok": False, "host": host, "seconds": time.monotonic() - t0,
                    "detail": f"cannot write to {scratch}"}
        detail = f"QEMU {text} at {binary}; scratch in {scratch}"
        if launch:
            took = asyncio.run(_launch_test_vm(binary))
            detail += f"; a test VM started and answered QMP in {took:.2f} s"
        return {"ok": True, "host": host, "detail": detail, "seconds": time.monotonic() - t0}
    except SbtuiError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return {"ok": False, "host": host, "detail": first, "seconds": time.monotonic() - t0}
    except Exception as err:  # noqa: BLE001 - a probe reports, it never takes the worker down
        return {"ok": False, "host": host, "detail": f"{type(err).__name__}: {err}",
                "seconds": time.monotonic() - t0}


async def _launch_test_vm(binary: str) -> float:
    from engine.qemu import MachineSpec, QemuProcess
    t0 = time.monotonic()
    async with QemuProcess(MachineSpec(memory_mib=32, paused=True), qemu_binary=binary,
                           launch_timeout=20) as vm:
        await vm.qmp("query-status", timeout=10)
    return time.monotonic() - t0


def probe_workers(client, *, launch: bool = False, want_major: int | None = None,
                  timeout: float = PROBE_TIMEOUT_S) -> list[WorkerProbe]:
    """Probe every worker of the cluster with a small task pinned to it."""
    distributed = _distributed()
    workers = client.scheduler_info(n_workers=-1)["workers"] if _takes_n_workers(client) \
        else client.scheduler_info()["workers"]
    futures = {}
    for address in sorted(workers):
        futures[client.submit(_probe, launch, want_major, workers=[address],
                              allow_other_workers=False, pure=False,
                              key=f"sbtui-probe-{uuid.uuid4().hex[:12]}")] = address
    try:
        with client.as_current():   # distributed.wait finds the client this way
            distributed.wait(list(futures), timeout=timeout)
    except (TimeoutError, distributed.TimeoutError):
        pass
    out = []
    for fut, address in futures.items():
        if not fut.done():
            fut.cancel()
            out.append(WorkerProbe(address, "", False, f"the probe did not finish within "
                                                       f"{timeout:g} s (the worker is busy or stuck)",
                                   answered=False))
            continue
        try:
            r = fut.result()
            out.append(WorkerProbe(address, r["host"], r["ok"], r["detail"], r["seconds"]))
        except Exception as err:  # noqa: BLE001 - the worker is what is reported
            out.append(WorkerProbe(address, "", False, f"the probe failed: {err}"))
    return sorted(out, key=lambda p: p.address)


def _takes_n_workers(client) -> bool:
    import inspect
    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------
# Running jobs
# --------------------------------------------------------------------------

def _identity(data: bytes) -> bytes:
    return data


def dask_job(job_bytes: bytes, guest_bytes: bytes) -> bytes:
    """The task a Dask worker runs: says it started, then runs the job from bytes."""
    try:
        from distributed import get_worker
        w = get_worker()
        w.log_event(TOPIC, {"event": "started", "key": _current_key(), "worker": w.address})
    except (ImportError, ValueError):
        pass
    return run_job_bytes(job_bytes, guest_bytes)


def _current_key() -> str:
    try:
        from distributed.worker import thread_state
        return str(thread_state.key)
    except (ImportError, AttributeError):
        return ""


class DaskScheduler:
    """Interval jobs on the Dask cluster whose scheduler is at ``address``."""

    def __init__(self, address: str, *, retries: int = 2, compress: bool | None = None,
                 probe_timeout: float = PROBE_TIMEOUT_S):
        self.probe_timeout = probe_timeout
        self.address = address if "://" in address else f"tcp://{address}"
        self.retries = retries
        self.compress = compress
        self.name = f"dask:{self.address}"
        self.slots = 1
        self._client = None

    def __enter__(self) -> "DaskScheduler":
        self._client = connect(self.address)
        info = self._client.scheduler_info()
        self.slots = max(1, sum(w.get("nthreads", 1) for w in info["workers"].values()))
        return self

    def __exit__(self, *exc) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def run(self, rec: Recording, plan: list[PlannedInterval], analysis: str,
            params: dict[str, Any], offsets: dict[int, int], events: EventSink) -> None:
        if self._client is None:
            with self:
                return self.run(rec, plan, analysis, params, offsets, events)
        with self._client.as_current():   # as_completed and wait find the client this way
            return self._run(rec, plan, analysis, params, offsets, events)

    def _check_workers(self, rec: Recording) -> None:
        try:
            major = int(rec.manifest.qemu_version.split(".")[0])
        except (ValueError, AttributeError):
            major = None
        probes = probe_workers(self._client, want_major=major, timeout=self.probe_timeout)
        if not probes:
            raise UsageError(f"the Dask scheduler at {self.address} has no workers; start some "
                             f"with 'dask worker {self.address} --nthreads 1'")
        # A worker busy with someone else's tasks may not answer in time: only
        # a worker that says it cannot run jobs stops the run.
        bad = [p for p in probes if p.answered and not p.ok]
        if bad:
            lines = "; ".join(f"worker {p.address}{f' ({p.host})' if p.host else ''}: {p.detail}"
                              for p in bad)
            raise QemuLaunchError(f"{len(bad)} of {len(probes)} Dask workers cannot run interval "
                                  f"jobs: {lines}")

    def _workers(self) -> dict[str, dict]:
        return self._client.scheduler_info()["workers"]

    def _run(self, rec, plan, analysis, params, offsets, events) -> None:
        distributed = _distributed()
        import dask
        client = self._client
        run_id = uuid.uuid4().hex[:8]
        keys: dict[str, int] = {}
        started: set[int] = set()
        inbox: queue.Queue = queue.Queue()
        compress = self.compress
        if compress is None:
            # Compression pays off on a network, not through the loopback.
            hosts = [self.address, *self._workers()]
            compress = not all(_is_loopback(a) for a in hosts)

        def on_event(event) -> None:   # called on the client's event loop thread
            _ts, msg = event
            if isinstance(msg, dict) and msg.get("key") in keys:
                inbox.put(("started", keys[msg["key"]], str(msg.get("worker", ""))))

        built: queue.Queue = queue.Queue(maxsize=2)   # bounded: a job is tens of MB
        stop = threading.Event()

        def builder() -> None:
            # Own Recording object: the store is not shared across threads.
            local = Recording.open(rec.path)
            try:
                for rank, p in enumerate(plan):
                    if stop.is_set():
                        return
                    try:
                        job = build_job(local, p.index, analysis, params, offsets=offsets)
                        item = (rank, p.index, job.encode(compress=compress), None)
                    except SbtuiError as err:
                        item = (rank, p.index, None, str(err))
                    while not stop.is_set():
                        try:
                            built.put(item, timeout=0.5)
                            break
                        except queue.Full:
                            continue
            finally:
                local.close()
                built.put(None)

        # The first job is built while the workers are probed.
        thread = threading.Thread(target=builder, name="sbtui-job-builder", daemon=True)
        thread.start()
        futures: dict[Any, int] = {}
        guest = None
        try:
            self._check_workers(rec)
            client.subscribe_topic(TOPIC, on_event)
            # The guest files as a task, not scattered data: a result Dask can
            # compute again when the worker holding it dies (scattered data
            # lost with its worker cancels every job that needs it).
            guest = client.submit(_identity, guest_files(rec), key=f"sbtui-guest-{run_id}",
                                  pure=False, retries=self.retries)
            pending = distributed.as_completed(loop=client.loop)
            ready: list = []            # built jobs not yet submitted, in plan order
            finished: list = []         # (future, index) done but not yet reported
            submitted: dict[int, float] = {}
            building = True
            remaining = len(plan)
            in_flight = 0
            # The jobs carry the checkpoint's state: large by design, and held
            # by the scheduler so a job outlives the worker it was sent to.
            with dask.config.set({"distributed.admin.large-graph-warning-threshold": "2GB"}):
                while remaining:
                    while building and len(ready) < 2:
                        try:
                            item = built.get(timeout=0.02 if (futures or ready) else TICK_S)
                        except queue.Empty:
                            break
                        if item is None:
                            building = False
                        else:
                            ready.append(item)
                    # One job per worker thread at a time: Dask assigns a task
                    # to a worker when it is submitted, and a job queued behind
                    # a long interval on a busy worker would leave another idle.
                    slots = max(1, sum(w.get("nthreads", 1) for w in self._workers().values()))
                    self.slots = slots
                    while ready and in_flight < slots:
                        rank, index, data, error = ready.pop(0)
                        if error is not None:
                            events(SchedulerEvent("finished", index, result=JobResult(
                                index, analysis, "client", error=f"building the job failed: {error}")))
                            remaining -= 1
                            continue
                        key = f"sbtui-{analysis}-{index}-{run_id}"
                        keys[key] = index
                        submitted[index] = time.time()
                        fut = client.submit(dask_job, data, guest, key=key, retries=self.retries,
                                            priority=len(plan) - rank, pure=False)
                        futures[fut] = index
                        pending.add(fut)
                        in_flight += 1
                    self._drain(inbox, started, events)
                    # Judging a result reads the store: done after the next job
                    # went out, so the worker does not wait for it.
                    self._report(finished, started, events, analysis, submitted)
                    if not in_flight:
                        if not ready and not building and remaining:
                            break   # nothing left to run: the builder failed the rest
                        continue
                    done = self._next_done(pending, TICK_S if not (building and len(ready) < 2) else 0.02)
                    if done is None:
                        events(SchedulerEvent("tick"))
                        continue
                    in_flight -= 1
                    remaining -= 1
                    finished.append((done, futures[done]))
                self._drain(inbox, started, events)
                self._report(finished, started, events, analysis, submitted)
        finally:
            stop.set()
            for fut in futures:
                if not fut.done():
                    fut.cancel()
            thread.join(timeout=30)
            try:
                client.unsubscribe_topic(TOPIC)
            except Exception:  # noqa: BLE001 - the connection may be gone already
                pass
            if guest is not None:
                guest.release()

    @staticmethod
    def _next_done(pending, timeout: float):
        # as_completed has no timed next(); poll its queue (it is thread safe).
        deadline = time.monotonic() + timeout
        while True:
            if pending.has_ready():
                return next(pending)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def _report(self, finished: list, started: set[int], events: EventSink, analysis: str,
                submitted: dict[int, float]) -> None:
        while finished:
            fut, index = finished.pop(0)
            if index not in started:
                events(SchedulerEvent("started", index, worker="a Dask worker"))
                started.add(index)
            result = self._result(fut, index, analysis)
            received = result.timings.pop("received_at", None)
            if received is not None and index in submitted:
                # Submit to arrival on the worker: the transfer through the
                # scheduler plus any wait for a free thread (same-host clocks).
                result.timings["dispatch_s"] = max(0.0, received - submitted[index])
            events(SchedulerEvent("finished", index, result=result))

    @staticmethod
    def _drain(inbox: queue.Queue, started: set[int], events: EventSink) -> None:
        while True:
            try:
                _kind, index, worker = inbox.get_nowait()
            except queue.Empty:
                return
            if index in started:
                events(SchedulerEvent("retry", index, detail=f"runs again on {worker}"))
            started.add(index)
            events(SchedulerEvent("started", index, worker=worker))

    @staticmethod
    def _result(fut, index: int, analysis: str) -> JobResult:
        try:
            return JobResult.decode(fut.result())
        except SbtuiError as err:
            return JobResult(index, analysis, "", error=f"a worker sent a bad result: {err}")
        except Exception as err:  # noqa: BLE001 - KilledWorker, CancelledError, task exceptions
            return JobResult(index, analysis, "", error=f"{type(err).__name__}: {err}")
