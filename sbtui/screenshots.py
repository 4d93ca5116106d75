"""Screenshots of the app for the README, and the scenarios the snapshot tests use.

``python -m sbtui.screenshots [OUT_DIR]`` (``make screenshots``) writes
``session.svg``, ``heatmap-zoomed.svg``, ``debugger.svg`` and ``light.svg``
(default ``screenshots/``) at 160x48 from a small **real** recording: the demo
guest running memchurn for a few seconds under record/replay, a checkpoint a
second (:func:`readme_recording` makes it on first use, about a minute, and
keeps it in the cache under ``screenshots/``). The debugger shot is a real
replay under gdb, stopped at a breakpoint on the kernel's ``ksys_write``.

The fake session (:mod:`sbtui.fake_session`) is used where a real recording
cannot serve:

* the snapshot tests (``tests/test_app_snapshots.py``) feed :data:`SCENARIOS`
  to ``snap_compare``: their baselines must be a pure function of the code,
  and a real recording differs from run to run (timing decides where the
  checkpoints fall);
* ``--fake`` writes the README shots from the fake session, on a machine
  without QEMU or gdb. It also shows what a small recording cannot: two
  thousand checkpoints on the timeline, and a 4 GiB guest in the heatmap.

Waits are bounded: a scenario that cannot reach its state raises.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from textual.pilot import Pilot

from sbtui.app import SbtuiApp
from sbtui.fake_session import FakeSession

SIZE = (160, 48)
SELECTED = 400        # a checkpoint in the fake recording's kernel-build phase
# The README recording: change RECIPE when the recipe changes, so that a
# recording made by an older one is not reused.
RECIPE = "memchurn-128m-1s-v1"


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


# -- the README, from a real recording -----------------------------------------

def readme_recording(say: Callable[[str], None] = print) -> Path:
    """A finished recording of the demo guest running memchurn (128 MiB, a
    checkpoint a second, the workload stopping after 16 guest seconds), from
    the cache, or made now (about a minute; the recorder's proofs included)."""
    from engine.guest import build_demo_guest
    from engine.paths import cache_dir
    from engine.qemu import MachineSpec
    from engine.recording.format import Recording
    from engine.recording.recorder import Recorder

    guest = build_demo_guest(progress=say)
    path = cache_dir() / "screenshots" / f"{guest.kernel.parent.name}-{RECIPE}"
    if (path / "recording.json").exists():
        try:
            m = Recording.open(path).manifest
            if m.status == "complete" and m.error is None:
                return path
        except Exception:   # damaged or half written: made again below
            pass
    shutil.rmtree(path, ignore_errors=True)
    work = path.with_name(path.name + ".part")
    shutil.rmtree(work, ignore_errors=True)
    say(f"recording the demo guest for the screenshots into {path} (about a minute)")
    spec = MachineSpec(memory_mib=128, kernel=str(guest.kernel), initrd=str(guest.initrd),
                       append=guest.append_for("memchurn", duration=16))
    summary = asyncio.run(Recorder(work, spec, interval=1.0, duration=180.0,
                                   guest_info={"demo": True, "workload": "memchurn"}).run())
    if summary.status != "complete":
        raise RuntimeError(f"the screenshot recording ended {summary.status}: {summary}")
    rec = Recording.open(work)
    if "system_map" not in rec.manifest.guest and guest.system_map:
        rec.add_guest_file("system_map", guest.system_map)
        rec.save_manifest()
    rec.close()
    work.rename(path)
    return path


def real_app(path: Path, theme: str = "sbtui-dark") -> SbtuiApp:
    from engine.recording.format import Recording
    from engine.session import RecordingSession
    return SbtuiApp(RecordingSession(Recording.open(path), name="demo: memchurn"), theme=theme)


def busiest_workload_interval(app: SbtuiApp) -> int:
    """The checkpoint closing the interval that dirtied the most pages while
    memchurn ran (after the guest's first marker, "guest-ready")."""
    rows = app.screen.rows
    markers = app.session.recording.markers()
    ready = markers[0].icount if markers else 0
    during = [r for r in rows[1:] if rows[r.index - 1].icount >= ready] or rows[1:] or rows
    return max(during, key=lambda r: r.pages_dirty).index


async def real_select(pilot: Pilot) -> int:
    app = pilot.app
    await wait_until(pilot, lambda: getattr(app.screen, "rows", None), "the checkpoints", 60)
    index = busiest_workload_interval(app)
    await select_checkpoint(pilot, index)
    return index


async def real_session(pilot: Pilot) -> None:
    await real_select(pilot)


async def real_heatmap_zoomed(pilot: Pilot) -> None:
    from sbtui.widgets.heatmap import Heatmap
    app = pilot.app
    index = await real_select(pilot)
    heatmap = app.screen.query_one(Heatmap)
    heatmap.focus()
    heatmap.show_marks = True
    # the 2 MiB of RAM with the most duplicate and zero pages: their marks show at this zoom
    marks = app.session.recording.page_marks(app.screen.rows[index].id)
    marked = sorted(set(marks.duplicate or ()) | set(marks.zero or ())) or list(heatmap.heat.dirty)
    blocks = Counter(p >> 9 for p in marked)
    best = max(blocks, key=blocks.__getitem__) if blocks else 0
    in_block = [p for p in marked if p >> 9 == best] or [0]
    target = in_block[len(in_block) // 2]
    heatmap.set_cursor_page(target)
    for _ in range(3):
        await pilot.press("plus")
    await pilot.pause()
    # centre it: a cursor below the view scrolls it to the bottom row, then back up
    heatmap.set_cursor_page(target + heatmap.grid_rows // 2 * heatmap.pages_per_cell * heatmap.columns)
    heatmap.set_cursor_page(target)
    await pilot.pause()


async def real_debugger(pilot: Pilot) -> None:
    from engine.api import StopReason
    from sbtui.screens.debugger import DebuggerScreen
    app = pilot.app
    await wait_until(pilot, lambda: getattr(app.screen, "rows", None), "the checkpoints", 60)
    # a checkpoint after which the guest still writes to its console
    rec = app.session.rec
    total = len(rec.console_bytes())
    start = [cp for cp in rec.checkpoints() if cp.console_offset <= total - 400][-1].index
    await select_checkpoint(pilot, start)
    await pilot.press("enter")
    await wait_until(pilot, lambda: isinstance(app.screen, DebuggerScreen) and app.screen.snapshot
                     and not app.screen.busy, "the replay's registers", 120)
    screen = app.screen
    screen.run_op("breakpoint", lambda d, p: d.add_breakpoint("ksys_write") and None)
    await wait_until(pilot, lambda: not screen.busy and screen.snapshot.breakpoints, "the breakpoint")
    for _ in range(4):      # a few writes in: the replay console has something to show
        await pilot.press("c")
        await wait_until(pilot, lambda: not screen.busy and screen.snapshot.stop is not None
                         and screen.snapshot.stop.reason is StopReason.BREAKPOINT,
                         "the breakpoint hit", 120)
    for _ in range(3):
        icount = screen.snapshot.icount
        await pilot.press("i")
        await wait_until(pilot, lambda: not screen.busy and screen.snapshot.icount == icount + 1,
                         "stepi", 60)
    await pilot.pause()


async def real_light(pilot: Pilot) -> None:
    from sbtui.widgets.heatmap import Heatmap
    index = await real_select(pilot)
    await pilot.press("r", *["up"] * min(3, index))       # a range of intervals
    heatmap = pilot.app.screen.query_one(Heatmap)
    await wait_until(pilot, lambda: heatmap.heat.intervals == min(3, index) + 1, "the range")
    await pilot.pause()


def readme_scenarios(path: Path) -> dict[str, tuple[Callable[[], SbtuiApp],
                                                     Callable[[Pilot], Awaitable[None]]]]:
    return {
        "session": (lambda: real_app(path), real_session),
        "heatmap-zoomed": (lambda: real_app(path), real_heatmap_zoomed),
        "debugger": (lambda: real_app(path), real_debugger),
        "light": (lambda: real_app(path, "sbtui-light"), real_light),
    }


async def take(name: str, out: Path, scenarios=None) -> Path:
    factory, scenario = (scenarios or SCENARIOS)[name]
    app = factory()
    async with app.run_test(size=SIZE) as pilot:
        await scenario(pilot)
        path = Path(app.save_screenshot(filename=f"{name}.svg", path=str(out)))
        await app.action_quit()     # stops the replay's QEMU and gdb before the next shot
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    fake = "--fake" in args
    args = [a for a in args if a != "--fake"]
    out = Path(args[0]) if args else Path(__file__).resolve().parent.parent / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    scenarios = SCENARIOS if fake else readme_scenarios(readme_recording())
    for name in scenarios:
        path = asyncio.run(take(name, out, scenarios))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
