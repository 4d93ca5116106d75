"""Checkpoint-store benchmark on real snapshots of the demo guest.

For each guest size (256 MiB, 1 GiB) and workload (``memchurn``, ``compress``)
it boots the demo guest under TCG, takes 20 ``savevm`` snapshots about a second
apart into a qcow2 (as the recorder does), extracts the 20 migration streams
and measures, in the same run:

* size: the store on disk vs the raw streams and vs QEMU's own qcow2 holding
  the same snapshots (target: store <= 1/5 of the qcow2);
* import time per checkpoint vs reading + ``lz4.frame.compress`` of the same
  raw stream (target: ratio <= 1);
* export time per checkpoint (to a file) vs QEMU's ``loadvm`` of the same
  snapshot from the qcow2 (target: ratio < 1);
* peak memory (``ru_maxrss`` of the importing / exporting process, and of an
  idle interpreter with the same modules loaded) vs guest RAM.

Run: ``python -m benchmarks store`` (all four cases, several minutes), or
``python -m benchmarks.bench_store --sizes 256 --workloads memchurn
--snapshots 5`` for a quick look. ``SBTUI_BENCH_STORE_ARGS`` passes the same
options through ``python -m benchmarks``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _tests_helpers():
    sys.path.insert(0, str(REPO / "tests"))
    import streams   # the codec engineer's QEMU drivers for real savevm streams
    return streams


# -- worker processes (so ru_maxrss is the store's alone) ---------------------

def _worker(argv: list[str]) -> None:
    import resource

    from engine.store import Store
    mode, store_path, *rest = argv
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    with Store.open(store_path, create=(mode == "import")) as store:
        if mode == "import":
            for path in rest:
                t0 = time.perf_counter()
                with open(path, "rb") as src:
                    store.import_stream(src, name=Path(path).name)
                times.append(time.perf_counter() - t0)
        else:
            out_dir = Path(rest[0])
            for info in store.checkpoints():
                target = out_dir / f"export-{info.id}.mig"
                t0 = time.perf_counter()
                with open(target, "wb") as dst:
                    store.export_stream(info.id, dst)
                times.append(time.perf_counter() - t0)
                target.unlink()
    json.dump({"times": times, "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               "base_rss_kib": base_rss}, sys.stdout)


def _run_worker(*args: str) -> dict:
    res = subprocess.run([sys.executable, "-m", "benchmarks.bench_store", "--worker", *args],
                         cwd=REPO, capture_output=True, text=True, timeout=3600)
    if res.returncode:
        raise RuntimeError(f"worker {args[0]} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout)


# -- one case -------------------------------------------------------------------

def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def _loadvm_times(streams, img, names: list[str], tmp: Path) -> list[float]:
    argv = img.spec.argv() + streams.vmstate_node_args(img.image) + ["-S"]
    times = []
    with streams.Qemu(argv, tmp, "loadvm") as vm:
        for name in names:
            t0 = time.perf_counter()
            vm.hmp(f"loadvm {name}")
            times.append(time.perf_counter() - t0)
    return times


def run_case(tmp: Path, guest, mem_mib: int, workload: str, snapshots: int, interval: float) -> dict:
    import lz4.frame

    from engine.store import Store
    from engine.stream.qcow2 import open_vmstate
    streams = _tests_helpers()

    t0 = time.monotonic()
    img = streams.make_savevm_qcow2(
        tmp / "vm", machine="q35", memory_mib=mem_mib, kernel=guest.kernel, initrd=guest.initrd,
        append=guest.append_for(workload, duration=3600), blob_mib=0, snapshots=snapshots,
        interval_s=interval, ready="sbtui-guest: ready", name=f"{workload}{mem_mib}")
    make_s = time.monotonic() - t0

    raw_dir = tmp / "raw"
    raw_dir.mkdir()
    raws = []
    for k, name in enumerate(img.names):
        path = raw_dir / f"{k:02d}-{name}.mig"
        with open_vmstate(img.image, name) as src, open(path, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        raws.append(path)
    raw_bytes = sum(p.stat().st_size for p in raws)

    lz4_times, lz4_bytes = [], 0
    for path in raws:
        t0 = time.perf_counter()
        packed = lz4.frame.compress(path.read_bytes())
        lz4_times.append(time.perf_counter() - t0)
        lz4_bytes += len(packed)
        del packed

    store_path = tmp / "store"
    imp = _run_worker("import", str(store_path), *map(str, raws))
    with Store.open(store_path) as store:
        st = store.stats()
        per = [i.stats for i in store.checkpoints()]
        # byte identity of every export, checked here once (the timed run writes and drops)
        for info, path in zip(store.checkpoints(), raws):
            out = io.BytesIO()
            store.export_stream(info.id, out)
            if out.getvalue() != path.read_bytes():
                raise RuntimeError(f"export of {info.id} differs from {path}")
    exp = _run_worker("export", str(store_path), str(tmp))
    loadvm = _loadvm_times(streams, img, img.names, tmp)

    return {
        "workload": workload, "mem_mib": mem_mib, "snapshots": len(raws), "make_s": make_s,
        "raw_bytes": raw_bytes, "lz4_bytes": lz4_bytes,
        "qcow2_bytes": img.image.stat().st_size, "qcow2_alloc": _allocated(img.image),
        "store_bytes": st.disk_bytes, "stored_pages": st.stored_pages,
        "zero": st.zero_pages, "records": st.page_records, "new": st.new_pages,
        "intra": st.intra_duplicates, "inter": st.inter_duplicates,
        "dirty_median": statistics.median(s.dirty_pages for s in per[1:]) if len(per) > 1 else 0,
        "import_s": imp["times"], "lz4_s": lz4_times, "export_s": exp["times"], "loadvm_s": loadvm,
        "import_rss": imp["maxrss_kib"] * 1024, "export_rss": exp["maxrss_kib"] * 1024,
        "base_rss": imp["base_rss_kib"] * 1024,
    }


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def report(r: dict) -> None:
    med = statistics.median
    imp, lz, exp, lv = med(r["import_s"]), med(r["lz4_s"]), med(r["export_s"]), med(r["loadvm_s"])
    imp_rest = med(r["import_s"][1:]) if len(r["import_s"]) > 1 else imp
    lz_rest = med(r["lz4_s"][1:]) if len(r["lz4_s"]) > 1 else lz
    guest = r["mem_mib"] << 20
    print(f"\n{r['workload']}, {r['mem_mib']} MiB guest, {r['snapshots']} savevm snapshots "
          f"(made in {r['make_s']:.0f} s)")
    print(f"  pages: {r['records']:,} records, {r['zero']:,} zero, {r['new']:,} stored, "
          f"{r['intra']:,} intra + {r['inter']:,} inter duplicates; median dirty per interval "
          f"{r['dirty_median']:,.0f}")
    print(f"  size    raw streams {_mib(r['raw_bytes'])}, lz4 of them {_mib(r['lz4_bytes'])}, "
          f"qcow2 {_mib(r['qcow2_bytes'])} ({_mib(r['qcow2_alloc'])} allocated), "
          f"store {_mib(r['store_bytes'])}")
    print(f"          store/qcow2 = 1/{r['qcow2_bytes'] / r['store_bytes']:.1f} (target <= 1/5)   "
          f"store/raw = 1/{r['raw_bytes'] / r['store_bytes']:.1f}   "
          f"store/lz4 = 1/{r['lz4_bytes'] / r['store_bytes']:.1f}")
    print(f"  import  median {imp * 1e3:.0f} ms/checkpoint (first {r['import_s'][0] * 1e3:.0f} ms, "
          f"others {imp_rest * 1e3:.0f} ms) vs read+lz4 of the raw stream {lz * 1e3:.0f} ms: "
          f"ratio {imp / lz:.2f} (others {imp_rest / lz_rest:.2f}; target <= 1)")
    print(f"  export  median {exp * 1e3:.0f} ms/checkpoint vs QEMU loadvm {lv * 1e3:.0f} ms: "
          f"ratio {exp / lv:.2f} (target < 1)")
    print(f"  memory  peak RSS import {_mib(r['import_rss'])}, export {_mib(r['export_rss'])} "
          f"(interpreter alone {_mib(r['base_rss'])}) vs guest RAM {_mib(guest)}: "
          f"ratio {r['import_rss'] / guest:.3f} / {r['export_rss'] / guest:.3f}")


def main(argv: list[str] | None = None) -> None:
    if argv is None:
        argv = shlex.split(os.environ.get("SBTUI_BENCH_STORE_ARGS", ""))
    p = argparse.ArgumentParser(prog="bench_store", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="256,1024", help="guest RAM sizes in MiB, comma-separated")
    p.add_argument("--workloads", default="memchurn,compress")
    p.add_argument("--snapshots", type=int, default=20)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between snapshots")
    p.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    args = p.parse_args(argv)

    from engine.guest import build_demo_guest
    guest = build_demo_guest()
    results = []
    for mem in (int(s) for s in args.sizes.split(",")):
        for workload in args.workloads.split(","):
            with tempfile.TemporaryDirectory(prefix="sbtui-bench-store-") as tmp:
                r = run_case(Path(tmp), guest, mem, workload, args.snapshots, args.interval)
            report(r)
            results.append(r)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2:])
    else:
        main(sys.argv[1:])
