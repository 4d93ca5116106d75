"""Screenshots of the app for the README, and the scenarios the snapshot tests use.

``python -m sbtui.screenshots [OUT_DIR]`` writes ``session.svg``,
``heatmap-zoomed.svg``, ``debugger.svg`` and ``light.svg`` (default
``screenshots/``) at 160x48 from a fixed fake session, so the output only
changes when the app does. Each scenario is an ``(app factory, run_before)``
pair; ``tests/test_app_snapshots.py`` feeds the same pairs to ``snap_compare``.
Waits are bounded: a scenario that cannot reach its state raises.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from textual.pilot import Pilot

from sbtui.app import SbtuiApp
from sbtui.fake_session import FakeSession

SIZE = (160, 48)
SELECTED = 400        # a checkpoint in the fake recording's kernel-build phase


async def wait_until(pilot: Pilot, condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"screenshot scenario: timed out waiting for {what}")
        await pilot.pause(0.02)


def make_app(theme: str = "sbtui-dark") -> SbtuiApp:
    return SbtuiApp(FakeSession(2000, seed=1), theme=theme)


async def select_checkpoint(pilot: Pilot, index: int = SELECTED) -> None:
    from sbtui.widgets.checkpoint_table import CheckpointTable
    from sbtui.widgets.heatmap import Heatmap
    app = pilot.app
    await wait_until(pilot, lambda: getattr(app.screen, "rows", None), "the checkpoints")
    app.screen.query_one(CheckpointTable).cursor = index
    heatmap = app.screen.query_one(Heatmap)
    await wait_until(pilot, lambda: heatmap.heat.label == f"interval #{index}", "the heatmap")
    await pilot.pause()


async def session(pilot: Pilot) -> None:
    await select_checkpoint(pilot)


async def heatmap_zoomed(pilot: Pilot) -> None:
    from sbtui.widgets.heatmap import Heatmap
    await select_checkpoint(pilot)
    heatmap = pilot.app.screen.query_one(Heatmap)
    heatmap.focus()
    heatmap.show_marks = True
    heatmap.set_cursor_page(0x4000 + 0x130)     # the slab region
    for _ in range(4):
        await pilot.press("plus")
    await pilot.press("right", "down")
    await pilot.pause()


async def debugger(pilot: Pilot) -> None:
    from sbtui.screens.debugger import DebuggerScreen
    await select_checkpoint(pilot)
    app = pilot.app
    await pilot.press("enter")
    await wait_until(pilot, lambda: isinstance(app.screen, DebuggerScreen) and app.screen.snapshot,
                     "the replay's registers")
    screen = app.screen
    screen.run_op("breakpoint", lambda d, p: d.add_breakpoint("do_timer") and None)
    await wait_until(pilot, lambda: not screen.busy and screen.snapshot.breakpoints, "the breakpoint")
    await pilot.press("c")
    await wait_until(pilot, lambda: not screen.busy and screen.snapshot.stop is not None, "the stop")
    for _ in range(3):
        icount = screen.snapshot.icount
        await pilot.press("i")
        await wait_until(pilot, lambda: not screen.busy and screen.snapshot.icount == icount + 1, "stepi")
    await pilot.pause()


async def light(pilot: Pilot) -> None:
    await select_checkpoint(pilot)


SCENARIOS: dict[str, tuple[Callable[[], SbtuiApp], Callable[[Pilot], Awaitable[None]]]] = {
    "session": (make_app, session),
    "heatmap-zoomed": (make_app, heatmap_zoomed),
    "debugger": (make_app, debugger),
    "light": (lambda: make_app("sbtui-light"), light),
}


async def take(name: str, out: Path) -> Path:
    factory, scenario = SCENARIOS[name]
    app = factory()
    async with app.run_test(size=SIZE) as pilot:
        await scenario(pilot)
        path = Path(app.save_screenshot(filename=f"{name}.svg", path=str(out)))
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else Path(__file__).resolve().parent.parent / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    for name in SCENARIOS:
        path = asyncio.run(take(name, out))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
