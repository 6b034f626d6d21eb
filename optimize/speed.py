"""Speed of a variant through the same `runtimes/` code that serves it."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from optimize.evaluate import Encode


def throughput(encode: Encode, texts: Sequence[str], batch: int, warmup_batches: int = 2) -> dict[str, float]:
    """Sentences/s and per-call latency percentiles, calling `encode` with `batch` texts at a time."""
    calls = [list(texts[i : i + batch]) for i in range(0, len(texts) - batch + 1, batch)]
    for call in calls[:warmup_batches]:
        encode(call)
    latencies = []
    started = time.perf_counter()
    for call in calls:
        t0 = time.perf_counter()
        encode(call)
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    p50, p95 = np.percentile(latencies, [50, 95]) * 1000
    return {"sentences_per_s": len(calls) * batch / elapsed, "p50_ms": float(p50), "p95_ms": float(p95)}
