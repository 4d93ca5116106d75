"""Recording pieces without QEMU: marker parsing and placement, the format's
additions, the reading verbs on a synthetic recording, and pack/open_any.

The synthetic recording is built from streams in QEMU's real wire format
(``tests/test_store_support.py``), imported into a real store.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from engine.errors import RecordingError, UsageError
from engine.recording import markers as mk
from engine.recording.events import RecordSummary
from engine.recording.format import CheckpointEntry, Manifest, Marker, Recording
from engine.recording.pack import MAGIC_NAME, MAGIC_TEXT, open_any, pack, unpack
from test_store_support import build_stream, page

REPO = Path(__file__).resolve().parents[1]


# -- markers ------------------------------------------------------------------

def test_parse_line_accepts_only_tsc_prefixed_lines():
    assert mk.parse_line(b"@00000005cb339308 memchurn round=0 phase=stride") == \
        mk.RawMark(0x5cb339308, "memchurn round=0 phase=stride")
    assert mk.parse_line(b"@0000000000000010 \r") == mk.RawMark(16, "")
    for line in (b"Booting from ROM...", b"guest-ready workload=idle", b"@123 short",
                 b"@00000005CB339308 upper-case hex", b"x@0000000000000010 y"):
        assert mk.parse_line(line) is None, line


def test_debugcon_reader_keeps_a_partial_line_until_its_end(tmp_path):
    f = tmp_path / "debugcon.out"
    f.write_bytes(b"SeaBIOS (version 1.16)\n@0000000000000100 first\n@00000000000002")
    r = mk.DebugconReader(f)
    assert r.poll() == [mk.RawMark(0x100, "first")]
    assert r.poll() == []
    with open(f, "ab") as out:
        out.write(b"00 second\n@0000000000000300 third\n")
    assert r.poll() == [mk.RawMark(0x200, "second"), mk.RawMark(0x300, "third")]
    assert mk.DebugconReader(tmp_path / "missing").poll() == []


def test_place_is_exact_when_the_guest_did_not_idle():
    shift = 2
    bias = 118228
    before = mk.ClockPoint(1000, (1000 << shift) + bias)
    after = mk.ClockPoint(5000, (5000 << shift) + bias)
    tsc = (3210 << shift) + bias
    assert mk.place(tsc, shift, before, after) == mk.Placement(3210, True, None)
    # A TSC that no instruction count gives under this bias is not exact.
    p = mk.place(tsc + 1, shift, before, after)
    assert not p.exact and p.icount == 3210


def test_place_gives_bounds_when_the_clock_warped_in_the_interval():
    shift = 2
    before = mk.ClockPoint(1000, (1000 << shift) + 100)
    after = mk.ClockPoint(5000, (5000 << shift) + 100 + 4000)   # 4000 ns of idle warp
    tsc = (3000 << shift) + 100 + 4000                          # marked after the warp
    p = mk.place(tsc, shift, before, after)
    assert not p.exact
    assert p.icount == 3000 and p.icount_max == 4000
    assert before.icount <= p.icount <= p.icount_max <= after.icount


def test_place_after_the_last_checkpoint_is_not_exact():
    p = mk.place((2000 << 2) + 7, 2, mk.ClockPoint(1000, (1000 << 2) + 7), None)
    assert p == mk.Placement(2000, False, None)


# -- format ------------------------------------------------------------------

def test_marker_json_round_trip_and_old_lines():
    m = Marker(icount=5, text="t", wall_time=1.5, guest_time_ns=27, exact=False, icount_max=9)
    assert Marker.from_json(json.loads(json.dumps(m.to_json()))) == m
    old = Marker.from_json({"icount": 3, "text": "x", "wall_time": 0.5})
    assert old.exact and old.icount_max is None and old.guest_time_ns is None


def test_manifest_keeps_replay_argv_stats_and_source(tmp_path):
    man = Manifest(kind="record", spec={}, qemu_version="10.0.2", interval_s=2.0,
                   created=time.time(), replay_argv=["qemu", "-icount", "rr=replay"],
                   stats={"downtime_ms_median": 40.0}, source={"pid": 1})
    Recording.create(tmp_path / "r", man)
    back = Recording.open(tmp_path / "r").manifest
    assert back.replay_argv == ["qemu", "-icount", "rr=replay"]
    assert back.stats == {"downtime_ms_median": 40.0} and back.source == {"pid": 1}


def test_summary_figures():
    s = RecordSummary(path="p", kind="record", status="complete", downtimes_ms=[40.0, 100.0, 50.0],
                      ingest_s=[0.5, 0.25], max_lag=1)
    f = s.to_json()
    assert f["downtime_ms_median"] == 50.0 and f["downtime_ms_max"] == 100.0
    assert f["ingest_s_max"] == 0.5 and f["max_ingest_lag"] == 1
    assert "downtimes_ms" not in f


# -- a synthetic recording and the reading verbs --------------------------------

BLOCKS = [("pc.ram", 16 * 4096), ("pc.bios", 2 * 4096)]


def _stream(round_: int) -> bytes:
    records = [("pc.ram", i * 4096, page((round_ if i < 4 else 0, i)) if i < 8 else None)
               for i in range(16)]
    records += [("pc.bios", 0, page("bios")), ("pc.bios", 4096, None)]
    return build_stream(BLOCKS, records)


@pytest.fixture
def synthetic(tmp_path) -> Path:
    path = tmp_path / "rec"
    man = Manifest(kind="record", spec={"memory_mib": 16, "kernel": "guest/kernel-x",
                                        "icount_shift": 2, "rr": "record", "rrfile": "replay.log"},
                   qemu_version="10.0.2", interval_s=1.0, created=time.time(), status="complete",
                   end_icount=5000)
    rec = Recording.create(path, man)
    (path / "replay.log").write_bytes(b"\0" * 16)
    (path / "console.out").write_bytes(b"hello from the guest\n\xffraw bytes\n")
    parent = None
    for k in range(3):
        info = rec.store.import_stream(io.BytesIO(_stream(k)), name=f"ck{k}", parent=parent,
                                       meta={"index": k})
        parent = info.id
        rec.append_checkpoint(CheckpointEntry(index=k, store_id=info.id, icount=k * 1000,
                                              wall_time=k * 1.0, guest_time_ns=k * 4000,
                                              downtime_ms=10.0 + k, console_offset=k))
    rec.append_marker(Marker(icount=1500, text="phase one", wall_time=1.5, guest_time_ns=6000))
    rec.append_marker(Marker(icount=2100, text="phase two", wall_time=2.1, exact=False,
                             icount_max=2900))
    rec.close()
    return path


def sbtui(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "sbtui", *args], capture_output=True, cwd=REPO,
                         timeout=120)
    if check and out.returncode != 0:
        raise AssertionError(f"sbtui {' '.join(args)} exited {out.returncode}:\n"
                             f"{out.stderr.decode(errors='replace')}")
    return out


def test_checkpoints_verb_lists_fields_and_store_statistics(synthetic):
    data = json.loads(sbtui("checkpoints", str(synthetic), "--json").stdout)
    cps = data["checkpoints"]
    assert [c["id"] for c in cps] == [0, 1, 2]
    assert [c["icount"] for c in cps] == [0, 1000, 2000]
    assert [c["downtime_ms"] for c in cps] == [10.0, 11.0, 12.0]
    # checkpoint 0: 8 data pages + 1 bios page, all new; later ones change 4 pages.
    assert cps[0]["pages_new"] == 9 and cps[0]["pages_dirty"] == 18
    assert cps[1]["pages_new"] == 4 and cps[1]["pages_dirty"] == 4
    assert all(c["stored_bytes"] > 0 for c in cps)
    assert data["store"]["checkpoints"] == 3
    table = sbtui("checkpoints", str(synthetic)).stdout.decode()
    assert "pages_dirty" in table and "3 checkpoints" in table


def test_console_verb_prints_the_bytes_as_recorded(synthetic):
    assert sbtui("console", str(synthetic)).stdout == b"hello from the guest\n\xffraw bytes\n"


def test_markers_verb(synthetic):
    data = json.loads(sbtui("markers", str(synthetic), "--json").stdout)
    assert [(m["icount"], m["text"], m["exact"]) for m in data] == \
        [(1500, "phase one", True), (2100, "phase two", False)]
    text = sbtui("markers", str(synthetic)).stdout.decode()
    assert "phase one" in text and "2100..2900 (approximate)" in text


def test_reading_verbs_give_clear_errors_for_a_missing_recording(tmp_path):
    for verb in ("checkpoints", "console", "markers"):
        out = sbtui(verb, str(tmp_path / "nope"), check=False)
        assert out.returncode == 2
        assert b"no such recording" in out.stderr


# -- pack ----------------------------------------------------------------------

def test_pack_round_trip_and_cache(synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("SBTUI_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "rec.sbtui"
    pack(synthetic, out)
    rec = open_any(out)
    assert rec.path != synthetic and rec.path.is_relative_to(tmp_path / "cache")
    assert [c.icount for c in rec.checkpoints()] == [0, 1000, 2000]
    assert rec.console_bytes() == (synthetic / "console.out").read_bytes()
    buf = io.BytesIO()
    rec.store.export_stream(rec.checkpoints()[2].store_id, buf)
    assert buf.getvalue() == _stream(2)
    assert open_any(out).path == rec.path     # unpacked once, then reused
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert names[0] == f"recording/{MAGIC_NAME}"
    assert not any(n.endswith("/lock") for n in names)
    # The verbs take the packed file too.
    monkeypatch.setenv("SBTUI_CACHE", str(tmp_path / "cache2"))
    env_out = subprocess.run([sys.executable, "-m", "sbtui", "markers", str(out), "--json"],
                             capture_output=True, cwd=REPO, timeout=60,
                             env={**os.environ, "SBTUI_CACHE": str(tmp_path / "cache2")})
    assert env_out.returncode == 0 and b"phase one" in env_out.stdout


def test_pack_verb_writes_one_file(synthetic, tmp_path):
    out = tmp_path / "one.sbtui"
    res = sbtui("pack", str(synthetic), "-o", str(out))
    assert out.is_file() and b"wrote" in res.stderr


def _evil_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        magic = tarfile.TarInfo(f"recording/{MAGIC_NAME}")
        magic.size = len(MAGIC_TEXT)
        tar.addfile(magic, io.BytesIO(MAGIC_TEXT))
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_unpack_refuses_members_outside_or_links(tmp_path):
    cases = {
        "dotdot": tarfile.TarInfo("recording/../../escape"),
        "absolute": tarfile.TarInfo("/tmp/escape"),
        "other-top": tarfile.TarInfo("elsewhere/file"),
    }
    link = tarfile.TarInfo("recording/recording.json")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    cases["symlink"] = link
    for name, info in cases.items():
        bad = tmp_path / f"{name}.sbtui"
        _evil_tar(bad, [(info, b"x")])
        with pytest.raises(RecordingError, match="refusing member"):
            unpack(bad, cache=tmp_path / "cache")
    assert not (tmp_path / "escape").exists()
    assert not list((tmp_path / "cache" / "unpacked").glob("*/recording"))


def test_open_any_rejects_a_file_that_is_not_a_packed_recording(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(RecordingError, match="not a packed recording"):
        unpack(junk, cache=tmp_path / "cache")
    with pytest.raises(UsageError, match="no such recording"):
        open_any(tmp_path / "missing")


def test_pack_refuses_a_recording_in_progress(synthetic, tmp_path):
    rec = Recording.open(synthetic)
    rec.update(status="recording")
    with pytest.raises(UsageError, match="still being recorded"):
        pack(synthetic, tmp_path / "x.sbtui")


# -- the replay log scanner --------------------------------------------------------

def _log(events: bytes, *, finalized: bool = True) -> bytes:
    import struct
    return struct.pack(">IQ", 0xE0200C if finalized else 0, 0) + events


def test_replay_log_scan_adds_up_instructions_over_every_event_kind(tmp_path):
    import struct
    from engine.recording import replaylog as rl
    ev = bytearray()
    ev += bytes([rl.EVENT_INSTRUCTION]) + struct.pack(">I", 1000)
    ev += bytes([rl.EVENT_CLOCK]) + struct.pack(">q", 123456789)
    ev += bytes([rl.EVENT_CHECKPOINT + 7, rl.EVENT_INTERRUPT, rl.EVENT_EXCEPTION])
    ev += bytes([rl.EVENT_ASYNC + rl.ASYNC_BH]) + struct.pack(">Q", 5)
    ev += bytes([rl.EVENT_ASYNC + rl.ASYNC_CHAR_READ, 0]) + struct.pack(">I", 3) + b"abc"
    ev += bytes([rl.EVENT_CHAR_WRITE]) + struct.pack(">II", 1, 1)
    ev += bytes([rl.EVENT_RANDOM]) + struct.pack(">II", 0, 4) + b"rand"
    ev += bytes([rl.EVENT_INSTRUCTION]) + struct.pack(">I", 234)
    ev += bytes([rl.EVENT_SHUTDOWN + 6, rl.EVENT_END])
    path = tmp_path / "replay.log"
    path.write_bytes(_log(bytes(ev)))
    s = rl.scan(path)
    assert s.instructions == 1234 and s.complete and s.shutdown == "guest-shutdown"
    assert s.checkpoints == 1
    # Still being written: no version word, a torn last event.
    path.write_bytes(_log(bytes(ev[:-2]) + bytes([rl.EVENT_INSTRUCTION, 0]), finalized=False))
    s = rl.scan(path)
    assert s.instructions == 1234 and not s.complete and not s.finalized
    path.write_bytes(_log(bytes([77])))
    with pytest.raises(RecordingError, match="offset 12: unknown replay event 77"):
        rl.scan(path)
    path.write_bytes(b"\x00\x00\x00\x01" + bytes(8))
    with pytest.raises(RecordingError, match="version 0x1"):
        rl.scan(path)


def test_a_recording_from_another_qemu_major_gets_a_clear_error_not_a_hang(synthetic):
    rec = Recording.open(synthetic)
    rec.update(qemu_version="9.2.0")
    out = sbtui("replay", str(synthetic), "--from", "0", check=False)
    err = out.stderr.decode()
    assert out.returncode == 1, err
    assert "recorded with QEMU 9.2.0" in err and "needs QEMU 9.x" in err
