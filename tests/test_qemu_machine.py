"""MachineSpec: command lines and the manifest round trip (pure, no QEMU)."""

from __future__ import annotations

import json

import pytest

from engine.errors import UsageError
from engine.qemu.machine import MachineSpec, gdb_tcp


def rr_spec(**kw) -> MachineSpec:
    base = dict(memory_mib=128, kernel="/k/vmlinuz", initrd="/k/initrd.cpio",
                append="console=ttyS0 quiet", icount_shift=3, rr="record",
                rrfile="/r/replay.bin", vmstate_image="/r/vmstate.qcow2",
                debugcon_path="/r/debugcon.log", gdb=gdb_tcp(1234))
    base.update(kw)
    return MachineSpec(**base)


def test_record_and_replay_argv_differ_only_in_rr():
    record = rr_spec().argv("qemu", console="socket,fd=5")
    replay = rr_spec().with_rr("replay").argv("qemu", console="socket,fd=5")
    assert len(record) == len(replay)
    diffs = [(a, b) for a, b in zip(record, replay) if a != b]
    assert diffs == [("shift=3,rr=record,rrfile=/r/replay.bin",
                      "shift=3,rr=replay,rrfile=/r/replay.bin")]


def test_default_machine_is_q35_without_hpet_tcg_no_network():
    argv = MachineSpec().argv("qemu")
    assert argv[argv.index("-machine") + 1] == "q35,hpet=off"
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-net") + 1] == "none"
    assert "-icount" not in argv
    assert argv[argv.index("-serial") + 1] == "chardev:console"
    assert "null,id=console" in argv


def test_argv_carries_every_option():
    spec = rr_spec(rrsnapshot="c3", incoming_defer=True, paused=True, no_reboot=True,
                   cpu="max", smp=2, log_items=("guest_errors",), extra_args=("-rtc", "clock=vm"))
    argv = spec.argv("/usr/bin/qemu-system-x86_64")
    joined = " ".join(argv)
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert "-icount shift=3,rr=record,rrfile=/r/replay.bin,rrsnapshot=c3" in joined
    assert ("-blockdev driver=file,filename=/r/vmstate.qcow2,node-name=vmstate-file "
            "-blockdev driver=qcow2,file=vmstate-file,node-name=vmstate") in joined
    assert "-kernel /k/vmlinuz -initrd /k/initrd.cpio" in joined
    assert argv[argv.index("-append") + 1] == "console=ttyS0 quiet"
    assert "-chardev file,id=debugcon,path=/r/debugcon.log -device isa-debugcon,iobase=0x402,chardev=debugcon" in joined
    assert "-gdb tcp:127.0.0.1:1234" in joined
    assert "-cpu max" in joined and "-smp 2" in joined and "-m 128" in joined
    assert "-d guest_errors" in joined
    assert "-S" in argv and "-no-reboot" in argv
    assert "-incoming defer" in joined
    assert argv[-2:] == ["-rtc", "clock=vm"]


def test_dict_round_trip_through_json():
    spec = rr_spec(rrsnapshot="c3", extra_args=("-rtc", "clock=vm"), log_items=("int",))
    data = json.loads(json.dumps(spec.to_dict()))
    back = MachineSpec.from_dict(data)
    assert back == spec
    assert back.argv("q") == spec.argv("q")
    assert hash(back) == hash(spec)
    assert MachineSpec.from_dict(MachineSpec().to_dict()) == MachineSpec()


@pytest.mark.parametrize("data, words", [
    ({"memory_mib": 64, "colour": "red"}, ["unknown", "colour"]),
    ({"memory_mib": "64"}, ["memory_mib", "wrong type"]),
    ({"memory_mib": True}, ["memory_mib", "wrong type"]),
    ({"paused": 1}, ["paused", "wrong type"]),
    ({"machine": None}, ["machine", "wrong type"]),
    ({"format": 99}, ["format 99"]),
    ({"extra_args": "-S"}, ["extra_args"]),
])
def test_from_dict_rejects_bad_input_naming_the_field(data, words):
    with pytest.raises(UsageError) as info:
        MachineSpec.from_dict(data)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("kw, words", [
    (dict(rr="record", rrfile="/x"), ["icount_shift"]),
    (dict(rr="record", icount_shift=2), ["rrfile"]),
    (dict(rr="rewind", icount_shift=2, rrfile="/x"), ["rr must be"]),
    (dict(accel="kvm", icount_shift=2), ["icount needs accel"]),
    (dict(accel="hvf"), ["accel"]),
    (dict(memory_mib=0), ["memory_mib"]),
    (dict(rrsnapshot="s"), ["rrsnapshot"]),
    (dict(append="quiet"), ["without kernel"]),
    (dict(debugcon_path="/a,b"), ["debugcon_path", "comma"]),
    (dict(gdb="1234"), ["gdb"]),
])
def test_invalid_specs_are_refused(kw, words):
    with pytest.raises(UsageError) as info:
        MachineSpec(**kw)
    for word in words:
        assert word in str(info.value)


def test_icount_sleep_off_reaches_the_command_line_and_the_manifest_only_when_asked():
    plain = rr_spec()
    assert "icount_sleep" not in plain.to_dict()     # manifests written before it are unchanged
    assert MachineSpec.from_dict(plain.to_dict()).icount_sleep is True
    off = rr_spec(icount_sleep=False)
    argv = off.with_rr("replay").argv("qemu")
    assert argv[argv.index("-icount") + 1] == "shift=3,sleep=off,rr=replay,rrfile=/r/replay.bin"
    data = json.loads(json.dumps(off.to_dict()))
    assert data["icount_sleep"] is False
    assert MachineSpec.from_dict(data) == off
    with pytest.raises(UsageError, match="icount_sleep"):
        MachineSpec.from_dict({**data, "icount_sleep": "off"})
