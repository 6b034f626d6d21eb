"""One model through the pipeline: build every variant, measure it, log it, register it, gate it.

Quality is measured against the PyTorch FP32 base on real data (`optimize/data.py`), speed with
the same `runtimes/` loader a replica uses (artifact verified, then loaded), so what the gate
promotes is exactly what a deployment will serve.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console

from infergraph.corpus import load_corpus
from infergraph.optimize import data, evaluate
from infergraph.optimize.config import ModelPlan, OptimizeConfig
from infergraph.optimize.factory import VariantFactory
from infergraph.optimize.gate import VariantResult, choose, eligible
from infergraph.optimize.speed import head_to_head, resident_mb, speed_profile
from infergraph.paths import project_path
from infergraph.runtimes.catalog import EncoderSpec, cache_root, fingerprint, load_catalog, resolve_model_dir
from infergraph.runtimes.loader import load_artifact_encoder, load_text_encoder
from infergraph.runtimes.text_encoder import TextEncoder

log = logging.getLogger(__name__)

RECIPES = 2  # bump when a variant's recipe changes: cached artifacts of older recipes are not reused


@dataclass
class Settings:
    """The knobs `--quick` shrinks."""

    variants: Sequence[str]
    metrics: Sequence[str]
    gate_metrics: Sequence[str]
    speed_sentences: int
    corpus_limit: int | None
    distill_seconds: float | None


class Evaluator:
    """The quality metrics of one model, each a function of an encoder; data loaded once."""

    def __init__(self, spec: EncoderSpec, metrics: Sequence[str]) -> None:
        self.spec, self.metrics = spec, list(metrics)
        self.passage_prefix = "passage: " if "passage: " in spec.known_prefixes else ""
        self.lee = data.lee_pairs()

    def passages(self, encoder: TextEncoder) -> Callable[[Sequence[str]], np.ndarray]:
        return lambda texts: encoder.encode([self.passage_prefix + t for t in texts])

    def score(self, encoder: TextEncoder) -> dict[str, float]:
        out: dict[str, float] = {}
        passages: np.ndarray | None = None
        for metric in self.metrics:
            if metric == "lee_pearson":
                scores = evaluate.rated_pairs_scores(encoder.encode, self.lee)
                out["lee_pearson"], out["lee_spearman"] = scores["pearson"], scores["spearman"]
            elif metric.startswith("faq"):
                lang = {"faq_mrr10": "en", "faq_de_mrr10": "de", "faq_fr_mrr10": "fr"}[metric]
                if passages is None:  # the English passages, shared by every question language
                    passages = self.passages(encoder)(_faq("en").passages)
                result = evaluate.retrieval_mrr(encoder.encode, _fixed(passages), _faq(lang))
                out[metric] = result["mrr@10"]
            elif metric == "bitext_acc1":
                accs = [
                    evaluate.bitext_accuracy(encoder.encode, _bitext(lang))["acc@1"]
                    for lang in _bitext_langs()
                ]
                out[metric] = float(np.mean(accs))
            else:
                raise ValueError(f"unknown metric {metric!r}")
        return out

    def fidelity_texts(self, corpus: Sequence[str]) -> list[str]:
        return list(self.lee.texts) + list(corpus[:200])


def _fixed(vectors: np.ndarray) -> Callable[[Sequence[str]], np.ndarray]:
    return lambda _texts: vectors


_cache: dict[str, Any] = {}


def _faq(lang: str) -> Any:
    return _cache.setdefault(f"faq-{lang}", data.debian_faq(lang))


def _bitext(lang: str) -> Any:
    return _cache.setdefault(f"bitext-{lang}", data.django_bitext(lang))


def _bitext_langs() -> Sequence[str]:
    return data.BITEXT_LANGS


def measure(
    label: str,
    encoder: TextEncoder,
    evaluator: Evaluator,
    reference: dict[str, float],
    reference_vectors: np.ndarray,
    fidelity_texts: Sequence[str],
    speed_texts: Sequence[str],
    batches: Sequence[int],
    gate_metrics: Sequence[str],
    console: Console,
) -> tuple[dict[str, float], float]:
    """Quality, fidelity and speed of one loaded encoder, and its quality as % of FP32."""
    with console.status(f"{label}: quality"):
        metrics = evaluator.score(encoder)
        fid = evaluate.fidelity(reference_vectors, encoder.encode(fidelity_texts))
    with console.status(f"{label}: speed at batch {batches}"):
        metrics |= speed_profile(encoder.encode, speed_texts, batches)
    metrics["fidelity_mean_cosine"], metrics["fidelity_min_cosine"] = fid["mean_cosine"], fid["min_cosine"]
    for name in gate_metrics:
        metrics[f"{name}_pct"] = 100 * metrics[name] / reference[name] if reference else 100.0
    quality = min((metrics[f"{m}_pct"] for m in gate_metrics), default=100.0)
    return metrics, quality


def run_model(
    config: OptimizeConfig, plan: ModelPlan, settings: Settings, console: Console
) -> tuple[list[VariantResult], dict[str, Any]]:
    """Build and measure every variant of `plan.name`; returns results and the evaluation report."""
    threads = config.speed.threads
    spec = load_catalog(project_path(config.catalog)).encoder(plan.name)
    model_dir = resolve_model_dir(spec)
    work = cache_root() / "optimize" / f"{spec.name}-{fingerprint(model_dir)}-r{RECIPES}"
    evaluator = Evaluator(spec, settings.metrics)
    speed_texts = load_corpus(settings.speed_sentences)
    corpus_cache: list[list[str]] = []

    def corpus() -> list[str]:
        if not corpus_cache:
            d = plan.distillation
            limit = settings.corpus_limit or (d.corpus_limit if d else None)
            source = (
                data.multilingual_corpus if d and d.corpus == "multilingual" else data.distillation_corpus
            )
            corpus_cache.append(source(limit=limit))
        return corpus_cache[0]

    if settings.distill_seconds is not None and plan.distillation is not None:
        plan = plan.model_copy(
            update={
                "distillation": plan.distillation.model_copy(update={"max_seconds": settings.distill_seconds})
            }
        )
    factory = VariantFactory(
        spec, model_dir, work, plan, lambda: load_text_encoder(spec, "onnx", threads), corpus
    )
    fidelity_texts = evaluator.fidelity_texts(speed_texts)

    rss0 = resident_mb()
    base = load_text_encoder(spec, engine="torch", threads=threads)
    reference_vectors = base.encode(fidelity_texts)
    base_metrics, _ = measure(
        "PyTorch FP32 (base)",
        base,
        evaluator,
        {},
        reference_vectors,
        fidelity_texts,
        speed_texts,
        config.speed.batches,
        settings.gate_metrics,
        console,
    )
    base_metrics["size_mb"] = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 1e6
    base_metrics["rss_mb"] = resident_mb() - rss0
    reference = {m: base_metrics[m] for m in settings.gate_metrics}
    for m in settings.gate_metrics:
        base_metrics[f"{m}_pct"] = 100.0
    results = [
        VariantResult(
            spec.name, "base-torch-fp32", "fp32", "cpu", base_metrics, 100.0, params={"engine": "torch"}
        )
    ]
    del base

    for variant in settings.variants:
        console.log(f"[bold]{spec.name}[/]: building {variant}")
        built = factory.build(variant)
        rss0 = resident_mb()
        t0 = time.monotonic()
        encoder, manifest = load_artifact_encoder(spec, built.artifact, threads=threads)
        load_s = time.monotonic() - t0
        # A GPU-target variant crawls on CPU; a quarter of the sentences shows that well enough.
        texts = speed_texts if manifest.target == "cpu" else speed_texts[: max(len(speed_texts) // 4, 64)]
        metrics, quality = measure(
            variant,
            encoder,
            evaluator,
            reference,
            reference_vectors,
            fidelity_texts,
            texts,
            config.speed.batches,
            settings.gate_metrics,
            console,
        )
        weights = [built.artifact / f for f in manifest.files if not f.endswith((".json", ".txt", ".model"))]
        metrics |= {
            "size_mb": sum(p.stat().st_size for p in weights) / 1e6,
            "rss_mb": resident_mb() - rss0,
            "load_s": load_s,
            **built.stats,
        }
        params = {"format": manifest.format, "engine": encoder.engine.name, "threads": str(threads)}
        if plan.distillation and variant.startswith("distilled"):
            params |= {k: str(val) for k, val in plan.distillation.model_dump().items()}
        if variant == "pruned-l1":
            params["sparsity"] = str(plan.l1_sparsity)
        results.append(
            VariantResult(
                spec.name,
                variant,
                manifest.precision,
                manifest.target,
                metrics,
                quality,
                artifact=built.artifact,
                params=params,
                notes=manifest.notes,
            )
        )
        del encoder
    report = {"model": spec.name, "reference": reference, "results": [_row(r, config) for r in results]}
    return results, report


def head_to_head_with_base(
    config: OptimizeConfig, settings: Settings, best: VariantResult, console: Console
) -> dict[str, float]:
    """The promoted variant against the PyTorch FP32 base in alternating passes at the largest batch."""
    assert best.artifact is not None
    spec = load_catalog(project_path(config.catalog)).encoder(best.model)
    threads, batch = config.speed.threads, max(config.speed.batches)
    texts = load_corpus(settings.speed_sentences)
    texts = texts[: max(len(texts) // 2, batch)]  # half the sentences, several rounds: under a minute
    base = load_text_encoder(spec, engine="torch", threads=threads)
    variant, _ = load_artifact_encoder(spec, best.artifact, threads=threads)
    with console.status(f"{best.model}: {best.variant} vs the base, alternating passes at batch {batch}"):
        return head_to_head(base.encode, variant.encode, texts, batch) | {"h2h_batch": float(batch)}


def _row(r: VariantResult, config: OptimizeConfig) -> dict[str, Any]:
    ok, why = eligible(r, config.gate)
    return {"variant": r.label, "quality_pct": r.quality_pct, "gate": why, **r.metrics}


def winner(results: Sequence[VariantResult], config: OptimizeConfig) -> VariantResult | None:
    return choose(results, config.gate)
