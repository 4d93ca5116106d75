"""Page-index benchmark: open and look up 1 M pages in an mmap'd segment, against
loading the same entries into a dict (the obvious alternative), measured in
the same run.

Prints, for 1 M entries: time to open (mmap + checksum of the whole file) vs
time to build the dict from the same file; lookup time per hit and per miss
vs a dict lookup; Python heap used (tracemalloc) by each; and the importer's
absence filter (build time, size, the cost of a miss with it).
"""

from __future__ import annotations

import random
import tempfile
import time
import tracemalloc
from pathlib import Path

N = 1 << 20
LOOKUPS = 200_000


def _best(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    from engine.store import index as idx

    rng = random.Random(1)
    hashes = sorted(rng.randbytes(16) for _ in range(N))
    entries = [idx.ENTRY.pack(k % 64, 16 + 40 * k, 40) for k in range(N)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / idx.segment_name(1, 1)
        t0 = time.perf_counter()
        path.write_bytes(idx.encode_segment(hashes, entries, {0: 1}))
        write_s = time.perf_counter() - t0
        size = path.stat().st_size

        t_open = _best(lambda: idx.Segment(path))

        def load_dict():
            data = path.read_bytes()
            seg_hash = idx.IDX_HEADER.size + 4 * ((1 << idx._fanout_bits(N)) + 1)
            ent = seg_hash + 16 * N
            return {data[seg_hash + 16 * k:seg_hash + 16 * k + 16]: data[ent + 16 * k:ent + 16 * k + 16]
                    for k in range(N)}
        t_dict = _best(load_dict, repeat=1)

        tracemalloc.start()
        seg = idx.Segment(path)
        mem_seg = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        tracemalloc.start()
        table = load_dict()
        mem_dict = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

        hits = [hashes[rng.randrange(N)] for _ in range(LOOKUPS)]
        misses = [rng.randbytes(16) for _ in range(LOOKUPS)]
        lookup = seg.lookup
        get = table.get
        t_hit = _best(lambda: [lookup(h) for h in hits]) / LOOKUPS
        t_miss = _best(lambda: [lookup(h) for h in misses]) / LOOKUPS
        t_dhit = _best(lambda: [get(h) for h in hits]) / LOOKUPS
        assert all(lookup(h) is not None for h in hits[:1000])
        assert all(lookup(h) is None for h in misses[:1000])

        # what an import sees: its new pages are misses, answered by the
        # index's in-memory absence filter before any segment is probed
        index = idx.Index(Path(tmp))
        t0 = time.perf_counter()
        index.use_filter()
        t_build = time.perf_counter() - t0
        t_fmiss = _best(lambda: [index.lookup(h) for h in misses]) / LOOKUPS
        t_fhit = _best(lambda: [index.lookup(h) for h in hits]) / LOOKUPS
        passed = sum(h in index._filter for h in misses) / LOOKUPS
        filter_mib = len(index._filter.bits) / 2**20
        assert all(index.lookup(h) is not None for h in hits[:1000])
        index.close()

    print(f"index of {N:,} pages: segment file {size / 2**20:.1f} MiB, written in {write_s:.2f} s")
    print(f"  open (mmap + checksum)  {t_open * 1e3:8.2f} ms   vs dict load {t_dict * 1e3:8.1f} ms"
          f"   ratio {t_open / t_dict:.4f}")
    print(f"  lookup hit              {t_hit * 1e6:8.2f} us   vs dict      {t_dhit * 1e6:8.2f} us"
          f"   ratio {t_hit / t_dhit:.1f}")
    print(f"  lookup miss             {t_miss * 1e6:8.2f} us")
    print(f"  absence filter          built in {t_build * 1e3:.0f} ms, {filter_mib:.1f} MiB; miss "
          f"{t_fmiss * 1e6:.2f} us (ratio {t_fmiss / t_miss:.2f} of a segment probe, "
          f"{passed:.1%} of misses still probe), hit {t_fhit * 1e6:.2f} us")
    print(f"  Python heap             {mem_seg / 2**20:8.2f} MiB  vs dict      {mem_dict / 2**20:8.1f} MiB"
          f"   ratio {mem_seg / mem_dict:.4f}")


if __name__ == "__main__":
    main()
