"""GPU speed of an encoder at FP32 / FP16 / BF16 through `runtimes/` (no MLflow, no Ray: runs on a bare box).

    python -m infergraph.optimize.gpu --model-dir DIR --name all-MiniLM-L6-v2 \
        --texts corpus.jsonl --out gpu.json

Prints and writes, per precision: sentences/s and per-call p50/p95 latency at each batch size, peak
GPU memory, and fidelity (mean/min cosine) to the FP32 vectors on the same GPU. `python -m infergraph.optimize
--gpu-results gpu.json` logs the file to MLflow as runs labelled with the device.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from infergraph.runtimes.engines.torch_engine import TorchEngine
from infergraph.runtimes.text_encoder import BatchLimits, TextEncoder
from infergraph.runtimes.tokenizer import load_tokenizer

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def timed_calls(encoder: TextEncoder, texts: list[str], batch: int) -> dict[str, float]:
    """Times a second pass over the calls: the first one meets every padded shape once, and
    half-precision kernels pick their algorithm per new shape (tens of ms), which is warm-up."""
    calls = [texts[i : i + batch] for i in range(0, len(texts) - batch + 1, batch)]
    for call in calls:
        encoder.encode(call)
    torch.cuda.synchronize()
    latencies = []
    started = time.perf_counter()
    for call in calls:
        t0 = time.perf_counter()
        encoder.encode(call)  # returns numpy: the copy back synchronises
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    p50, p95 = np.percentile(latencies, [50, 95]) * 1000
    return {"sentences_per_s": len(calls) * batch / elapsed, "p50_ms": float(p50), "p95_ms": float(p95)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--name", required=True, help="model/variant label for the report")
    ap.add_argument("--texts", type=Path, required=True, help="JSONL with a 'text' field")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    texts = [json.loads(line)["text"] for line in args.texts.open()][:1024]
    tokenizer, pad_id = load_tokenizer(args.model_dir)
    device = torch.cuda.get_device_name(0)
    rows, reference = [], None
    for label, dtype in DTYPES.items():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        engine = TorchEngine(args.model_dir, device="cuda", dtype=dtype)
        limits = BatchLimits(
            max_sequences=max(args.batches), max_padded_tokens=max(args.batches) * args.max_length
        )
        encoder = TextEncoder(tokenizer, engine, max_length=args.max_length, limits=limits, pad_id=pad_id)
        vectors = encoder.encode(texts[:256])
        reference = vectors if reference is None else reference
        cos = np.einsum("nd,nd->n", reference, vectors)
        row: dict[str, object] = {
            "model": args.name,
            "precision": label,
            "device": device,
            "fidelity_mean_cosine": float(cos.mean()),
            "fidelity_min_cosine": float(cos.min()),
        }
        for batch in args.batches:
            result = timed_calls(encoder, texts[: 256 if batch == 1 else 1024], batch)
            row |= {f"{k}_b{batch}": v for k, v in result.items()}
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 1e6
        rows.append(row)
        print(json.dumps(row), flush=True)
        del engine, encoder
    args.out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(args.out.read_text()) if args.out.exists() else []
    args.out.write_text(json.dumps(existing + rows, indent=2))


if __name__ == "__main__":
    main()
