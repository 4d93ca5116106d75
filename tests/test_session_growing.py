"""engine.session's reader of a recording that a recorder is still filling.

The app opens a live recording as soon as its directory exists, before the
recorder has stored a checkpoint. The reader must not create the page store
then: the recorder creates it itself, and a reader that got there first made
the recorder fail with "not an sbtui store (no FORMAT file)" (seen in
``sbtui demo``: the recording failed a few seconds in).
"""

from __future__ import annotations

import io
import time

from engine.recording.format import CheckpointEntry, Manifest, Recording
from engine.session import DiskRecordingView
from test_store_support import build_stream, page


def test_a_reader_of_a_new_recording_leaves_the_store_to_the_recorder(tmp_path):
    path = tmp_path / "rec"
    man = Manifest(kind="record", spec={"memory_mib": 16, "kernel": "guest/kernel-x",
                                        "icount_shift": 2, "rr": "record", "rrfile": "replay.log"},
                   qemu_version="10.0.2", interval_s=1.0, created=time.time())
    writer = Recording.create(path, man)
    view = DiskRecordingView(Recording.open(path))

    assert view.checkpoints() == []
    assert view.status().checkpoints == 0
    assert not (path / "store").exists()

    # the recorder creates the store with its first checkpoint; the reader then sees it
    stream = build_stream([("pc.ram", 4 * 4096)], [("pc.ram", 0, page("a")), ("pc.ram", 4096, None)])
    info = writer.store.import_stream(io.BytesIO(stream), name="ck0", meta={"index": 0})
    writer.append_checkpoint(CheckpointEntry(index=0, store_id=info.id, icount=0, wall_time=0.0,
                                             guest_time_ns=0, downtime_ms=1.0, console_offset=0))
    rows = view.checkpoints()
    assert [r.id for r in rows] == [info.id]
    assert rows[0].pages_dirty == info.stats.dirty_pages
