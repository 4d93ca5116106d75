"""A recording on disk: one self-contained, portable directory.

Layout (names are constants below)::

    REC/
      recording.json      the manifest: format, versions, machine, guest files, status
      checkpoints.jsonl   one line per checkpoint event, append-only
      markers.jsonl       one line per guest marker, append-only
      replay.log          QEMU's record/replay log (the non-determinism)
      console.out         the serial console output, as the guest wrote it
      debugcon.out        raw bytes the guest wrote to the debug port (markers)
      guest/              copies of the kernel and initrd the guest booted
      store/              the page store (engine.store) holding every checkpoint

Promises:

* The manifest is rewritten atomically (temp file, fsync, rename); the
  ``.jsonl`` files are only appended to, one fsynced line at a time, and a
  torn last line (a crash mid-append) is ignored on read. So a recording that
  was interrupted at any moment opens, with every checkpoint whose line was
  complete.
* ``checkpoints.jsonl`` may hold several lines for one interval index: the
  last one wins. That is how a checkpoint that failed its proof is replaced by
  a rebuilt one without rewriting history.
* Paths inside the manifest are relative to the recording, so the directory
  can be moved or copied to another machine; :meth:`Recording.replay_spec`
  binds them to real paths again.
* Only JSON is read from here (and msgpack by the store): nothing executable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from engine.errors import RecordingError, UsageError
from engine.store.fsutil import atomic_write, fsync_dir
from engine.qemu.machine import MachineSpec

FORMAT = 1
MANIFEST = "recording.json"
CHECKPOINTS = "checkpoints.jsonl"
MARKERS = "markers.jsonl"
REPLAY_LOG = "replay.log"
CONSOLE = "console.out"
DEBUGCON = "debugcon.out"
GUEST_DIR = "guest"
STORE_DIR = "store"

# QEMU writes the replay log's version word (big-endian) only when it exits (replay.c,
# replay_finish); until then the first 4 bytes are zero and a replay refuses
# the file. A replay of a recording still in progress uses a copy with it set.
REPLAY_LOG_VERSION = 0xE0200C
REPLAY_LOG_HEADER = 12  # u32 version + u64

STATUSES = ("recording", "complete", "interrupted", "failed")
PROOFS = ("unproven", "verified", "failed")
ORIGINS = ("record", "rebuilt", "live")


@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint of a recording: the state at the start of interval ``index``."""

    index: int
    store_id: str
    icount: int                 # instructions executed before this state
    wall_time: float            # host seconds since the recording started
    guest_time_ns: int          # guest virtual clock (QEMU_CLOCK_VIRTUAL)
    downtime_ms: float          # how long the guest was paused to take it
    console_offset: int = 0     # bytes of console.out written before this state
    origin: str = "record"      # record | rebuilt (replay-mode snapshot) | live
    proof: str = "unproven"     # unproven | verified | failed
    detail: str = ""            # why a proof failed, or how it was rebuilt

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CheckpointEntry":
        entry = cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})
        if not isinstance(entry.index, int) or entry.index < 0:
            raise ValueError(f"bad index {entry.index!r}")
        if not isinstance(entry.icount, int) or entry.icount < 0:
            raise ValueError(f"bad icount {entry.icount!r}")
        if entry.origin not in ORIGINS or entry.proof not in PROOFS:
            raise ValueError(f"bad origin/proof {entry.origin!r}/{entry.proof!r}")
        return entry


@dataclass(frozen=True)
class Marker:
    """A moment the guest marked with ``sbmark TEXT``.

    ``icount`` is the instruction count at which ``sbmark`` read the guest's
    time stamp counter, a few hundred instructions before the text reached
    the debug port. It is ``exact`` when the conversion from guest time to
    instructions was unambiguous (see :mod:`engine.recording.markers`);
    otherwise the marker lies in ``icount .. icount_max``.
    """

    icount: int
    text: str
    wall_time: float
    guest_time_ns: int | None = None   # the guest's TSC (= virtual clock) at the mark
    exact: bool = True
    icount_max: int | None = None      # upper bound when not exact

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Marker":
        gt = data.get("guest_time_ns")
        hi = data.get("icount_max")
        m = cls(icount=int(data["icount"]), text=str(data["text"]),
                wall_time=float(data.get("wall_time", 0.0)),
                guest_time_ns=int(gt) if gt is not None else None,
                exact=bool(data.get("exact", True)),
                icount_max=int(hi) if hi is not None else None)
        return m


@dataclass
class Manifest:
    """What ``recording.json`` holds."""

    kind: str                       # "record" (replayable) or "live" (checkpoints only)
    spec: dict[str, Any]            # MachineSpec.to_dict() in record mode, paths relative to REC
    qemu_version: str               # "10.0.2"
    interval_s: float
    created: float                  # Unix time
    sbtui_version: str = ""
    status: str = "recording"
    error: str | None = None
    guest: dict[str, Any] = field(default_factory=dict)   # {"kernel": {"path","sha256"}, "initrd": {...}, "workload": ...}
    end_icount: int | None = None
    wall_s: float | None = None
    # The QEMU command line that replays the recording, with the per-run
    # plumbing as placeholders ({rrfile}, {vmstate}, {debugcon}, {console}).
    replay_argv: list[str] = field(default_factory=list)
    # Figures of the run: downtime, ingestion lag, proofs (the recorder's summary).
    stats: dict[str, Any] = field(default_factory=dict)
    # Live recordings of a QEMU started by someone else: what is known of it
    # (its command line when readable, QMP socket path).
    source: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: Path) -> "Manifest":
        if not isinstance(data, dict):
            raise RecordingError(f"{where}: the manifest is not a JSON object")
        fmt = data.get("format")
        if fmt != FORMAT:
            raise RecordingError(f"{where}: recording format {fmt!r} is not supported "
                                 f"(this sbtui reads format {FORMAT})")
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            m = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as err:
            raise RecordingError(f"{where}: the manifest lacks a field: {err}") from err
        if m.kind not in ("record", "live") or m.status not in STATUSES:
            raise RecordingError(f"{where}: bad kind/status {m.kind!r}/{m.status!r}")
        if not isinstance(m.spec, dict):
            raise RecordingError(f"{where}: 'spec' is not an object")
        return m


class Recording:
    """A recording directory. ``Recording.create`` starts one, ``Recording.open`` reads one."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = path
        self.manifest = manifest
        self._store = None
        # One importer at a time through this Recording's store object: the
        # recorder's ingestion and a checkpoint rebuild may run at once.
        self.store_lock = threading.Lock()

    # -- creating and opening --------------------------------------------

    @classmethod
    def create(cls, path: str | Path, manifest: Manifest) -> "Recording":
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise UsageError(f"{path}: exists and is not empty; choose a new recording path")
        path.mkdir(parents=True, exist_ok=True)
        (path / GUEST_DIR).mkdir(exist_ok=True)
        rec = cls(path, manifest)
        rec.save_manifest()
        for name in (CHECKPOINTS, MARKERS, CONSOLE, DEBUGCON):
            (path / name).touch()
        fsync_dir(path)
        return rec

    @classmethod
    def open(cls, path: str | Path) -> "Recording":
        path = Path(path)
        if not path.exists():
            raise UsageError(f"{path}: no such recording")
        if not path.is_dir():
            raise UsageError(f"{path}: not a recording directory (packed recordings are "
                             "opened through engine.recording.pack.open_any)")
        mpath = path / MANIFEST
        try:
            data = json.loads(mpath.read_text())
        except FileNotFoundError:
            raise RecordingError(f"{path}: not a recording ({MANIFEST} is missing)") from None
        except (OSError, ValueError) as err:
            raise RecordingError(f"{mpath}: unreadable manifest: {err}") from err
        return cls(path, Manifest.from_json(data, mpath))

    def save_manifest(self) -> None:
        data = json.dumps(self.manifest.to_json(), indent=1, sort_keys=True).encode()
        atomic_write(self.path / MANIFEST, data)

    def update(self, **changes: Any) -> None:
        """Change manifest fields and save atomically."""
        for key, value in changes.items():
            if not hasattr(self.manifest, key):
                raise AttributeError(key)
            setattr(self.manifest, key, value)
        self.save_manifest()

    # -- files ------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.path / REPLAY_LOG

    @property
    def console_path(self) -> Path:
        return self.path / CONSOLE

    @property
    def debugcon_path(self) -> Path:
        return self.path / DEBUGCON

    @property
    def store_path(self) -> Path:
        return self.path / STORE_DIR

    @property
    def store(self):
        """The page store (opened on first use, created if the recording has none yet)."""
        if self._store is None:
            from engine.store import Store  # the store is heavier; most readers need only JSON
            self._store = Store.open(self.store_path, create=not self.store_path.exists())
        return self._store

    def close(self) -> None:
        store, self._store = self._store, None
        if store is not None and hasattr(store, "close"):
            store.close()

    def console_bytes(self) -> bytes:
        try:
            return self.console_path.read_bytes()
        except FileNotFoundError:
            return b""

    def add_guest_file(self, role: str, source: Path) -> str:
        """Copy a guest file (kernel, initrd) in; returns its path relative to the recording."""
        import hashlib
        h = hashlib.sha256()
        with open(source, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
        rel = f"{GUEST_DIR}/{role}-{digest[:16]}"
        dst = self.path / rel
        if not dst.exists():
            tmp = dst.with_name(dst.name + ".tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, dst)
        self.manifest.guest[role] = {"path": rel, "sha256": digest, "name": Path(source).name}
        return rel

    # -- checkpoints and markers -----------------------------------------

    def append_checkpoint(self, entry: CheckpointEntry) -> None:
        _append_line(self.path / CHECKPOINTS, entry.to_json())

    def checkpoints(self) -> list[CheckpointEntry]:
        """Every checkpoint, by index, the last line for an index winning."""
        by_index: dict[int, CheckpointEntry] = {}
        for lineno, data in _read_lines(self.path / CHECKPOINTS):
            try:
                entry = CheckpointEntry.from_json(data)
            except (KeyError, TypeError, ValueError) as err:
                raise RecordingError(f"{self.path / CHECKPOINTS}:{lineno}: bad checkpoint line: {err}") from err
            by_index[entry.index] = entry
        return [by_index[i] for i in sorted(by_index)]

    def checkpoint(self, ref: str | int) -> CheckpointEntry:
        """A checkpoint by interval index (``3`` or ``"3"``) or by store id."""
        cps = self.checkpoints()
        for cp in cps:
            if str(cp.index) == str(ref) or cp.store_id == str(ref):
                return cp
        have = f"0..{cps[-1].index}" if cps else "none"
        raise UsageError(f"{self.path}: no checkpoint {ref!r} (this recording has {have})")

    def append_marker(self, marker: Marker) -> None:
        _append_line(self.path / MARKERS, marker.to_json())

    def markers(self) -> list[Marker]:
        out = []
        for lineno, data in _read_lines(self.path / MARKERS):
            try:
                out.append(Marker.from_json(data))
            except (KeyError, TypeError, ValueError) as err:
                raise RecordingError(f"{self.path / MARKERS}:{lineno}: bad marker line: {err}") from err
        return out

    # -- replaying --------------------------------------------------------

    def machine_spec(self) -> MachineSpec:
        """The recorded machine with its guest files bound to this directory (record mode)."""
        data = dict(self.manifest.spec)
        for key in ("kernel", "initrd"):
            if data.get(key):
                data[key] = str(self.path / data[key])
        if data.get("rrfile"):
            data["rrfile"] = str(self.path / data["rrfile"])
        if data.get("debugcon_path"):
            data["debugcon_path"] = str(self.path / data["debugcon_path"])
        try:
            return MachineSpec.from_dict(data)
        except UsageError as err:
            raise RecordingError(f"{self.path / MANIFEST}: {err}") from err

    def replay_log(self, workdir: Path) -> Path:
        """A replay log QEMU accepts: the recording's own once complete, else a copy
        with the version word QEMU writes only at exit."""
        if self.manifest.kind != "record":
            raise RecordingError(f"{self.path}: a live recording has no replay log; it cannot be replayed "
                                 "instruction by instruction (start it as a new VM instead)")
        if not self.log_path.exists():
            raise RecordingError(f"{self.log_path}: the replay log is missing")
        with open(self.log_path, "rb") as f:
            head = f.read(4)
        if len(head) == 4 and int.from_bytes(head, "big") == REPLAY_LOG_VERSION:
            return self.log_path
        if len(head) == 4 and head != b"\0\0\0\0":
            raise RecordingError(f"{self.log_path}: not a QEMU replay log of the supported version "
                                 f"(version word {int.from_bytes(head, 'big'):#x}, "
                                 f"expected {REPLAY_LOG_VERSION:#x})")
        copy = Path(workdir) / REPLAY_LOG
        shutil.copyfile(self.log_path, copy)
        with open(copy, "r+b") as f:
            f.write(REPLAY_LOG_VERSION.to_bytes(4, "big"))
        return copy

    def check_qemu(self, version: tuple[int, int, int]) -> None:
        """A replay needs the QEMU major version that recorded (the log and the
        device state formats change between majors)."""
        recorded = self.manifest.qemu_version
        try:
            major = int(recorded.split(".")[0])
        except (ValueError, AttributeError):
            raise RecordingError(f"{self.path}: manifest has no usable qemu_version ({recorded!r})") from None
        if major != version[0]:
            raise RecordingError(
                f"{self.path}: recorded with QEMU {recorded}, but this machine has QEMU "
                f"{'.'.join(map(str, version))}; a replay needs QEMU {major}.x "
                "(set SBTUI_QEMU to such a binary)")


def _append_line(path: Path, data: dict[str, Any]) -> None:
    line = (json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """JSON objects of a .jsonl file; a torn (unterminated) last line is skipped."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return
    lines = raw.split(b"\n")
    # Everything after the last newline is a torn append (or empty).
    for lineno, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as err:
            raise RecordingError(f"{path}:{lineno}: not JSON: {err}") from err
        if not isinstance(data, dict):
            raise RecordingError(f"{path}:{lineno}: expected a JSON object")
        yield lineno, data
