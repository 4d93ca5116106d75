"""Checkpoint-store benchmark on real snapshots of the demo guest.

For each guest size (256 MiB, 1 GiB) and workload (``memchurn``, ``compress``)
it boots the demo guest under TCG, takes 20 ``savevm`` snapshots about a second
apart into a qcow2 (as the recorder does), extracts the 20 migration streams
and measures, in the same run:

* size: the store on disk vs the raw streams and vs QEMU's own qcow2 holding
  the same snapshots (target: store <= 1/5 of the qcow2);
* import time per checkpoint vs reading + lz4-frame-compressing the same raw
  stream 1 MiB at a time, measured next to each import (target: ratio <= 1),
  and the codec's parse alone (the floor of an import);
* export time per checkpoint (to a sink, and to a file) vs QEMU's ``loadvm``
  of the same snapshot from the qcow2 (target: ratio < 1), the codec's
  reassembly alone and the lz4 decompression and hash check of the stored
  pages alone (together, about the floor of an export);
* peak memory (``VmHWM`` of the importing / exporting process, and of an
  idle interpreter with the same modules loaded) vs guest RAM.

Run: ``python -m benchmarks store`` (all four cases, several minutes), or
``python -m benchmarks.bench_store --sizes 256 --workloads memchurn
--snapshots 5`` for a quick look. ``--keep DIR`` keeps the snapshots and raw
streams and reuses them in later runs (the guest runs are the slow part; every
ratio still compares figures measured in the same run).
``SBTUI_BENCH_STORE_ARGS`` passes the same options through ``python -m benchmarks``.
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


# -- worker processes (so peak memory is the store's alone) --------------------

def _vm_hwm() -> int:
    """Peak resident set of this process in bytes (VmHWM: unlike ru_maxrss it
    starts afresh at exec, so it does not inherit the benchmark's own peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _lz4_stream(path: str) -> float:
    """The baseline: read the raw stream and lz4-frame-compress it, 1 MiB at a time."""
    import lz4.frame
    t0 = time.perf_counter()
    comp = lz4.frame.LZ4FrameCompressor()
    with open(path, "rb") as src:
        comp.begin()
        while chunk := src.read(1 << 20):
            comp.compress(chunk)
        comp.flush()
    return time.perf_counter() - t0


def _parse_only(path: str) -> float:
    """The codec's own share of an import: split the stream, touch nothing."""
    from engine.stream.migration import split_stream
    t0 = time.perf_counter()
    with open(path, "rb") as src:
        for _ in split_stream(src).pages():
            pass
    return time.perf_counter() - t0


class _Null:
    def write(self, data) -> int:
        return len(data)

    def flush(self) -> None:
        pass


def _worker(argv: list[str]) -> None:
    from engine.store import Store
    mode, store_path, *rest = argv
    base = _vm_hwm()
    out: dict = {"base_hwm": base}
    with Store.open(store_path, create=(mode == "import")) as store:
        if mode == "import":
            # each import next to its baselines, so machine noise hits all three alike
            out.update(import_s=[], lz4_s=[], parse_s=[])
            for path in rest:
                out["lz4_s"].append(_lz4_stream(path))
                out["parse_s"].append(_parse_only(path))
                t0 = time.perf_counter()
                with open(path, "rb") as src:
                    store.import_stream(src, name=Path(path).name)
                out["import_s"].append(time.perf_counter() - t0)
        else:
            out.update(export_s=[], export_file_s=[])
            target = Path(rest[0]) / "export.mig"
            for info in store.checkpoints():
                t0 = time.perf_counter()
                store.export_stream(info.id, _Null())
                out["export_s"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                with open(target, "wb") as dst:
                    store.export_stream(info.id, dst)
                out["export_file_s"].append(time.perf_counter() - t0)
                target.unlink()
    out["hwm"] = _vm_hwm()
    json.dump(out, sys.stdout)


def _run_worker(*args: str) -> dict:
    res = subprocess.run([sys.executable, "-m", "benchmarks.bench_store", "--worker", *args],
                         cwd=REPO, capture_output=True, text=True, timeout=3600)
    if res.returncode:
        raise RuntimeError(f"worker {args[0]} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout)


class _Pieces:
    """A run source answering from pages held in memory (the codec's share alone):
    per run of the split, a zero count or a list of its pages."""

    def __init__(self, runs):
        from bisect import bisect_right
        self._bisect = bisect_right
        self.starts, self.spans = [], []
        for run in runs:
            self.starts.append(run.index)
            self.spans.append((run.index, run.count,
                              None if run.zero else [bytes(run.page(k)) for k in range(run.count)]))

    def __call__(self, index, block, offset):
        i = self._bisect(self.starts, index) - 1
        first, _count, pages = self.spans[i]
        return None if pages is None else pages[index - first]

    def runs(self, index, block, offset, count):
        out: list = []
        end = index + count
        i = self._bisect(self.starts, index) - 1
        while index < end:
            first, n, pages = self.spans[i]
            a, b = index - first, min(n, end - first)
            out.append(b - a if pages is None else pages[a:b])
            index = first + b
            i += 1
        return out


def _assemble_floor(raw: Path) -> float:
    """The codec's own share of an export: reassemble, by runs, from pages held in memory."""
    from engine.stream.migration import assemble_stream, split_stream
    with open(raw, "rb") as src:
        sp = split_stream(src)
        source = _Pieces(sp.runs())
    t0 = time.perf_counter()
    assemble_stream(sp.skeleton, source, _Null())
    return time.perf_counter() - t0


def _decompress_floor(store_path: Path, checkpoint: str) -> float:
    """What reading a checkpoint's stored pages costs at least: lz4-decompress and
    verify each of them from records already in memory, with no Python around it."""
    import lz4.block
    import xxhash

    from engine.store import ABSENT, ZERO, Store
    from engine.store.packs import CODEC_LZ4, REC_HEADER
    with Store.open(store_path) as store:
        pm = store.page_map(checkpoint)
        hashes = set()
        for block in pm.blocks():
            raw = pm.raw(block)
            hashes.update(raw[i:i + 16] for i in range(0, len(raw), 16))
        hashes -= {ZERO, ABSENT}
        records = []
        for h in hashes:
            pid, off, length = store._index.lookup(h)
            rec = os.pread(store._packs._fd(pid), length, off)
            records.append((rec[4], rec[REC_HEADER.size:], h))
    dec, xxh = lz4.block.decompress, xxhash.xxh3_128_digest
    t0 = time.perf_counter()
    for codec, payload, h in records:
        xxh(dec(payload, uncompressed_size=4096) if codec == CODEC_LZ4 else payload) == h
    return time.perf_counter() - t0


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


def _make_snapshots(streams, vm_dir: Path, guest, mem_mib: int, workload: str, snapshots: int,
                    interval: float):
    """The qcow2 with the snapshots and the raw streams extracted from it.

    With a kept directory (``--keep``) that already holds a complete set for the
    same case, they are reused: the guest run is the slow part, and the ratios
    compare figures measured in this run whatever the snapshots' origin.
    """
    from engine.stream.qcow2 import open_vmstate

    name = f"{workload}{mem_mib}"
    append = guest.append_for(workload, duration=3600)
    raw_dir = vm_dir / "raw"
    done = vm_dir / "complete.json"
    want = {"append": append, "snapshots": snapshots, "interval": interval,
            "kernel": str(guest.kernel), "initrd": str(guest.initrd)}
    names = [f"snap{i}" for i in range(snapshots)]
    if done.exists() and json.loads(done.read_text()) == want:
        spec = streams.VmSpec(machine="q35", memory_mib=mem_mib, kernel=guest.kernel,
                              initrd=guest.initrd, append=append, serial=True)
        img = streams.SavevmImage(image=vm_dir / f"{name}.qcow2", names=names, spec=spec)
        return img, [raw_dir / f"{k:02d}-{n}.mig" for k, n in enumerate(names)], 0.0
    t0 = time.monotonic()
    img = streams.make_savevm_qcow2(
        vm_dir, machine="q35", memory_mib=mem_mib, kernel=guest.kernel, initrd=guest.initrd,
        append=append, blob_mib=0, snapshots=snapshots,
        interval_s=interval, ready="sbtui-guest: ready", name=name)
    make_s = time.monotonic() - t0
    raw_dir.mkdir(exist_ok=True)
    raws = []
    for k, snap in enumerate(img.names):
        path = raw_dir / f"{k:02d}-{snap}.mig"
        with open_vmstate(img.image, snap) as src, open(path, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        raws.append(path)
    done.write_text(json.dumps(want))
    return img, raws, make_s


def run_case(tmp: Path, guest, mem_mib: int, workload: str, snapshots: int, interval: float,
             keep: Path | None = None) -> dict:
    import lz4.frame

    from engine.store import Store
    streams = _tests_helpers()

    vm_dir = keep / f"{workload}{mem_mib}" if keep is not None else tmp / "vm"
    img, raws, make_s = _make_snapshots(streams, vm_dir, guest, mem_mib, workload, snapshots,
                                        interval)
    raw_bytes = sum(p.stat().st_size for p in raws)

    lz4_bytes = sum(len(lz4.frame.compress(p.read_bytes())) for p in raws)

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
    loadvm = _loadvm_times(streams, img, img.names, tmp)
    exp = _run_worker("export", str(store_path), str(tmp))
    loadvm += _loadvm_times(streams, img, img.names, tmp)
    floor = [_assemble_floor(raws[k]) for k in (0, len(raws) // 2, len(raws) - 1)]
    with Store.open(store_path) as store:
        ids = [i.id for i in store.checkpoints()]
    decomp = [_decompress_floor(store_path, ids[k]) for k in (0, len(ids) // 2, len(ids) - 1)]

    return {
        "workload": workload, "mem_mib": mem_mib, "snapshots": len(raws), "make_s": make_s,
        "raw_bytes": raw_bytes, "lz4_bytes": lz4_bytes,
        "qcow2_bytes": img.image.stat().st_size, "qcow2_alloc": _allocated(img.image),
        "store_bytes": st.disk_bytes, "stored_pages": st.stored_pages,
        "zero": st.zero_pages, "records": st.page_records, "new": st.new_pages,
        "intra": st.intra_duplicates, "inter": st.inter_duplicates,
        "dirty_median": statistics.median(s.dirty_pages for s in per[1:]) if len(per) > 1 else 0,
        "import_s": imp["import_s"], "lz4_s": imp["lz4_s"], "parse_s": imp["parse_s"],
        "export_s": exp["export_s"], "export_file_s": exp["export_file_s"], "assemble_s": floor,
        "decompress_s": decomp,
        "loadvm_s": loadvm, "import_hwm": imp["hwm"], "export_hwm": exp["hwm"],
        "base_hwm": imp["base_hwm"],
    }


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def report(r: dict) -> None:
    med = statistics.median
    imp, lz, parse = med(r["import_s"]), med(r["lz4_s"]), med(r["parse_s"])
    rest = slice(1, None) if len(r["import_s"]) > 1 else slice(None)
    imp_rest, lz_rest = med(r["import_s"][rest]), med(r["lz4_s"][rest])
    exp, expf, lv, asm = med(r["export_s"]), med(r["export_file_s"]), med(r["loadvm_s"]), med(r["assemble_s"])
    guest = r["mem_mib"] << 20
    made = f"made in {r['make_s']:.0f} s" if r["make_s"] else "kept from an earlier run"
    print(f"\n{r['workload']}, {r['mem_mib']} MiB guest, {r['snapshots']} savevm snapshots "
          f"({made})")
    print(f"  pages   {r['records']:,} records, {r['zero']:,} zero, {r['new']:,} stored, "
          f"{r['intra']:,} intra + {r['inter']:,} inter duplicates; median dirty per interval "
          f"{r['dirty_median']:,.0f}")
    print(f"  size    raw streams {_mib(r['raw_bytes'])}, lz4 of them {_mib(r['lz4_bytes'])}, "
          f"qcow2 {_mib(r['qcow2_bytes'])} ({_mib(r['qcow2_alloc'])} allocated), "
          f"store {_mib(r['store_bytes'])}")
    print(f"          store/qcow2 = 1/{r['qcow2_bytes'] / r['store_bytes']:.1f} (target <= 1/5)   "
          f"store/raw = 1/{r['raw_bytes'] / r['store_bytes']:.1f}   "
          f"store/lz4 = 1/{r['lz4_bytes'] / r['store_bytes']:.1f}")
    print(f"  import  median {imp * 1e3:.0f} ms/checkpoint vs read+lz4 of the raw stream "
          f"{lz * 1e3:.0f} ms: ratio {imp / lz:.2f} (after the first: {imp_rest / lz_rest:.2f}; "
          f"target <= 1); codec parse alone {parse * 1e3:.0f} ms = {parse / lz:.2f} of lz4")
    print(f"  export  median {exp * 1e3:.0f} ms/checkpoint ({expf * 1e3:.0f} ms to a file) vs QEMU "
          f"loadvm {lv * 1e3:.0f} ms: ratio {exp / lv:.2f} ({expf / lv:.2f}; target < 1); "
          f"codec assemble alone {asm * 1e3:.0f} ms = {asm / lv:.2f} of loadvm, lz4 decompress + "
          f"verify of its pages alone {med(r['decompress_s']) * 1e3:.0f} ms = "
          f"{med(r['decompress_s']) / lv:.2f}")
    print(f"  memory  peak RSS import {_mib(r['import_hwm'])}, export {_mib(r['export_hwm'])} "
          f"(interpreter with modules {_mib(r['base_hwm'])}) vs guest RAM {_mib(guest)}: "
          f"ratio {r['import_hwm'] / guest:.3f} / {r['export_hwm'] / guest:.3f}")


def main(argv: list[str] | None = None) -> None:
    if argv is None:
        argv = shlex.split(os.environ.get("SBTUI_BENCH_STORE_ARGS", ""))
    p = argparse.ArgumentParser(prog="bench_store", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="256,1024", help="guest RAM sizes in MiB, comma-separated")
    p.add_argument("--workloads", default="memchurn,compress")
    p.add_argument("--snapshots", type=int, default=20)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between snapshots")
    p.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    p.add_argument("--keep", metavar="DIR", type=Path,
                   help="keep the snapshots and raw streams here and reuse them in later runs")
    args = p.parse_args(argv)

    from engine.guest import build_demo_guest
    guest = build_demo_guest()
    results = []
    for mem in (int(s) for s in args.sizes.split(",")):
        for workload in args.workloads.split(","):
            with tempfile.TemporaryDirectory(prefix="sbtui-bench-store-") as tmp:
                r = run_case(Path(tmp), guest, mem, workload, args.snapshots, args.interval,
                             args.keep)
            report(r)
            results.append(r)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2:])
    else:
        main(sys.argv[1:])
