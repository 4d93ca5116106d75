#!/usr/bin/env bash
# One idempotent set-up step shared by `make demo`, `make test` and `make bench`.
#
# Installs what is missing and nothing else:
#   - system packages through apt (QEMU >= 8.2, on Debian bookworm from
#     bookworm-backports; gdb, busybox-static, tmux, cpio tools, a C compiler);
#   - a virtual environment at .venv/ with the project installed editable.
# A second run with nothing missing takes well under a second for the apt part
# and a few seconds for pip's "already satisfied" check (skipped when
# pyproject.toml has not changed since the last install).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo"
  else
    SUDO="__none__"
  fi
fi

need_root() {
  if [ "$SUDO" = "__none__" ]; then
    die "missing system packages: $*; run as root or with passwordless sudo, or install them yourself: apt-get install $*"
  fi
}

qemu_version_ok() {
  # QEMU 8.2 or newer (we test on 10.x): record/replay on q35, background-snapshot.
  command -v qemu-system-x86_64 >/dev/null 2>&1 || return 1
  local v
  v=$(qemu-system-x86_64 --version | head -n1 | sed -E 's/.*version ([0-9]+)\.([0-9]+).*/\1 \2/')
  set -- $v
  [ "${1:-0}" -gt 8 ] || { [ "${1:-0}" -eq 8 ] && [ "${2:-0}" -ge 2 ]; }
}

APT_UPDATED=""
apt_update() {
  if [ -z "$APT_UPDATED" ]; then
    say "apt-get update"
    $SUDO apt-get update -qq >&2
    APT_UPDATED=1
  fi
}

# Packages that are checked by the command they provide (fast: no dpkg query).
missing=()
command -v gdb >/dev/null 2>&1 || missing+=(gdb)
[ -x /bin/busybox ] || missing+=(busybox-static)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v xz >/dev/null 2>&1 || missing+=(xz-utils)
command -v zstd >/dev/null 2>&1 || missing+=(zstd)
command -v cpio >/dev/null 2>&1 || missing+=(cpio)
command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg)
[ -f /usr/include/stdio.h ] || missing+=(libc6-dev)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)

if [ ${#missing[@]} -gt 0 ]; then
  need_root "${missing[@]}"
  apt_update
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >&2
fi

if ! qemu_version_ok || ! command -v qemu-img >/dev/null 2>&1; then
  need_root qemu-system-x86 qemu-utils
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  if [ "$codename" = "bookworm" ]; then
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      say "adding the bookworm-backports suite (QEMU 10)"
      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
      APT_UPDATED=""
    fi
    apt_update
    say "installing QEMU from bookworm-backports"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports \
      qemu-system-x86 qemu-utils >&2
  else
    apt_update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq qemu-system-x86 qemu-utils >&2
  fi
  qemu_version_ok || die "QEMU 8.2 or newer is needed; found: $(qemu-system-x86_64 --version 2>/dev/null | head -n1 || echo none)"
fi

# The virtual environment. Re-install only when pyproject.toml changed.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv >&2
fi
stamp=.venv/.sbtui-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! .venv/bin/python -c 'import sbtui, engine' 2>/dev/null; then
  say "installing the project into .venv (editable, with test extras)"
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -e '.[test]' >&2
  touch "$stamp"
fi
say "ok"
