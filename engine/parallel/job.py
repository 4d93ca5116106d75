"""The self-contained interval job: everything a worker needs to replay one interval, as bytes.

::

    job = build_job(rec, 3, "writeset", {"step": 50_000_000})
    data = job.encode(compress=True)           # msgpack, travels to any host
    result = run_job(IntervalJob.decode(data), guest=guest_files(rec))
    result.encode()                            # msgpack, travels back

An :class:`IntervalJob` carries checkpoint k's migration stream (exported
from the store, optionally lz4-framed), the replay-log bytes the interval
reads (:mod:`engine.parallel.replaylog`: the header and head, and the slice
from checkpoint k's saved log position to just past k+1's, written back
into a sparse file at the same offsets), the machine description with the
guest files named by role and SHA-256, the QEMU version that recorded, and
the interval's bounds. The guest's kernel and initrd are the same for every
job of a recording, so they travel once beside the jobs (:func:`guest_files`;
Dask scatters them) unless ``build_job(..., inline_guest=True)``.

A *local* job (``build_job(..., local=True)``, what the local scheduler's
workers build beside the store) carries the same fields except the stream:
its restore reads the checkpoint from the store while QEMU loads it (the
store checks every page it reads), and its guest files are links to the
recording's own. Such a job cannot be encoded.

:func:`run_job` runs on the worker from those bytes only: it rebuilds a
minimal recording directory in a private temporary directory (on tmpfs when
there is one: manifest, sparse log, guest files, one checkpoint line, no
store), restores the shipped stream through ``ReplaySession``'s ``source``
hook, runs the analysis (:mod:`engine.parallel.analyses`) and removes the
directory, whatever happens. A worker killed mid-job leaves its directory
behind; the next job on that host removes directories whose owner process
is gone.

Every result (:class:`JobResult`) carries, besides the analysis output:

* the end state as page hashes (xxh3-128 per page, 16 bytes, ``ZERO`` for a
  zero page, as the store's page maps), so the client can compare it with
  the store's next checkpoint without shipping pages back;
* QEMU's exit code and the console bytes produced (for the last interval,
  which runs to the end of the log);
* timings (setup, restore, replay, analysis, snapshot) and the worker's name;
* ``error``: what went wrong, one line, with the worker's name, when the job
  could not run (no QEMU on the worker, a refused state, a stalled replay).

The wire format is msgpack maps with a format number; :meth:`decode` checks
every field's type, so a damaged or foreign message is a :class:`ReplayError`
naming the field, never a crash deep inside a replay.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

import msgpack
import xxhash

from engine.errors import QemuDiedError, ReplayError, SbtuiError
from engine.paths import remove_orphaned_dirs
from engine.recording.format import (GUEST_DIR, REPLAY_LOG, CheckpointEntry, Manifest, Recording)

JOB_FORMAT = 1
RESULT_FORMAT = 1
JOB_MAGIC = b"SBJOB"
RESULT_MAGIC = b"SBRES"
GUEST_MAGIC = b"SBGST"
WORKDIR_PREFIX = "sbtui-job-"
_CHUNK = 1 << 20


def scratch_dir() -> Path:
    """Where jobs put their private directories: tmpfs when writable (the
    guest's RAM file for ``writeset`` lives there), else the temp dir."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm
    return Path(tempfile.gettempdir())


def worker_name() -> str:
    """This process as a worker: its Dask address when it is one, else host:pid."""
    try:
        from distributed import get_worker
        return f"{get_worker().address} ({socket.gethostname()})"
    except (ImportError, ValueError):
        return f"local {socket.gethostname()}:{os.getpid()}"


# --------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------

@dataclass
class IntervalJob:
    """One interval of one recording, with all the bytes needed to replay it."""

    recording: str                  # a label: the recording's directory name
    index: int
    analysis: str
    params: dict[str, Any]
    checkpoint: dict[str, Any]      # CheckpointEntry.to_json() of checkpoint `index`
    end_icount: int | None          # next checkpoint's icount; None: replay to the end of the log
    final_icount: int | None        # the recording's last instruction count, when known
    spec: dict[str, Any]            # MachineSpec.to_dict(); kernel/initrd are roles
    qemu_version: str
    guest: dict[str, str]           # role -> sha256
    stream: bytes
    stream_codec: str               # "raw" | "lz4"
    stream_len: int
    stream_xxh3: bytes
    log_pieces: list[tuple[int, bytes]]
    log_size: int
    guest_data: dict[str, bytes] = field(default_factory=dict)   # sha256 -> bytes, when inline
    build_s: float = 0.0
    # Local jobs only (``build_job(..., local=True)``), never on the wire: the
    # stream is written straight from the store into the restoring QEMU's
    # pipe, while QEMU loads it (no copy in memory first, no second hash:
    # the store checks what it reads), and the guest files are the
    # recording's own (sha256 -> path), linked rather than copied.
    stream_source: Callable[[BinaryIO], object] | None = field(
        default=None, repr=False, compare=False, metadata={"wire": False})
    guest_paths: dict[str, Path] = field(
        default_factory=dict, repr=False, compare=False, metadata={"wire": False})

    @property
    def start_icount(self) -> int:
        return int(self.checkpoint["icount"])

    @property
    def log_bytes(self) -> int:
        return sum(len(d) for _, d in self.log_pieces)

    @property
    def local(self) -> bool:
        """Whether the job reads its stream from a store on this host."""
        return self.stream_source is not None

    def stream_bytes(self) -> bytes:
        """The checkpoint's migration stream, checked against its length and hash."""
        if self.stream_source is not None:
            buf = io.BytesIO()
            self.stream_source(buf)
            return buf.getvalue()
        data = self.stream
        if self.stream_codec == "lz4":
            import lz4.frame
            data = lz4.frame.decompress(data)
        if len(data) != self.stream_len or xxhash.xxh3_128_digest(data) != self.stream_xxh3:
            raise ReplayError(f"interval {self.index}: the checkpoint stream arrived damaged "
                              f"({len(data)} bytes, expected {self.stream_len})")
        return data

    # -- wire -------------------------------------------------------------

    def encode(self, *, compress: bool = False) -> bytes:
        """msgpack bytes; ``compress`` lz4-frames the stream (for the network)."""
        if self.local:
            raise ReplayError(f"interval {self.index}: a job built to read its stream from the "
                              "local store cannot travel; build it with local=False")
        stream, codec = self.stream, self.stream_codec
        if compress and codec == "raw":
            import lz4.frame
            stream, codec = lz4.frame.compress(stream), "lz4"
        body = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata.get("wire", True)}
        body.update(stream=stream, stream_codec=codec, format=JOB_FORMAT,
                    log_pieces=[[o, d] for o, d in self.log_pieces])
        return JOB_MAGIC + msgpack.packb(body, use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> "IntervalJob":
        body = _unpack(data, JOB_MAGIC, "interval job")
        if body.get("format") != JOB_FORMAT:
            raise ReplayError(f"interval job format {body.get('format')!r} is not supported "
                              f"(this worker runs format {JOB_FORMAT}); install the same sbtui "
                              "on the client and the workers")
        want = {
            "recording": str, "index": int, "analysis": str, "params": dict, "checkpoint": dict,
            "end_icount": (int, type(None)), "final_icount": (int, type(None)), "spec": dict,
            "qemu_version": str, "guest": dict, "stream": bytes, "stream_codec": str,
            "stream_len": int, "stream_xxh3": bytes, "log_pieces": list, "log_size": int,
            "guest_data": dict, "build_s": (float, int),
        }
        kwargs = _checked(body, want, "interval job")
        for name in ("guest", "guest_data"):
            if not all(isinstance(k, str) and isinstance(v, (str, bytes))
                       for k, v in kwargs[name].items()):
                raise ReplayError(f"interval job: field {name!r} is malformed")
        if kwargs["stream_codec"] not in ("raw", "lz4"):
            raise ReplayError(f"interval job: unknown stream codec {kwargs['stream_codec']!r}")
        pieces = []
        for piece in kwargs["log_pieces"]:
            if (not isinstance(piece, list) or len(piece) != 2 or not isinstance(piece[0], int)
                    or not isinstance(piece[1], bytes)):
                raise ReplayError("interval job: field 'log_pieces' is malformed")
            pieces.append((piece[0], piece[1]))
        kwargs["log_pieces"] = pieces
        try:
            CheckpointEntry.from_json(kwargs["checkpoint"])
        except (KeyError, TypeError, ValueError) as err:
            raise ReplayError(f"interval job: bad checkpoint: {err}") from None
        return cls(**kwargs)


def _unpack(data: bytes, magic: bytes, what: str) -> dict:
    if not isinstance(data, (bytes, bytearray, memoryview)) or bytes(data[:len(magic)]) != magic:
        raise ReplayError(f"not an sbtui {what} (bad magic)")
    try:
        body = msgpack.unpackb(memoryview(data)[len(magic):], raw=False, strict_map_key=False)
    except Exception as err:  # msgpack raises several unrelated types
        raise ReplayError(f"{what} does not decode: {err}") from None
    if not isinstance(body, dict):
        raise ReplayError(f"{what} is not a map")
    return body


def _checked(body: dict, want: dict[str, Any], what: str) -> dict[str, Any]:
    out = {}
    for name, types in want.items():
        if name not in body:
            raise ReplayError(f"{what}: field {name!r} is missing")
        value = body[name]
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise ReplayError(f"{what}: field {name!r} has the wrong type (bool)")
        if not isinstance(value, types):
            raise ReplayError(f"{what}: field {name!r} has the wrong type ({type(value).__name__})")
        out[name] = value
    return out


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def guest_roles(rec: Recording) -> dict[str, tuple[str, Path]]:
    """role -> (sha256, path) of the guest files the machine boots (kernel, initrd)."""
    out = {}
    spec = rec.manifest.spec
    for role in ("kernel", "initrd"):
        rel = spec.get(role)
        if not rel:
            continue
        path = rec.path / rel
        if not path.is_file():
            raise ReplayError(f"{rec.path}: the guest {role} {rel} is missing")
        known = rec.manifest.guest.get(role, {})
        digest = known.get("sha256") if known.get("path") == rel else None
        out[role] = (digest or _file_sha256(path), path)
    return out


def guest_files(rec: Recording) -> bytes:
    """The guest files of a recording, packed once for every job (sha256 -> bytes)."""
    files = {digest: path.read_bytes() for digest, path in guest_roles(rec).values()}
    return GUEST_MAGIC + msgpack.packb({"format": JOB_FORMAT, "files": files}, use_bin_type=True)


def decode_guest_files(data: bytes) -> dict[str, bytes]:
    body = _unpack(data, GUEST_MAGIC, "guest file bundle")
    files = body.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, bytes)
                                              for k, v in files.items()):
        raise ReplayError("guest file bundle: field 'files' is malformed")
    return files


def build_job(rec: Recording, index: int, analysis: str, params: dict[str, Any] | None = None, *,
              offsets: dict[int, int] | None = None, inline_guest: bool = False,
              local: bool = False) -> IntervalJob:
    """The job for interval ``index`` (checkpoint ``index`` to the next, or to the end).

    ``local=True`` is for a worker on the store's host (the local scheduler):
    the stream is exported from ``rec``'s store while QEMU loads it, so
    ``rec`` must stay open until the job has run, and the job cannot be
    encoded. Everything else (log slice, machine, bounds) is the same."""
    from engine.parallel import replaylog
    t0 = time.monotonic()
    if rec.manifest.kind != "record":
        raise ReplayError(f"{rec.path}: a live recording has no replay log; its intervals "
                          "cannot be replayed")
    cps = {cp.index: cp for cp in rec.checkpoints()}
    if index not in cps:
        have = f"0..{max(cps)}" if cps else "none"
        raise ReplayError(f"{rec.path}: no interval {index} (the recording has {have})")
    cp, nxt = cps[index], cps.get(index + 1)
    if offsets is None:
        offsets = {i: replaylog.checkpoint_state(rec, c).file_offset for i, c in cps.items()
                   if i in (index, index + 1)}
    if not rec.log_path.exists():
        raise ReplayError(f"{rec.log_path}: the replay log is missing")
    log_size = rec.log_path.stat().st_size
    ranges = replaylog.slice_ranges(offsets, index, log_size)
    pieces = replaylog.read_pieces(rec.log_path, ranges)
    if local:
        stream = b""
    else:
        buf = io.BytesIO()
        rec.store.export_stream(cp.store_id, buf)
        stream = buf.getvalue()
    roles = guest_roles(rec)
    spec = dict(rec.manifest.spec)
    for role in ("kernel", "initrd"):
        if spec.get(role):
            spec[role] = role
    for plumbing in ("rrfile", "debugcon_path", "vmstate_image", "gdb", "rrsnapshot"):
        spec[plumbing] = None
    job = IntervalJob(
        recording=Path(rec.path).name, index=index, analysis=analysis, params=dict(params or {}),
        checkpoint=cp.to_json(), end_icount=nxt.icount if nxt is not None else None,
        final_icount=rec.manifest.end_icount, spec=spec, qemu_version=rec.manifest.qemu_version,
        guest={role: digest for role, (digest, _p) in roles.items()},
        stream=stream, stream_codec="raw", stream_len=len(stream),
        stream_xxh3=xxhash.xxh3_128_digest(stream), log_pieces=pieces, log_size=log_size)
    if local:
        store, store_id = rec.store, cp.store_id
        job.stream_source = lambda dst: store.export_stream(store_id, dst)
        job.guest_paths = {digest: path for digest, path in roles.values()}
    elif inline_guest:
        job.guest_data = {digest: path.read_bytes() for digest, path in roles.values()}
    job.build_s = time.monotonic() - t0
    return job


# --------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------

@dataclass
class JobResult:
    """What a worker sends back for one interval."""

    index: int
    analysis: str
    worker: str
    error: str = ""                          # one line; empty when the job ran
    reached_icount: int | None = None
    exit_code: int | None = None             # the last interval: QEMU's exit code at the log's end
    end_pages: dict[str, bytes] = field(default_factory=dict)   # block -> 16-byte entries
    console: bytes = b""
    output: dict[str, Any] = field(default_factory=dict)        # the analysis's own result
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error

    def encode(self) -> bytes:
        body = dataclasses.asdict(self)
        body["format"] = RESULT_FORMAT
        return RESULT_MAGIC + msgpack.packb(body, use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> "JobResult":
        body = _unpack(data, RESULT_MAGIC, "job result")
        if body.get("format") != RESULT_FORMAT:
            raise ReplayError(f"job result format {body.get('format')!r} is not supported")
        want = {"index": int, "analysis": str, "worker": str, "error": str,
                "reached_icount": (int, type(None)), "exit_code": (int, type(None)),
                "end_pages": dict, "console": bytes, "output": dict, "timings": dict}
        kwargs = _checked(body, want, "job result")
        if not all(isinstance(k, str) and isinstance(v, bytes) for k, v in kwargs["end_pages"].items()):
            raise ReplayError("job result: field 'end_pages' is malformed")
        return cls(**kwargs)


# --------------------------------------------------------------------------
# Running a job on a worker
# --------------------------------------------------------------------------

def run_job_bytes(job_bytes: bytes, guest_bytes: bytes | None = None) -> bytes:
    """The worker's entry point: job bytes (and the guest bundle) in, result bytes out.

    Never raises for a job that cannot run: the result's ``error`` says why
    and names this worker. (A worker that dies raises nothing: its scheduler
    runs the job elsewhere.)

    ``timings["received_at"]`` is the worker's Unix time when the bytes
    arrived, so the client can tell how long dispatching the job took."""
    received = time.time()
    name = worker_name()
    try:
        job = IntervalJob.decode(job_bytes)
    except SbtuiError as err:
        return JobResult(index=-1, analysis="", worker=name, error=f"on {name}: {err}").encode()
    try:
        guest = decode_guest_files(guest_bytes) if guest_bytes is not None else None
    except SbtuiError as err:
        return JobResult(job.index, job.analysis, name, error=f"on {name}: {err}").encode()
    result = run_job(job, guest=guest, worker=name)
    result.timings["received_at"] = received
    return result.encode()


def run_job(job: IntervalJob, *, guest: dict[str, bytes] | None = None, worker: str | None = None,
            base: Path | None = None) -> JobResult:
    """Replay ``job`` in a private directory and run its analysis (blocking)."""
    name = worker or worker_name()
    t0 = time.monotonic()
    result = JobResult(job.index, job.analysis, name)
    try:
        result = asyncio.run(_run(job, guest or {}, name, base or scratch_dir()))
    except SbtuiError as err:
        result.error = f"on {name}: {_one_line(err)}"
    except OSError as err:
        result.error = f"on {name}: {err}"
    result.timings["total_s"] = time.monotonic() - t0
    result.timings.setdefault("build_s", job.build_s)
    return result


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def remove_stale_workdirs(base: Path) -> list[Path]:
    """Remove job directories whose owner process is gone (a worker killed mid-job)."""
    return remove_orphaned_dirs(base, WORKDIR_PREFIX)


async def _run(job: IntervalJob, guest: dict[str, bytes], name: str, base: Path) -> JobResult:
    from engine.parallel.analyses import get_analysis
    from engine.qemu import MachineSpec, find_qemu, qemu_version
    from engine.replay.session import ReplaySession

    analysis = get_analysis(job.analysis)
    result = JobResult(job.index, job.analysis, name)
    t0 = time.monotonic()
    binary = find_qemu()      # first: a worker without QEMU says so before any work
    qemu_version(binary)
    remove_stale_workdirs(base)
    work = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-", dir=base))
    try:
        rec = await asyncio.to_thread(_materialize, job, guest, work)
        stream = b"" if job.local else await asyncio.to_thread(job.stream_bytes)
        entry = CheckpointEntry.from_json(job.checkpoint)
        memory_path = None
        if analysis.needs_memory_file:
            memory_path = work / "ram"
            spec = rec.machine_spec()
            rec.manifest.spec = spec.with_memory_file(memory_path).to_dict()
            _relativize(rec.manifest.spec, rec)
        result.timings["setup_s"] = time.monotonic() - t0

        def source(dst: BinaryIO) -> None:
            if job.stream_source is not None:
                job.stream_source(dst)
                return
            view = memoryview(stream)
            for off in range(0, len(view), _CHUNK):
                dst.write(view[off:off + _CHUNK])

        ram_bytes = int(MachineSpec.from_dict(rec.manifest.spec).memory_mib) << 20
        restored = False
        try:
            async with ReplaySession(rec, entry, source=source, start_icount=entry.icount,
                                     workdir=work / "replay") as rs:
                restored = True
                stream = b""   # the pipe has it; a 100 MB job should not hold it twice
                result.timings["restore_s"] = rs.restore_s or 0.0
                ctx = JobContext(job=job, session=rs, memory_path=memory_path,
                                 ram_bytes=ram_bytes, result=result)
                await analysis.run(ctx)
                result.console = rs.console_bytes()
        except QemuDiedError as err:
            # A recording that ended while the guest idled has a last interval
            # without instructions: all that is left of its log is the recorded
            # shutdown, which a replay QEMU carries out as soon as the state is
            # loaded, paused or not. That is this interval's end of the log.
            if restored or job.end_icount is not None or err.exit_code != 0:
                raise
            result.exit_code = 0
            result.output = analysis.empty_output(job, ram_bytes)
            result.timings["restore_s"] = time.monotonic() - t0
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
    return result


@dataclass
class JobContext:
    """What an analysis gets on the worker: the job, the replay, where guest RAM is."""

    job: IntervalJob
    session: Any                     # engine.replay.session.ReplaySession
    memory_path: Path | None         # the guest's RAM file, when the analysis asked for it
    ram_bytes: int
    result: JobResult


def _materialize(job: IntervalJob, guest: dict[str, bytes], work: Path) -> Recording:
    """A minimal recording directory in ``work``: manifest, sparse log, guest files, one checkpoint."""
    from engine.parallel.replaylog import write_sparse
    rec_dir = work / "rec"
    manifest = Manifest(kind="record", spec=dict(job.spec), qemu_version=job.qemu_version,
                        interval_s=0.0, created=time.time(), status="complete",
                        end_icount=job.final_icount)
    rec = Recording.create(rec_dir, manifest)
    for role, digest in job.guest.items():
        rel = f"{GUEST_DIR}/{role}-{digest[:16]}"
        local = job.guest_paths.get(digest)
        if local is not None:
            # The recording's own file, which the direct replay path uses as it is.
            os.symlink(Path(local).resolve(), rec_dir / rel)
            manifest.spec[role] = rel
            continue
        data = job.guest_data.get(digest)
        if data is None:
            data = guest.get(digest)
        if data is None:
            raise ReplayError(f"interval {job.index}: the guest {role} (sha256 {digest[:16]}) "
                              "was not sent with the job")
        if hashlib.sha256(data).hexdigest() != digest:
            raise ReplayError(f"interval {job.index}: the guest {role} arrived damaged "
                              f"(sha256 differs from {digest[:16]})")
        (rec_dir / rel).write_bytes(data)
        manifest.spec[role] = rel
    manifest.spec["rrfile"] = REPLAY_LOG
    write_sparse(rec_dir / REPLAY_LOG, job.log_pieces, job.log_size)
    rec.save_manifest()
    rec.append_checkpoint(CheckpointEntry.from_json(job.checkpoint))
    return rec


def _relativize(spec: dict, rec: Recording) -> None:
    # machine_spec() joined the guest paths to the directory; the manifest keeps them relative.
    for key in ("kernel", "initrd", "rrfile", "debugcon_path"):
        value = spec.get(key)
        if value and Path(value).is_absolute():
            try:
                spec[key] = str(Path(value).relative_to(rec.path))
            except ValueError:
                pass
