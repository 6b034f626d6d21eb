"""Speed of a variant through the same `runtimes/` code that serves it."""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence

import numpy as np
import psutil

from infergraph.optimize.evaluate import Encode


def throughput(
    encode: Encode, texts: Sequence[str], batch: int, warmup_batches: int = 2, passes: int = 3
) -> dict[str, float]:
    """Sentences/s (the median of `passes` passes over `texts`) and per-call latency percentiles.

    Several passes because this is a shared 2-core VM: one pass can lose a third to a neighbour.
    """
    calls = [list(texts[i : i + batch]) for i in range(0, len(texts) - batch + 1, batch)]
    for call in calls[:warmup_batches]:
        encode(call)
    latencies, rates = [], []
    for _ in range(passes):
        started = time.perf_counter()
        for call in calls:
            t0 = time.perf_counter()
            encode(call)
            latencies.append(time.perf_counter() - t0)
        rates.append(len(calls) * batch / (time.perf_counter() - started))
    p50, p95 = np.percentile(latencies, [50, 95]) * 1000
    return {"sentences_per_s": float(np.median(rates)), "p50_ms": float(p50), "p95_ms": float(p95)}


def speed_profile(encode: Encode, texts: Sequence[str], batches: Sequence[int]) -> dict[str, float]:
    """Throughput and latency at each batch size, flat for MLflow (`throughput_b32`, `p95_ms_b1`, ...).

    Batch 1 runs a quarter of the sentences: it is the slow case and its percentiles settle early.
    The largest batch, which the gate ranks by, gets three passes.
    """
    out: dict[str, float] = {}
    for batch in batches:
        sample = texts if batch > 1 else texts[: max(len(texts) // 4, 16)]
        result = throughput(encode, sample, batch, passes=3 if batch == max(batches) else 1)
        out[f"throughput_b{batch}"] = result["sentences_per_s"]
        out[f"p50_ms_b{batch}"] = result["p50_ms"]
        out[f"p95_ms_b{batch}"] = result["p95_ms"]
    return out


def head_to_head(
    encode_base: Encode, encode_variant: Encode, texts: Sequence[str], batch: int, rounds: int = 5
) -> dict[str, float]:
    """The variant's speed-up over the base, measured in alternating passes (which goes first flips
    each round), so a neighbour slowing this VM down hits both sides: the median of per-round ratios.

    Separate measurements minutes apart moved the ratio by up to ±30% here; this one is the figure
    to quote against a "N x the base" bar.
    """
    calls = [list(texts[i : i + batch]) for i in range(0, len(texts) - batch + 1, batch)]

    def rate(encode: Encode) -> float:
        started = time.perf_counter()
        for call in calls:
            encode(call)
        return len(calls) * batch / (time.perf_counter() - started)

    for encode in (encode_base, encode_variant):
        encode(calls[0])  # warm-up
    base_rates, variant_rates = [], []
    for r in range(rounds):
        if r % 2:
            variant_rates.append(rate(encode_variant))
            base_rates.append(rate(encode_base))
        else:
            base_rates.append(rate(encode_base))
            variant_rates.append(rate(encode_variant))
    ratios = [v / b for v, b in zip(variant_rates, base_rates, strict=True)]
    return {
        "h2h_base_sentences_per_s": float(np.median(base_rates)),
        "h2h_variant_sentences_per_s": float(np.median(variant_rates)),
        "h2h_speedup": float(np.median(ratios)),
        "h2h_speedup_min": float(min(ratios)),
        "h2h_rounds": float(rounds),
    }


def resident_mb() -> float:
    """This process's resident memory; a variant's cost is the growth across its load and run."""
    gc.collect()
    return psutil.Process().memory_info().rss / 1e6
