"""Which forward-pass shape is fastest on this machine? In-process sweep over the batch limits.

    uv run python -m bench.forward_sweep [--model all-MiniLM-L6-v2] [--seconds 4]

Each call gets `pool` consecutive corpus sentences (what one Serve batch carries); the runtime sorts
them by length and cuts forward passes of at most `seqs` sequences and `tokens` padded tokens.
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from bench.encoders import load_corpus
from bench.service import ROOT
from runtimes.catalog import load_catalog
from runtimes.loader import load_text_encoder
from runtimes.text_encoder import BatchLimits

SHAPES = [(32, 32, 10**6), (32, 8, 10**6), (64, 32, 10**6), (64, 16, 512), (128, 16, 512), (128, 4, 10**6)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    corpus = load_corpus()
    spec = load_catalog(ROOT / "configs" / "models.yaml").get(a.model)
    encoder = load_text_encoder(spec, engine="onnx", threads=a.threads)
    ids = encoder.tokenize(corpus[:1024])
    encoder.encode_ids(ids[:64])
    table = Table(title=f"{a.model}, ONNX Runtime FP32, {a.threads} threads: sentences/s")
    for col in ("sentences per call", "max sequences / pass", "max padded tokens / pass", "sent/s"):
        table.add_column(col, justify="right")
    for pool, seqs, tokens in SHAPES:
        encoder.limits = BatchLimits(seqs, tokens)
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < a.seconds:
            start = done % 1024
            encoder.encode_ids(ids[start : start + pool])
            done += pool
        table.add_row(
            str(pool),
            str(seqs),
            "-" if tokens >= 10**6 else str(tokens),
            f"{done / (time.perf_counter() - t0):.0f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
