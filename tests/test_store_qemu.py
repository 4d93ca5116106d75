"""The store on streams QEMU itself wrote: savevm snapshots in a qcow2 (the demo
guest running memchurn, and a BIOS-only guest with a known blob) and a
``migrate`` stream. Import through the CLI, export byte-identical, statistics
that match what the streams hold, and an exported stream that QEMU loads.

The streams come from ``streams.cached_*`` with the same arguments the codec's
tests use, so a full test run makes each of them once.
"""

from __future__ import annotations

import io

import pytest

from engine.store import Store
from engine.stream.migration import split_stream
from engine.stream.qcow2 import open_vmstate
from sbtui.cli import main
from streams import cached_migrate, cached_savevm, incoming_vm, live_qemu_pids, qemu_available

import xxhash

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(not qemu_available(), reason="qemu-system-x86_64 / qemu-img not installed"),
]


def vmstate(image, name) -> bytes:
    with open_vmstate(image, name) as f:
        return f.read()


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_demo_guest_snapshots_import_from_qcow2_dedup_and_export_loadable(demo_guest, tmp_path, capsys):
    g = demo_guest
    img = cached_savevm(machine="q35", memory_mib=128, kernel=g.kernel, initrd=g.initrd,
                        append=g.append_for("memchurn", mem=32, duration=600), blob_mib=0,
                        snapshots=2, interval_s=1.0, ready="sbtui-guest: ready", name="memchurn")
    st = tmp_path / "st"
    ids = cli(capsys, "store", "import", "-q", str(st), str(img.image)).split()
    assert ids == ["0000", "0001"]
    raws = [vmstate(img.image, n) for n in img.names]
    with Store.open(st) as s:
        infos = s.checkpoints()
        assert [i.name for i in infos] == img.names
        assert infos[1].parent == "0000"
        assert infos[0].meta["qcow2_snapshot"] and infos[0].meta["vm_clock_ns"] > 0
        for cid, raw in zip(ids, raws):
            out = io.BytesIO()
            s.export_stream(cid, out)
            assert out.getvalue() == raw
        first, second = infos[0].stats, infos[1].stats
        assert first.page_records == second.page_records >= 128 * 256
        assert first.zero_pages > 1000 and first.new_pages > 2000
        # memchurn rewrites its 32 MiB (8192 pages) over and over; the rest of RAM mostly rests
        assert 100 < second.dirty_pages < second.page_records // 2
        assert second.inter_duplicates > second.new_pages
        # only new pages cost pack space, never more than the page plus its record header
        assert second.pack_bytes <= second.new_pages * (4096 + 36) + 16 * 4   # + new pack headers
        # memchurn's pages are random (incompressible): the savings are dedup and zero pages
        assert second.stored_bytes < 0.6 * second.raw_bytes
        assert s.stats().disk_bytes < 0.8 * sum(len(r) for r in raws)
        assert s.fsck().ok
    target = tmp_path / "restored.mig"
    cli(capsys, "store", "export", str(st), "0001", "-o", str(target))
    with incoming_vm(tmp_path, img.spec, target) as vm:
        assert vm.cmd("human-monitor-command", **{"command-line": "info registers"}) == \
            img.registers[img.names[1]]
    assert live_qemu_pids() == set()


def test_counts_match_a_real_stream_with_known_duplicates(tmp_path):
    img = cached_savevm(machine="q35", memory_mib=64, blob_mib=4, seed=64)
    raw = vmstate(img.image, "snap0")
    recs = list(split_stream(io.BytesIO(raw)).pages())
    contents = [r.data for r in recs if r.data is not None]
    distinct = {xxhash.xxh3_128_digest(c) for c in contents}
    with Store.open(tmp_path / "st", create=True) as s:
        a = s.import_stream(io.BytesIO(raw), name="a")
        assert a.stats.page_records == len(recs)
        assert a.stats.zero_pages == len(recs) - len(contents)
        assert a.stats.new_pages == len(distinct)
        assert a.stats.intra_duplicates == len(contents) - len(distinct) > 100   # the blob repeats pages
        assert s.stats().stored_pages == len(distinct)
        # the same state again: nothing new, nothing dirty
        b = s.import_stream(io.BytesIO(raw), name="b")
        assert (b.stats.new_pages, b.stats.dirty_pages) == (0, 0)
        assert b.stats.inter_duplicates == len(distinct)
        assert b.stats.intra_duplicates == a.stats.intra_duplicates
        assert b.stats.pack_bytes == 0
        for cid in (a.id, b.id):
            out = io.BytesIO()
            s.export_stream(cid, out)
            assert out.getvalue() == raw


def test_migrate_stream_with_commands_round_trips(tmp_path, capsys):
    mig = cached_migrate(machine="q35", memory_mib=128, blob_mib=8)
    st = tmp_path / "st"
    assert cli(capsys, "store", "import", "-q", str(st), str(mig.path)).split() == ["0000"]
    target = tmp_path / "out.mig"
    cli(capsys, "store", "export", str(st), "0000", "-o", str(target))
    assert target.read_bytes() == mig.path.read_bytes()
