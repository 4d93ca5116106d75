"""QEMU migration streams (the bytes ``savevm`` and ``migrate`` write) and qcow2 snapshot reading.

Knows bytes only: nothing here touches the page store or a QEMU process.
"""
