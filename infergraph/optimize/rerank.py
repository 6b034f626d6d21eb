"""Re-ranking quality on the Debian FAQ, and the hybrid re-ranker's lexical weight, measured.

    uv run python -m infergraph.optimize.rerank                 # MiniLM en + e5 en/de/fr (~1 min)
    uv run python -m infergraph.optimize.rerank --quick         # MiniLM en, 200 resamples (tests)
    uv run python -m infergraph.optimize.rerank --cross-encoder /models/my-cross-encoder

First stage: the bi-encoder retrieves each question's top 20 among all FAQ passages (English). Each
scorer re-orders those 20: the encoder alone, BM25 alone, the hybrid (runtimes/reranking.py) at the
chosen weight and at 0.5, and a cross-encoder folder when given. A question whose answer is not in
the top 20 scores 0 for every scorer (first-stage recall@20 is reported beside). Ties count against
the answer. 95% intervals: percentile bootstrap over questions (paired across scorers, fixed seed).

The weight is measured, not guessed: questions are split by a hash of their FAQ section id (the same
split in every language) into a tuning and a test half. On the tuning half the grid 0..1 (step 0.05)
picks (a) the MiniLM weight on English questions and (b) the e5 weight on en+de+fr pooled: a served
re-ranker has one weight and does not know the query's language. Normalisations are compared there
too; min-max (what the runtime does) is kept unless another beats it by more than NORM_MARGIN.
Results on the test half are the honest ones; "all" mixes in the questions the weight was tuned on.

Held out of every choice: the Python FAQ (python3.11-doc), English questions against their own
answers, scored at the Debian-tuned weights: whether a gain carries over to another domain.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from rich.console import Console
from rich.table import Table

from infergraph.optimize import tracking
from infergraph.optimize.data import PYTHON_DOC_PACKAGE, DataUnavailableError, QAPairs, debian_faq, python_faq
from infergraph.paths import PROJECT_ROOT, absolute_tracking_uri, project_path
from infergraph.runtimes.catalog import load_catalog
from infergraph.runtimes.reranking import fuse, lexical_scores, minmax

log = logging.getLogger(__name__)

EXPERIMENT = "rerank"
TOP_K = 20
GRID = np.round(np.arange(0.0, 1.0001, 0.05), 2)
NORM_MARGIN = 0.01  # tuning MRR@10 an alternative normalisation must gain to replace min-max
SUBSETS = ("tune", "test", "all")


@dataclass(frozen=True)
class Setup:
    """A first-stage encoder and the question languages it is evaluated on."""

    key: str
    encoder: str
    langs: tuple[str, ...]
    query_prefix: str = ""
    passage_prefix: str = ""


SETUPS = (
    Setup("minilm", "all-MiniLM-L6-v2", ("en",)),
    Setup("e5", "multilingual-e5-small", ("en", "de", "fr"), "query: ", "passage: "),
)


@dataclass
class Candidates:
    """One language's questions and their first-stage top k: passage ids, cosine, BM25 (n, k)."""

    questions: list[str]
    top: np.ndarray
    dense: np.ndarray
    lexical: np.ndarray
    gold: np.ndarray  # position of the answer in `top`, -1 when the first stage missed it
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # other scorers' scores (n, k)


def in_tuning_half(section_id: str) -> bool:
    """Deterministic split by section id: the same in every language and every run."""
    return hashlib.sha256(section_id.encode()).digest()[0] % 2 == 0


def zscore(x: np.ndarray) -> np.ndarray:
    s = float(x.std())
    return np.zeros_like(x, dtype=np.float64) if s <= 1e-12 else (x - x.mean()) / s


def rank_scale(x: np.ndarray) -> np.ndarray:
    order = np.argsort(np.argsort(-x, kind="stable"), kind="stable")
    return 1.0 - order / max(len(x) - 1, 1)


NORMALISATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "minmax": minmax,
    "zscore": zscore,
    "rank": rank_scale,
}


def embed_passages(setup: Setup, encoder: Any, passages: Sequence[str]) -> np.ndarray:
    """Passage vectors as the service makes them: cut to the encoder's limit, not refused."""
    ids, _ = encoder.tokenize_truncating([setup.passage_prefix + p for p in passages])
    return np.asarray(encoder.encode_ids(ids))


def retrieve(setup: Setup, encoder: Any, data: QAPairs, passages_vec: np.ndarray, k: int) -> Candidates:
    q = encoder.encode([setup.query_prefix + t for t in data.questions])
    sim = q @ passages_vec.T
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    dense = np.take_along_axis(sim, top, axis=1).astype(np.float64)
    lexical = np.stack(
        [
            lexical_scores(question, [data.passages[j] for j in row])
            for question, row in zip(data.questions, top, strict=True)
        ]
    )
    hits = top == np.arange(len(top))[:, None]
    gold = np.where(hits.any(axis=1), hits.argmax(axis=1), -1)
    return Candidates(data.questions, top, dense, lexical, gold)


def gold_ranks(scores: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """1-based rank of the answer among each row's candidates (ties against it); 0 when missed."""
    ranks = np.zeros(len(gold), dtype=np.int64)
    found = gold >= 0
    g = scores[found, gold[found]][:, None]
    ranks[found] = (scores[found] >= g).sum(axis=1)
    return ranks


def per_question(ranks: np.ndarray) -> dict[str, np.ndarray]:
    hit = ranks > 0
    return {
        "mrr10": np.where(hit & (ranks <= 10), 1.0 / np.maximum(ranks, 1), 0.0),
        "r1": (ranks == 1).astype(np.float64),
    }


def scorer_scores(c: Candidates, scorer: str, weight: float = 0.0, norm: str = "minmax") -> np.ndarray:
    if scorer == "encoder":
        return c.dense
    if scorer == "bm25":
        return c.lexical
    if scorer == "hybrid":
        if norm == "minmax":
            return np.stack([fuse(d, x, weight) for d, x in zip(c.dense, c.lexical, strict=True)]).astype(
                np.float64
            )
        f = NORMALISATIONS[norm]
        return np.stack(
            [(1 - weight) * f(d) + weight * f(x) for d, x in zip(c.dense, c.lexical, strict=True)]
        )
    return c.extra[scorer]


def weight_grid_mrr(c: Candidates, norm: str = "minmax") -> np.ndarray:
    """MRR@10 of every question (columns) for every weight of GRID (rows)."""
    return np.stack(
        [per_question(gold_ranks(scorer_scores(c, "hybrid", float(w), norm), c.gold))["mrr10"] for w in GRID]
    )


def mrr_curve(grids: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> list[float]:
    """Mean MRR@10 over the pooled masked questions, for each weight of GRID."""
    return [
        float(v)
        for v in np.concatenate([g[:, m] for g, m in zip(grids, masks, strict=True)], axis=1).mean(axis=1)
    ]


@dataclass(frozen=True)
class _Best:
    weight: float
    mrr10: float
    curve: list[float]


def choose_weight(curve: Sequence[float]) -> float:
    """The best weight of the grid; among equals, the smallest (closest to the encoder alone)."""
    return float(GRID[int(np.argmax(np.round(curve, 10)))])


def bootstrap(values: dict[str, np.ndarray], samples: int, seed: int) -> dict[str, tuple[float, float]]:
    """Percentile 95% intervals of each mean; the same resampled questions for every entry (paired)."""
    n = len(next(iter(values.values())))
    idx = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    out = {}
    for key, v in values.items():
        low, high = np.percentile(v[idx].mean(axis=1), [2.5, 97.5])
        out[key] = (float(low), float(high))
    return out


def quality_stats(
    quality: dict[str, np.ndarray], base: dict[str, np.ndarray], samples: int, seed: int
) -> dict[str, float]:
    """Mean and 95% interval of each per-question metric and of its paired gain over `base`:
    `mrr10`, `mrr10_ci_low`, `mrr10_ci_high`, `gain_mrr10`, ..."""
    values = quality | {f"gain_{k}": v - base[k] for k, v in quality.items()}
    ci = bootstrap(values, samples, seed)
    stats = {}
    for k, v in values.items():
        stats[k] = float(v.mean())
        stats[f"{k}_ci_low"], stats[f"{k}_ci_high"] = ci[k]
    return stats


def logged_metrics(prefix: str, row: dict[str, Any]) -> dict[str, float]:
    """The row's metrics and intervals, as MLflow metric names under `prefix`."""
    return {
        f"{prefix}/{k}{suffix}": row[k + suffix]
        for k in ("mrr10", "r1", "gain_mrr10")
        for suffix in ("", "_ci_low", "_ci_high")
    }


def evaluate_setup(
    setup: Setup,
    cands: dict[str, Candidates],
    tune: np.ndarray,
    weights: tuple[float, float],
    scorers: Sequence[str],
    samples: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Rows: (lang, scorer, subset) with MRR@10, R@1, intervals, and the paired gain over the encoder.

    `weights`: chosen on the tuning half, and on the test half. "hybrid 2-fold" scores each half with
    the weight chosen on the other one, so its "all" column is out of sample for every question.
    """
    rows = []
    masks = {"tune": tune, "test": ~tune, "all": np.ones_like(tune)}
    weight, weight_other = weights
    for lang, c in cands.items():

        def quality(scorer: str, w: float = 0.0, c: Candidates = c) -> dict[str, np.ndarray]:
            return per_question(gold_ranks(scorer_scores(c, scorer, w), c.gold))

        # key (stable across runs: MLflow metric names) -> (label, weight, per-question quality)
        results: dict[str, tuple[str, float | None, dict[str, np.ndarray]]] = {
            "encoder": ("encoder", 0.0, quality("encoder")),
            "bm25": ("bm25", 1.0, quality("bm25")),
        }
        if "hybrid" in scorers:
            tuned, other = quality("hybrid", weight), quality("hybrid", weight_other)
            results["hybrid"] = (f"hybrid w={weight:.2f}", weight, tuned)
            results["hybrid_w0.50"] = ("hybrid w=0.50", 0.5, quality("hybrid", 0.5))
            crossed = {k: np.where(tune, other[k], tuned[k]) for k in tuned}
            results["hybrid_2fold"] = ("hybrid 2-fold", None, crossed)
        for extra in (s for s in scorers if s in c.extra):
            results[extra] = (extra, None, quality(extra))
        base = results["encoder"][2]
        for subset, m in masks.items():
            for key, (label, w, q) in results.items():
                row: dict[str, Any] = {
                    "setup": setup.key,
                    "encoder": setup.encoder,
                    "lang": lang,
                    "scorer": label,
                    "key": key,
                    "weight": w,
                    "subset": subset,
                    "n": int(m.sum()),
                    "first_stage_recall@20": float((c.gold[m] >= 0).mean()),
                }
                masked = {k: v[m] for k, v in q.items()}
                row |= quality_stats(masked, {k: v[m] for k, v in base.items()}, samples, seed)
                rows.append(row)
    return rows


def cross_encoder_scores(path: Path, cands: dict[tuple[str, str], Candidates], passages: list[str]) -> None:
    """Score every (question, candidate) with the cross-encoder in `path`; stored as c.extra."""
    from infergraph.runtimes.catalog import CrossEncoderScorer, PathSource
    from infergraph.runtimes.cross_encoder import load_cross_encoder

    scorer = CrossEncoderScorer(type="cross-encoder", source=PathSource(type="path", path=str(path)))
    ce = load_cross_encoder(scorer, max_length=512, max_query_tokens=256, threads=2)
    memo: dict[tuple[str, int], float] = {}  # the setups' candidate lists overlap
    for c in cands.values():
        todo: dict[str, list[int]] = {}
        for question, row in zip(c.questions, c.top, strict=True):
            missing = [int(j) for j in row if (question, int(j)) not in memo]
            if missing:
                todo[question] = missing
        requests = [ce.tokenize(q, [passages[j] for j in js]) for q, js in todo.items()]
        for (question, js), scores in zip(todo.items(), ce.score_tokenized(requests), strict=True):
            memo.update({(question, j): float(v) for j, v in zip(js, scores, strict=True)})
        c.extra["cross-encoder"] = np.array(
            [[memo[(q, int(j))] for j in row] for q, row in zip(c.questions, c.top, strict=True)]
        )


def held_out_rows(key: str, c: Candidates, weight: float, samples: int, seed: int) -> list[dict[str, Any]]:
    """The encoder, BM25, the hybrid at the weight tuned on the Debian FAQ (and a cross-encoder when
    given), on a set no choice saw."""
    results = {
        "encoder": per_question(gold_ranks(c.dense, c.gold)),
        "bm25": per_question(gold_ranks(c.lexical, c.gold)),
        "hybrid": per_question(gold_ranks(scorer_scores(c, "hybrid", weight), c.gold)),
    } | {extra: per_question(gold_ranks(scores, c.gold)) for extra, scores in c.extra.items()}
    recall = float((c.gold >= 0).mean())
    return [
        {"setup": key, "scorer": scorer, "weight": weight if scorer == "hybrid" else None}
        | {"n": len(c.gold), "first_stage_recall@20": recall}
        | quality_stats(q, results["encoder"], samples, seed)
        for scorer, q in results.items()
    ]


# --------------------------------------------------------------------------- report


def _ci(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.3f} [{row[key + '_ci_low']:.3f}, {row[key + '_ci_high']:.3f}]"


def _table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    by = {(r["setup"], r["lang"], r["scorer"], r["subset"]): r for r in rows}
    keys = list(dict.fromkeys((r["setup"], r["lang"], r["scorer"]) for r in rows))
    out = []
    for setup, lang, scorer in keys:
        cells = [f"{by[(setup, lang, scorer, 'all')]['encoder']}", lang, scorer]
        cells += [_ci(by[(setup, lang, scorer, s)], "mrr10") for s in SUBSETS]
        cells += [_ci(by[(setup, lang, scorer, s)], "r1") for s in SUBSETS]
        cells += [_ci(by[(setup, lang, scorer, "test")], "gain_mrr10")]
        out.append(cells)
    return out


HEADERS = ["encoder", "lang", "scorer"] + [f"MRR@10 {s}" for s in SUBSETS] + [f"R@1 {s}" for s in SUBSETS]
HEADERS += ["MRR@10 gain vs encoder (test)"]


def markdown(summary: dict[str, Any]) -> str:
    s = summary["settings"]
    lines = [
        f"# Re-ranking the Debian FAQ ({summary['generated']})",
        "",
        f"First stage: each encoder's top {s['top_k']} of {s['passages']} English passages, re-ranked "
        "by each scorer. A question whose answer is not in the top 20 counts 0. 95% CI: percentile bootstrap "
        f"over questions ({s['bootstrap']} resamples, seed {s['seed']}). Split by sha256(section id): "
        f"{s['n_tune']} tuning / {s['n_test']} test questions per language.",
        "",
        "Scorers: `encoder` = first-stage order; `bm25` alone (ties count against the answer); `hybrid "
        "w=...` = the weight chosen on the tuning half (its `all` column includes the questions it was "
        "tuned on: optimistic); `hybrid w=0.50` = the untuned default; `hybrid 2-fold` = each half scored "
        "with the weight chosen on the other half (out of sample for every question). The gain column "
        "is paired (same resampled questions).",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in _table_rows(summary["rows"])]
    lines += [
        "",
        f"## Held out: {s['held_out']}",
        "",
        "Each encoder's top 20 of the Python FAQ's answers (cut like the Debian passages), re-ranked at the "
        "weight chosen on the Debian FAQ's tuning half: a set from another domain that no choice saw.",
        "",
        "| encoder | scorer | MRR@10 | R@1 | MRR@10 gain vs encoder | recall@20 |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary["held_out"]:
        scorer = r["scorer"] if r["weight"] is None else f"{r['scorer']} w={r['weight']:.2f}"
        lines.append(
            f"| {r['setup']} | {scorer} | {_ci(r, 'mrr10')} | {_ci(r, 'r1')} | {_ci(r, 'gain_mrr10')} "
            f"| {r['first_stage_recall@20']:.3f} |"
        )
    lines += ["", "## Chosen on the tuning half", ""]
    for key, choice in summary["choices"].items():
        lines.append(
            f"- {key}: lexical_weight **{choice['weight']:.2f}** ({choice['objective']}), normalisation "
            f"{choice['normalisation']}; best tuning MRR@10 by normalisation: "
            + ", ".join(
                f"{n} {v['mrr10']:.3f} (w={v['weight']:.2f})" for n, v in choice["normalisations"].items()
            )
        )
    lines += ["", "## The bar", ""] + [f"- {line}" for line in summary["bar"]]
    return "\n".join(lines) + "\n"


def console_table(summary: dict[str, Any]) -> Table:
    table = Table(title="Re-ranking the Debian FAQ: MRR@10 / R@1 [95% CI]")
    for h in HEADERS:
        table.add_column(h, justify="left" if h in ("encoder", "lang", "scorer") else "right")
    for cells in _table_rows(summary["rows"]):
        table.add_row(*cells)
    return table


def plot(curves: dict[str, dict[str, list[float]]], choices: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False)
    for ax, (key, lines) in zip(axes[0], curves.items(), strict=True):
        for i, (label, ys) in enumerate(lines.items()):
            style = "-" if label.endswith("tune") else "--" if label.endswith("test") else ":"
            ax.plot(GRID, ys, style, color=f"C{i // 3}", label=label)
        ax.axvline(choices[key]["weight"], color="grey", lw=0.8)
        ax.set(title=f"{key}: MRR@10 vs lexical weight", xlabel="w (0 = encoder, 1 = BM25)", ylabel="MRR@10")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    from infergraph.runtimes.loader import load_text_encoder

    catalog = load_catalog(project_path(args.catalog))
    english = debian_faq("en")
    tune = np.array([in_tuning_half(i) for i in english.ids])
    setups = [s for s in SETUPS if s.key == "minilm"] if args.quick else list(SETUPS)
    python = python_faq()
    cands: dict[tuple[str, str], Candidates] = {}
    held_out: dict[str, Candidates] = {}
    for setup in setups:
        encoder = load_text_encoder(catalog.encoder(setup.encoder), engine="onnx", threads=args.threads)
        passages_vec = embed_passages(setup, encoder, english.passages)
        for lang in setup.langs:
            questions = debian_faq(lang)
            if questions.ids != english.ids:
                raise ValueError(f"FAQ {lang} questions are not aligned with English")
            cands[(setup.key, lang)] = retrieve(setup, encoder, questions, passages_vec, TOP_K)
        held_out[setup.key] = retrieve(
            setup, encoder, python, embed_passages(setup, encoder, python.passages), TOP_K
        )
    scorers = ["encoder", "bm25", "hybrid"]
    if args.cross_encoder:
        cross_encoder_scores(Path(args.cross_encoder), cands, english.passages)
        cross_encoder_scores(
            Path(args.cross_encoder), {(k, "python"): c for k, c in held_out.items()}, python.passages
        )
        scorers.append("cross-encoder")

    choices: dict[str, Any] = {}
    curves: dict[str, dict[str, list[float]]] = {}
    rows: list[dict[str, Any]] = []
    for setup in setups:
        mine = [cands[(setup.key, lang)] for lang in setup.langs]
        objective = f"tuning MRR@10, {'+'.join(setup.langs)}{' pooled' if len(setup.langs) > 1 else ''}"
        by_norm: dict[str, _Best] = {}
        grids = {norm: [weight_grid_mrr(c, norm) for c in mine] for norm in NORMALISATIONS}
        for norm, grid in grids.items():
            curve = mrr_curve(grid, [tune] * len(mine))
            by_norm[norm] = _Best(choose_weight(curve), max(curve), curve)
        best_other = max((n for n in by_norm if n != "minmax"), key=lambda n: by_norm[n].mrr10)
        chosen_norm = "minmax"
        if by_norm[best_other].mrr10 > by_norm["minmax"].mrr10 + NORM_MARGIN:
            chosen_norm = best_other
            console.print(
                f"[yellow]{setup.key}: {best_other} beats min-max by more than {NORM_MARGIN} on the tuning "
                "half; runtimes/reranking.fuse uses min-max: revisit it"
            )
        weight = by_norm["minmax"].weight  # the runtime's normalisation
        choices[setup.key] = {
            "encoder": setup.encoder,
            "weight": weight,
            "objective": objective,
            "normalisation": chosen_norm,
            "normalisations": {n: {"weight": v.weight, "mrr10": v.mrr10} for n, v in by_norm.items()},
            "curve_tune": dict(zip(map(float, GRID), by_norm["minmax"].curve, strict=True)),
        }
        curves[setup.key] = {}
        for lang, lang_grid in zip(setup.langs, grids["minmax"], strict=True):
            for subset, m in (("tune", tune), ("test", ~tune), ("all", np.ones_like(tune))):
                curves[setup.key][f"{lang} {subset}"] = mrr_curve([lang_grid], [m])
        weight_other = choose_weight(mrr_curve(grids["minmax"], [~tune] * len(mine)))
        choices[setup.key]["weight_chosen_on_test_half"] = weight_other
        rows += evaluate_setup(
            setup,
            dict(zip(setup.langs, mine, strict=True)),
            tune,
            (weight, weight_other),
            scorers,
            args.bootstrap,
            args.seed,
        )
    settings = {
        "held_out": f"Python FAQ ({PYTHON_DOC_PACKAGE}), {len(python.ids)} English questions",
        "top_k": TOP_K,
        "passages": len(english.passages),
        "bootstrap": args.bootstrap,
        "seed": args.seed,
        "split": "sha256(section id)[0] % 2 == 0 -> tuning",
        "n_tune": int(tune.sum()),
        "n_test": int((~tune).sum()),
        "grid": [float(w) for w in GRID],
        "quick": args.quick,
        "cross_encoder": args.cross_encoder,
    }
    summary = {
        "generated": time.strftime("%Y-%m-%d %H:%M"),
        "settings": settings,
        "choices": choices,
        "rows": rows,
    }
    summary["held_out"] = [
        row
        for key, c in held_out.items()
        for row in held_out_rows(key, c, choices[key]["weight"], args.bootstrap, args.seed)
    ]
    summary["bar"] = bar(summary)
    summary["curves"] = curves
    return summary


BARS = {("minilm", "en"): 0.06, ("e5", "de"): 0.0, ("e5", "fr"): 0.0}  # the issue's: gain in MRR@10


def bar(summary: dict[str, Any]) -> list[str]:
    """The issue's bar (English hybrid >= encoder + 0.06; e5 hybrid better than e5 on de and fr),
    checked on the test half, on all questions at the tuned weight, and on all questions 2-fold."""
    by = {(r["setup"], r["lang"], r["scorer"], r["subset"]): r for r in summary["rows"]}
    lines = []
    for key, choice in summary["choices"].items():
        tuned = f"hybrid w={choice['weight']:.2f}"
        for lang in dict.fromkeys(r["lang"] for r in summary["rows"] if r["setup"] == key):
            need = BARS.get((key, lang))
            for scorer, subset in ((tuned, "test"), (tuned, "all"), ("hybrid 2-fold", "all")):
                r = by[(key, lang, scorer, subset)]
                gain = r["gain_mrr10"]
                ci = f"[{r['gain_mrr10_ci_low']:+.3f}, {r['gain_mrr10_ci_high']:+.3f}]"
                if need is None:
                    verdict = "no bar"
                else:
                    verdict = f"bar {f'>= +{need:.2f}' if need else '> 0'}: "
                    verdict += "met" if gain >= need and gain > 0 else "NOT met"
                    verdict += "; CI includes 0" if r["gain_mrr10_ci_low"] <= 0 else ""
                lines.append(
                    f"{key} {lang} {scorer} on {subset}: {r['mrr10']:.3f} vs encoder "
                    f"{r['mrr10'] - gain:.3f}, gain {gain:+.3f} {ci} ({verdict})"
                )
    for r in summary["held_out"]:
        if r["scorer"] == "hybrid":
            lines.append(
                f"{r['setup']} en hybrid w={r['weight']:.2f} on the held-out Python FAQ: {r['mrr10']:.3f} vs "
                f"encoder {r['mrr10'] - r['gain_mrr10']:.3f}, gain {r['gain_mrr10']:+.3f} "
                f"[{r['gain_mrr10_ci_low']:+.3f}, {r['gain_mrr10_ci_high']:+.3f}] (no bar: another domain)"
            )
    return lines


def log_to_mlflow(summary: dict[str, Any], files: list[Path], tracking_uri: str, artifact_root: Path) -> str:
    client = tracking.connect(tracking_uri, artifact_root)
    experiment = tracking.named_experiment(client, EXPERIMENT, artifact_root / EXPERIMENT)
    s = summary["settings"]
    with mlflow.start_run(
        experiment_id=experiment, run_name=f"rerank{' --quick' if s['quick'] else ''}"
    ) as run:
        params = {k: v for k, v in s.items() if k != "grid"}
        params |= {f"{k}.encoder": c["encoder"] for k, c in summary["choices"].items()}
        params |= {f"{k}.lexical_weight": c["weight"] for k, c in summary["choices"].items()}
        params |= {f"{k}.normalisation": c["normalisation"] for k, c in summary["choices"].items()}
        mlflow.log_params(params)
        metrics: dict[str, float] = {}
        for r in summary["rows"]:
            metrics |= logged_metrics(f"{r['setup']}/{r['lang']}/{r['key']}/{r['subset']}", r)
        for r in summary["held_out"]:
            metrics |= logged_metrics(f"{r['setup']}/python-faq/{r['scorer']}", r)
        mlflow.log_metrics(metrics)
        for key, choice in summary["choices"].items():
            for step, value in enumerate(choice["curve_tune"].values()):
                mlflow.log_metric(f"{key}/tune_mrr10_by_weight_step_0.05", value, step=step)
        for path in files:
            mlflow.log_artifact(str(path))
        return str(run.info.run_id)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="MiniLM on English only, 200 resamples")
    ap.add_argument("--cross-encoder", metavar="DIR", help="also score the top 20 with this model folder")
    ap.add_argument("--bootstrap", type=int, help="resamples for the intervals (default 1000; quick 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--catalog", default="configs/models.yaml")
    ap.add_argument("--tracking-uri", default="sqlite:///mlflow/mlflow.db")
    ap.add_argument("--artifact-root", default="mlflow/artifacts")
    ap.add_argument("--results-dir", default="results/rerank")
    args = ap.parse_args(argv)
    args.bootstrap = args.bootstrap or (200 if args.quick else 1000)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console(width=240)
    started = time.monotonic()
    try:
        summary = run(args, console)
    except DataUnavailableError as exc:
        console.print(f"[red]Debian FAQ unavailable: {exc}")
        return 1
    out = project_path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "summary.json", out / "summary.md", out / "mrr_vs_weight.png"]
    files[0].write_text(json.dumps(summary, indent=2))
    files[1].write_text(markdown(summary))
    plot(summary["curves"], summary["choices"], files[2])
    console.print(console_table(summary))
    for key, choice in summary["choices"].items():
        console.print(f"{key}: lexical_weight {choice['weight']:.2f} ({choice['objective']})")
    for line in summary["bar"]:
        console.print(line)
    run_id = log_to_mlflow(
        summary,
        files,
        absolute_tracking_uri(args.tracking_uri, PROJECT_ROOT),
        project_path(args.artifact_root),
    )
    console.print(
        f"wrote {out}; MLflow run {run_id} in experiment {EXPERIMENT!r} ({time.monotonic() - started:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
