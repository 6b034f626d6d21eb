"""GPU numbers for the text-encoder runtime, on a bare GPU machine (no Ray, no pydantic needed).

    python -m infergraph.bench.gpu_runtime --model-dir DIR [--reference ref.npy] [--out results.jsonl]

Embeds the frozen corpus with the PyTorch engine (fp16 and fp32, length-sorted forward passes of
64 / 256 / 1024 sequences) and prints sentences/s; with --reference (fp32 CPU embeddings of the
first N corpus sentences) it also checks that the GPU vectors agree (cosine).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from infergraph.corpus import load_corpus
from infergraph.runtimes.engines.torch_engine import TorchEngine
from infergraph.runtimes.text_encoder import BatchLimits, TextEncoder
from infergraph.runtimes.tokenizer import load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--reference", type=Path)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    corpus = load_corpus()
    tokenizer, pad_id = load_tokenizer(a.model_dir)
    rows = []
    for dtype in ("float16", "float32"):
        engine = TorchEngine(a.model_dir, device="cuda", dtype=dtype)
        encoder = TextEncoder(tokenizer, engine, a.max_length, pad_id=pad_id)
        ids = encoder.tokenize(corpus)
        if a.reference is not None:
            ref = np.load(a.reference)
            got = encoder.encode_ids(ids[: len(ref)])
            cos = (got * ref).sum(axis=1)
            print(f"{dtype}: cosine vs CPU fp32 reference: min {cos.min():.5f} mean {cos.mean():.5f}")
        for batch in (64, 256, 1024):
            encoder.limits = BatchLimits(max_sequences=batch, max_padded_tokens=10**9)
            encoder.encode_ids(ids)  # warm-up: kernels, allocator
            done, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < a.seconds:
                encoder.encode_ids(ids)
                done += len(ids)
            rate = done / (time.perf_counter() - t0)
            row = {"engine": engine.name, "max_sequences": batch, "sent_per_s": round(rate)}
            print(row, flush=True)
            rows.append(row)
        del engine, encoder
    if a.out:
        a.out.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
