"""Quality of an encoder on real data, as the optimize pipeline compares variants against FP32.

    uv run python -m optimize.evaluate   # both catalog encoders: PyTorch FP32, ONNX FP32, ONNX INT8

- Lee set: Pearson and Spearman correlation between cosine similarity and human ratings.
- Fidelity: mean and minimum cosine between a variant's vectors and the reference (FP32) vectors.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.stats import pearsonr, spearmanr

from optimize.data import RatedPairs, lee_pairs

Encode = Callable[[Sequence[str]], np.ndarray]  # texts -> L2-normalised vectors (n, dim)
ROOT = Path(__file__).resolve().parents[1]


def rated_pairs_scores(encode: Encode, data: RatedPairs) -> dict[str, float]:
    vectors = encode(data.texts)
    i, j = np.array(data.pairs).T
    cosine = np.einsum("nd,nd->n", vectors[i], vectors[j])
    return {
        "pearson": float(pearsonr(cosine, data.scores).statistic),
        "spearman": float(spearmanr(cosine, data.scores).statistic),
    }


def lee_scores(encode: Encode) -> dict[str, float]:
    return rated_pairs_scores(encode, lee_pairs())


def fidelity(reference: np.ndarray, variant: np.ndarray) -> dict[str, float]:
    """How close a variant's vectors stay to the reference's, row by row."""
    cos = np.einsum("nd,nd->n", reference, variant) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(variant, axis=1)
    )
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}


def main() -> None:
    import json

    from optimize.speed import throughput
    from optimize.variants import dynamic_int8
    from runtimes.catalog import cache_root, fingerprint, load_catalog, resolve_model_dir
    from runtimes.engines.onnx_engine import OnnxEngine, export_onnx
    from runtimes.loader import load_text_encoder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["all-MiniLM-L6-v2", "multilingual-e5-small"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    console = Console()
    catalog = load_catalog(ROOT / "configs" / "models.yaml")
    data = lee_pairs()
    corpus = [json.loads(line)["text"] for line in (ROOT / "loadtest" / "corpus_en.jsonl").open()][:512]
    table = Table(title=f"Variants on the Lee set ({len(data.pairs):,} pairs) and 512 corpus sentences")
    for col in ("model", "variant", "MB", "Pearson", "% of FP32", "fidelity mean / min", "batch-32 sent/s"):
        table.add_column(col, justify="left" if col in ("model", "variant") else "right")
    for name in args.models:
        spec = catalog.get(name)
        model_dir = resolve_model_dir(spec)
        with console.status(f"{name}: loading, exporting, quantising"):
            base = load_text_encoder(spec, engine="torch", threads=args.threads)
            onnx = load_text_encoder(spec, engine="onnx", threads=args.threads)
            onnx_path = export_onnx(model_dir, cache_root() / "onnx" / f"{name}-{fingerprint(model_dir)}")
            int8_path = dynamic_int8(onnx_path, cache_root() / "int8" / f"{name}-{fingerprint(model_dir)}")
            int8 = load_text_encoder(spec, engine="onnx", threads=args.threads)
            int8.engine = OnnxEngine(int8_path, threads=args.threads)
        weights = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
        variants = [
            ("PyTorch FP32 (base)", base, weights),
            ("ONNX FP32", onnx, onnx_path.stat().st_size),
            ("ONNX dynamic INT8", int8, int8_path.stat().st_size),
        ]
        reference = base.encode(data.texts)
        base_pearson = rated_pairs_scores(base.encode, data)["pearson"]
        for label, encoder, size in variants:
            with console.status(f"{name}: {label}"):
                scores = rated_pairs_scores(encoder.encode, data)
                fid = fidelity(reference, encoder.encode(data.texts))
                speed = throughput(encoder.encode, corpus, batch=32)
            table.add_row(
                name,
                label,
                f"{size / 1e6:.0f}",
                f"{scores['pearson']:.3f}",
                f"{100 * scores['pearson'] / base_pearson:.1f}",
                f"{fid['mean_cosine']:.4f} / {fid['min_cosine']:.4f}",
                f"{speed['sentences_per_s']:.1f}",
            )
    console.print(table)


if __name__ == "__main__":
    main()
