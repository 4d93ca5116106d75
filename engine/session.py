"""The engine side of the facade in :mod:`engine.api`, for recordings on disk.

:class:`RecordingSession` implements ``api.Session`` for a recording directory
(complete, or one a recorder in this or another process is still filling);
:class:`DiskRecordingView` implements ``api.RecordingView`` over it.

How a growing recording is followed: the recorder only appends (checkpoint
and marker ``.jsonl`` lines, console bytes) and renames the manifest into
place, so a watcher thread that polls those files' sizes every
``poll_s`` seconds sees every change and tells subscribers; readers then read
what they have not seen yet. Nothing here writes to the recording.
"""

from __future__ import annotations

import threading
import time
from array import array
from pathlib import Path
from typing import Callable

from engine import api
from engine.errors import NotFoundError, RecordingError
from engine.recording.format import CHECKPOINTS, CONSOLE, MANIFEST, MARKERS, Recording

MAIN_RAM = "pc.ram"
# q35 maps RAM above this size partly above 4 GiB (hw/i386/pc_q35.c).
Q35_LOWMEM_LIMIT = 0xB0000000
Q35_LOWMEM = 0x80000000


def ram_regions(machine: str, ram_bytes: int) -> tuple[api.RamRegion, ...]:
    """Where the main RAM block lands in guest physical memory (x86 pc/q35)."""
    if "q35" in machine:
        low = Q35_LOWMEM if ram_bytes >= Q35_LOWMEM_LIMIT else ram_bytes
    else:  # i440fx: 3.5 GiB below the PCI hole at most
        low = 0xE0000000 if ram_bytes >= 0xE0000000 else ram_bytes
    if ram_bytes <= low:
        return ()
    return (api.RamRegion(0, 0, low), api.RamRegion(low, 1 << 32, ram_bytes - low))


class DiskRecordingView:
    """``api.RecordingView`` over a recording directory."""

    def __init__(self, rec: Recording, *, poll_s: float = 0.5):
        self.rec = rec
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._rows: list[api.CheckpointRow] = []
        self._rows_key: tuple = ()
        self._logical_bytes = 0
        self._subscribers: list[Callable[[api.RecordingEvent], None]] = []
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        spec = rec.machine_spec()
        ram = spec.memory_mib << 20
        self._machine = api.MachineInfo(
            arch="x86_64", machine=spec.machine, cpus=spec.smp, ram_bytes=ram,
            ram_block=MAIN_RAM, regions=ram_regions(spec.machine, ram),
            kernel=rec.manifest.guest.get("kernel", {}).get("name", ""))
        self._started = time.time()

    # -- cheap -------------------------------------------------------------

    @property
    def machine(self) -> api.MachineInfo:
        return self._machine

    def status(self) -> api.RecordingStatus:
        rows = self._rows
        m = self.rec.manifest
        state = api.GuestState.RUNNING if m.status == "recording" else api.GuestState.RECORDED
        last = rows[-1] if rows else None
        span = (rows[-1].wall_time - rows[0].wall_time) if len(rows) > 1 else 0.0
        rate = (len(rows) - 1) / span if span > 0 and state is api.GuestState.RUNNING else 0.0
        stored = sum(r.stored_bytes for r in rows)
        logical = self._logical_bytes
        return api.RecordingStatus(
            state=state, icount=m.end_icount or (last.icount if last else 0),
            guest_time_ns=last.guest_time_ns if last else 0, checkpoints=len(rows),
            checkpoint_rate_hz=rate, store_bytes=stored, logical_bytes=logical)

    # -- blocking ----------------------------------------------------------

    def checkpoints(self, start: int = 0) -> list[api.CheckpointRow]:
        self._refresh()
        return self._rows[start:]

    def _refresh(self) -> None:
        path = self.rec.path / CHECKPOINTS
        try:
            key = (path.stat().st_size, path.stat().st_mtime_ns)
        except FileNotFoundError:
            key = (0, 0)
        with self._lock:
            if key == self._rows_key:
                return
            entries = self.rec.checkpoints()
            # The store is opened only once a checkpoint is listed: the recorder
            # creates it before then, and a reader that opened it first would
            # race the recorder's own creation of it.
            infos = {c.id: c for c in self.rec.store.checkpoints()} if entries else {}
            rows = []
            logical = 0
            for cp in entries:
                info = infos.get(cp.store_id)
                st = info.stats if info is not None else None
                logical += st.raw_bytes if st else 0
                rows.append(api.CheckpointRow(
                    id=cp.store_id, index=cp.index, icount=cp.icount,
                    guest_time_ns=cp.guest_time_ns,
                    wall_time=self.rec.manifest.created + cp.wall_time,
                    downtime_ms=cp.downtime_ms,
                    pages_dirty=st.dirty_pages if st else 0,
                    pages_new=st.new_pages if st else 0,
                    stored_bytes=st.stored_bytes if st else 0,
                    dup_intra=st.intra_duplicates if st else 0,
                    dup_inter=st.inter_duplicates if st else 0,
                    zero_pages=st.zero_pages if st else 0))
            self._rows, self._rows_key, self._logical_bytes = rows, key, logical

    def _store_id(self, checkpoint_id: str) -> str:
        for row in self.checkpoints():
            if row.id == checkpoint_id:
                return row.id
        raise NotFoundError(f"{self.rec.path}: no checkpoint {checkpoint_id!r}")

    def dirty_pages(self, checkpoint_id: str) -> array:
        sid = self._store_id(checkpoint_id)
        return self.rec.store.dirty_pages(sid).get(MAIN_RAM, array("I"))

    def page_marks(self, checkpoint_id: str) -> api.PageMarks:
        sid = self._store_id(checkpoint_id)
        pc = self.rec.store.page_classes(sid).get(MAIN_RAM)
        if pc is None or not pc.known:
            return api.PageMarks(zero=pc.zero if pc is not None else None)
        return api.PageMarks(zero=pc.zero, duplicate=pc.duplicate)

    def markers(self) -> list[api.Marker]:
        shift = self.rec.manifest.spec.get("icount_shift") or 0
        return sorted((api.Marker(m.icount, m.icount << shift, m.text) for m in self.rec.markers()),
                      key=lambda m: m.icount)

    def console_text(self, start: int = 0) -> str:
        return self.rec.console_bytes().decode("utf-8", "replace")[start:]

    # -- analyses (api.AnalysisView) ------------------------------------------

    def analyses(self) -> list[api.AnalysisInfo]:
        from engine.parallel.results import load_report, stored_analyses
        out = []
        for name in stored_analyses(self.rec):
            report = load_report(self.rec, name)
            if report is None:
                continue
            out.append(api.AnalysisInfo(
                name=name, intervals=report.intervals, verified=report.verified,
                failed=tuple(report.failed), wall_s=report.wall_s, scheduler=report.scheduler,
                created=report.created, stale=report.stale))
        return out

    def writesets(self) -> list[api.IntervalWriteset]:
        from engine.parallel.analyses import pages_from_bytes
        from engine.parallel.results import load_report
        report = load_report(self.rec, "writeset")
        if report is None or report.stale:
            return []
        out = []
        for r in report.results:
            o = r.output
            if not o.get("steps"):
                continue
            steps = tuple(api.WritesetStep(icount=int(ic) if ic is not None else -1,
                                           pages=pages_from_bytes(pages))
                          for ic, pages in o["steps"])
            out.append(api.IntervalWriteset(
                interval=r.index, start_icount=r.start_icount, end_icount=r.end_icount,
                step_icount=int(o.get("step", 0)), steps=steps,
                working_set=int(o.get("working_set", 0)), ram_pages=int(o.get("ram_pages", 0)),
                store_dirty=o.get("store_dirty"), verified=r.ok))
        return out

    def writeset(self, checkpoint_id: str) -> api.IntervalWriteset | None:
        sid = self._store_id(checkpoint_id)
        row = next(r for r in self.checkpoints() if r.id == sid)
        if row.index == 0:
            return None   # checkpoint 0 closes no interval
        return next((w for w in self.writesets() if w.interval == row.index - 1), None)

    def simulate(self, analysis: str, *, jobs: int = 1, scheduler: str | None = None,
                 progress=None) -> api.AnalysisInfo:
        from engine.parallel import simulate
        from engine.parallel.local import LocalScheduler

        def relay(p) -> None:
            if progress is not None:
                progress(api.SimulationProgress(total=p.total, done=p.done, running=p.running,
                                                failed=p.failed, elapsed_s=p.elapsed_s,
                                                eta_s=p.eta_s, message=p.message))

        # The workers open the recording themselves; this view's store stays its own.
        rec = Recording.open(self.rec.path)
        try:
            if scheduler:
                from engine.parallel.dask import DaskScheduler
                with DaskScheduler(scheduler) as cluster:
                    report = simulate(rec, analysis, cluster, progress=relay)
            else:
                report = simulate(rec, analysis, LocalScheduler(jobs), progress=relay)
        finally:
            rec.close()
        return api.AnalysisInfo(name=report.analysis, intervals=report.intervals,
                                verified=report.verified, failed=tuple(report.failed),
                                wall_s=report.wall_s, scheduler=report.scheduler,
                                created=report.created, stale=False)

    # -- following a recording that grows -----------------------------------

    def subscribe(self, callback: Callable[[api.RecordingEvent], None]) -> api.Unsubscribe:
        with self._lock:
            self._subscribers.append(callback)
            if self._watcher is None and self.rec.manifest.status == "recording":
                self._watcher = threading.Thread(target=self._watch, name="sbtui-rec-watch",
                                                 daemon=True)
                self._watcher.start()

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)
        return unsubscribe

    def _watch(self) -> None:
        files = {CHECKPOINTS: "checkpoint", CONSOLE: "console", MARKERS: "marker", MANIFEST: "state"}
        sizes: dict[str, tuple] = {}
        while not self._stop.wait(self.poll_s):
            for name, kind in files.items():
                try:
                    st = (self.rec.path / name).stat()
                    key = (st.st_size, st.st_mtime_ns)
                except FileNotFoundError:
                    continue
                if sizes.get(name) != key:
                    # Also on first sight: what was written between the subscriber's
                    # first read and this poll would otherwise wait for the next change
                    # (a guest that printed once and went quiet showed an empty console).
                    # An extra event costs a read of nothing new.
                    sizes[name] = key
                    if kind == "state":
                        self._reload_manifest()
                    for cb in list(self._subscribers):
                        cb(api.RecordingEvent(kind))
            if self.rec.manifest.status != "recording":
                return

    def _reload_manifest(self) -> None:
        try:
            self.rec.manifest = Recording.open(self.rec.path).manifest
        except Exception:  # a manifest mid-rename: the next poll sees it
            pass

    def close(self) -> None:
        self._stop.set()


class RecordingSession:
    """``api.Session`` for a recording on disk (saved, or being recorded).

    :meth:`go_live` starts a go-live VM (:class:`engine.golive.GoLiveRecorder`
    under :func:`engine.live.start_live_session`) and keeps the returned
    session, so :meth:`close` stops it, and one still starting, too.
    """

    GOLIVE_START_TIMEOUT = 300.0    # QEMU's start and the state's load, on a busy machine
    GOLIVE_CLOSE_WAIT = 120.0       # how long close() waits for a go-live still starting

    def __init__(self, rec: Recording, *, name: str | None = None, live=None):
        self.rec = rec
        self._name = name or Path(rec.path).name
        self._view = DiskRecordingView(rec)
        self._live = live
        self._debuggers: list = []
        self._golive_cond = threading.Condition()
        self._golive_starting: list = []     # GoLiveRecorders whose session does not exist yet
        self._golive: list = []              # go-live sessions started here
        self._closed = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def recording(self) -> DiskRecordingView:
        return self._view

    @property
    def live(self):
        return self._live

    @property
    def path(self) -> str:
        return str(self.rec.path)

    def start_replay(self, checkpoint_id: str, progress: api.ProgressCallback | None = None):
        from engine.debugger import ReplayDebugger  # gdb and QEMU: only when asked
        self._view._store_id(checkpoint_id)
        dbg = ReplayDebugger.start(self.rec, checkpoint_id, progress=progress)
        self._debuggers.append(dbg)
        return dbg

    def go_live(self, checkpoint_id: str, progress: api.ProgressCallback | None = None, *,
                path: str | Path | None = None, interval: float = 2.0):
        """``api.Session.go_live``: the new run recorded at ``path`` (default
        ``<REC>-golive-<K>-<YYYYmmdd-HHMMSS>`` next to this recording)."""
        from engine.golive import GoLiveRecorder, default_golive_path
        from engine.live import start_live_session
        sid = self._view._store_id(checkpoint_id)
        # A Recording of its own: its store is read on the go-live VM's thread.
        source = Recording.open(self.rec.path)
        try:
            entry = next(c for c in source.checkpoints() if c.store_id == sid)
            say = None
            if progress is not None:
                def say(phase: str, fraction: float) -> None:
                    progress(api.ReplayProgress(phase, fraction))
            recorder = GoLiveRecorder(source, entry, path or default_golive_path(source, entry),
                                      interval=interval, progress=say, close_source=True)
        except BaseException:
            source.close()
            raise
        with self._golive_cond:
            if self._closed:
                source.close()
                raise RecordingError(f"{self.rec.path}: the session is closing; not going live")
            self._golive_starting.append(recorder)
        try:
            session = start_live_session(recorder, name=recorder.path.name,
                                         start_timeout=self.GOLIVE_START_TIMEOUT)
        finally:
            with self._golive_cond:
                self._golive_starting.remove(recorder)
                self._golive_cond.notify_all()
        with self._golive_cond:
            closed = self._closed
            if not closed:
                self._golive.append(session)
        if closed:
            session.close()
            raise RecordingError(f"{self.rec.path}: the session closed while checkpoint "
                                 f"#{entry.index} was going live; that VM is stopped")
        return session

    def _close_golive(self) -> None:
        with self._golive_cond:
            self._closed = True
            for recorder in self._golive_starting:
                recorder.stop()      # it stops once its guest is up; its session closes then
            self._golive_cond.wait_for(lambda: not self._golive_starting, self.GOLIVE_CLOSE_WAIT)
            sessions, self._golive = self._golive, []
        for session in sessions:
            try:
                session.close()
            except Exception:  # close never raises: keep stopping the rest
                pass

    def close(self) -> None:
        self._close_golive()
        for dbg in self._debuggers:
            try:
                dbg.close()
            except Exception:  # close never raises: the app is quitting
                pass
        self._debuggers.clear()
        self._view.close()
        try:
            self.rec.close()
        except Exception:
            pass
