"""Guest markers: parsing the debug-console lines ``sbmark`` writes, and placing them
at an instruction count.

``sbmark TEXT`` (guest-tools/src/mark.c) reads the guest's time stamp counter
and then writes ``@<16 hex digits> TEXT\\n`` to QEMU's debug console port
0x402 (``-device isa-debugcon``), which the recorder keeps as
``debugcon.out``. Other writers of that port (SeaBIOS logs there before the
kernel starts; ``sbdump``) write lines without the ``@`` prefix, which are
not markers.

From guest time to instructions (QEMU 10, TCG with ``-icount shift=S``): the
guest's TSC is QEMU's virtual clock, ``icount_get() = (icount << S) + bias``
(``cpus_get_elapsed_ticks`` -> ``icount_get`` in accel/tcg; the guest kernel
does not write the TSC, so the TSC offset is 0). The ``bias`` changes only
while every vCPU is idle (the clock "warps" over idle time). At each
checkpoint the recorder knows both the instruction count and the virtual
clock (the snapshot's ``vm_clock``), hence the bias there. For a marker
between checkpoints k and k+1:

* if the bias did not change between them, the guest never idled in that
  interval and ``icount = (tsc - bias) >> S`` exactly (also checked:
  ``tsc - bias`` is a multiple of ``1 << S``);
* otherwise the marker lies between the counts that the two biases give;
  it is stored with ``exact=False``, ``icount`` the lower and
  ``icount_max`` the upper bound (both clipped to the interval).

A marker after the last checkpoint uses the last bias (``exact=False``: no
later checkpoint can confirm it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MARK_RE = re.compile(rb"^@([0-9a-f]{16}) (.*)$")


@dataclass(frozen=True)
class RawMark:
    """One marker line as the guest wrote it: its TSC and text."""

    tsc: int
    text: str


@dataclass(frozen=True)
class ClockPoint:
    """A checkpoint's instruction count and virtual clock."""

    icount: int
    vclock_ns: int


class DebugconReader:
    """Reads ``debugcon.out`` incrementally; hands out complete marker lines.

    A line still being written (no newline yet) stays until its end arrives.
    """

    def __init__(self, path):
        self.path = path
        self._offset = 0
        self._partial = b""

    def poll(self) -> list[RawMark]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        if not data:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [m for m in (parse_line(line) for line in lines) if m is not None]


def parse_line(line: bytes) -> RawMark | None:
    m = MARK_RE.match(line.rstrip(b"\r"))
    if m is None:
        return None
    return RawMark(int(m.group(1), 16), m.group(2).decode("utf-8", "replace"))


def bias(point: ClockPoint, shift: int) -> int:
    return point.vclock_ns - (point.icount << shift)


@dataclass(frozen=True)
class Placement:
    icount: int
    exact: bool
    icount_max: int | None = None


def place(tsc: int, shift: int, before: ClockPoint, after: ClockPoint | None) -> Placement:
    """Where a marker with guest time ``tsc`` lies, given the checkpoints around it.

    ``after`` is None for a marker past the last checkpoint.
    """
    b0 = bias(before, shift)
    upper = max(before.icount, (tsc - b0) >> shift)
    if after is None:
        return Placement(upper, False, None)
    upper = min(upper, after.icount)
    b1 = bias(after, shift)
    if b1 == b0:
        exact = (tsc - b0) % (1 << shift) == 0 and before.icount <= (tsc - b0) >> shift <= after.icount
        return Placement(upper, exact, None if exact else upper)
    lower = min(after.icount, max(before.icount, (tsc - b1) >> shift))
    if lower == upper:
        return Placement(lower, True, None)
    return Placement(lower, False, upper)
