"""QEMU drivers: machine descriptions, the process owner, the KVM probe.

Knows processes and protocols (command lines, QMP, the serial console); knows
nothing about checkpoints or recordings.
"""

from engine.qemu.binaries import find_qemu, find_qemu_img, qemu_version
from engine.qemu.console import Console
from engine.qemu.machine import MachineSpec, gdb_tcp
from engine.qemu.process import EventStream, QemuProcess

__all__ = ["Console", "EventStream", "MachineSpec", "QemuProcess", "find_qemu",
           "find_qemu_img", "gdb_tcp", "qemu_version"]
