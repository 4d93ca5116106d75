"""``sbtui verify`` on the parallel engine (engine.replay.verify over engine.parallel).

Without QEMU:

* a local job (``build_job(..., local=True)``) writes its stream from the
  store straight into the restore and links the recording's guest files; it
  cannot be encoded, and a remote job's wire form carries no local fields;
* ``VerifyReport.to_json`` keeps ``sbtui verify --json``'s keys, and a failed
  interval carries its first differing pages.

With QEMU (the demo recording):

* Ctrl-C during ``sbtui verify --jobs 2`` exits 130, leaves no QEMU and no
  job directory, and changes nothing in the recording.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import shutil
import signal
from pathlib import Path

import pytest
import xxhash

from engine.errors import ReplayError
from engine.parallel.job import IntervalJob


def _job(**changes) -> IntervalJob:
    stream = b"QEVM" + bytes(range(256)) * 40
    job = IntervalJob(
        recording="rec", index=3, analysis="verify", params={},
        checkpoint={"index": 3, "store_id": "0003", "icount": 100, "wall_time": 1.0,
                    "guest_time_ns": 5, "downtime_ms": 1.0},
        end_icount=200, final_icount=500, spec={"memory_mib": 128}, qemu_version="10.0.2",
        guest={"kernel": "ab" * 32}, stream=stream, stream_codec="raw", stream_len=len(stream),
        stream_xxh3=xxhash.xxh3_128_digest(stream), log_pieces=[(0, b"\x00" * 12)], log_size=5000)
    return dataclasses.replace(job, **changes)


def test_a_local_job_cannot_travel_and_a_remote_one_carries_no_local_fields():
    local = _job(stream=b"", stream_source=lambda dst: dst.write(b"QEVM"))
    with pytest.raises(ReplayError, match="cannot travel"):
        local.encode()
    back = IntervalJob.decode(_job().encode())
    assert back.stream_source is None and back.guest_paths == {} and not back.local
    assert local.stream_bytes() == b"QEVM"


def test_a_local_job_streams_from_its_source_and_links_the_guest_files(monkeypatch, tmp_path):
    """The replay is stood in for: it reads the restore source and the guest file it was given."""
    import engine.replay.session as session_mod
    from engine.parallel.job import run_job
    from engine.qemu import MachineSpec

    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"not really a kernel" * 10)
    digest = hashlib.sha256(kernel.read_bytes()).hexdigest()
    stream = b"QEVM" + b"state" * 1000
    seen = {}

    class Replay:
        def __init__(self, rec, entry, *, source, **kwargs):
            self.rec, self.source = rec, source

        async def __aenter__(self):
            buf = io.BytesIO()
            self.source(buf)
            seen["stream"] = buf.getvalue()
            guest = Path(self.rec.path) / self.rec.manifest.spec["kernel"]
            seen["kernel_link"] = guest.is_symlink() and guest.resolve() == kernel.resolve()
            raise ReplayError("stood in for: stop here")

        async def __aexit__(self, *exc):
            return None

    monkeypatch.setattr(session_mod, "ReplaySession", Replay)
    spec = MachineSpec(memory_mib=128, kernel="kernel", icount_shift=2, rr="record",
                       rrfile="replay.log").to_dict()
    job = _job(stream=b"", stream_len=0, guest={"kernel": digest}, spec=spec,
               stream_source=lambda dst: dst.write(stream), guest_paths={digest: kernel})
    work = tmp_path / "work"
    work.mkdir()
    result = run_job(job, base=work)
    assert "stood in for" in result.error
    assert seen == {"stream": stream, "kernel_link": True}
    assert list(work.iterdir()) == []               # the job's directory is gone
    assert kernel.read_bytes().startswith(b"not really")   # the recording's file is untouched


def test_the_verify_report_keeps_its_json_and_names_the_first_differing_pages():
    from engine.parallel.simulate import IntervalOutcome
    from engine.replay.verify import VerifyReport

    ok = IntervalOutcome(0, "verified", "all 32768 pages equal", 0, 100,
                         timings={"restore_s": 0.1, "replay_s": 1.0, "snapshot_s": 0.2})
    bad = IntervalOutcome(1, "diverged", "RAM at checkpoint 2 (icount 200): 2 of 32768 pages "
                          "differ; first: pc.ram+0x5000, pc.ram+0x9000", 100, 200,
                          first_diffs=[("pc.ram", 5), ("pc.ram", 9)])
    report = VerifyReport(intervals=2, results=[bad, ok], wall_s=3.21, jobs=2, scheduler="local:2")
    out = report.to_json()
    assert (out["intervals"], out["verified"], out["failed"], out["wall_s"], out["jobs"]) == \
        (2, 1, [1], 3.21, 2)
    first, second = out["results"]
    assert first["index"] == 0 and first["ok"] and first["target_icount"] == 100
    assert (first["restore_s"], first["replay_s"], first["compare_s"]) == (0.1, 1.0, 0.2)
    assert second["status"] == "diverged" and not second["ok"]
    assert second["first_diffs"] == [["pc.ram", 5], ["pc.ram", 9]]


@pytest.mark.qemu
def test_ctrl_c_during_verify_leaves_no_qemu_no_job_files_and_the_recording_as_it_was(
        demo_recording, tmp_path):
    from engine.parallel.job import WORKDIR_PREFIX, scratch_dir
    from procs import wait_for_qemu
    from test_recording_support import sbtui_proc, tagged_qemus

    path = tmp_path / demo_recording.name
    shutil.copytree(demo_recording, path)
    files = sorted(p.relative_to(path) for p in path.rglob("*"))
    before = set(scratch_dir().glob(f"{WORKDIR_PREFIX}*"))
    with tagged_qemus() as tag:
        proc = sbtui_proc("verify", str(path), "--jobs", "2", tag=tag)
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
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == files
