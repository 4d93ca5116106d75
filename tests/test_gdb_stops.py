"""Stop records and location/target spellings, without gdb or QEMU.

The payloads are the ones gdb 13 printed against QEMU's gdbstub (copied from
the integration runs), so the mapping to the facade's ``StopReason`` and the
one-line descriptions are pinned here cheaply.
"""

from __future__ import annotations

import pytest

from engine.api import StopEvent, StopReason
from engine.errors import UsageError
from engine.gdb import GdbStop, MiStop
from engine.gdb.debugger import _location, _remote_spec

FRAME = {"addr": "0xffffffff810fb980", "func": "do_idle", "args": [], "arch": "i386:x86-64"}


def stop(payload, reverse=False) -> GdbStop:
    return GdbStop.from_mi(MiStop(7, payload), reverse=reverse)


def test_breakpoint_hit():
    s = stop({"reason": "breakpoint-hit", "disp": "keep", "bkptno": "1", "frame": FRAME,
              "thread-id": "1", "stopped-threads": "all"})
    assert (s.reason, s.pc, s.function, s.breakpoint, s.seq) == (
        "breakpoint-hit", 0xffffffff810fb980, "do_idle", 1, 7)
    assert s.stop_reason is StopReason.BREAKPOINT
    assert s.describe() == "breakpoint 1, do_idle"
    assert s.to_event(1234) == StopEvent(StopReason.BREAKPOINT, 1234, 0xffffffff810fb980,
                                         "breakpoint 1, do_idle")


def test_watchpoint_trigger_keeps_old_and_new_values():
    s = stop({"reason": "watchpoint-trigger",
              "wpt": {"number": "2", "exp": "*(unsigned long *)&jiffies"},
              "value": {"old": "4294892697", "new": "4294892698"},
              "frame": dict(FRAME, func="tick_do_update_jiffies64")})
    assert s.stop_reason is StopReason.WATCHPOINT and s.breakpoint == 2
    assert (s.old_value, s.new_value) == ("4294892697", "4294892698")
    assert s.describe() == ("watchpoint 2: *(unsigned long *)&jiffies "
                            "(4294892697 -> 4294892698), at tick_do_update_jiffies64")


def test_read_watchpoint_has_only_a_value():
    s = stop({"reason": "read-watchpoint-trigger", "hw-rwpt": {"number": "3", "exp": "x"},
              "value": {"value": "5"}, "frame": FRAME})
    assert s.stop_reason is StopReason.WATCHPOINT and s.breakpoint == 3
    assert s.old_value is None and s.new_value == "5"
    assert "(= 5)" in s.describe()


def test_steps_interrupts_and_the_attach_stop():
    assert stop({"reason": "end-stepping-range", "frame": FRAME}).stop_reason is StopReason.STEP
    assert stop({"reason": "function-finished", "frame": FRAME}).stop_reason is StopReason.STEP
    sigint = stop({"reason": "signal-received", "signal-name": "SIGINT",
                   "signal-meaning": "Interrupt", "frame": dict(FRAME, func="native_safe_halt")})
    assert sigint.stop_reason is StopReason.SIGNAL and sigint.signal == "SIGINT"
    assert sigint.describe() == "SIGINT, at native_safe_halt"
    attach = stop({"frame": {"addr": "0x000000000000fff0", "func": "??", "args": []}})
    assert (attach.reason, attach.pc, attach.function) == ("", 0xfff0, "")
    assert attach.describe() == "stopped, at 0xfff0"


def test_no_history_is_the_start_when_reversing_and_the_end_otherwise():
    back = stop({"reason": "no-history", "frame": FRAME}, reverse=True)
    forward = stop({"reason": "no-history", "frame": FRAME})
    assert back.stop_reason is StopReason.START and back.reverse
    assert forward.stop_reason is StopReason.END
    assert back.describe().startswith("start of the replay history")


@pytest.mark.parametrize("given,expected", [
    ("do_idle", "*do_idle"),
    ("do_idle.isra.0", "*'do_idle.isra.0'"),
    (0xffffffff81000000, "*0xffffffff81000000"),
    ("0xffffffff81000000", "*0xffffffff81000000"),
    ("*$pc+4", "*$pc+4"),
    ("file.c:123", "file.c:123"),
])
def test_locations_mean_exact_addresses(given, expected):
    assert _location(given) == expected


def test_empty_location_is_a_usage_error():
    with pytest.raises(UsageError):
        _location("  ")


def test_gdbstub_addresses_in_gdbs_and_qemus_spellings(tmp_path):
    sock = tmp_path / "gdb.sock"
    sock.write_text("")  # only its existence is checked
    assert _remote_spec("127.0.0.1:1234") == "127.0.0.1:1234"
    assert _remote_spec("tcp:127.0.0.1:1234") == "127.0.0.1:1234"
    assert _remote_spec(str(sock)) == str(sock)
    assert _remote_spec(f"unix:{sock},server=on,wait=off") == str(sock)
    assert _remote_spec(f"unix:path={sock},server=on") == str(sock)
    with pytest.raises(UsageError, match="no gdbstub socket"):
        _remote_spec(str(tmp_path / "missing.sock"))
    with pytest.raises(UsageError, match="HOST:PORT"):
        _remote_spec("localhost")
