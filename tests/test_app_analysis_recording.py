"""The writeset analysis run from the app on a real recording (``demo_recording``:
the demo guest running memchurn until it powers off), through Pilot: ``A`` starts
``simulate`` with one local process, the progress panel counts the intervals,
and when it ends the checkpoint table shows each interval's working set and
the heatmap its sub-steps, equal to what the engine stored. No QEMU outlives
the run. The run takes about a minute on this project's machines (measured
with ``sbtui simulate REC --analysis writeset --jobs 1``: 51 s under load), so
it happens once and every assertion reads its outcome.
"""

from __future__ import annotations

import shutil
import time

import pytest

from engine.recording.format import Recording
from engine.session import RecordingSession
from sbtui.app import SbtuiApp
from sbtui.widgets.checkpoint_table import CheckpointTable, format_fraction
from sbtui.widgets.heatmap import Heatmap
from sbtui.widgets.simulation_progress import SimulationPanel
from test_recording_support import tagged_qemus

pytestmark = pytest.mark.qemu

SIZE = (160, 48)
RUN_S = 480.0          # six replays in one process on a loaded machine, with room


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SBTUI_CONFIG_DIR", str(tmp_path / "config"))


async def wait_for(pilot, condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.1)


def line_text(widget, y: int) -> str:
    return "".join(seg.text for seg in widget.render_line(y))


async def test_writeset_run_from_the_app_shows_working_sets_of_every_interval(demo_recording, tmp_path):
    path = tmp_path / demo_recording.name
    shutil.copytree(demo_recording, path)       # simulate stores its results in the recording
    session = RecordingSession(Recording.open(path))
    app = SbtuiApp(session)
    counts = []
    with tagged_qemus(timeout=30):
        async with app.run_test(size=SIZE) as pilot:
            screen = app.screen
            table = screen.query_one(CheckpointTable)
            await wait_for(pilot, lambda: screen.rows, 30, "the checkpoints")
            assert not table.working_sets       # nothing stored yet
            screen.analysis_jobs = 1
            panel = screen.query_one(SimulationPanel)
            await pilot.press("A")
            assert panel.running and panel.has_class("-visible")

            def finished() -> bool:
                if panel.progress is not None:
                    counts.append((panel.progress.done, panel.progress.total))
                return panel.state in ("done", "failed", "cancelled") or (
                    panel.state == "idle" and not panel.running)
            await wait_for(pilot, finished, RUN_S, "the writeset analysis to end")
            detail = str(panel.query_one("#sim-detail").render())
            assert panel.state == "done", detail
            await wait_for(pilot, lambda: table.working_sets, 30, "the working sets")

            stored = {w.interval: w for w in session.recording.writesets()}
            rows = screen.rows
            intervals = len(rows)                     # the last one runs to the end of the log
            assert sorted(stored) == list(range(intervals))
            assert counts and counts[-1][1] == intervals
            assert all(done <= total for done, total in counts)
            # row k: the interval checkpoint k closes (the last interval has no row of its own)
            shown = {k: f for k, f in table.working_sets.items() if k < len(rows)}
            assert shown == {k: stored[k - 1].working_set_fraction for k in range(1, len(rows))}
            assert all(0 < f < 1 for f in table.working_sets.values())
            assert "ws%" in line_text(table, 0)
            assert format_fraction(table.working_sets[1]) in line_text(table, 2)

            # the heatmap shows interval 0's first sub-step
            screen.select(1)
            heatmap = screen.query_one(Heatmap)
            await wait_for(pilot, lambda: heatmap.writeset is not None, 30, "the writeset of #1")
            await pilot.press("w", "right_square_bracket")
            assert list(heatmap.heat.dirty) == list(stored[0].steps[0].pages)
            assert "sub-step 1/" in line_text(heatmap, heatmap.grid_rows + 1)
    session.close()
