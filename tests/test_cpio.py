"""The cpio newc writer and reader (engine.guest.cpio): pure unit tests.

Besides our own reader, archives are checked with an independent implementation:
GNU cpio when it is installed, and busybox's cpio (a project dependency) always.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import GuestBuildError
from engine.guest.cpio import HEADER_SIZE, MAGIC, CpioWriter, read_cpio, read_initramfs

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
GNU_CPIO = shutil.which("cpio")


def sample_archive() -> bytes:
    out = io.BytesIO()
    with CpioWriter(out) as w:
        w.add_dir("bin")
        w.add_file("bin/tool", b"\x7fELF" + bytes(range(256)) * 3, 0o755)
        w.add_file("etc/motd", b"hello, guest\n", 0o644)  # etc/ is implied
        w.add_file("empty", b"", 0o600)
        w.add_symlink("bin/sh", "busybox")
        w.add_dir("tmp", 0o1777)
        w.add_chardev("dev/console", 5, 1, 0o600)
        w.add_blockdev("dev/vda", 254, 0, 0o660)
    return out.getvalue()


def test_archive_lists_exactly_what_was_put_in_with_byte_exact_contents():
    entries = read_cpio(sample_archive())
    assert [e.name for e in entries] == [
        "bin", "bin/tool", "etc", "etc/motd", "empty", "bin/sh", "tmp", "dev",
        "dev/console", "dev/vda"]
    by_name = {e.name: e for e in entries}
    assert by_name["bin/tool"].data == b"\x7fELF" + bytes(range(256)) * 3
    assert by_name["bin/tool"].is_file and by_name["bin/tool"].permissions == 0o755
    assert by_name["etc/motd"].data == b"hello, guest\n"
    assert by_name["empty"].data == b"" and by_name["empty"].permissions == 0o600
    assert by_name["bin/sh"].is_symlink and by_name["bin/sh"].data == b"busybox"
    assert by_name["tmp"].is_dir and by_name["tmp"].permissions == 0o1777
    assert by_name["etc"].is_dir and by_name["etc"].permissions == 0o755
    con = by_name["dev/console"]
    assert con.is_chardev and (con.rdevmajor, con.rdevminor) == (5, 1)
    assert stat.S_ISBLK(by_name["dev/vda"].mode) and by_name["dev/vda"].rdevmajor == 254


def test_archive_is_deterministic_with_zero_times_owners_and_sequential_inodes():
    a, b = sample_archive(), sample_archive()
    assert a == b
    entries = read_cpio(a)
    assert [e.ino for e in entries] == list(range(1, len(entries) + 1))
    assert {(e.mtime, e.uid, e.gid) for e in entries} == {(0, 0, 0)}


def test_layout_is_newc_with_four_byte_alignment_and_trailer():
    data = sample_archive()
    assert data.startswith(MAGIC)
    assert len(data) % 4 == 0
    # The first header: "bin" directory, inode 1, namesize 4 ("bin\0").
    header = data[:HEADER_SIZE]
    assert header[6:14] == b"00000001"
    assert int(header[14:22], 16) == stat.S_IFDIR | 0o755
    assert int(header[94:102], 16) == 4
    assert data[HEADER_SIZE:HEADER_SIZE + 4] == b"bin\0"
    assert b"TRAILER!!!\0" in data[-128:]


def test_absolute_and_dot_names_are_stored_relative():
    out = io.BytesIO()
    with CpioWriter(out) as w:
        w.add_file("/init", b"#!/bin/sh\n", 0o755)
        w.add_file("./etc/x", b"1")
    assert [e.name for e in read_cpio(out.getvalue())] == ["init", "etc", "etc/x"]


@pytest.mark.parametrize("bad", ["", "/", "a/../b", "TRAILER!!!"])
def test_bad_member_names_are_refused(bad):
    w = CpioWriter(io.BytesIO())
    with pytest.raises(GuestBuildError, match="cpio"):
        w.add_file(bad, b"x")


def test_duplicates_and_files_as_parents_are_refused():
    w = CpioWriter(io.BytesIO())
    w.add_file("a", b"x")
    with pytest.raises(GuestBuildError, match="duplicate member 'a'"):
        w.add_file("a", b"y")
    with pytest.raises(GuestBuildError, match="parent 'a' is not a directory"):
        w.add_file("a/b", b"y")


def test_adding_after_close_is_refused():
    w = CpioWriter(io.BytesIO())
    w.close()
    with pytest.raises(GuestBuildError, match="already closed"):
        w.add_dir("late")


def test_reader_names_offset_of_bad_magic():
    data = bytearray(sample_archive())
    second = data.index(MAGIC, 1)
    data[second:second + 6] = b"070707"
    with pytest.raises(GuestBuildError, match=rf"bad magic b'070707' at offset {second}"):
        read_cpio(bytes(data), source="x.cpio")


def test_reader_reports_truncation_and_missing_trailer():
    data = sample_archive()
    with pytest.raises(GuestBuildError, match="x.cpio.*run past the end"):
        read_cpio(data[:400], source="x.cpio")  # inside bin/tool's contents
    cut = data.index(b"TRAILER!!!") - HEADER_SIZE
    with pytest.raises(GuestBuildError, match=f"truncated at offset {cut}.*no TRAILER"):
        read_cpio(data[:cut], source="x.cpio")


def test_reader_reports_non_hex_field():
    data = bytearray(sample_archive())
    data[6 + 8 * 6:6 + 8 * 7] = b"zzzzzzzz"  # filesize of the first entry
    with pytest.raises(GuestBuildError, match="field filesize at offset 54"):
        read_cpio(bytes(data))


def test_read_initramfs_accepts_gzip_and_plain(tmp_path):
    data = sample_archive()
    (tmp_path / "plain").write_bytes(data)
    (tmp_path / "gz").write_bytes(gzip.compress(data, mtime=0))
    assert read_initramfs(tmp_path / "plain") == read_initramfs(tmp_path / "gz")
    (tmp_path / "broken").write_bytes(gzip.compress(data)[:100])
    with pytest.raises(GuestBuildError, match="gzip data is damaged"):
        read_initramfs(tmp_path / "broken")


_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=12).filter(
    lambda s: s not in (".", ".."))


@settings(max_examples=60, deadline=None)
@given(files=st.dictionaries(st.lists(_names, min_size=1, max_size=3).map("/".join),
                             st.tuples(st.binary(max_size=600), st.sampled_from([0o644, 0o755, 0o600])),
                             max_size=12))
def test_round_trip_of_arbitrary_trees(files):
    out = io.BytesIO()
    w = CpioWriter(out)
    added: dict[str, tuple[bytes, int]] = {}
    for name, (data, mode) in sorted(files.items()):
        try:
            w.add_file(name, data, mode)
        except GuestBuildError:
            continue  # "a" added as a file, then "a/b": refused, which another test checks
        added[name] = (data, mode)
    w.close()
    entries = {e.name: e for e in read_cpio(out.getvalue())}
    for name, (data, mode) in added.items():
        assert entries[name].data == data and entries[name].permissions == mode
    assert {n for n, e in entries.items() if e.is_file} == set(added)


# -- an independent implementation reads our archives ----------------------

def _tools() -> list[tuple[str, list[str]]]:
    tools = [("busybox", [BUSYBOX, "cpio"])]
    if GNU_CPIO:
        tools.append(("gnu", [GNU_CPIO, "--quiet"]))
    return tools


def test_gnu_cpio_is_installed_for_the_cross_check():
    if GNU_CPIO is None:
        pytest.skip("GNU cpio is not installed (apt-get install cpio); busybox cpio "
                    "still cross-checks the archives")


@pytest.mark.parametrize("tool", _tools(), ids=lambda t: t[0])
def test_system_cpio_lists_every_member_with_its_mode(tool, tmp_path):
    _, argv = tool
    archive = tmp_path / "a.cpio"
    archive.write_bytes(sample_archive())
    with open(archive, "rb") as f:
        listing = subprocess.run([*argv, "-t", "-v"], stdin=f, capture_output=True, text=True,
                                 check=True).stdout.splitlines()
    names = [line.split()[-3] if " -> " in line else line.split()[-1] for line in listing]
    assert names == [e.name for e in read_cpio(sample_archive())]
    modes = [line.split()[0] for line in listing]
    assert modes == ["drwxr-xr-x", "-rwxr-xr-x", "drwxr-xr-x", "-rw-r--r--", "-rw-------",
                     "lrwxrwxrwx", "drwxrwxrwt", "drwxr-xr-x", "crw-------", "brw-rw----"]


@pytest.mark.parametrize("tool", _tools(), ids=lambda t: t[0])
def test_system_cpio_extracts_byte_exact_files(tool, tmp_path):
    _, argv = tool
    out = io.BytesIO()
    payload = bytes((i * 7) & 0xFF for i in range(10_001))  # length not a multiple of 4
    with CpioWriter(out) as w:
        w.add_file("data/blob", payload, 0o640)
        w.add_file("data/text", b"line\n", 0o755)
        w.add_symlink("data/link", "blob")
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run([*argv, "-i", "-d"], input=out.getvalue(), cwd=dest, check=True,
                   capture_output=True)
    assert (dest / "data/blob").read_bytes() == payload
    assert stat.S_IMODE((dest / "data/blob").stat().st_mode) == 0o640
    assert (dest / "data/text").read_bytes() == b"line\n"
    assert os.access(dest / "data/text", os.X_OK)
    assert os.readlink(dest / "data/link") == "blob"


@pytest.mark.parametrize("tool", _tools(), ids=lambda t: t[0])
def test_our_reader_reads_what_system_cpio_writes(tool, tmp_path):
    _, argv = tool
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"abc" * 1000)
    (src / "g").write_bytes(b"")
    names = "d\nd/f\ng\n"
    made = subprocess.run([*argv, "-o", "-H", "newc"], input=names.encode(), cwd=src,
                          capture_output=True, check=True).stdout
    entries = {e.name: e for e in read_cpio(made)}
    assert set(entries) == {"d", "d/f", "g"}
    assert entries["d"].is_dir
    assert entries["d/f"].data == b"abc" * 1000
    assert entries["g"].data == b""
