"""`uv run python -m infergraph.optimize`: build, measure, log, register and promote variants of each encoder.

    uv run python -m infergraph.optimize                 # configs/optimize.yaml, both encoders (~15 min here)
    uv run python -m infergraph.optimize --quick         # MiniLM, two variants, small samples (~1 min)
    uv run mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db   # compare the runs

Writes `results/optimize/summary.md`, `summary.json` and `variants.png`, logs them to MLflow, and
moves the `production` alias of each model to the fastest variant that passes the gate.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import mlflow
from rich.console import Console

from infergraph.optimize import report, tracking
from infergraph.optimize.config import GpuGate, OptimizeConfig, load_config
from infergraph.optimize.gate import VariantResult, choose_gpu_precision, eligible
from infergraph.optimize.pipeline import Settings, head_to_head_with_base, run_model, winner
from infergraph.paths import PROJECT_ROOT, absolute_tracking_uri, project_path


def settings_for(config: OptimizeConfig, name: str, quick: bool) -> Settings:
    plan = next(p for p in config.models if p.name == name)
    if not quick or config.quick is None:
        return Settings(plan.variants, plan.metrics, plan.gate_metrics, config.speed.sentences, None, None)
    q = config.quick
    metrics = [m for m in plan.metrics if m in q.metrics] or plan.metrics[:1]
    return Settings(
        [v for v in q.variants if v in plan.variants] or q.variants,
        metrics,
        [m for m in plan.gate_metrics if m in metrics] or metrics[:1],
        q.speed_sentences,
        q.distill_corpus_limit,
        q.distill_max_seconds,
    )


def promote_gpu(
    client: Any, rows: list[dict[str, Any]], run_ids: list[str], gate: GpuGate, console: Console
) -> dict[str, str]:
    """Per model and device in `rows`: register the precision the GPU gate chooses as a version
    (tags: target gpu, precision, device) and move `gate.alias` to it. Returns model -> precision."""
    promoted: dict[str, str] = {}
    for model in dict.fromkeys(str(r["model"]) for r in rows):
        mine = [(r, run) for r, run in zip(rows, run_ids, strict=True) if r["model"] == model]
        for device in dict.fromkeys(str(r["device"]) for r, _ in mine):
            candidates = [(r, run) for r, run in mine if r["device"] == device]
            best, verdicts = choose_gpu_precision([r for r, _ in candidates], gate)
            for label, verdict in verdicts.items():
                console.print(f"  {model} on {device}: {label}: {verdict}")
            if best is None:
                console.print(f"[yellow]{model} on {device}: no precision passes the GPU gate[/yellow]")
                continue
            run_id = next(run for r, run in candidates if r is best)
            tags = {"target": "gpu", "precision": str(best["precision"]), "device": device}
            version = tracking.register_version(
                client, model, run_id, tags, f"{model}: variants built and measured by infergraph.optimize"
            )
            why = f"fastest {gate.rank_by} on {device} with fidelity >= {gate.min_fidelity}"
            tracking.promote(client, model, gate.alias, version, why)
            promoted[model] = str(best["precision"])
            console.print(f"models:/{model}@{gate.alias} -> v{version} ({best['precision']} on {device})")
    return promoted


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/optimize.yaml")
    ap.add_argument("--quick", action="store_true", help="the reduced pipeline of `quick:` in the config")
    ap.add_argument("--models", nargs="+", help="a subset of the config's models")
    ap.add_argument("--tracking-uri", help="MLflow store (default: the config's, a local SQLite file)")
    ap.add_argument("--artifact-root", help="where MLflow keeps run artifacts (default: the config's)")
    ap.add_argument("--results-dir", help="summary table and plot (default: the config's)")
    ap.add_argument("--no-promote", action="store_true", help="measure and register, leave aliases alone")
    ap.add_argument(
        "--gpu-results", type=Path, help="log a `python -m infergraph.optimize.gpu` JSON file, then stop"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()

    config = load_config(project_path(args.config))
    tracking_uri = absolute_tracking_uri(args.tracking_uri or config.tracking_uri, PROJECT_ROOT)
    artifact_root = project_path(args.artifact_root or config.artifact_root)
    results_dir = project_path(args.results_dir or config.results_dir)
    quick_models = config.quick.models if (args.quick and config.quick) else None
    names = args.models or quick_models or [p.name for p in config.models]

    client = tracking.connect(tracking_uri, artifact_root)
    if args.gpu_results:
        rows = json.loads(args.gpu_results.read_text())
        run_ids = tracking.log_gpu_results(client, rows, artifact_root)
        console.print(f"logged {len(run_ids)} GPU runs from {args.gpu_results} to {tracking_uri}")
        if not args.no_promote:
            promote_gpu(client, rows, run_ids, config.gpu_gate, console)
        return 0
    started = time.monotonic()
    everything: list[VariantResult] = []
    promoted: dict[str, str] = {}
    notes: dict[tuple[str, str], str] = {}
    head_to_head: dict[str, tuple[str, dict[str, float]]] = {}
    parents: list[str] = []
    for name in names:
        plan = next(p for p in config.models if p.name == name)
        settings = settings_for(config, name, args.quick)
        experiment = tracking.experiment_for(client, name, artifact_root)
        with mlflow.start_run(
            experiment_id=experiment, run_name=f"pipeline{' --quick' if args.quick else ''}"
        ) as run:
            parents.append(run.info.run_id)
            mlflow.log_params(
                {"quick": args.quick, "variants": ",".join(settings.variants), **config.gate.model_dump()}
            )
            results, evaluation = run_model(config, plan, settings, console)
            for result in results:
                run_id = tracking.log_variant(result, evaluation)
                if result.artifact is not None:
                    result.version = tracking.register(client, result, run_id)
                notes[(name, result.variant)] = eligible(result, config.gate)[1]
            best = winner(results, config)
            if best is None:
                console.print(
                    f"[red]{name}: no variant passes the gate; {config.gate.alias} alias left as it was"
                )
            else:
                h2h = head_to_head_with_base(config, settings, best, console)
                head_to_head[name] = (best.variant, h2h)
                mlflow.log_metrics(h2h)  # on the pipeline run: the promoted variant vs the base
                console.print(
                    f"{name}: {best.variant} {h2h['h2h_speedup']:.2f}x the base head to head "
                    f"({h2h['h2h_variant_sentences_per_s']:.0f} vs {h2h['h2h_base_sentences_per_s']:.0f} "
                    f"sentences/s at batch {h2h['h2h_batch']:.0f})"
                )
            if best is not None and not args.no_promote and best.version is not None:
                why = f"fastest variant with quality >= {config.gate.min_quality_pct}% of FP32"
                tracking.promote(client, name, config.gate.alias, best.version, why)
                promoted[name] = best.variant
                console.print(
                    f"[green]{name}: models:/{name}@{config.gate.alias} -> v{best.version} ({best.variant})"
                )
            mlflow.set_tag("promoted", promoted.get(name, "none"))
            everything += results

    results_dir.mkdir(parents=True, exist_ok=True)
    title = f"Variants measured {time.strftime('%Y-%m-%d %H:%M')} ({time.monotonic() - started:.0f} s)"
    console.print(report.console_table(everything, promoted, notes, title))
    summary_md = results_dir / "summary.md"
    summary_md.write_text(
        f"# {title}\n\n"
        + report.markdown_table(everything, promoted, notes)
        + report.head_to_head_lines(head_to_head)
    )
    summary_json = results_dir / "summary.json"
    rows = [{"model": r.model, "variant": r.label, "quality_pct": r.quality_pct, "version": r.version,
             "promoted": promoted.get(r.model) == r.variant, **r.metrics} for r in everything]  # fmt: skip
    summary_json.write_text(json.dumps({"variants": rows, "head_to_head": head_to_head}, indent=2))
    plot = report.plot(everything, promoted, config.gate.min_quality_pct, results_dir / "variants.png")
    for run_id in parents:
        with mlflow.start_run(run_id=run_id):
            tracking.log_summary([summary_md, summary_json, plot], {"promoted": promoted})
    console.print(f"wrote {summary_md}, {plot}; MLflow store {tracking_uri}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
