"""``sbtui doctor``: real checks against this machine's QEMU, gdb and KVM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.doctor import Check, can_run
from procs import assert_no_qemu, new_tag
from sbtui.cli import main

REPO = Path(__file__).resolve().parents[1]
PARAVIRT_KVM = Path("/sys/module/kvm_pvm").exists()
NAMES = ["qemu", "qemu-img", "record/replay", "background-snapshot", "qcow2 vmstate",
         "kvm", "gdb", "demo guest"]


def _doctor(*args: str, env: dict | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sbtui", "doctor", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_can_run_ignores_failed_warnings():
    assert can_run([Check("qemu", True, "x"), Check("kvm", False, "y", required=False)])
    assert not can_run([Check("qemu", False, "x"), Check("kvm", True, "y", required=False)])


@pytest.mark.qemu
def test_doctor_json_reports_kvm_within_its_timeout_and_exits_0():
    tag = new_tag()
    kvm_timeout = 8
    t0 = time.monotonic()
    out = _doctor("--json", "--kvm-timeout", str(kvm_timeout), env={"SBTUI_QEMU_TAG": tag})
    took = time.monotonic() - t0
    print(f"\ndoctor --json took {took:.1f} s")
    assert out.returncode == 0, out.stderr
    checks = json.loads(out.stdout)
    assert [c["name"] for c in checks] == NAMES
    by_name = {c["name"]: c for c in checks}
    for c in checks:
        assert set(c) >= {"name", "ok", "detail", "fix"}
        if c["name"] != "kvm":
            assert c["ok"], c
    kvm = by_name["kvm"]
    assert kvm["required"] is False
    if PARAVIRT_KVM:
        assert kvm["ok"] is False
        assert kvm["detail"].startswith("unusable:") and "boot ROM" in kvm["detail"]
        assert kvm["fix"]
    assert took < kvm_timeout + 20
    assert_no_qemu(tag, timeout=1)


@pytest.mark.qemu
def test_doctor_text_without_kvm_probe(capsys):
    t0 = time.monotonic()
    assert main(["doctor", "--no-kvm-probe"]) == 0
    out = capsys.readouterr().out
    assert time.monotonic() - t0 < 20
    assert "ok    record/replay" in out
    assert "warn  kvm" in out and "not probed" in out
    assert "sbtui can run here (with TCG), 1 warning" in out


def test_doctor_without_qemu_fails_and_says_what_to_do():
    out = _doctor("--json", "--no-kvm-probe", env={"SBTUI_QEMU": "/nonexistent/qemu-system-x86_64"})
    assert out.returncode == 1
    by_name = {c["name"]: c for c in json.loads(out.stdout)}
    assert not by_name["qemu"]["ok"]
    assert "/nonexistent/qemu-system-x86_64" in by_name["qemu"]["detail"]
    assert "setup.sh" in by_name["qemu"]["fix"]
    assert not by_name["record/replay"]["ok"] and by_name["record/replay"]["fix"]
    assert by_name["gdb"]["ok"]


def test_doctor_rejects_a_bad_kvm_timeout(capsys):
    with pytest.raises(SystemExit) as info:
        main(["doctor", "--kvm-timeout", "0"])
    assert info.value.code == 2
    assert "--kvm-timeout" in capsys.readouterr().err
