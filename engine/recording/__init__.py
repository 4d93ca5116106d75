"""Recordings: the recorder (record mode and live checkpoints) and the on-disk format.

``format`` knows the directory layout and nothing of QEMU processes;
``recorder`` drives QEMU and the store to fill one.
"""
