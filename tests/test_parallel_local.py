"""Parallel interval replay with local processes, on the demo recording (real QEMU).

What is proven here:

* ``sbtui simulate -a verify --jobs 2`` verifies every interval, as
  ``sbtui verify`` does (every RAM page equal at the next checkpoint, the
  last interval to the end of the log), and stores the results with the
  recording;
* an interval job is self-contained: built from a copy of the recording,
  encoded, the copy deleted, then run from the bytes alone it still
  verifies; it carries only the slice of the replay log its interval reads;
* ``writeset`` is consistent with the store: every page whose content differs
  between checkpoints k and k+1 changed in some sub-step of interval k, the
  sub-steps end at the next checkpoint's instruction count, and the app's
  facade (``DiskRecordingView.writeset``) returns the same steps.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.recording.format import Recording
from engine.store.pagemap import ENTRY
from test_recording_support import sbtui_run, tagged_qemus

pytestmark = pytest.mark.qemu


def _copy(rec_path: Path, dst: Path) -> Path:
    out = dst / rec_path.name
    shutil.copytree(rec_path, out)
    return out


_LOCAL_VERIFY: dict = {}


@pytest.fixture(scope="session")
def local_verify(demo_recording, tmp_path_factory):
    """``sbtui simulate -a verify --jobs 2 --json`` on a copy of the demo recording,
    run once per session (the Dask tests compare with it, importing this fixture)."""
    if "run" not in _LOCAL_VERIFY:
        path = _copy(demo_recording, tmp_path_factory.mktemp("local-verify"))
        with tagged_qemus() as tag:
            out = sbtui_run("simulate", str(path), "--analysis", "verify", "--jobs", "2", "--json",
                            tag=tag)
        assert out.returncode == 0, out.stderr.decode()
        _LOCAL_VERIFY["run"] = (path, json.loads(out.stdout), out.stderr.decode())
    return _LOCAL_VERIFY["run"]


def test_simulate_verify_jobs_2_verifies_every_interval_and_stores_it(local_verify):
    path, report, stderr = local_verify
    n = len(Recording.open(path).checkpoints())
    assert report["intervals"] == n and report["verified"] == n and report["failed"] == []
    assert report["scheduler"] == "local:2"
    details = {r["index"]: r["detail"] for r in report["results"]}
    assert all("pages equal" in details[i] for i in range(n - 1)), details
    assert "end of the log" in details[n - 1]
    # the progress bar reported every interval and the finish
    assert f"{n}/{n} done" in stderr and "running" in stderr and "left" in stderr
    stored = path / "analyses" / "verify.msgpack"
    assert stored.is_file()
    from engine.session import DiskRecordingView
    infos = DiskRecordingView(Recording.open(path)).analyses()
    assert [(i.name, i.verified, i.failed, i.stale) for i in infos] == [("verify", n, (), False)]


def test_an_interval_job_runs_from_its_bytes_alone(demo_recording, tmp_path):
    from engine.parallel.analyses import judge
    from engine.parallel.job import JobResult, build_job, guest_files, run_job_bytes

    copy = _copy(demo_recording, tmp_path)
    rec = Recording.open(copy)
    cps = rec.checkpoints()
    index = len(cps) // 2
    job = build_job(rec, index, "verify")
    log_size = rec.log_path.stat().st_size
    assert job.log_bytes < log_size            # only the interval's slice of the log travels
    data, guest = job.encode(compress=True), guest_files(rec)
    rec.close()
    shutil.rmtree(copy)                        # nothing of the recording is left to read
    with tagged_qemus():
        result = JobResult.decode(run_job_bytes(data, guest))
    assert result.error == "" and result.reached_icount == cps[index + 1].icount
    assert result.timings["restore_s"] > 0 and result.timings["replay_s"] > 0
    verdict = judge(Recording.open(demo_recording), index, result)
    assert verdict.status == "verified", verdict.detail


def test_writeset_is_consistent_with_the_stores_dirty_pages(demo_recording, tmp_path):
    path = _copy(demo_recording, tmp_path)
    rec = Recording.open(path)
    cps = rec.checkpoints()
    # the first intervals: boot and the start of memchurn, where most pages change
    wanted = [0, 1, 2]
    args = [a for i in wanted for a in ("--interval", str(i))]
    with tagged_qemus() as tag:
        out = sbtui_run("simulate", str(path), "--analysis", "writeset", "--jobs", "2", "--json",
                        *args, tag=tag)
    assert out.returncode == 0, out.stderr.decode()
    report = json.loads(out.stdout)
    assert report["verified"] == len(wanted)

    from engine.parallel.results import load_report
    stored = load_report(rec, "writeset")
    store = rec.store
    ram_pages = (128 << 20) // 4096
    for k in wanted:
        o = stored.outcome(k).output
        union = set()
        last_icount = cps[k].icount
        for icount, pages in o["steps"]:
            assert icount > last_icount
            last_icount = icount
            union.update(int.from_bytes(pages[i:i + 4], "little") for i in range(0, len(pages), 4))
        assert last_icount == cps[k + 1].icount
        assert o["start_matches"] is True
        assert o["working_set"] == len(union) and 0 < len(union) <= ram_pages
        a = store.page_map(cps[k].store_id).raw("pc.ram")
        b = store.page_map(cps[k + 1].store_id).raw("pc.ram")
        differ = {p for p in range(len(a) // ENTRY) if a[p * ENTRY:(p + 1) * ENTRY] != b[p * ENTRY:(p + 1) * ENTRY]}
        assert differ, f"interval {k} changed no page"
        assert differ <= union, f"interval {k}: {len(differ - union)} changed pages missed"
        # the store's own delta of checkpoint k+1 (its parent is checkpoint k) says the same
        dirty = set(store.dirty_pages(cps[k + 1].store_id).get("pc.ram", []))
        if store.checkpoint(cps[k + 1].store_id).parent == cps[k].store_id:
            assert dirty == differ
        assert o["missed"] == 0 and o["store_dirty"] == len(differ)

    from engine.session import DiskRecordingView
    view = DiskRecordingView(rec)
    ws = view.writeset(cps[1].store_id)          # checkpoint 1 closes interval 0
    assert ws is not None and ws.interval == 0 and ws.verified
    assert ws.steps[-1].icount == cps[1].icount
    assert ws.working_set == stored.outcome(0).output["working_set"]
    assert 0 < ws.working_set_fraction < 1
    assert view.writeset(cps[0].store_id) is None


def test_ctrl_c_during_simulate_leaves_no_qemu_and_no_job_files(demo_recording, tmp_path):
    import signal

    from engine.parallel.job import WORKDIR_PREFIX, scratch_dir
    from procs import wait_for_qemu
    from test_recording_support import sbtui_proc

    path = _copy(demo_recording, tmp_path)
    before = set(scratch_dir().glob(f"{WORKDIR_PREFIX}*"))
    with tagged_qemus() as tag:
        proc = sbtui_proc("simulate", str(path), "--analysis", "writeset", "--jobs", "2", tag=tag)
        try:
            wait_for_qemu(tag, timeout=60)
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130, err.decode()
    assert "interrupted" in err.decode()
    assert set(scratch_dir().glob(f"{WORKDIR_PREFIX}*")) <= before
    assert not (path / "analyses").exists()
