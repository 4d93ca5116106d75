"""``sbtui store ...`` as a user runs it: output, exit codes, and errors that name the problem."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sbtui.cli import main
from test_store_support import page, snapshot, text_page, tree_bytes

SUBCOMMANDS = ["import", "list", "export", "stats", "fsck", "gc", "delete"]


@pytest.fixture
def streams(tmp_path):
    data = [snapshot([page(i) for i in range(6)] + [None, text_page("x")]),
            snapshot([page(i) for i in range(3, 9)] + [None, None]),
            snapshot([page(i) for i in range(3, 9)] + [page(0), None])]
    paths = []
    for k, d in enumerate(data):
        p = tmp_path / f"snap{k}.mig"
        p.write_bytes(d)
        paths.append(p)
    return paths, data


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_import_list_export_stats_fsck(tmp_path, capsys, streams):
    paths, data = streams
    st = tmp_path / "st"
    code, out, err = run(capsys, "store", "import", str(st), *map(str, paths), "--meta", "icount=42",
                         "--meta", "who=me")
    assert code == 0, err
    assert out.split() == ["0000", "0001", "0002"]
    assert "0001 snap1.mig:" in err and "new" in err

    code, out, _ = run(capsys, "store", "list", str(st), "--json")
    rows = json.loads(out)
    assert [(r["id"], r["name"], r["parent"]) for r in rows] == [
        ("0000", "snap0.mig", None), ("0001", "snap1.mig", "0000"), ("0002", "snap2.mig", "0001")]
    assert rows[0]["meta"]["icount"] == 42 and rows[0]["meta"]["who"] == "me"
    for key in ("page_records", "zero_pages", "dirty_pages", "new_pages", "intra_duplicates",
                "inter_duplicates", "duplicate_pages", "raw_bytes", "stored_bytes"):
        assert all(isinstance(r[key], int) for r in rows), key
    assert rows[2]["dirty_pages"] == 1 and rows[2]["new_pages"] == 0 and rows[2]["inter_duplicates"] == 9

    code, out, _ = run(capsys, "store", "list", str(st))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ID", "PARENT", "PAGES"]
    assert lines[2].startswith("0001  0000")

    for k, d in enumerate(data):
        target = tmp_path / f"out{k}.mig"
        code, _, err = run(capsys, "store", "export", str(st), f"{k:04d}", "-o", str(target))
        assert code == 0, err
        assert target.read_bytes() == d

    code, out, _ = run(capsys, "store", "stats", str(st), "--json")
    stats = json.loads(out)
    assert stats["checkpoints"] == 3 and stats["stored_pages"] == 9 + 1 + 2
    code, out, _ = run(capsys, "store", "stats", str(st))
    assert "stored_pages" in out and ("KiB" in out or "MiB" in out)

    code, out, _ = run(capsys, "store", "fsck", str(st))
    assert code == 0
    assert out.strip().endswith(": ok")


def test_fsck_fails_on_damage_and_names_it(tmp_path, capsys, streams):
    paths, _ = streams
    st = tmp_path / "st"
    assert run(capsys, "store", "import", "-q", str(st), str(paths[0]))[0] == 0
    pack = next((st / "packs").glob("*.pack"))
    raw = bytearray(pack.read_bytes())
    raw[-100] ^= 0xFF
    pack.write_bytes(raw)
    code, out, _ = run(capsys, "store", "fsck", str(st))
    assert code == 1
    assert "DAMAGE: pack 00000001.pack offset" in out
    assert "checkpoints that cannot be exported: 0000" in out
    code, _, err = run(capsys, "store", "export", str(st), "0000", "-o", str(tmp_path / "o.mig"))
    assert code == 1 and "integrity error" in err and "00000001.pack" in err
    assert not (tmp_path / "o.mig").exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_gc_and_delete(tmp_path, capsys, streams):
    paths, data = streams
    st = tmp_path / "st"
    run(capsys, "store", "import", "-q", str(st), *map(str, paths))
    code, _, err = run(capsys, "store", "delete", str(st), "0001")
    assert code == 0 and "deleted checkpoint 0001" in err
    code, out, _ = run(capsys, "store", "gc", str(st))
    assert code == 0 and out.startswith("removed 0 pages")    # 0001's pages are all in 0002
    code, _, _ = run(capsys, "store", "delete", str(st), "0000")
    code, out, _ = run(capsys, "store", "gc", str(st))
    assert out.startswith("removed 3 pages")                  # pages 1, 2 and "x"; page 0 is in 0002
    target = tmp_path / "o.mig"
    assert run(capsys, "store", "export", str(st), "0002", "-o", str(target))[0] == 0
    assert target.read_bytes() == data[2]


def test_errors_name_the_path_or_id(tmp_path, capsys, streams):
    paths, _ = streams
    st = tmp_path / "st"
    code, _, err = run(capsys, "store", "list", str(tmp_path / "nope"))
    assert code == 1 and str(tmp_path / "nope") in err and "no such store" in err
    code, _, err = run(capsys, "store", "import", str(st), str(tmp_path / "missing.mig"))
    assert code == 2 and "missing.mig: no such file" in err
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello world")
    code, _, err = run(capsys, "store", "import", str(st), str(junk))
    assert code == 2 and "junk.bin: not a migration stream (QEVM) or qcow2 image" in err
    code, _, err = run(capsys, "store", "import", str(st), str(paths[0]), str(paths[1]), "--name", "x")
    assert code == 2 and "--name" in err
    run(capsys, "store", "import", "-q", str(st), str(paths[0]))
    code, _, err = run(capsys, "store", "export", str(st), "0042", "-o", str(tmp_path / "o.mig"))
    assert code == 1 and "no checkpoint '0042'" in err
    code, _, err = run(capsys, "store", "export", str(st), "0000", "-o", str(tmp_path / "no" / "o.mig"))
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "store", "import", str(st), str(paths[1]), "--parent", "0099")
    assert code == 1 and "no checkpoint '0099'" in err
    not_a_store = tmp_path / "plain"
    not_a_store.mkdir()
    (not_a_store / "file").write_text("x")
    code, _, err = run(capsys, "store", "stats", str(not_a_store))
    assert code == 1 and "not an sbtui store" in err


def test_a_bad_stream_fails_the_import_and_leaves_the_store_alone(tmp_path, capsys, streams):
    paths, data = streams
    st = tmp_path / "st"
    run(capsys, "store", "import", "-q", str(st), str(paths[0]))
    before = tree_bytes(st)
    cut = tmp_path / "cut.mig"
    cut.write_bytes(data[1][: len(data[1]) // 2])
    code, out, err = run(capsys, "store", "import", str(st), str(cut))
    assert code == 1 and "migration stream at offset" in err and "stream ends" in err
    assert out == ""
    assert tree_bytes(st) == before


def test_every_subcommand_has_help():
    for cmd in SUBCOMMANDS:
        res = subprocess.run([sys.executable, "-m", "sbtui", "store", cmd, "--help"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert f"usage: sbtui store {cmd}" in res.stdout
    res = subprocess.run([sys.executable, "-m", "sbtui", "store", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and all(c in res.stdout for c in SUBCOMMANDS)
