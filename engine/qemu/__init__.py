"""QEMU drivers: machine descriptions, the process owner, the KVM probe.

Knows processes and protocols (command lines, QMP, the serial console); knows
nothing about checkpoints or recordings.
"""

from engine.qemu.binaries import find_qemu, find_qemu_img, qemu_version
from engine.qemu.console import Console
from engine.qemu.kvm import KvmProbe, choose_accel, probe_kvm
from engine.qemu.machine import MachineSpec, gdb_tcp
from engine.qemu.process import EventStream, QemuProcess

__all__ = ["Console", "EventStream", "KvmProbe", "MachineSpec", "QemuProcess", "choose_accel",
           "find_qemu", "find_qemu_img", "gdb_tcp", "probe_kvm", "qemu_version"]
