"""The KVM probe: bounded, leaves nothing running, cached; and choose_accel.

On this project's machines /dev/kvm is a paravirtual KVM (module kvm_pvm)
under which the demo guest hangs after the boot ROM: there the probe must say
"unusable" in about its timeout (shared/notes/qemu-facts.md).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from engine.qemu import kvm
from engine.qemu.kvm import KvmProbe, choose_accel, kvm_device_status, probe_kvm
from procs import assert_no_qemu, new_tag

PARAVIRT_KVM = Path("/sys/module/kvm_pvm").exists()


def test_device_check_names_the_missing_device(tmp_path):
    ok, detail = kvm_device_status(str(tmp_path / "kvm"))
    assert not ok and "does not exist" in detail and str(tmp_path / "kvm") in detail
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    ok, detail = kvm_device_status(str(plain))
    assert not ok and "KVM_GET_API_VERSION" in detail


def test_disk_cache_round_trip_and_expiry(tmp_path, monkeypatch):
    monkeypatch.setenv("SBTUI_CACHE", str(tmp_path))
    probe = KvmProbe(False, "hung after the boot ROM", 15.0, booted=True)
    kvm._write_disk_cache("key-a", probe)
    hit = kvm._read_disk_cache("key-a")
    assert hit == KvmProbe(False, "hung after the boot ROM", 15.0, booted=True, cached=True)
    assert kvm._read_disk_cache("key-b") is None
    monkeypatch.setattr(kvm, "CACHE_TTL", -1.0)
    assert kvm._read_disk_cache("key-a") is None
    (tmp_path / kvm.CACHE_FILE).write_text("{not json")
    assert kvm._read_disk_cache("key-a") is None


async def test_choose_accel_honours_sbtui_accel_tcg(monkeypatch):
    monkeypatch.setenv("SBTUI_ACCEL", "tcg")
    t0 = time.monotonic()
    assert await choose_accel() == "tcg"
    assert time.monotonic() - t0 < 1


@pytest.mark.qemu
@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs an accessible /dev/kvm")
async def test_probe_is_bounded_leaves_no_qemu_and_is_remembered(monkeypatch):
    tag = new_tag()
    monkeypatch.setenv("SBTUI_QEMU_TAG", tag)
    monkeypatch.delenv("SBTUI_ACCEL", raising=False)
    timeout = 6.0
    t0 = time.monotonic()
    probe = await probe_kvm(timeout=timeout, use_cache=False)
    took = time.monotonic() - t0
    print(f"\nKVM probe: {probe} in {took:.1f} s")
    assert took < timeout + 8
    assert probe.booted and not probe.cached
    if PARAVIRT_KVM:
        assert not probe.usable
        assert "hung after the boot ROM" in probe.detail
    assert_no_qemu(tag, timeout=1)
    # The answer is kept for the process: no second boot.
    t0 = time.monotonic()
    assert await choose_accel(timeout=timeout) == ("kvm" if probe.usable else "tcg")
    again = await probe_kvm(timeout=timeout)
    assert time.monotonic() - t0 < 1
    assert again.cached and again.usable == probe.usable
