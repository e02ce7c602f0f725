"""Process-wide tuning that a server process (not a library user) opts into."""

from __future__ import annotations

import gc

__all__ = ["tune_gc"]


def tune_gc() -> None:
    """Make the cyclic garbage collector run less often.

    Each lock operation allocates a few dozen short-lived objects that die by
    reference counting; with the default thresholds the collector runs every
    few hundred operations and cost ~20% of the engine's CPU (bench/engine.py).
    Objects created during start-up are frozen out of its scans.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
