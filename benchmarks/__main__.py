"""Run every ``benchmarks/bench_*.py`` (or the ones named: ``store``, ``bench_ui``...).

Each module's ``main()`` runs in turn; a failing one is reported and the rest
still run. Exit status 1 if any failed, 2 for an unknown name.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path


def discover() -> list[str]:
    here = Path(__file__).resolve().parent
    return sorted(p.stem for p in here.glob("bench_*.py"))


def main(argv: list[str]) -> int:
    known = discover()
    wanted = []
    for name in argv:
        mod = name if name.startswith("bench_") else f"bench_{name}"
        mod = mod.removesuffix(".py")
        if mod not in known:
            print(f"benchmarks: no benchmark {name!r}; known: {', '.join(known)}", file=sys.stderr)
            return 2
        wanted.append(mod)
    failed = []
    for mod in wanted or known:
        print(f"=== {mod} ===", flush=True)
        t0 = time.monotonic()
        try:
            importlib.import_module(f"benchmarks.{mod}").main()
        except Exception:
            traceback.print_exc()
            failed.append(mod)
        print(f"=== {mod}: {time.monotonic() - t0:.1f} s ===\n", flush=True)
    if failed:
        print(f"benchmarks failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
