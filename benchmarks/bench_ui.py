"""UI benchmarks: heatmap redraw for a 4 GiB guest, timeline/table update for
10,000 checkpoints. ``main()`` prints each figure next to a baseline measured in
the same run (a plain pass over the same data), and the ratio.

Run alone with ``python -m benchmarks.bench_ui``; ``python -m benchmarks`` runs it
with the others. Budgets from issue #6: heatmap redraw <= 50 ms.
"""

from __future__ import annotations

import asyncio
import time
from array import array

PAGES = 1 << 20
CHECKPOINTS = 10_000


def best_of(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


async def measure() -> dict[str, float]:
    from textual.app import App, ComposeResult

    from sbtui.fake_session import FakeSession
    from sbtui.messages import HeatLayer
    from sbtui.themes import FALLBACK_THEME, VARIABLE_DEFAULTS
    from sbtui.widgets.checkpoint_table import CheckpointTable
    from sbtui.widgets.heatmap import Heatmap
    from sbtui.widgets.timeline import Timeline

    session = FakeSession(CHECKPOINTS, ram_pages=PAGES)
    rows = session.recording.checkpoints()
    machine = session.recording.machine
    every_page = array("I", range(PAGES))                 # worst case: all dirty
    typical = session.recording.dirty_pages(rows[5500].id)  # a memstress interval

    class Bench(App):
        CSS_PATH = "../sbtui/sbtui.tcss"

        def get_theme_variable_defaults(self) -> dict[str, str]:
            return dict(VARIABLE_DEFAULTS)

        def compose(self) -> ComposeResult:
            yield Timeline(id="timeline")
            yield CheckpointTable(id="checkpoints")
            yield Heatmap(machine, id="heatmap")

    app = Bench()
    app.register_theme(FALLBACK_THEME)
    app.theme = FALLBACK_THEME.name
    out: dict[str, float] = {}
    async with app.run_test(size=(180, 50)) as pilot:
        await pilot.pause()
        heatmap = app.query_one(Heatmap)
        heatmap.styles.height = 40
        await pilot.pause()
        heatmap.set_layer(HeatLayer(every_page, 1, every_page[::9], every_page[4::6]))
        heatmap.show_marks = True
        out["heatmap_all_dirty_s"] = best_of(heatmap.redraw_all)
        heatmap.set_layer(HeatLayer(typical))
        out["heatmap_typical_s"] = best_of(heatmap.redraw_all)
        heatmap.zoom_level = heatmap.max_zoom
        out["heatmap_single_pages_s"] = best_of(heatmap.redraw_all)
        out["heatmap_baseline_s"] = best_of(lambda: sum(1 for _ in every_page))

        table = app.query_one(CheckpointTable)
        timeline = app.query_one(Timeline)
        def update() -> None:
            table.set_rows(list(rows))
            timeline.set_rows(table.rows)
            timeline.bins()
            for y in range(table.size.height):
                table.render_line(y)
            for y in range(timeline.size.height):
                timeline.render_line(y)
        out["timeline_update_s"] = best_of(update)
        out["timeline_baseline_s"] = best_of(lambda: [(r.index, r.icount, r.pages_dirty) for r in rows])
        t0 = time.perf_counter()
        table.set_rows(list(rows))
        timeline.set_rows(table.rows)
        await pilot.pause()
        out["timeline_first_paint_s"] = time.perf_counter() - t0
    session.close()
    return out


def main() -> None:
    r = asyncio.run(measure())
    ms = lambda s: f"{s * 1000:8.2f} ms"  # noqa: E731
    base = r["heatmap_baseline_s"]
    print(f"ui: heatmap redraw, {PAGES:,} pages, all dirty + marks: {ms(r['heatmap_all_dirty_s'])}"
          f"  ({r['heatmap_all_dirty_s'] / base:.2f}x one Python pass over the pages: {ms(base)}; budget 50 ms)")
    print(f"ui: heatmap redraw, typical interval:                {ms(r['heatmap_typical_s'])}"
          f"  ({r['heatmap_typical_s'] / base:.2f}x baseline)")
    print(f"ui: heatmap redraw, zoomed to single pages:          {ms(r['heatmap_single_pages_s'])}"
          f"  ({r['heatmap_single_pages_s'] / base:.2f}x baseline)")
    tb = r["timeline_baseline_s"]
    print(f"ui: timeline+table update, {CHECKPOINTS:,} checkpoints:     {ms(r['timeline_update_s'])}"
          f"  ({r['timeline_update_s'] / tb:.2f}x building a list of {CHECKPOINTS:,} tuples: {ms(tb)})")
    print(f"ui: timeline+table first paint through Textual:      {ms(r['timeline_first_paint_s'])}")


if __name__ == "__main__":
    main()
