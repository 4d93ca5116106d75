"""Unit tests of the parallel-replay pieces that need no QEMU.

* the interval job's wire format: round trip (raw and lz4), damaged or
  foreign bytes refused with an error naming the field, a damaged stream
  caught by its hash;
* replay-log slices: ranges per interval, a sparse copy that has the shipped
  bytes at their offsets and zeros elsewhere, the version word set;
* page hashing and diffs (zero pages, changed pages, the u32 wire form);
* results stored with a recording: atomic file, merge of partial runs,
  staleness when checkpoints change; the CLI's list of analyses.
"""

from __future__ import annotations

import dataclasses
from array import array
from pathlib import Path

import pytest
import xxhash

from engine.errors import ReplayError
from engine.parallel import analyses
from engine.parallel.job import IntervalJob, JobResult
from engine.parallel.replaylog import MARGIN, read_pieces, slice_ranges, write_sparse
from engine.recording.format import REPLAY_LOG_VERSION
from engine.store.pagemap import ZERO


def _job(**changes) -> IntervalJob:
    stream = b"QEVM" + bytes(range(256)) * 40
    job = IntervalJob(
        recording="rec", index=3, analysis="verify", params={"step": 5},
        checkpoint={"index": 3, "store_id": "0003", "icount": 100, "wall_time": 1.0,
                    "guest_time_ns": 5, "downtime_ms": 1.0},
        end_icount=200, final_icount=500, spec={"memory_mib": 128}, qemu_version="10.0.2",
        guest={"kernel": "ab" * 32}, stream=stream, stream_codec="raw", stream_len=len(stream),
        stream_xxh3=xxhash.xxh3_128_digest(stream), log_pieces=[(0, b"\x00" * 12), (4096, b"x" * 10)],
        log_size=5000)
    return dataclasses.replace(job, **changes)


def test_a_job_round_trips_raw_and_compressed():
    job = _job()
    for compress in (False, True):
        data = job.encode(compress=compress)
        back = IntervalJob.decode(data)
        assert back.stream_bytes() == job.stream
        assert back.log_pieces == job.log_pieces
        assert (back.index, back.end_icount, back.params, back.guest) == (3, 200, {"step": 5}, job.guest)
    assert len(job.encode(compress=True)) < len(job.encode())


def test_damaged_or_foreign_job_bytes_are_refused_by_field():
    data = _job().encode()
    with pytest.raises(ReplayError, match="bad magic"):
        IntervalJob.decode(b"XXXXX" + data[5:])
    with pytest.raises(ReplayError, match="does not decode"):
        IntervalJob.decode(data[:len(data) // 2])
    import msgpack
    body = msgpack.unpackb(data[5:], raw=False)
    for field, value, message in (("index", "3", "'index' has the wrong type"),
                                  ("end_icount", True, "'end_icount' has the wrong type"),
                                  ("format", 99, "format 99 is not supported"),
                                  ("stream_codec", "zstd", "unknown stream codec")):
        bad = dict(body, **{field: value})
        with pytest.raises(ReplayError, match=message):
            IntervalJob.decode(b"SBJOB" + msgpack.packb(bad, use_bin_type=True))
    del body["log_size"]
    with pytest.raises(ReplayError, match="'log_size' is missing"):
        IntervalJob.decode(b"SBJOB" + msgpack.packb(body, use_bin_type=True))


def test_a_stream_damaged_in_transit_is_caught_by_its_hash():
    job = _job()
    damaged = bytearray(job.stream)
    damaged[100] ^= 1
    with pytest.raises(ReplayError, match="arrived damaged"):
        dataclasses.replace(job, stream=bytes(damaged)).stream_bytes()


def test_a_result_round_trips():
    r = JobResult(2, "writeset", "tcp://1.2.3.4:5", reached_icount=9, end_pages={"pc.ram": ZERO * 3},
                  console=b"hi", output={"steps": [[5, b"\x01\x00\x00\x00"]]}, timings={"total_s": 1.5})
    assert JobResult.decode(r.encode()) == r
    with pytest.raises(ReplayError):
        JobResult.decode(b"SBJOB" + r.encode()[5:])


def test_slice_ranges_cover_the_interval_and_the_head():
    offsets = {0: 228, 1: 30_000, 2: 400_000, 3: 2_000_000}
    size = 3_000_000
    # early intervals merge with the head
    assert slice_ranges(offsets, 0, size) == [(0, 30_000 + MARGIN)]
    assert slice_ranges(offsets, 2, size) == [(0, 65536), (400_000, 2_000_000 + MARGIN)]
    # the last interval reads to the end of the log
    assert slice_ranges(offsets, 3, size) == [(0, 65536), (2_000_000, size)]


def test_a_sparse_log_holds_the_pieces_at_their_offsets(tmp_path):
    log = tmp_path / "replay.log"
    data = bytes(12) + bytes((i * 7) % 251 for i in range(300_000))
    log.write_bytes(data)
    pieces = read_pieces(log, [(0, 100), (200_000, 250_000)])
    assert pieces[0][1][:4] == REPLAY_LOG_VERSION.to_bytes(4, "big")   # set though the log lacks it
    out = tmp_path / "sparse.log"
    write_sparse(out, pieces, len(data))
    got = out.read_bytes()
    assert len(got) == len(data)
    assert got[4:100] == data[4:100] and got[200_000:250_000] == data[200_000:250_000]
    assert got[100:200_000] == bytes(199_900)
    assert out.stat().st_blocks * 512 < len(data)   # the hole costs nothing
    with pytest.raises(Exception, match="ends at"):
        read_pieces(log, [(len(data) - 10, len(data) + 10)])


def test_page_hashes_diffs_and_wire_form():
    page = 4096
    ram = bytearray(page * 8)
    ram[page * 3] = 1
    before = analyses.hash_pages(bytes(ram))
    assert before[0:16] == ZERO and before[3 * 16:4 * 16] != ZERO
    ram[page * 5 + 7] = 9
    ram[page * 3] = 0
    after = analyses.hash_pages(bytes(ram))
    changed = analyses.changed_pages(before, after)
    assert list(changed) == [3, 5]
    assert analyses.pages_from_bytes(analyses.pages_to_bytes(changed)) == array("I", [3, 5])
    assert analyses.pages_to_bytes(array("I", [1])) == b"\x01\x00\x00\x00"


def test_the_cli_names_exactly_the_engines_analyses():
    from sbtui.verbs.simulate import ANALYSES as cli
    assert sorted(cli) == sorted(analyses.ANALYSES)
    with pytest.raises(Exception, match="no analysis 'nope'"):
        analyses.get_analysis("nope")


def test_results_are_stored_merged_and_marked_stale(tmp_path):
    from engine.parallel.results import load_report, results_path, save_report
    from engine.parallel.simulate import IntervalOutcome, SimulationReport
    from engine.recording.format import CheckpointEntry, Manifest, Recording

    rec = Recording.create(tmp_path / "rec", Manifest(kind="record", spec={}, qemu_version="10.0.2",
                                                      interval_s=1.0, created=0.0))
    for i in range(3):
        rec.append_checkpoint(CheckpointEntry(i, f"000{i}", i * 100, 0.0, 0, 0.0))

    def report(indices, status="verified"):
        return SimulationReport(recording=str(rec.path), analysis="writeset", scheduler="local:2",
                                slots=2, params={"step": 10}, intervals=len(indices),
                                results=[IntervalOutcome(i, status, "d", i * 100, i * 100 + 100,
                                                         output={"steps": [[5, b"\x01\x00\x00\x00"]]})
                                         for i in indices])

    save_report(rec, report([0, 1, 2]))
    assert load_report(rec, "writeset").verified == 3
    save_report(rec, report([1], status="diverged"))
    merged = load_report(rec, "writeset")
    assert [r.index for r in merged.results] == [0, 1, 2] and merged.failed == [1]
    assert merged.results[0].output["steps"][0][1] == b"\x01\x00\x00\x00"
    assert not merged.stale
    rec.append_checkpoint(CheckpointEntry(1, "0009", 100, 0.0, 0, 0.0, origin="rebuilt"))
    assert load_report(rec, "writeset").stale
    assert not list(Path(results_path(rec, "writeset").parent).glob(".tmp-*"))
    results_path(rec, "writeset").write_bytes(b"\x93garbage")
    with pytest.raises(Exception, match="damaged analysis results"):
        load_report(rec, "writeset")


# -- the local scheduler when a worker process dies ----------------------------

def dying_job(rec_path: str, index: int, analysis: str, params: dict, offsets: dict) -> bytes:
    """A worker function that kills its process on the first attempt at each
    interval (a marker file remembers), or always when ``params['always']``."""
    import os
    marker = Path(rec_path) / f"tried-{index}"
    if params.get("always") or not marker.exists():
        marker.write_text("x")
        os._exit(9)
    return JobResult(index, analysis, f"pid {os.getpid()}", output={"ok": 1}).encode()


class _Rec:
    def __init__(self, path):
        self.path = path


def test_a_local_worker_that_dies_has_its_interval_run_again(tmp_path):
    from engine.parallel.local import LocalScheduler
    from engine.parallel.simulate import PlannedInterval

    plan = [PlannedInterval(i, i * 10, i * 10 + 10, 10, 0, 1.0) for i in range(3)]
    events = []
    LocalScheduler(2, job_fn=dying_job).run(_Rec(tmp_path), plan, "verify", {}, {}, events.append)
    finished = {e.index: e.result for e in events if e.kind == "finished"}
    assert sorted(finished) == [0, 1, 2] and all(r.ok for r in finished.values()), finished
    assert sorted(e.index for e in events if e.kind == "retry") == [0, 1, 2]   # once each
    assert sum(1 for e in events if e.kind == "started") == 6

    events.clear()
    LocalScheduler(1, retries=1, job_fn=dying_job).run(
        _Rec(tmp_path), plan[:1], "verify", {"always": True}, {}, events.append)
    (last,) = [e for e in events if e.kind == "finished"]
    assert not last.result.ok and "died" in last.result.error and "ran 2 times" in last.result.error


def test_a_last_interval_whose_log_ends_at_its_checkpoint_counts_as_the_end(monkeypatch, tmp_path):
    """A recording that ended while the guest idled has a last interval of no
    instructions; the replay QEMU carries out the recorded shutdown as soon as
    the state is loaded. (The replay is stood in for: QEMU exits during the restore.)"""
    import hashlib

    import engine.replay.session as session_mod
    from engine.errors import QemuDiedError
    from engine.parallel.job import run_job
    from engine.qemu import MachineSpec

    exit_code = {"value": 0}

    class EndsWhileLoading:
        def __init__(self, *args, **kwargs):
            pass

        async def __aenter__(self):
            raise QemuDiedError("QEMU exited during QMP command 'query-replay'",
                                exit_code=exit_code["value"])

        async def __aexit__(self, *exc):
            return None

    monkeypatch.setattr(session_mod, "ReplaySession", EndsWhileLoading)
    kernel = b"not really a kernel" * 10
    digest = hashlib.sha256(kernel).hexdigest()
    spec = MachineSpec(memory_mib=128, kernel="kernel", icount_shift=2, rr="record",
                       rrfile="replay.log").to_dict()
    job = _job(end_icount=None, final_icount=100, analysis="writeset", params={"step": 10},
               guest={"kernel": digest}, spec=spec)
    result = run_job(job, guest={digest: kernel}, base=tmp_path)
    assert result.error == "" and result.exit_code == 0
    assert result.output["working_set"] == 0 and result.output["steps"] == [[100, b""]]
    assert list(tmp_path.iterdir()) == []          # the job's directory is gone

    exit_code["value"] = 1                          # any other exit is the job's failure
    result = run_job(job, guest={digest: kernel}, base=tmp_path)
    assert "exited" in result.error and result.exit_code is None


def stderr_writing_job(rec_path: str, index: int, analysis: str, params: dict, offsets: dict) -> bytes:
    """A worker function that writes to file descriptor 2, as a traceback or a QEMU would."""
    import os
    os.write(2, f"worker stderr of interval {index}\n".encode())
    return JobResult(index, analysis, f"pid {os.getpid()}", output={"ok": 1}).encode()


def test_workers_of_a_host_that_captures_stderr_write_it_to_a_log_not_the_terminal(
        tmp_path, monkeypatch, capfd):
    """In the Textual app, descriptor 2 is the terminal the app draws on and
    sys.stderr is a capture whose fileno() is -1: what workers print must not
    land on the screen."""
    import io

    from engine.parallel.local import LocalScheduler
    from engine.parallel.simulate import PlannedInterval

    class Captured(io.StringIO):
        def fileno(self) -> int:
            return -1

    monkeypatch.setenv("SBTUI_CACHE", str(tmp_path / "cache"))
    plan = [PlannedInterval(i, i * 10, i * 10 + 10, 10, 0, 1.0) for i in range(2)]
    events = []
    scheduler = LocalScheduler(1, job_fn=stderr_writing_job)
    monkeypatch.setattr("sys.stderr", Captured())
    scheduler.run(_Rec(tmp_path), plan, "verify", {}, {}, events.append)
    monkeypatch.undo()
    assert sorted(e.index for e in events if e.kind == "finished") == [0, 1]
    assert "worker stderr" not in capfd.readouterr().err
    log = Path(scheduler.worker_log)
    assert log.parent == tmp_path / "cache" / "logs"
    assert log.read_text().count("worker stderr of interval") == 2

    # a host with a real stderr keeps it: the workers' output goes there
    events.clear()
    plain = LocalScheduler(1, job_fn=stderr_writing_job)
    plain.run(_Rec(tmp_path), plan[:1], "verify", {}, {}, events.append)
    assert plain.worker_log is None
    assert "worker stderr of interval 0" in capfd.readouterr().err
