"""Recordings: the recorder (record/replay mode and live checkpoints) and the on-disk format.

* ``format``    the recording directory (manifest, append-only logs); knows no QEMU
* ``recorder``  :class:`Recorder`: a guest under record/replay, a checkpoint every interval
* ``live``      live checkpoints (``background-snapshot``): ``attach`` and ``LiveRecorder``
* ``markers``   guest markers (``sbmark``) placed at instruction counts
* ``events``    what recorders report while they run, and their summary
* ``pack``      one file to move a recording; ``open_any`` reads a directory or that file
* ``replaylog`` reads QEMU's replay log: where a recording ends, whether the log is complete
"""
