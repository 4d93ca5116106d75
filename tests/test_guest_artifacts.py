"""GuestArtifacts, the build cache, the kernel fetch and the symbol map (no guest boots here,
except inside a cold build of the shared ``demo_guest`` fixture)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import paths
from engine.errors import GuestBuildError, UsageError
from engine.guest import READY_LINE_PREFIX, GuestArtifacts, build_demo_guest
from engine.guest import builder, kernel, symbols
from engine.guest.cpio import read_initramfs

FAKE = GuestArtifacts(kernel=Path("/k"), initrd=Path("/i"), system_map=None,
                      append="console=ttyS0 nokaslr panic=-1 sbtui.workload=idle",
                      workloads=("compress", "idle", "memchurn"))


def test_ready_line_prefix_is_the_agreed_one():
    assert READY_LINE_PREFIX == "sbtui-guest: ready"


def test_append_for_selects_workload_and_params_replacing_the_default():
    assert FAKE.append_for("memchurn") == "console=ttyS0 nokaslr panic=-1 sbtui.workload=memchurn"
    assert FAKE.append_for("compress", duration=30, mem=4) == (
        "console=ttyS0 nokaslr panic=-1 sbtui.workload=compress sbtui.duration=30 sbtui.mem=4")
    assert FAKE.append_for("idle", duration=None) == FAKE.append


def test_append_for_unknown_workload_is_a_usage_error_naming_the_known_ones():
    with pytest.raises(UsageError, match=r"unknown workload 'nope'.*compress, idle, memchurn"):
        FAKE.append_for("nope")


@pytest.mark.parametrize("params, match", [
    ({"speed": 3}, "unknown workload parameter 'speed'"),
    ({"duration": 0}, "duration=0"),
    ({"mem": -1}, "mem=-1"),
    ({"mem": "8"}, "mem='8'"),
    ({"duration": True}, "duration=True"),
])
def test_append_for_rejects_bad_params(params, match):
    with pytest.raises(UsageError, match=match):
        FAKE.append_for("idle", **params)


def test_to_json_has_paths_and_command_line():
    assert FAKE.to_json() == {"kernel": "/k", "initrd": "/i", "system_map": None,
                              "append": FAKE.append,
                              "workloads": ["compress", "idle", "memchurn"]}


# -- the built guest -----------------------------------------------------------

def test_built_guest_has_kernel_initrd_symbols_and_workloads(demo_guest):
    assert set(demo_guest.workloads) >= {"memchurn", "compress", "idle"}
    assert "nokaslr" in demo_guest.append.split()
    assert "console=ttyS0" in demo_guest.append.split()
    assert demo_guest.append.endswith("sbtui.workload=idle")
    kernel.check_bzimage(demo_guest.kernel)
    size = demo_guest.initrd.stat().st_size
    assert 500_000 < size < 4_000_000, f"initrd is {size} bytes"
    j = demo_guest.to_json()
    assert Path(j["kernel"]) == demo_guest.kernel and Path(j["initrd"]) == demo_guest.initrd


def test_system_map_is_real_and_matches_nokaslr_addresses(demo_guest):
    assert demo_guest.system_map is not None
    assert not symbols.is_placeholder(demo_guest.system_map)
    syms = {}
    with open(demo_guest.system_map) as f:
        for line in f:
            addr, _type, name = line.split()
            syms.setdefault(name, int(addr, 16))
    assert syms["_text"] == 0xFFFFFFFF81000000  # the kernel's link address: no KASLR slide
    assert 0xFFFFFFFF81000000 < syms["start_kernel"] < 0xFFFFFFFFC0000000
    assert len(syms) > 50_000


def test_initramfs_holds_init_busybox_tools_and_console_node(demo_guest):
    entries = {e.name: e for e in read_initramfs(demo_guest.initrd)}
    assert entries["init"].is_file and entries["init"].permissions == 0o755
    assert entries["init"].data.startswith(b"#!/bin/sh\n")
    assert entries["bin/sh"].is_symlink and entries["bin/sh"].data == b"/bin/busybox"
    assert entries["bin/busybox"].data == Path(builder.find_busybox()).read_bytes()
    for tool in ("sbmark", "memchurn", "sbgen", "sbdump"):
        assert entries[f"bin/{tool}"].data == b"sbtool"
    con = entries["dev/console"]
    assert con.is_chardev and (con.rdevmajor, con.rdevminor) == (5, 1)
    for w in demo_guest.workloads:
        assert entries[f"usr/lib/sbtui/workloads/{w}"].permissions == 0o755
    assert "sbin/init" not in entries  # no fallback init that would hide a broken /init


def test_warm_build_takes_well_under_a_second_and_returns_the_same(demo_guest):
    started = time.monotonic()
    again = build_demo_guest()
    elapsed = time.monotonic() - started
    assert again == demo_guest
    assert elapsed < 0.5, f"a cached build took {elapsed:.2f} s"


# -- cache keying and atomicity, with a private cache and a copy of guest-tools --
# The tests below share one private cache and run in file order (3 builds in all):
# a crashed build, then reuse, then force, then a changed input.

@pytest.fixture(scope="module")
def private_cache(demo_guest, tmp_path_factory):
    """A cache seeded with the shared kernel (hard links: no download, no symbol
    boot) and a private copy of guest-tools to change."""
    shared_kernels = paths.cache_dir() / "guest" / "kernels"
    base = tmp_path_factory.mktemp("private-cache")
    cache = base / "cache"
    shutil.copytree(shared_kernels, cache / "guest" / "kernels", copy_function=os.link,
                    ignore=shutil.ignore_patterns(".*"))
    tools = base / "guest-tools"
    shutil.copytree(builder.guest_tools_dir(), tools)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SBTUI_CACHE", str(cache))
        mp.setenv(builder.GUEST_TOOLS_ENV, str(tools))
        yield cache, tools


def _entries(cache: Path) -> list[str]:
    """Cache entries, and any leftover temporary build directory (.build-*)."""
    return sorted(p.name for p in (cache / "guest").iterdir()
                  if p.name not in ("kernels", ".lock"))


def test_a_crash_mid_build_leaves_no_half_entry(private_cache, monkeypatch):
    cache, _tools = private_cache
    real_build_entry = builder._build_entry

    def crash(inputs, kfiles, out, tmp, say):
        (out / "initrd.img").write_bytes(b"half")
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(builder, "_build_entry", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_demo_guest()
    assert _entries(cache) == []  # neither an entry nor a leftover .build-* directory

    # A builder killed outright (no clean-up ran) leaves its temporary directory;
    # the next build removes it.
    (cache / "guest" / ".build-killed").mkdir()
    monkeypatch.setattr(builder, "_build_entry", real_build_entry)
    art = build_demo_guest()
    assert art.initrd.read_bytes() != b"half"
    assert _entries(cache) == [art.initrd.parent.name]


def test_same_inputs_reuse_the_entry_and_give_identical_bytes(demo_guest, private_cache):
    cache, _tools = private_cache
    first = build_demo_guest()
    assert first.initrd.parent.parent == cache / "guest"
    assert first.initrd.parent.name == demo_guest.initrd.parent.name  # same inputs, same key
    assert first.initrd.read_bytes() == demo_guest.initrd.read_bytes()  # reproducible build
    assert build_demo_guest() == first


def test_force_rebuilds_into_the_same_entry(private_cache, monkeypatch):
    cache, _tools = private_cache
    first = build_demo_guest()
    stamp = first.initrd.stat().st_ino
    # force also fetches the kernel again; keep this test off the network.
    monkeypatch.setattr(kernel, "fetch_kernel",
                        lambda pkg, root, force, progress: kernel.cached_kernel(pkg, root))
    again = build_demo_guest(force=True)
    assert again == first
    assert again.initrd.stat().st_ino != stamp
    assert _entries(cache) == [first.initrd.parent.name]


def test_changed_guest_tools_give_a_new_entry(private_cache):
    cache, tools = private_cache
    first = build_demo_guest()
    idle = tools / "workloads" / "idle"
    idle.write_text(idle.read_text() + "# changed\n")
    second = build_demo_guest()
    assert second.initrd.parent != first.initrd.parent
    assert b"# changed" in next(e.data for e in read_initramfs(second.initrd)
                                if e.name == "usr/lib/sbtui/workloads/idle")
    assert sorted(_entries(cache)) == sorted([first.initrd.parent.name, second.initrd.parent.name])


def test_concurrent_builders_build_once_and_agree(private_cache):
    cache, tools = private_cache
    idle = tools / "workloads" / "idle"
    idle.write_text(idle.read_text() + "# concurrent\n")  # a key nobody has built yet
    script = ("import json, sys\n"
              "from engine.guest import build_demo_guest\n"
              "art = build_demo_guest(progress=lambda m: print('progress:', m, file=sys.stderr))\n"
              "print(json.dumps(art.to_json()))\n")
    env = {**os.environ, "SBTUI_CACHE": str(cache), builder.GUEST_TOOLS_ENV: str(tools)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert results[0][0] == results[1][0]
    builds = sum(err.count("progress: building the demo guest") for _out, err in results)
    assert builds == 1, results


# -- the kernel package ------------------------------------------------------

def test_resolving_the_metapackage_names_a_real_kernel_and_is_remembered(tmp_path, monkeypatch):
    pkg = kernel.resolve_kernel_package(memo_dir=tmp_path)
    assert pkg.name.startswith("linux-image-") and pkg.name.endswith("-amd64")
    assert pkg.version and pkg.release == pkg.name.removeprefix("linux-image-")

    def no_apt(_meta):
        raise AssertionError("apt was asked again although nothing changed")
    monkeypatch.setattr(kernel, "_resolve_with_apt", no_apt)
    assert kernel.resolve_kernel_package(memo_dir=tmp_path) == pkg


def test_when_apt_cannot_answer_the_cached_kernel_is_used(tmp_path, monkeypatch):
    pkg = kernel.KernelPackage("linux-image-9.9.9-1-amd64", "9.9.9-1")
    monkeypatch.setattr(kernel, "_resolve_with_apt", lambda meta: pkg)
    assert kernel.resolve_kernel_package(memo_dir=tmp_path) == pkg  # remembered
    kdir = tmp_path / pkg.dirname
    kdir.mkdir()
    (kdir / f"vmlinuz-{pkg.release}").write_bytes(b"stand-in")
    monkeypatch.setattr(kernel, "_apt_fingerprint", lambda: "apt lists are gone")

    def apt_fails(meta):
        raise GuestBuildError(f"apt knows no package {meta!r}")
    monkeypatch.setattr(kernel, "_resolve_with_apt", apt_fails)
    told = []
    assert kernel.resolve_kernel_package(memo_dir=tmp_path, on_fallback=told.append) == pkg
    assert "using the cached kernel" in told[0]
    (kdir / f"vmlinuz-{pkg.release}").unlink()  # nothing cached: the apt error stands
    with pytest.raises(GuestBuildError, match="apt knows no package"):
        kernel.resolve_kernel_package(memo_dir=tmp_path)


def test_unknown_package_is_a_clear_build_error():
    with pytest.raises(GuestBuildError, match="apt knows no package 'linux-image-sbtui-nope'"):
        kernel.resolve_kernel_package("linux-image-sbtui-nope")


def test_a_version_apt_cannot_download_is_a_clear_build_error(tmp_path):
    pkg = kernel.KernelPackage("linux-image-amd64", "0.0-sbtui-nope")
    with pytest.raises(GuestBuildError, match=r"apt-get download linux-image-amd64=0\.0-sbtui-nope"):
        kernel.fetch_kernel(pkg, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing half-written


def test_bzimage_check_names_the_file(tmp_path):
    bogus = tmp_path / "vmlinuz"
    bogus.write_bytes(b"MZ" + bytes(1000))
    with pytest.raises(GuestBuildError, match=f"{bogus} is not an x86 bzImage"):
        kernel.check_bzimage(bogus)


# -- the symbol dump -----------------------------------------------------------

@pytest.mark.parametrize("mark", [b"", b"@0000000426086d12 "])
def test_kallsyms_dump_is_cut_from_firmware_noise_and_sorted(mark):
    # sbmark writes the frame lines with the guest's TSC in front ("@TSC TEXT")
    raw = (b"SeaBIOS (version x)\nBooting from ROM...\n" + mark + b"kallsyms-begin\n"
           b"ffffffff83079e46 T start_kernel\n"
           b"ffffffff81000000 T _text\n"
           b"ffffffffc0001000 t helper\t[somemod]\n" + mark + b"kallsyms-end\n")
    assert symbols.parse_kallsyms_dump(raw, source="t") == (
        b"ffffffff81000000 T _text\nffffffff83079e46 T start_kernel\n"
        b"ffffffffc0001000 t helper\n")


@pytest.mark.parametrize("raw, match", [
    (b"no frame at all\n", "no 'kallsyms-begin'"),
    (b"kallsyms-begin\nffffffff81000000 T _text\n", "cut short"),
    (b"kallsyms-begin\nffffffff81000000 T _text\ngarbage\nkallsyms-end\n",
     r"line 2 of the symbol dump \(offset 40\) is b'garbage'"),
    (b"kallsyms-begin\nffffffff81000000 T _text\nkallsyms-end\n", "not start_kernel"),
    (b"kallsyms-begin\n0000000000000000 T _text\n0000000000000000 T start_kernel\nkallsyms-end\n",
     "kptr_restrict"),
])
def test_bad_kallsyms_dumps_are_named(raw, match):
    with pytest.raises(GuestBuildError, match=match):
        symbols.parse_kallsyms_dump(raw, source="t")


def test_debian_placeholder_system_map_is_recognised(tmp_path):
    p = tmp_path / "System.map"
    p.write_text("ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n")
    assert symbols.is_placeholder(p)
    assert symbols.is_placeholder(None)
    p.write_text("ffffffff81000000 T _text\nffffffff81000010 T other\n")
    assert not symbols.is_placeholder(p)


def test_static_busybox_is_required(tmp_path):
    assert builder._is_static_elf(builder.find_busybox())
    assert not builder._is_static_elf(Path(shutil.which("ls")))
