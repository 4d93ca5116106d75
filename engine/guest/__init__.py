"""The demo guest: a Debian kernel and our own initramfs with deterministic workloads.

``build_demo_guest()`` returns :class:`GuestArtifacts` (kernel, initrd,
System.map, default command line, workload names), built once and then served
from the cache. Booting it prints a line starting with
:data:`READY_LINE_PREFIX` (``sbtui-guest: ready workload=NAME``) on ttyS0.
"""

from engine.guest.builder import (
    FINISHED_LINE_PREFIX,
    MARK_LINE_PREFIX,
    READY_LINE_PREFIX,
    GuestArtifacts,
    build_demo_guest,
)

__all__ = [
    "FINISHED_LINE_PREFIX",
    "MARK_LINE_PREFIX",
    "READY_LINE_PREFIX",
    "GuestArtifacts",
    "build_demo_guest",
]
