"""What a recorder reports while it runs, and what it hands back at the end.

The recorder calls ``on_event(event)`` on its event loop with one of the
dataclasses below; the CLI prints them, the app turns them into messages.
A callback must return quickly (it runs between QMP commands).
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.recording.format import CheckpointEntry, Marker


@dataclass(frozen=True)
class RecordingStarted:
    path: Path
    argv: tuple[str, ...]          # the QEMU command line that records


@dataclass(frozen=True)
class CheckpointTaken:
    """The guest was paused and its state written; ingestion follows in the background."""

    index: int
    icount: int
    downtime_ms: float
    wall_time: float
    pending: int                   # checkpoints taken but not yet in the store (this one included)
    savevm_ms: float = 0.0         # the part of the downtime QEMU spent writing the state


@dataclass(frozen=True)
class CheckpointStored:
    entry: CheckpointEntry
    pages_dirty: int
    pages_new: int
    stored_bytes: int
    raw_bytes: int
    ingest_s: float
    lag: int                       # checkpoints taken but not yet stored, after this one


@dataclass(frozen=True)
class MarkerRecorded:
    marker: Marker


@dataclass(frozen=True)
class ProofStarted:
    index: int


@dataclass(frozen=True)
class ProofFinished:
    index: int
    status: str                    # verified | restore | diverged | console | unproven | error
    detail: str
    rebuilt: bool = False          # the checkpoint was replaced by a rebuilt one


@dataclass(frozen=True)
class Notice:
    """Something a person should know (ingestion behind, proofs unavailable, disk filling up)."""

    text: str


@dataclass
class RecordSummary:
    """The outcome of one recording run (also stored in the manifest's ``stats``)."""

    path: str
    kind: str
    status: str                    # complete | interrupted | failed
    checkpoints: int = 0
    markers: int = 0
    end_icount: int | None = None
    wall_s: float = 0.0
    downtimes_ms: list[float] = field(default_factory=list)
    max_lag: int = 0
    ingest_s: list[float] = field(default_factory=list)
    proofs: dict[str, int] = field(default_factory=dict)   # verified / failed / unproven / rebuilt
    proof_note: str = ""
    stored_bytes: int = 0
    raw_bytes: int = 0
    error: str | None = None

    @property
    def downtime_median_ms(self) -> float | None:
        return statistics.median(self.downtimes_ms) if self.downtimes_ms else None

    @property
    def downtime_max_ms(self) -> float | None:
        return max(self.downtimes_ms) if self.downtimes_ms else None

    def figures(self) -> dict[str, Any]:
        med, mx = self.downtime_median_ms, self.downtime_max_ms
        return {
            "downtime_ms_median": round(med, 2) if med is not None else None,
            "downtime_ms_max": round(mx, 2) if mx is not None else None,
            "ingest_s_median": round(statistics.median(self.ingest_s), 3) if self.ingest_s else None,
            "ingest_s_max": round(max(self.ingest_s), 3) if self.ingest_s else None,
            "max_ingest_lag": self.max_lag,
            "stored_bytes": self.stored_bytes,
            "raw_bytes": self.raw_bytes,
            "proofs": dict(self.proofs),
            "proof_note": self.proof_note,
        }

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items()
             if k not in ("downtimes_ms", "ingest_s")}
        d.update(self.figures())
        return d
