"""Interval replay on a real Dask cluster started by the test on 127.0.0.1 (real QEMU).

What is proven here, each with ``dask scheduler`` and two single-threaded
``dask worker`` processes of its own (:func:`test_parallel_support.dask_cluster`):

* ``verify`` through the cluster gives the same per-interval results as local
  processes (status and detail of every interval), with jobs that reached the
  workers as bytes only;
* ``sbtui doctor --scheduler`` reports each worker able to run jobs;
* killing a worker (SIGKILL) while it replays an interval still completes
  every interval: Dask runs the lost job on the other worker, and the killed
  worker's QEMU does not outlive it;
* a worker without QEMU makes ``sbtui simulate --scheduler`` and
  ``sbtui doctor --scheduler`` fail with an error naming that worker's
  address; no job runs anywhere.
"""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest

from engine.recording.format import Recording
from procs import assert_no_qemu, new_tag, wait_for_qemu
from test_parallel_local import _copy, local_verify  # noqa: F401 - the shared local run
from test_parallel_support import dask_cluster
from test_recording_support import sbtui_run

pytest.importorskip("distributed")
pytestmark = pytest.mark.qemu


def test_verify_through_dask_matches_local_processes_and_doctor_sees_the_workers(
        demo_recording, local_verify, tmp_path):  # noqa: F811
    _local_path, local, _ = local_verify
    path = _copy(demo_recording, tmp_path)
    tags = {"w1": new_tag(), "w2": new_tag()}
    with dask_cluster({name: {"SBTUI_QEMU_TAG": tag} for name, tag in tags.items()}) as cluster:
        out = sbtui_run("simulate", str(path), "--analysis", "verify", "--scheduler",
                        cluster.address, "--json")
        assert out.returncode == 0, out.stderr.decode() + cluster.log("w1") + cluster.log("w2")
        report = json.loads(out.stdout)
        doctor = sbtui_run("doctor", "--no-kvm-probe", "--scheduler", cluster.address, "--json")
        addresses = cluster.worker_addresses()
    for tag in tags.values():
        assert_no_qemu(tag)
    assert report["scheduler"] == f"dask:{cluster.address}"
    assert report["failed"] == [] and report["verified"] == local["verified"]
    mine = [(r["index"], r["status"], r["detail"]) for r in report["results"]]
    theirs = [(r["index"], r["status"], r["detail"]) for r in local["results"]]
    assert mine == theirs
    # the jobs ran on the cluster's workers, both of them
    workers = {r["worker"].split(" ")[0] for r in report["results"]}
    assert workers == set(addresses.values())

    assert doctor.returncode == 0, doctor.stdout.decode() + doctor.stderr.decode()
    checks = {c["name"]: c for c in json.loads(doctor.stdout)}
    for address in addresses.values():
        c = checks[f"worker {address}"]
        assert c["ok"] and "QEMU 10" in c["detail"] and "test VM" in c["detail"], c


def test_a_worker_killed_mid_run_still_completes_every_interval(demo_recording, tmp_path):
    from engine.parallel.dask import DaskScheduler
    from engine.parallel.simulate import simulate

    path = _copy(demo_recording, tmp_path)
    rec = Recording.open(path)
    # The short intervals keep this test quick: after the kill one worker runs them all.
    wanted = [0, 1, 2, 3]
    tags = {"victim": new_tag(), "survivor": new_tag()}
    outcome: dict = {}
    events: list = []
    with dask_cluster({name: {"SBTUI_QEMU_TAG": tag} for name, tag in tags.items()}) as cluster:
        victim = cluster.workers["victim"]
        addresses = cluster.worker_addresses()

        def run() -> None:
            try:
                with DaskScheduler(cluster.address) as scheduler:
                    outcome["report"] = simulate(rec, "verify", scheduler, only=wanted,
                                                 progress=events.append)
            except BaseException as err:  # noqa: BLE001 - re-raised in the test thread
                outcome["error"] = err

        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        try:
            # The victim is replaying an interval now: its QEMU runs.
            (qemu_pid, _cmd), *_ = wait_for_qemu(tags["victim"], timeout=120)
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait(timeout=10)
            assert_no_qemu(tags["victim"], timeout=10)      # the QEMU died with its worker
        finally:
            runner.join(timeout=300)
        assert not runner.is_alive(), "the simulation did not finish after the worker was killed"
    for tag in tags.values():
        assert_no_qemu(tag)
    log = "\n".join(p.message for p in events if p.message)
    assert "error" not in outcome, f"{outcome.get('error')}\n{log}"
    report = outcome["report"]
    assert sorted(r.index for r in report.results) == wanted, log
    assert report.failed == [], [(r.index, r.detail) for r in report.results]
    # The interval the victim was replaying ran again, to the end, on the survivor.
    victims = [p.message.split()[1] for p in events
               if p.message.endswith(f"started on {addresses['victim']}")]
    assert victims, f"the victim's start was not reported\n{log}"
    lost = report.outcome(int(victims[-1]))
    assert lost.worker.startswith(addresses["survivor"]), f"{lost}\n{log}"
    assert lost.attempts > 1 and f"interval {lost.index} runs again" in log, log


def test_a_worker_without_qemu_is_named_and_no_job_runs(demo_recording, tmp_path):
    path = _copy(demo_recording, tmp_path)
    good, bad = new_tag(), new_tag()
    workers = {"good": {"SBTUI_QEMU_TAG": good},
               "noqemu": {"SBTUI_QEMU_TAG": bad,
                          "SBTUI_QEMU": str(tmp_path / "no-such-dir" / "qemu-system-x86_64")}}
    with dask_cluster(workers) as cluster:
        addresses = cluster.worker_addresses()
        out = sbtui_run("simulate", str(path), "--analysis", "verify", "--scheduler",
                        cluster.address, "--interval", "0")
        doctor = sbtui_run("doctor", "--no-kvm-probe", "--scheduler", cluster.address)
    for tag in (good, bad):
        assert_no_qemu(tag)
    err = out.stderr.decode()
    assert out.returncode == 1, err
    assert f"worker {addresses['noqemu']}" in err and "not found" in err
    assert addresses["good"] not in err
    assert not (path / "analyses").exists()        # nothing ran, nothing was stored
    text = doctor.stdout.decode()
    assert doctor.returncode == 1, text
    bad_line = next(line for line in text.splitlines() if addresses["noqemu"] in line)
    assert bad_line.startswith("FAIL") and "not found" in bad_line
    good_line = next(line for line in text.splitlines() if addresses["good"] in line)
    assert good_line.startswith("ok")
