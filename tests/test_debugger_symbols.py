"""Where a replay finds the guest kernel's symbols (no QEMU needed).

A recording that carries its System.map uses it; one that does not (the
recorder copies only the kernel and initrd, so every ``sbtui demo`` and
``sbtui record`` recording) uses the System.map beside an identical kernel in
the demo-guest cache, and none when no kernel there is identical.
"""

from __future__ import annotations

import time

from engine.debugger import system_map_of
from engine.recording.format import Manifest, Recording


def _recording(tmp_path, kernel: bytes) -> Recording:
    src = tmp_path / "src" / "vmlinuz-6.1.0-test-amd64"
    src.parent.mkdir()
    src.write_bytes(kernel)
    man = Manifest(kind="record", spec={}, qemu_version="10.0.2", interval_s=1.0,
                   created=time.time(), status="complete")
    rec = Recording.create(tmp_path / "rec", man)
    rec.add_guest_file("kernel", src)
    rec.save_manifest()
    return rec


def _guest_entry(cache, key: str, kernel: bytes) -> None:
    entry = cache / "guest" / key
    entry.mkdir(parents=True)
    (entry / "vmlinuz-6.1.0-test-amd64").write_bytes(kernel)
    (entry / "System.map-6.1.0-test-amd64").write_text(f"ffffffff81000000 T {key}\n")


def test_a_recording_without_a_system_map_uses_the_demo_guests_beside_its_kernel(
        tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SBTUI_CACHE", str(cache))
    rec = _recording(tmp_path, b"the kernel" * 1000)
    _guest_entry(cache, "aaaa", b"another kernel")
    _guest_entry(cache, "bbbb", b"the kernel" * 1000)
    found = system_map_of(rec)
    assert found == cache / "guest" / "bbbb" / "System.map-6.1.0-test-amd64"

    # the recording's own copy comes first
    rec.add_guest_file("system_map", found)
    rec.save_manifest()
    own = system_map_of(Recording.open(rec.path))
    assert own is not None and own.parent.parent == rec.path


def test_no_identical_kernel_means_no_symbols(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SBTUI_CACHE", str(cache))
    rec = _recording(tmp_path, b"the kernel")
    _guest_entry(cache, "aaaa", b"a kernel of the same name, built differently")
    assert system_map_of(rec, search=[cache / "guest" / "aaaa"]) is None
