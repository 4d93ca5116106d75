"""Replay and verify on a real recording of the demo guest (``demo_recording``).

What is proven here, each against real QEMU:

* ``sbtui verify --jobs 2`` verifies every interval (RAM compared page by page
  with the next checkpoint; the last interval replayed to the end of the log)
  on the parallel engine's local scheduler, with its progress bar, and leaves
  the recording as it was;
* a replay from a middle checkpoint to the end reproduces the recorded
  console byte for byte, and ``--icount`` stops at exactly that count;
* a checkpoint damaged in the store makes ``verify`` fail on exactly that
  interval and name it, while its neighbours verify;
* a missing checkpoint, a corrupted replay log and a recording from another
  QEMU major version each get a clear error; no QEMU is left behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.recording.format import Recording
from engine.store.packs import REC_HEADER, parse_pack_name, scan_pack
from engine.store.pagemap import ENTRY
from test_recording_support import sbtui_run, tagged_qemus

pytestmark = pytest.mark.qemu


def _copy(rec_path: Path, tmp_path: Path) -> Path:
    dst = tmp_path / rec_path.name
    shutil.copytree(rec_path, dst)
    return dst


def test_verify_jobs_2_verifies_every_interval(demo_recording):
    rec = Recording.open(demo_recording)
    n = len(rec.checkpoints())
    assert n >= 4
    with tagged_qemus() as tag:
        out = sbtui_run("verify", str(demo_recording), "--jobs", "2", "--json", tag=tag)
    assert out.returncode == 0, out.stderr.decode()
    report = json.loads(out.stdout)
    assert report["intervals"] == n and report["verified"] == n and report["failed"] == []
    assert report["jobs"] == 2 and report["scheduler"] == "local:2"
    details = {r["index"]: r["detail"] for r in report["results"]}
    assert all("pages equal" in details[i] for i in range(n - 1)), details
    assert "end of the log" in details[n - 1]
    # simulate's progress bar, every interval and the finish; the recording is not changed
    stderr = out.stderr.decode()
    assert "verify: [" in stderr and f"{n}/{n} done" in stderr and "left" in stderr
    assert not (demo_recording / "analyses").exists()


def test_the_demo_guest_boots_without_timer_busy_waits(demo_recording):
    """Each turn of a guest busy-wait (rdtsc, compare, PAUSE) logs a clock-warp
    checkpoint that replay pays about 4 us for: the local APIC timer's
    calibration alone logged 2.7 million and made the boot's interval replay
    6x slower than it was recorded. The demo guest boots without it."""
    from engine.recording import replaylog
    scan = replaylog.scan(Recording.open(demo_recording).log_path)
    assert scan.complete
    # with the calibration: 3.2 million in a boot; without, some thousands
    assert scan.checkpoints < 200_000, scan


def test_replay_from_a_middle_checkpoint_reproduces_the_console(demo_recording, tmp_path):
    rec = Recording.open(demo_recording)
    cps = rec.checkpoints()
    # When the guest had printed nothing yet (its boot is quiet), the replay
    # must reproduce the whole console.
    mid = cps[len(cps) // 2]
    console = tmp_path / "console.out"
    with tagged_qemus() as tag:
        out = sbtui_run("replay", str(demo_recording), "--from", str(mid.index), "--end",
                        "--console-out", str(console), "--json", tag=tag)
    assert out.returncode == 0, out.stderr.decode()
    summary = json.loads(out.stdout)
    assert summary["from_icount"] == mid.icount and summary["exit_code"] == 0
    recorded = rec.console_bytes()[mid.console_offset:]
    assert len(recorded) > 100
    assert console.read_bytes() == recorded


def test_replay_to_an_exact_icount(demo_recording):
    rec = Recording.open(demo_recording)
    a, b = rec.checkpoints()[1:3]
    target = a.icount + (b.icount - a.icount) // 3 + 7
    with tagged_qemus() as tag:
        out = sbtui_run("replay", str(demo_recording), "--from", str(a.index),
                        "--icount", str(target), "--json", tag=tag)
    assert out.returncode == 0, out.stderr.decode()
    assert json.loads(out.stdout)["icount"] == target


def _damage_a_page_only(rec: Recording, index: int) -> None:
    """Flip a byte of a page that checkpoint ``index`` stored and that the
    checkpoints after it no longer hold."""
    cps = rec.checkpoints()
    store = rec.store
    sid = cps[index].store_id
    later = {store.page_map(cp.store_id).raw("pc.ram") for cp in cps[index + 1:]}
    mine = store.page_map(sid).raw("pc.ram")
    new = store.page_classes(sid)["pc.ram"].new
    victim = None
    for page in new:
        digest = mine[page * ENTRY:(page + 1) * ENTRY]
        if all(digest not in m for m in later):
            victim = digest
            break
    assert victim is not None, "no page unique to that checkpoint"
    for pack in sorted((rec.store_path / "packs").glob("*.pack")):
        for r in scan_pack(pack, parse_pack_name(pack.name), verify=False).records:
            if r.digest == victim:
                data = bytearray(pack.read_bytes())
                data[r.offset + REC_HEADER.size + 10] ^= 0x55
                pack.write_bytes(data)
                return
    raise AssertionError("the page was not found in any pack")


def test_a_damaged_checkpoint_fails_exactly_its_interval(demo_recording, tmp_path):
    path = _copy(demo_recording, tmp_path)
    rec = Recording.open(path)
    bad = 2
    _damage_a_page_only(rec, bad)
    rec.close()
    with tagged_qemus() as tag:
        out = sbtui_run("verify", str(path), "--json", "--jobs", "2",
                        "--interval", str(bad - 1), "--interval", str(bad),
                        "--interval", str(bad + 1), tag=tag)
    assert out.returncode == 1, out.stderr.decode()
    report = json.loads(out.stdout)
    assert report["failed"] == [bad]
    assert report["verified"] == 2
    failed = next(r for r in report["results"] if r["index"] == bad)
    assert "integrity" in failed["detail"].lower()
    assert rec.checkpoints()[bad].store_id in failed["detail"]


def test_a_missing_checkpoint_is_named(demo_recording):
    out = sbtui_run("replay", str(demo_recording), "--from", "999")
    assert out.returncode == 2
    assert "no checkpoint '999'" in out.stderr.decode()


def test_a_corrupted_replay_log_is_a_clear_error(demo_recording, tmp_path):
    path = _copy(demo_recording, tmp_path)
    with open(path / "replay.log", "r+b") as f:
        f.write(b"\x12\x34\x56\x78")
    with tagged_qemus() as tag:
        out = sbtui_run("replay", str(path), "--from", "1", "--end", tag=tag)
    assert out.returncode == 1
    err = out.stderr.decode()
    assert "replay.log" in err and "version" in err


def test_a_recording_from_another_qemu_major_is_refused(demo_recording, tmp_path):
    path = _copy(demo_recording, tmp_path)
    manifest = json.loads((path / "recording.json").read_text())
    manifest["qemu_version"] = "9.2.0"
    (path / "recording.json").write_text(json.dumps(manifest))
    with tagged_qemus() as tag:
        out = sbtui_run("verify", str(path), "--interval", "0", tag=tag)
    assert out.returncode == 1
    err = out.stdout.decode() + out.stderr.decode()
    assert "QEMU 9.2.0" in err and "needs QEMU 9.x" in err
