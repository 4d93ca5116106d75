"""The demo guest's kernel, taken from Debian's ``linux-image-amd64`` without installing it.

:func:`resolve_kernel_package` asks apt which real package
(``linux-image-<release>``) the metapackage's candidate depends on, and its
version. apt-cache takes about half a second per call here (no binary package
cache), so the answer is remembered in a small JSON file next to the kernels
and reused while apt's package lists and sources are unchanged (same names,
sizes and modification times).

:func:`fetch_kernel` downloads that package with ``apt-get download`` (works
as non-root once ``apt-get update`` has run), streams ``dpkg-deb
--fsys-tarfile`` through Python's tarfile and keeps only
``boot/vmlinuz-<release>`` and ``boot/System.map-<release>``. Debian's data
tarball lists ``boot/`` first, so reading stops long before the modules.
Kernels land in ``<root>/<package>_<version>/``, written in a temporary
directory and renamed into place, so a crash never leaves half a kernel; the
downloaded .deb is deleted afterwards.

Every failure is a :class:`~engine.errors.GuestBuildError` that says what apt
or dpkg said and what to do (``apt-get update``, check the network).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine.errors import GuestBuildError

METAPACKAGE = "linux-image-amd64"
APT_LISTS = Path("/var/lib/apt/lists")
# Files whose change can change which kernel apt picks.
_APT_CONFIG = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"),
               Path("/etc/apt/preferences"), Path("/etc/apt/preferences.d"))
_MEMO_NAME = "resolved.json"
_MEMO_VERSION = 1


@dataclass(frozen=True)
class KernelPackage:
    """A real kernel image package, e.g. ``linux-image-6.1.0-56-amd64`` ``6.1.192-2``."""

    name: str
    version: str

    @property
    def release(self) -> str:
        """The kernel release (``uname -r``), e.g. ``6.1.0-56-amd64``."""
        return self.name.removeprefix("linux-image-")

    @property
    def dirname(self) -> str:
        return f"{self.name}_{self.version}".replace("/", "_").replace(":", "%3a")


@dataclass(frozen=True)
class KernelFiles:
    package: KernelPackage
    vmlinuz: Path
    system_map: Path | None


def _run(argv: list[str], what: str, *, cwd: Path | None = None,
         timeout: float = 600) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "LC_ALL": "C", "LANG": "C"})
    except FileNotFoundError:
        raise GuestBuildError(
            f"{what}: {argv[0]} is not installed (the demo guest's kernel comes from apt; "
            f"this needs a Debian-like host with apt and dpkg)") from None
    except subprocess.TimeoutExpired:
        raise GuestBuildError(f"{what}: `{' '.join(argv)}` did not finish in {timeout:.0f} s") from None


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _apt_fingerprint() -> str:
    """Changes whenever apt's package lists or sources/pinning change."""
    h = hashlib.sha256()
    paths: list[Path] = []
    for root in (APT_LISTS, *_APT_CONFIG):
        if root.is_dir():
            paths.extend(sorted(p for p in root.iterdir() if p.is_file()))
        elif root.exists():
            paths.append(root)
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _resolve_with_apt(metapackage: str) -> KernelPackage:
    what = f"resolving {metapackage}"
    dep = _run(["apt-cache", "depends", "--important", metapackage], what)
    if dep.returncode != 0 or "No packages found" in dep.stderr:
        raise GuestBuildError(
            f"apt knows no package {metapackage!r}: {_tail(dep.stderr) or 'no output'}. "
            f"Run `apt-get update` (as root) so apt's package lists exist, on a Debian host "
            f"with the main component enabled.")
    real = None
    for line in dep.stdout.splitlines():
        m = re.match(r"\s*\|?Depends:\s*(linux-image-\S+)", line)
        if m and not m.group(1).startswith("<"):
            real = m.group(1)
            break
    if real is None:
        raise GuestBuildError(
            f"{what}: `apt-cache depends {metapackage}` names no linux-image-* dependency:\n"
            f"{_tail(dep.stdout)}")
    show = _run(["apt-cache", "show", "--no-all-versions", real], what)
    m = re.search(r"^Version:\s*(\S+)", show.stdout, re.M)
    if show.returncode != 0 or m is None:
        raise GuestBuildError(
            f"{what}: apt has no installable version of {real} (needed by {metapackage}): "
            f"{_tail(show.stderr) or 'no Version field'}. Run `apt-get update` (as root).")
    return KernelPackage(real, m.group(1))


def resolve_kernel_package(metapackage: str = METAPACKAGE, *,
                           memo_dir: Path | None = None,
                           on_fallback: Callable[[str], None] | None = None) -> KernelPackage:
    """The real kernel package behind ``metapackage`` and its candidate version.

    With ``memo_dir`` (the kernels directory), the answer is kept there and
    reused while apt's state is unchanged, which makes a warm call cost a few
    ``stat`` calls. When apt cannot answer but the last answer's kernel is
    cached in ``memo_dir``, that kernel is used and ``on_fallback`` told why.
    """
    fingerprint = _apt_fingerprint()
    memo = memo_dir / _MEMO_NAME if memo_dir is not None else None
    saved: dict = {}
    if memo is not None:
        try:
            saved = json.loads(memo.read_text())
            if (not isinstance(saved, dict) or saved.get("memo_version") != _MEMO_VERSION
                    or saved.get("metapackage") != metapackage
                    or not isinstance(saved.get("name"), str)
                    or not isinstance(saved.get("version"), str)):
                saved = {}
        except (OSError, ValueError):
            saved = {}  # missing or unreadable memo: ask apt again
        if saved and saved.get("apt_fingerprint") == fingerprint:
            return KernelPackage(saved["name"], saved["version"])
    try:
        pkg = _resolve_with_apt(metapackage)
    except GuestBuildError as err:
        # apt's lists may be gone (container images delete them) or apt may be
        # missing: the kernel this cache already holds is still good.
        if saved and memo_dir is not None:
            pkg = KernelPackage(saved["name"], saved["version"])
            if cached_kernel(pkg, memo_dir) is not None:
                if on_fallback is not None:
                    on_fallback(f"apt cannot resolve {metapackage} ({err}); using the cached "
                                f"kernel {pkg.name} {pkg.version}")
                return pkg
        raise
    if memo is not None:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
        tmp.write_text(json.dumps({
            "memo_version": _MEMO_VERSION, "metapackage": metapackage,
            "apt_fingerprint": fingerprint, "name": pkg.name, "version": pkg.version}))
        os.replace(tmp, memo)
    return pkg


def cached_kernel(pkg: KernelPackage, root: Path) -> KernelFiles | None:
    """The kernel files of ``pkg`` under ``root`` if a complete copy is there."""
    d = root / pkg.dirname
    vmlinuz = d / f"vmlinuz-{pkg.release}"
    system_map = d / f"System.map-{pkg.release}"
    if not vmlinuz.is_file():
        return None
    return KernelFiles(pkg, vmlinuz, system_map if system_map.is_file() else None)


def check_bzimage(path: Path) -> None:
    """Raise unless ``path`` looks like an x86 bzImage (the boot protocol's "HdrS" at 0x202)."""
    with open(path, "rb") as f:
        head = f.read(0x210)
    if len(head) < 0x206 or head[0x202:0x206] != b"HdrS":
        raise GuestBuildError(
            f"{path} is not an x86 bzImage: no 'HdrS' boot header at offset 0x202")


def fetch_kernel(pkg: KernelPackage, root: Path, *, force: bool = False,
                 progress: Callable[[str], None] | None = None) -> KernelFiles:
    """Download and unpack ``pkg``'s vmlinuz and System.map under ``root`` (cached)."""
    say = progress or (lambda _msg: None)
    if not force:
        found = cached_kernel(pkg, root)
        if found is not None:
            return found
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=root) as tmpname:
        tmp = Path(tmpname)
        say(f"downloading {pkg.name} {pkg.version} with apt-get download")
        dl = _run(["apt-get", "download", "-q", f"{pkg.name}={pkg.version}"],
                  f"downloading {pkg.name}", cwd=tmp, timeout=1800)
        debs = sorted(tmp.glob("*.deb"))
        if dl.returncode != 0 or not debs:
            raise GuestBuildError(
                f"`apt-get download {pkg.name}={pkg.version}` failed (exit {dl.returncode}): "
                f"{_tail(dl.stderr or dl.stdout)}\nCheck the network connection to the Debian "
                f"mirror, or run `apt-get update` (as root) if the version is no longer "
                f"on the mirror.")
        out = tmp / "out"
        out.mkdir()
        say(f"unpacking boot/vmlinuz-{pkg.release} and boot/System.map-{pkg.release}")
        _extract_boot_files(debs[0], pkg.release, out)
        debs[0].unlink()
        vmlinuz = out / f"vmlinuz-{pkg.release}"
        check_bzimage(vmlinuz)
        final = root / pkg.dirname
        if final.exists():
            # force, or a half-visible older copy: replace it as a whole.
            old = tmp / "old"
            os.rename(final, old)
        os.rename(out, final)
    found = cached_kernel(pkg, root)
    assert found is not None
    return found


def _extract_boot_files(deb: Path, release: str, out: Path) -> None:
    wanted = {f"boot/vmlinuz-{release}", f"boot/System.map-{release}"}
    got: set[str] = set()
    try:
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise GuestBuildError("dpkg-deb is not installed: it unpacks the kernel package") from None
    err_text = ""
    try:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name in wanted and member.isfile():
                    src = tar.extractfile(member)
                    assert src is not None
                    with open(out / Path(name).name, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    got.add(name)
                    if got == wanted:
                        break  # the rest is modules: no need to decompress 400 MB
                elif not name.startswith("boot") and name not in ("", "."):
                    break  # past boot/: what is missing is not in this package
    except tarfile.TarError as err:
        err_text = f"{err}"
    finally:
        proc.kill()  # harmless if it already ended; stops it when we stopped reading early
        _, stderr = proc.communicate()
        if err_text and stderr:
            err_text += "; dpkg-deb: " + _tail(stderr.decode(errors="replace"))
    if err_text:
        raise GuestBuildError(f"unpacking {deb}: {err_text}")
    vmlinuz = f"boot/vmlinuz-{release}"
    if vmlinuz not in got:
        raise GuestBuildError(f"{deb} holds no {vmlinuz}: expected a Debian kernel image package")
