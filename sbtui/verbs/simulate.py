"""``sbtui simulate REC --analysis NAME [--jobs N | --scheduler ADDR] [--json]``.

Replays every interval of a recording at the same time and runs an analysis
on each (:mod:`engine.parallel`): ``verify`` (as ``sbtui verify``) or
``writeset`` (pages changed per sub-step of ``--step`` instructions, and each
interval's working set). Intervals run in N local processes (``--jobs``,
default 1) or on a Dask cluster (``--scheduler tcp://HOST:PORT``).

While it runs, a progress bar on stderr shows intervals done, running and
failed and the projected time left (one line per event when stderr is not a
terminal). The results are stored with the recording
(``REC/analyses/NAME.msgpack``), where the app finds them. Exits 0 when every
interval verified, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time

from engine.errors import UsageError

BAR = 24
# The analyses of engine.parallel.analyses, named here so that building the
# parser does not import the engine's parallel machinery.
ANALYSES = {
    "verify": "replay each interval and compare its end with the next checkpoint (as 'sbtui verify')",
    "writeset": "pages whose content changed in each sub-step of every interval "
                "(finer heatmap, working-set size)",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="replay every interval in parallel with an analysis",
                       description="Replay every interval of a recording at the same time (local "
                                   "processes or a Dask cluster) and run an analysis on each; the "
                                   "results are stored with the recording.")
    p.add_argument("recording", metavar="REC", help="recording directory or packed file")
    p.add_argument("--analysis", "-a", required=True, choices=sorted(ANALYSES),
                   help="; ".join(f"{name}: {text}" for name, text in ANALYSES.items()))
    where = p.add_mutually_exclusive_group()
    where.add_argument("--jobs", "-j", type=int, default=None, metavar="N",
                       help="intervals replayed at once, in N local processes (default 1)")
    where.add_argument("--scheduler", metavar="ADDR",
                       help="a Dask scheduler, e.g. tcp://HOST:8786 (workers need QEMU and sbtui)")
    p.add_argument("--interval", type=int, action="append", metavar="K",
                   help="only interval K (repeatable); stored results of the others are kept")
    p.add_argument("--step", type=int, metavar="INSTRUCTIONS",
                   help="writeset: instructions per sub-step (default: an average interval in "
                        "about 16 steps)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.set_defaults(func=run_simulate)


class ProgressBar:
    """Intervals done/running/failed and the time left, on stderr (``sbtui
    simulate`` and ``sbtui verify``; ``label`` starts each message line)."""

    def __init__(self, stream=None, label: str = "simulate"):
        self.stream = stream or sys.stderr
        self.label = label
        self.tty = self.stream.isatty()
        self.drawn = False
        self.last_line = ""

    def __call__(self, p) -> None:
        eta = "--" if p.eta_s is None else _duration(p.eta_s)
        filled = int(round(BAR * p.fraction))
        bar = "#" * filled + "-" * (BAR - filled)
        line = (f"[{bar}] {p.done}/{p.total} done, {p.running} running, {p.failed} failed, "
                f"{_duration(p.elapsed_s)} elapsed, about {eta} left")
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns
            if p.message and not p.message.endswith("started") and "started on" not in p.message:
                self.stream.write("\r\x1b[K" + f"{self.label}: {p.message}"[:width] + "\n")
            self.stream.write("\r\x1b[K" + line[:width - 1])
            self.drawn = True
        elif p.message:
            self.stream.write(f"{self.label}: {p.message}\n{self.label}: {line}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _duration(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def run_simulate(args: argparse.Namespace) -> int:
    from engine.parallel import simulate
    from engine.parallel.local import LocalScheduler
    from engine.recording.pack import open_any

    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
    if args.step is not None and args.step < 1:
        raise UsageError(f"--step must be a positive number of instructions, got {args.step}")
    if args.step is not None and args.analysis != "writeset":
        raise UsageError("--step is for --analysis writeset")
    rec = open_any(args.recording)
    params = {"step": args.step} if args.step else {}
    bar = ProgressBar()
    try:
        if args.scheduler:
            from engine.parallel.dask import DaskScheduler
            with DaskScheduler(args.scheduler) as scheduler:
                report = simulate(rec, args.analysis, scheduler, params=params,
                                  only=args.interval, progress=bar)
        else:
            report = simulate(rec, args.analysis, LocalScheduler(args.jobs or 1), params=params,
                              only=args.interval, progress=bar)
    finally:
        bar.close()
        rec.close()
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        _print_report(report)
    return 0 if not report.failed else 1


def _print_report(report) -> None:
    writeset = report.analysis == "writeset"
    for r in report.results:
        line = f"interval {r.index:4d}  {r.status:9s}  {r.detail}"
        if writeset and r.output.get("ram_pages"):
            ws, total = r.output.get("working_set", 0), r.output["ram_pages"]
            line += (f"; working set {ws} pages ({100 * ws / total:.1f} % of RAM) in "
                     f"{len(r.output.get('steps', []))} steps")
        print(line)
    started = time.strftime("%H:%M:%S", time.localtime(report.created - report.wall_s))
    print(f"{report.verified} of {report.intervals} intervals verified in {report.wall_s:.1f} s "
          f"on {report.scheduler} (started {started})"
          + (f"; failed: {', '.join(map(str, report.failed))}" if report.failed else ""))
