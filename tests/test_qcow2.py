"""The qcow2 reader against images qemu-img and QEMU wrote, with qemu-img as the oracle.

* guest reads (``read_guest``) equal ``qemu-img convert -O raw`` for images
  with compressed clusters (several cluster sizes, v2 and v3), zero clusters
  and extended L2 entries;
* the snapshot table equals ``qemu-img info --output=json`` (incl. icount of
  record/replay snapshots), and a snapshot's VM state is byte-identical to a
  ``migrate`` of the same paused VM;
* every refused feature and every kind of damage raises Qcow2Error naming it.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from engine.errors import Qcow2Error
from engine.stream.migration import describe, split_stream
from engine.stream.qcow2 import (
    Qcow2Image,
    list_snapshots,
    open_vmstate,
    read_guest,
)
from streams import QEMU_IMG, cache_root, cached_migrate, cached_savevm, qemu_available

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")
needs_qemu = pytest.mark.skipif(not qemu_available(), reason="QEMU not installed")


def qemu_img(*args: str) -> str:
    res = subprocess.run([QEMU_IMG, *map(str, args)], capture_output=True, text=True)
    if res.returncode:
        raise AssertionError(f"qemu-img {' '.join(map(str, args))}: {res.stderr}")
    return res.stdout


def qemu_io(image: Path, *cmds: str) -> None:
    argv = ["qemu-io", "-f", "qcow2"]
    for c in cmds:
        argv += ["-c", c]
    res = subprocess.run([*argv, str(image)], capture_output=True, text=True)
    assert res.returncode == 0 and "error" not in res.stdout.lower(), res.stdout + res.stderr


def as_raw(image: Path, tmp: Path) -> bytes:
    out = tmp / (image.name + ".raw")
    qemu_img("convert", "-O", "raw", image, out)
    return out.read_bytes()


def disk_content(size: int, seed: int = 0) -> bytes:
    """Compressible text, incompressible noise and zeros, in uneven pieces."""
    rng = random.Random(seed)
    out = bytearray()
    words = [b"sbtui ", b"qcow2 ", b"cluster ", b"snapshot ", b"\n"]
    while len(out) < size:
        kind = rng.random()
        n = rng.randrange(1000, 150_000)
        if kind < 0.5:
            out += b"".join(rng.choice(words) for _ in range(n // 6))
        elif kind < 0.75:
            out += rng.randbytes(n)
        else:
            out += bytes(n)
    return bytes(out[:size])


def l2_entries(image: Path) -> list[int]:
    """Every L2 entry of the active L1 table (first word only for extended L2)."""
    with Qcow2Image(image) as img:
        h = img.header
        size = 16 if h.extended_l2 else 8
        out = []
        for l1e in img.active_l1():
            off = l1e & 0x00FFFFFFFFFFFE00
            if off:
                table = img._l2_table(off)
                out += [struct.unpack_from(">Q", table, i)[0] for i in range(0, len(table), size)]
        return out


def assert_reads_match(image: Path, raw: bytes, seed: int = 0) -> None:
    assert read_guest(image, 0, len(raw)) == raw
    rng = random.Random(seed)
    for _ in range(40):   # odd ranges that cross cluster and subcluster boundaries
        off = rng.randrange(len(raw))
        n = rng.randrange(0, min(len(raw) - off, 300_000) + 1)
        assert read_guest(image, off, n) == raw[off:off + n], (off, n)


# -- guest reads ----------------------------------------------------------------

@needs_qemu_img
@pytest.mark.parametrize("cluster_size,compat", [(512, "1.1"), (4096, "1.1"), (65536, "1.1"),
                                                  (65536, "0.10"), (2 << 20, "1.1")])
def test_compressed_image_reads_like_qemu_img_raw(tmp_path, cluster_size, compat):
    src = tmp_path / "src.raw"
    data = disk_content(5 * 1024 * 1024 + 3 * 512, seed=cluster_size)
    src.write_bytes(data)
    image = tmp_path / "c.qcow2"
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o",
             f"cluster_size={cluster_size},compat={compat}", src, image)
    with Qcow2Image(image) as img:
        assert img.header.version == (2 if compat == "0.10" else 3)
    compressed = [e for e in l2_entries(image) if e >> 62 & 1]
    assert compressed, "qemu-img wrote no compressed cluster: the test would prove nothing"
    raw = as_raw(image, tmp_path)
    assert raw[:len(data)] == data
    assert_reads_match(image, raw, seed=cluster_size)


@needs_qemu_img
def test_zero_clusters_and_partial_writes_read_like_qemu_img(tmp_path):
    image = tmp_path / "z.qcow2"
    qemu_img("create", "-f", "qcow2", image, "4M")
    qemu_io(image, "write -P 0x11 0 256k", "write -z 64k 64k", "write -P 0x22 300k 5k",
            "write -c -P 0x33 1M 64k", "write -z -u 128k 64k")
    entries = l2_entries(image)
    assert any(e & 1 and not e >> 62 & 1 for e in entries), "no zero-flagged cluster written"
    assert_reads_match(image, as_raw(image, tmp_path))


@needs_qemu_img
def test_extended_l2_subclusters_read_like_qemu_img(tmp_path):
    image = tmp_path / "x.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=64k", image, "4M")
    # 2 KiB subclusters: allocated, zeroed and unallocated ones side by side.
    qemu_io(image, "write -P 0xaa 4k 6k", "write -P 0xbb 62k 4k", "write -z 200k 2k",
            "write -P 0xcc 192k 16k", "write -z 196k 4k", "write -c -P 0xdd 1M 64k")
    with Qcow2Image(image) as img:
        assert img.header.extended_l2
    assert_reads_match(image, as_raw(image, tmp_path))


@needs_qemu_img
def test_zstd_compressed_clusters_are_refused_by_name_unless_python_decodes_them(tmp_path):
    src = tmp_path / "src.raw"
    src.write_bytes(disk_content(1 << 20))
    image = tmp_path / "zstd.qcow2"
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zstd", src, image)
    try:
        from compression import zstd  # noqa: F401  (Python >= 3.14)
    except ImportError:
        with pytest.raises(Qcow2Error, match="zstd"):
            read_guest(image, 0, 1 << 20)
    else:  # pragma: no cover - newer Pythons
        assert read_guest(image, 0, 1 << 20) == src.read_bytes()


def test_read_guest_outside_the_disk_is_refused(tmp_path):
    image = tmp_path / "a.qcow2"
    qemu_img("create", "-f", "qcow2", image, "1M")
    assert read_guest(image, 0, 4096) == bytes(4096)
    with pytest.raises(Qcow2Error, match="outside the virtual disk"):
        read_guest(image, (1 << 20) - 10, 11)


# -- snapshots ------------------------------------------------------------------

@pytest.fixture(scope="module")
def rr_image():
    """Two snapshots of a BIOS-only q35 guest taken in record/replay record mode."""
    tmp = cache_root() / "rr-log"
    tmp.mkdir(exist_ok=True)
    return cached_savevm(machine="q35,hpet=off", memory_mib=32, blob_mib=1, snapshots=2,
                         run=True, interval_s=0.2,
                         extra=["-icount", f"shift=0,rr=record,rrfile={tmp / 'rr.bin'}"])


@needs_qemu
@pytest.mark.qemu
def test_snapshot_table_equals_qemu_img_info(rr_image):
    info = json.loads(qemu_img("info", "--output=json", rr_image.image))
    ours = list_snapshots(rr_image.image)
    assert len(ours) == len(info["snapshots"]) == 2
    for s, q in zip(ours, info["snapshots"]):
        assert (s.id, s.name, s.vm_state_size) == (q["id"], q["name"], q["vm-state-size"])
        assert (s.date_sec, s.date_nsec) == (q["date-sec"], q["date-nsec"])
        assert s.vm_clock_ns == q["vm-clock-sec"] * 10**9 + q["vm-clock-nsec"]
        assert s.icount == q["icount"] and s.icount > 0
        assert s.disk_size == 1 << 20
    assert ours[1].icount > ours[0].icount


@needs_qemu
@pytest.mark.qemu
def test_each_snapshot_vmstate_is_a_parsable_stream_of_exactly_its_size(rr_image):
    for snap in list_snapshots(rr_image.image):
        with open_vmstate(rr_image.image, snap.name) as f:
            data = f.read()
            assert f.read() == b""
        assert len(data) == snap.vm_state_size
        assert data[:8] == b"QEVM\x00\x00\x00\x03"
        infos = describe(io.BytesIO(data))
        assert infos[-1].offset + infos[-1].length == len(data)
        assert any(s.idstr == "replay" for s in infos)   # the record/replay state section


@needs_qemu
@pytest.mark.qemu
def test_vmstate_is_byte_identical_to_a_migrate_of_the_same_paused_vm():
    mig = cached_migrate(machine="q35", memory_mib=64, blob_mib=4, also_savevm=True, name="twin")
    image = mig.path.with_suffix(".qcow2")
    with open_vmstate(image, "snap0") as f:
        vmstate = f.read()
    assert vmstate == mig.path.read_bytes()


@needs_qemu
@pytest.mark.qemu
def test_vmstate_behind_a_large_disk_and_small_clusters_is_found():
    # 4 KiB clusters: an L2 table covers 2 MiB, so the state of a 3 GiB disk
    # starts at L1 index 1536 and spans many L2 tables.
    img = cached_savevm(machine="pc", memory_mib=32, blob_mib=2, image_size="3G",
                        image_opts="cluster_size=4096", name="small-clusters")
    snap = list_snapshots(img.image)[0]
    with Qcow2Image(img.image) as q:
        assert q.vmstate_offset(snap) == 3 << 30
    with open_vmstate(img.image, "snap0", buffer_size=3000) as f:
        pieces = []
        rng = random.Random(3)
        while chunk := f.read(rng.randrange(1, 70_000)):
            pieces.append(chunk)
    data = b"".join(pieces)
    assert len(data) == snap.vm_state_size
    sp = split_stream(io.BytesIO(data))
    assert sum(1 for _ in sp.pages()) == 32 * 256 + sum(b.length for b in sp.blocks[1:]) // 4096


@needs_qemu_img
def test_disk_only_and_missing_snapshots_are_refused_clearly(tmp_path):
    image = tmp_path / "d.qcow2"
    qemu_img("create", "-f", "qcow2", image, "1M")
    qemu_img("snapshot", "-c", "disk1", image)
    (snap,) = list_snapshots(image)
    assert snap.name == "disk1" and snap.vm_state_size == 0
    with pytest.raises(Qcow2Error, match="holds no VM state"):
        open_vmstate(image, "disk1")
    with pytest.raises(Qcow2Error, match=r"no snapshot with id or name 'nope' \(snapshots: 1:disk1\)"):
        open_vmstate(image, "nope")


# -- refused features and damage ------------------------------------------------

def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.fixture
def plain(tmp_path) -> Path:
    image = tmp_path / "p.qcow2"
    qemu_img("create", "-f", "qcow2", image, "1M")
    qemu_img("snapshot", "-c", "s1", image)
    return image


@needs_qemu_img
def test_not_a_qcow2_file_is_refused_with_the_magic(tmp_path):
    raw = tmp_path / "disk.raw"
    raw.write_bytes(bytes(8192))
    with pytest.raises(Qcow2Error, match=r"not a qcow2 image: magic b'\\x00\\x00\\x00\\x00'"):
        list_snapshots(raw)
    (tmp_path / "tiny").write_bytes(b"QFI")
    with pytest.raises(Qcow2Error, match="too small"):
        list_snapshots(tmp_path / "tiny")
    with pytest.raises(Qcow2Error, match="cannot open"):
        list_snapshots(tmp_path / "missing.qcow2")


@needs_qemu_img
def test_unsupported_version_is_refused(plain):
    _patch(plain, 4, struct.pack(">I", 4))
    with pytest.raises(Qcow2Error, match="version 4 is not supported"):
        list_snapshots(plain)


@needs_qemu_img
def test_unknown_incompatible_feature_is_refused_by_bit(plain):
    _patch(plain, 72, struct.pack(">Q", 1 << 5))
    with pytest.raises(Qcow2Error, match="unknown incompatible feature.*bit 5"):
        list_snapshots(plain)


@needs_qemu_img
def test_image_marked_corrupt_is_refused(plain):
    _patch(plain, 72, struct.pack(">Q", 1 << 1))
    with pytest.raises(Qcow2Error, match="marked corrupt"):
        list_snapshots(plain)


@needs_qemu_img
def test_dirty_image_is_still_read(plain):
    _patch(plain, 72, struct.pack(">Q", 1 << 0))
    assert [s.name for s in list_snapshots(plain)] == ["s1"]


@needs_qemu_img
def test_external_data_file_is_refused(tmp_path):
    image = tmp_path / "e.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'e.data'}", image, "1M")
    with pytest.raises(Qcow2Error, match="external data file"):
        read_guest(image, 0, 512)


@needs_qemu_img
@pytest.mark.parametrize("method", [1, 2])
def test_encrypted_image_is_refused(plain, method):
    # crypt_method 1 (AES) / 2 (LUKS); setting the field is enough to be refused,
    # and spares the seconds LUKS key derivation takes in qemu-img.
    _patch(plain, 32, struct.pack(">I", method))
    with pytest.raises(Qcow2Error, match=f"encrypted \\(crypt_method {method}\\)"):
        list_snapshots(plain)


@needs_qemu_img
def test_guest_read_that_needs_a_backing_file_is_refused(tmp_path):
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", base, "1M")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-F", "qcow2", "-b", base, top)
    qemu_io(top, "write -P 0x5a 0 64k")
    assert read_guest(top, 0, 65536) == b"\x5a" * 65536      # allocated here: fine
    with pytest.raises(Qcow2Error, match="backing file"):
        read_guest(top, 65536, 512)


@needs_qemu_img
def test_snapshot_table_past_the_end_of_the_file_names_the_offset(plain):
    with Qcow2Image(plain) as img:
        table = img.header.snapshots_offset
    size = plain.stat().st_size
    with open(plain, "r+b") as f:
        f.truncate(table + 20)
    with pytest.raises(Qcow2Error, match=f"at offset {table}: snapshot table entry 0.*outside the file"):
        list_snapshots(plain)
    assert size > table + 20


@needs_qemu_img
def test_l2_table_pointer_outside_the_file_is_refused(tmp_path):
    image = tmp_path / "l.qcow2"
    qemu_img("create", "-f", "qcow2", image, "1M")
    qemu_io(image, "write -P 1 0 4k")
    with Qcow2Image(image) as img:
        l1_offset = img.header.l1_table_offset
    _patch(image, l1_offset, struct.pack(">Q", (1 << 63) | (1 << 40)))
    with pytest.raises(Qcow2Error, match="L2 table.*outside the file"):
        read_guest(image, 0, 4096)
