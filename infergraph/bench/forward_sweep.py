"""Which forward-pass shape is fastest on this machine? In-process sweep over the batch limits.

    uv run python -m infergraph.bench.forward_sweep [--model all-MiniLM-L6-v2] [--variant DIR] [--seconds 4]

Each call gets `pool` consecutive corpus sentences (what one Serve batch carries); the runtime sorts
them by length and cuts forward passes of at most `seqs` sequences, `tokens` padded tokens and
`ratio` padded tokens per real token, and runs them on `lanes` threads at once. `--variant` sweeps
an optimize artifact (e.g. the registry cache's copy of the promoted INT8 model) instead of the base
FP32 ONNX export.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from infergraph.corpus import load_corpus
from infergraph.paths import PROJECT_ROOT
from infergraph.runtimes.catalog import load_catalog
from infergraph.runtimes.loader import load_artifact_encoder, load_text_encoder
from infergraph.runtimes.text_encoder import BatchLimits, TextEncoder

UNBOUNDED = 10**6
# (sentences per call, max sequences, max padded tokens, max padding ratio, lanes)
SHAPES = [
    (32, 32, UNBOUNDED, 100.0, 1),
    (32, 16, 512, 100.0, 1),
    (32, 16, 512, 100.0, 2),
    (32, 16, 512, 1.25, 1),
    (32, 16, 512, 1.25, 2),
    (32, 16, 512, 1.1, 2),
    (32, 32, UNBOUNDED, 1.25, 2),
    (16, 16, 512, 1.25, 2),
    (64, 16, 512, 1.25, 2),
    (1, 1, UNBOUNDED, 1.0, 1),
    # what one call carries at 8 clients (docs/benchmarks.md, low concurrency)
    (8, 16, 512, 1.15, 2),
    (8, 16, 512, 1.15, 1),
    (8, 16, 512, 1.5, 2),
]


def load(a: argparse.Namespace, lanes: int) -> TextEncoder:
    spec = load_catalog(PROJECT_ROOT / "configs" / "models.yaml").encoder(a.model)
    if a.variant:
        return load_artifact_encoder(spec, Path(a.variant), threads=a.threads, lanes=lanes)[0]
    return load_text_encoder(spec, engine="onnx", threads=a.threads, lanes=lanes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--variant", help="an optimize artifact folder (default: the base FP32 export)")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    corpus = load_corpus()
    encoders = {lanes: load(a, lanes) for lanes in (1, 2)}
    ids = encoders[1].tokenize(corpus[:1024])
    what = a.variant or "base ONNX FP32"
    table = Table(title=f"{a.model} ({what}), {a.threads} threads: sentences/s")
    for col in ("sentences per call", "max seqs / pass", "max padded tokens", "max padding ratio", "lanes"):
        table.add_column(col, justify="right")
    table.add_column("sent/s", justify="right")
    for pool, seqs, tokens, ratio, lanes in SHAPES:
        encoder = encoders[lanes]
        encoder.limits = BatchLimits(seqs, tokens, ratio)
        encoder.encode_ids(ids[:64])
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < a.seconds:
            start = done % 1024
            encoder.encode_ids(ids[start : start + pool])
            done += pool
        rate = done / (time.perf_counter() - t0)
        row = [pool, seqs, "-" if tokens >= UNBOUNDED else tokens, "-" if ratio >= 100 else ratio, lanes]
        table.add_row(*map(str, row), f"{rate:.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
