"""How many CPU threads an engine computes on: one rule for every model kind."""

from __future__ import annotations

import os


def engine_threads(threads: int | None = None) -> int:
    """`threads` (a catalog or deployment setting), else `INFERGRAPH_ENGINE_THREADS`, else every core."""
    if threads is not None:
        return threads
    env = os.environ.get("INFERGRAPH_ENGINE_THREADS")
    return int(env) if env else os.cpu_count() or 1
