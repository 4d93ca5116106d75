"""Damage and hostile input: corrupted pack bytes, index segments and manifests,
format versions, msgpack crafted to crash a reader. Every one must end in a
StoreError subclass that names what is wrong, never a crash or a wrong page."""

from __future__ import annotations

import io
import struct

import msgpack
import pytest
import xxhash

from engine.errors import FormatVersionError, IntegrityError, StoreError
from engine.store import Store
from engine.store import manifest as mf
from engine.store.packs import PACK_HEADER, REC_HEADER
from test_store_support import page, snapshot, text_page

PAGE = 4096


@pytest.fixture
def filled(tmp_path):
    """A store with two checkpoints; returns (path, streams)."""
    path = tmp_path / "st"
    streams = [snapshot([page(i) for i in range(8)] + [text_page("t")]),
               snapshot([page(i) for i in range(4, 12)] + [None])]
    with Store.open(path, create=True) as s:
        for k, data in enumerate(streams):
            s.import_stream(io.BytesIO(data), name=str(k))
    return path, streams


def _pack_file(path):
    packs = sorted((path / "packs").glob("*.pack"))
    assert len(packs) == 1
    return packs[0]


def _record_offsets(pack_path):
    from engine.store.packs import scan_pack
    return [(r.offset, r.length, r.digest) for r in scan_pack(pack_path, 1).records]


def test_flipped_byte_in_a_page_raises_integrity_error_naming_checkpoint_pack_offset(filled):
    path, streams = filled
    pack = _pack_file(path)
    offset, length, digest = _record_offsets(pack)[2]   # page(2): only checkpoint 0 uses it
    data = bytearray(pack.read_bytes())
    data[offset + REC_HEADER.size + 100] ^= 0x40
    pack.write_bytes(data)
    with Store.open(path) as s:
        with pytest.raises(IntegrityError) as exc:
            s.export_stream("0000", io.BytesIO())
        err = exc.value
        assert (err.checkpoint, err.pack, err.offset) == ("0000", pack.name, offset)
        assert "0000" in str(err) and pack.name in str(err) and str(offset) in str(err)
        # checkpoint 1 does not use that page: it still exports
        out = io.BytesIO()
        s.export_stream("0001", out)
        assert out.getvalue() == streams[1]
        report = s.fsck()
        assert not report.ok
        assert report.damaged_checkpoints == ["0000"]
        assert any(f"offset {offset}" in d for d in report.damage)


def test_damaged_record_header_is_reported(filled):
    path, _ = filled
    pack = _pack_file(path)
    offset, _, _ = _record_offsets(pack)[5]
    data = bytearray(pack.read_bytes())
    data[offset + 10] ^= 0xFF                     # inside the stored hash: header checksum fails
    pack.write_bytes(data)
    with Store.open(path) as s:
        with pytest.raises(IntegrityError, match="header is damaged") as exc:
            s.export_stream("0001", io.BytesIO())
        assert exc.value.offset == offset
        report = s.fsck()
        assert not report.ok
        assert any(f"offset {offset}" in d for d in report.damage)


def test_truncated_pack_is_damage_not_a_torn_tail(filled):
    path, _ = filled
    pack = _pack_file(path)
    size = pack.stat().st_size
    with open(pack, "r+b") as f:
        f.truncate(size - 1000)
    with Store.open(path) as s:
        report = s.fsck()
        assert not report.ok
        assert any("cut short" in d for d in report.damage)
        with pytest.raises(IntegrityError, match="cut short"):
            s.export_stream("0001", io.BytesIO())


def test_format_version_mismatch_is_detected_before_anything_else(filled):
    path, _ = filled
    (path / "FORMAT").write_bytes(b"sbtui checkpoint store\nformat-version: 2\n")
    # make everything else unreadable: the version check must come first
    for p in (path / "checkpoints").glob("*.ckpt"):
        p.write_bytes(b"garbage")
    with pytest.raises(FormatVersionError, match="format version 2, this sbtui reads version 1"):
        Store.open(path)
    (path / "FORMAT").write_bytes(b"something else entirely")
    with pytest.raises(FormatVersionError, match="unrecognised format file"):
        Store.open(path)
    (path / "FORMAT").unlink()
    with pytest.raises(StoreError, match="not an sbtui store"):
        Store.open(path)


def test_per_file_format_versions(filled):
    path, _ = filled
    pack = _pack_file(path)
    data = bytearray(pack.read_bytes())
    struct.pack_into("<I", data, 8, 99)
    pack.write_bytes(data)
    with Store.open(path) as s:
        with pytest.raises(FormatVersionError, match="pack format version 99"):
            s.export_stream("0000", io.BytesIO())
    ck = path / "checkpoints" / "0000.ckpt"
    raw = bytearray(ck.read_bytes())
    struct.pack_into("<I", raw, 8, 7)
    ck.write_bytes(raw)
    with Store.open(path, repair=False) as s:
        with pytest.raises(FormatVersionError, match="manifest format version 7"):
            s.checkpoints()


def _write_manifest_header(path, header_obj, *, blob_area: bytes = b"", packed: bytes | None = None):
    """A manifest file with a valid envelope (magic, version, checksum) around ``header_obj``."""
    body = packed if packed is not None else msgpack.packb(header_obj, use_bin_type=True)
    head = mf.CKPT_HEAD.pack(mf.CKPT_MAGIC, mf.CKPT_VERSION, len(body)) + body
    path.write_bytes(head + xxhash.xxh3_128_digest(head) + blob_area)


def _good_header(cid="0002"):
    return {"id": cid, "name": "x", "parent": None, "created": 1.0, "machine": "m",
            "blocks": [["pc.ram", 4096]], "raw_bytes": 10, "stream_hash": b"\0" * 16,
            "stats": {}, "meta": {}, "blobs": {"skeleton": [0, 0, 0, b"\0" * 16],
                                               "delta": [0, 0, 0, b"\0" * 16]}}


HOSTILE = {
    "id is a number": lambda h: h.update(id=2),
    "id is a path": lambda h: h.update(id="../../x"),
    "name is bytes": lambda h: h.update(name=b"x"),
    "parent is a list": lambda h: h.update(parent=["0000"]),
    "parent is itself": lambda h: h.update(parent="0002"),
    "created is NaN": lambda h: h.update(created=float("nan")),
    "blocks are a map": lambda h: h.update(blocks={"a": 1}),
    "block length negative": lambda h: h.update(blocks=[["pc.ram", -1]]),
    "stats as list": lambda h: h.update(stats=[1, 2]),
    "stats value float": lambda h: h.update(stats={"new_pages": 1.5}),
    "meta not a map": lambda h: h.update(meta=[1]),
    "meta with int keys": lambda h: h.update(meta={"a": {1: 2}}),
    "stream hash short": lambda h: h.update(stream_hash=b"\0"),
    "unknown blob": lambda h: h["blobs"].update(evil=[0, 0, 0, b"\0" * 16]),
    "blob spec wrong": lambda h: h["blobs"].update(delta="x"),
    "blob claims 8 GiB": lambda h: h["blobs"].update(delta=[0, 0, 8 << 30, b"\0" * 16]),
    "blob past end of file": lambda h: h["blobs"].update(delta=[0, 1 << 40, 10, b"\0" * 16]),
    "skeleton missing": lambda h: h["blobs"].pop("skeleton"),
    "not a map at all": None,
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_manifest_headers_give_store_errors(filled, case):
    path, _ = filled
    header = _good_header()
    if HOSTILE[case] is None:
        header = [1, 2, 3]
    else:
        HOSTILE[case](header)
    _write_manifest_header(path / "checkpoints" / "0002.ckpt", header)
    with Store.open(path) as s:
        with pytest.raises(StoreError) as exc:
            s.checkpoints()
        assert "0002.ckpt" in str(exc.value)


RAW_HOSTILE = {
    # array header claiming 2**32-1 elements, then nothing
    "huge array": b"\xdd\xff\xff\xff\xff",
    # bin32 claiming 4 GiB
    "huge bin": b"\x81\xa2id\xc6\xff\xff\xff\xff",
    # map32 claiming 2**32-1 pairs
    "huge map": b"\xdf\xff\xff\xff\xff",
    # 10000 nested arrays
    "deep nesting": b"\x91" * 10000 + b"\xc0",
    # ext type (timestamps and the like are refused)
    "ext type": msgpack.packb({"id": msgpack.ExtType(5, b"x")}),
    # invalid msgpack byte
    "reserved byte": b"\xc1",
    # trailing bytes after the map
    "extra data": msgpack.packb(_good_header()) + b"\x00",
}


@pytest.mark.parametrize("case", sorted(RAW_HOSTILE))
def test_hostile_msgpack_bytes_give_store_errors(filled, case):
    path, _ = filled
    _write_manifest_header(path / "checkpoints" / "0002.ckpt", None, packed=RAW_HOSTILE[case])
    with Store.open(path) as s:
        with pytest.raises(StoreError, match="0002.ckpt"):
            s.checkpoints()


def test_hostile_header_length_and_bad_checksum(filled):
    path, _ = filled
    ck = path / "checkpoints" / "0002.ckpt"
    ck.write_bytes(mf.CKPT_HEAD.pack(mf.CKPT_MAGIC, mf.CKPT_VERSION, 0xFFFFFFFF))
    with Store.open(path) as s:
        with pytest.raises(StoreError, match="claims 4294967295 bytes"):
            s.checkpoints()
    good = (path / "checkpoints" / "0001.ckpt").read_bytes()
    bad = bytearray(good)
    bad[20] ^= 1
    ck.write_bytes(bytes(bad))
    with Store.open(path) as s:
        with pytest.raises(IntegrityError, match="checksum"):
            s.checkpoints()
    ck.write_bytes(good[:30])
    with Store.open(path) as s:
        with pytest.raises(IntegrityError, match="truncated"):
            s.checkpoints()


def test_hostile_delta_blob_gives_store_error(filled):
    """A well-formed header whose delta blob lies about its contents."""
    path, _ = filled
    bad_deltas = [
        msgpack.packb({"pc.ram": [1, b"\x05\x00\x00\x00", b"\x01" * 16, None]}),     # index past pages
        msgpack.packb({"pc.ram": [4, b"\x00\x00\x00\x00", b"\x01" * 15, None]}),     # short entry
        msgpack.packb({"pc.ram": "nope"}),
        msgpack.packb({"pc.ram": [1 << 32, b"", b"", None]}),                     # a 64 GiB map
        msgpack.packb({f"b{k}": [1 << 25, b"", b"", None] for k in range(3)}),   # 3 x 16 GiB
        msgpack.packb([1, 2]),
    ]
    for k, raw in enumerate(bad_deltas):
        import lz4.block
        stored = lz4.block.compress(raw, store_size=False)
        header = _good_header()
        header["blobs"]["delta"] = [0, len(stored), len(raw), xxhash.xxh3_128_digest(stored)]
        _write_manifest_header(path / "checkpoints" / "0002.ckpt", header, blob_area=stored)
        with Store.open(path) as s:
            assert [c.id for c in s.checkpoints()][-1] == "0002"
            with pytest.raises(StoreError, match="delta"):
                s.dirty_pages("0002")
            with pytest.raises(StoreError):
                s.page_map("0002")


def test_damaged_index_segment_is_refused_and_fsck_repair_rebuilds_it(filled):
    path, streams = filled
    segs = sorted((path / "index").glob("*.idx"))
    data = bytearray(segs[0].read_bytes())
    data[60] ^= 0xFF
    segs[0].write_bytes(data)
    with pytest.raises(IntegrityError, match="fails its checksum"):
        Store.open(path)
    with Store.open(path, repair=False, strict_index=False) as s:
        report = s.fsck()
        assert not report.ok
        assert any("index segment" in d for d in report.damage)
        assert s.rebuild_index() == 8 + 1 + 2 + 4   # pages 0-7, "t", two BIOS pages; then 8-11
        assert s.fsck().ok
    with Store.open(path) as s:
        for k, data in enumerate(streams):
            out = io.BytesIO()
            s.export_stream(f"{k:04d}", out)
            assert out.getvalue() == data


def test_missing_pack_is_damage(filled):
    path, _ = filled
    pack = _pack_file(path)
    pack.unlink()
    with Store.open(path, repair=False) as s:
        report = s.fsck()
        assert not report.ok
        assert any("is missing" in d for d in report.damage)
        with pytest.raises(IntegrityError, match="missing"):
            s.export_stream("0000", io.BytesIO())


def test_pack_header_is_checked(filled):
    path, _ = filled
    pack = _pack_file(path)
    data = bytearray(pack.read_bytes())
    data[:PACK_HEADER.size] = b"NOTAPACK" + bytes(8)
    pack.write_bytes(data)
    with Store.open(path) as s:
        with pytest.raises(IntegrityError, match="not a pack file"):
            s.export_stream("0000", io.BytesIO())


def test_hostile_index_entry_cannot_make_a_reader_allocate(filled):
    """A consistent (checksummed) segment whose entry claims a 4 GiB record."""
    from engine.store import index as idx
    path, _ = filled
    with Store.open(path) as s:
        digest = s.page_map("0000").get("pc.ram", 0)
    seg = path / "index" / idx.segment_name(90, 90)
    seg.write_bytes(idx.encode_segment([digest], [idx.ENTRY.pack(1, 16, 0xFFFFFFFF)], {}))
    for old in (path / "index").glob("*.idx"):
        if old != seg:
            old.unlink()
    with Store.open(path, repair=False) as s:
        with pytest.raises(IntegrityError, match="record length of 4294967295"):
            s.read_page(digest)


def test_symlinks_in_a_received_store_are_refused(filled, tmp_path):
    """Repair truncates packs: it must never follow a link out of the store."""
    path, _ = filled
    victim = tmp_path / "precious.txt"
    victim.write_bytes(b"x" * 100_000)
    pack = _pack_file(path)
    pack.unlink()
    pack.symlink_to(victim)
    with pytest.raises(StoreError, match="not a regular file"):
        with Store.open(path, repair=False) as s:
            s.repair()
    with Store.open(path, repair=False) as s:
        with pytest.raises(IntegrityError, match="cannot open the pack"):
            s.export_stream("0000", io.BytesIO())
    assert victim.read_bytes() == b"x" * 100_000
    pack.unlink()
    (path / "packs").rename(tmp_path / "elsewhere")
    (path / "packs").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoreError, match="packs is not a directory"):
        Store.open(path)
