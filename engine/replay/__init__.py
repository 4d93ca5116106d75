"""Replay: restore any checkpoint of a recording into a deterministic QEMU replay,
run it to an exact instruction count, take its state, and prove intervals.

``session`` owns a replay QEMU; ``compare`` compares guest RAM with the store;
``prove`` checks (and, where needed, rebuilds) checkpoints.
"""

from engine.replay.prove import IntervalResult, prove_and_repair, prove_interval, rebuild_checkpoint
from engine.replay.session import ReplaySession

__all__ = ["IntervalResult", "ReplaySession", "prove_and_repair", "prove_interval",
           "rebuild_checkpoint"]
