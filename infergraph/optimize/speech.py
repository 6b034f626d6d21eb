"""`uv run python -m infergraph.optimize.speech`: Whisper engines x precisions measured, logged, gated.

    uv run python -m infergraph.optimize.speech            # whisper-tiny.en, 4 variants, 300 sentences
    uv run python -m infergraph.optimize.speech --model whisper-base
    uv run python -m infergraph.optimize.speech --quick    # 12 sentences, 1 SNR, 2 variants (the test's)
    uv run mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db

A speech variant is an (engine, precision) setting of the same catalog weights (`SpeechSpec.engine`,
`.precision`; `load_speech_engine` converts what it needs once), so what gets registered is a small
manifest (`speech_manifest.json`: model, engine, precision, source), like the LLM's precisions
(`optimize/llm.py`). One MLflow run per invocation (experiment `optimize/<model>`), a nested run per
variant, a registry version per variant tagged `engine` and `precision`, and the `production` alias
moved by the gate. Writes results/speech/optimize.json, optimize.md and optimize.png.

Quality: word error rate on `speech_data`'s set (Festival-read news sentences, one window each; clean
and with white noise at each SNR), greedy, language "en", batched through `engine.transcribe` in
passes of 8 windows, as the server batches them. Normalisation: `speech_data.normalise`.

Speed, on this machine's CPU with `--threads` (2) threads: the real-time factor (compute s / audio s)
of one ~30 s clip (clean sentences back to back, a single window), median of 3 interleaved across
variants after a warm-up; and throughput in audio-seconds per second over the clean set in passes of
8 (the clean WER pass, timed). Every window is padded to 30 s by Whisper, so short clips cost nearly
what a full window does: throughput on ~8 s sentences is far below 1 / RTF.

Gate: the reference is CTranslate2 fp32. Eligible: WER at most +1 point (0.01 absolute) above the
reference's on clean audio AND at each SNR where the reference itself transcribes (its WER at most
50%). A condition where fp32 already misses most words (tiny.en at 5 dB: ~63%) is reported, not
gated: there a few hallucinated words swing WER by points either way (int8's margin at 5 dB moved
from +13 to +5 points between 100 and 300 sentences), so it says nothing about the variant.
Promoted: the eligible variant with the lowest RTF.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import yaml
from mlflow import MlflowClient
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from infergraph.aliases import PRODUCTION
from infergraph.files import atomic_write_text
from infergraph.optimize import speech_data, tracking
from infergraph.optimize.config import load_config
from infergraph.paths import PROJECT_ROOT, absolute_tracking_uri, project_path
from infergraph.runtimes.speech.engine import SAMPLE_RATE, DecodeOptions, SpeechEngine, WindowInput
from infergraph.runtimes.speech.spec import SpeechSpec

log = logging.getLogger(__name__)

MODEL = "whisper-tiny.en"
VARIANTS = (("ctranslate2", "fp32"), ("ctranslate2", "int8"), ("torch", "fp32"), ("torch", "int8"))
REFERENCE = VARIANTS[0]  # the gate compares every variant's WER with this one's
ALIAS = PRODUCTION
ARTIFACT_FILE = "speech_manifest.json"
MAX_WER_INCREASE = 0.01  # +1 WER point, on clean audio and at every SNR the reference can transcribe
GATED_REFERENCE_WER = 0.5  # conditions where the reference's own WER is above this are not gated
RANK_BY = "rtf"  # lower is better
PASS_WINDOWS = 8  # windows per engine.transcribe call (the serving default, SpeechSpec.max_windows_per_pass)
OPTIONS = DecodeOptions(language="en", temperature=0.0, timestamps=False)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The knobs `--quick` shrinks."""

    variants: tuple[tuple[str, str], ...]
    sentences: int
    snrs: tuple[float, ...]
    rtf_reps: int
    seed: int = 0


FULL = Settings(VARIANTS, speech_data.DEFAULT_COUNT, speech_data.DEFAULT_SNRS, 3)
QUICK = Settings(VARIANTS[:2], 12, (10.0,), 3)


@dataclasses.dataclass
class VariantRun:
    """One (engine, precision): what was measured, the gate's word on it, its registry version."""

    engine: str
    precision: str
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    gate: str = ""
    version: str | None = None
    samples: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # a few transcripts

    @property
    def label(self) -> str:
        return f"{self.engine}/{self.precision}"


# --------------------------------------------------------------------------- measuring


def transcribe_all(
    engine: SpeechEngine, clips: Sequence[np.ndarray], tick: Callable[[int], None] | None = None
) -> tuple[list[str], float]:
    """Every clip as one window, `PASS_WINDOWS` per call: (transcripts, compute seconds)."""
    texts: list[str] = []
    seconds = 0.0
    for start in range(0, len(clips), PASS_WINDOWS):
        batch = [WindowInput(np.asarray(a, np.float32), OPTIONS) for a in clips[start : start + PASS_WINDOWS]]
        t0 = time.perf_counter()
        outputs = engine.transcribe(batch)
        seconds += time.perf_counter() - t0
        texts += [" ".join(s.text.strip() for s in out.segments).strip() for out in outputs]
        if tick:
            tick(len(batch))
    return texts, seconds


def measure_quality(
    engine: SpeechEngine,
    run: VariantRun,
    eval_set: speech_data.EvalSet,
    conditions: dict[str, list[np.ndarray]],
    progress: Progress,
) -> None:
    """WER per condition; the clean pass's time is the throughput figure."""
    total = sum(len(c) for c in conditions.values())
    task = progress.add_task(f"{run.label}: WER", total=total)
    engine.transcribe([WindowInput(eval_set.clean[0], OPTIONS)])  # warm-up
    for name, clips in conditions.items():
        progress.update(task, description=f"{run.label}: WER {name}")
        hyps, seconds = transcribe_all(engine, clips, lambda n: progress.advance(task, n))
        run.metrics[f"wer_{name}"] = speech_data.wer(eval_set.texts, hyps)
        run.samples[name] = hyps[:3]
        if name == "clean":
            run.metrics["audio_s_per_s"] = eval_set.audio_s / seconds
            run.metrics["clean_pass_s"] = seconds


def measure_rtf(
    engines: dict[str, SpeechEngine],
    runs: Sequence[VariantRun],
    clip: np.ndarray,
    reps: int,
    progress: Progress,
) -> None:
    """One ~30 s window through each engine, `reps` rounds interleaved across variants (so a busy
    moment on the shared box hits all of them), after a warm-up each: the median's RTF."""
    window = [WindowInput(clip, OPTIONS)]
    audio_s = len(clip) / SAMPLE_RATE
    times: dict[str, list[float]] = {r.label: [] for r in runs}
    task = progress.add_task(f"RTF: {audio_s:.1f} s clip", total=reps * len(runs))
    for run in runs:
        engines[run.label].transcribe(window)
    for _ in range(reps):
        for run in runs:
            t0 = time.perf_counter()
            engines[run.label].transcribe(window)
            times[run.label].append(time.perf_counter() - t0)
            progress.advance(task)
    for run in runs:
        run.metrics["rtf"] = statistics.median(times[run.label]) / audio_s
        run.metrics["rtf_clip_s"] = audio_s


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def load_engine(spec: SpeechSpec, engine: str, precision: str, threads: int) -> SpeechEngine:
    from infergraph.runtimes.speech.loader import load_speech_engine

    return load_speech_engine(spec, engine=engine, precision=precision, threads=threads)


def measure(
    spec: SpeechSpec, eval_set: speech_data.EvalSet, settings: Settings, threads: int, console: Console
) -> tuple[list[VariantRun], dict[str, Any]]:
    """Load every variant, its WER per condition, then the RTF rounds across all of them."""
    conditions = eval_set.conditions()
    clip, _ = speech_data.long_clip(eval_set)
    engines: dict[str, SpeechEngine] = {}
    runs: list[VariantRun] = []
    with _progress(console) as progress:
        for engine_name, precision in settings.variants:
            run = VariantRun(engine_name, precision)
            with console.status(f"{run.label}: loading"):
                t0 = time.perf_counter()
                engines[run.label] = load_engine(spec, engine_name, precision, threads)
                run.metrics["load_s"] = time.perf_counter() - t0
            measure_quality(engines[run.label], run, eval_set, conditions, progress)
            console.log(
                f"{run.label}: "
                + ", ".join(f"{k} {v:.4f}" for k, v in run.metrics.items() if k.startswith("wer_"))
            )
            runs.append(run)
        measure_rtf(engines, runs, clip, settings.rtf_reps, progress)
    gate(runs)
    evaluation = {
        "text": speech_data.SOURCE_NAME,
        "voice": speech_data.VOICE,
        "sentences": len(eval_set.texts),
        "audio_s": round(eval_set.audio_s, 1),
        "conditions": list(conditions),
        "snrs_db": list(settings.snrs),
        "noise_seed": settings.seed,
        "pass_windows": PASS_WINDOWS,
        "rtf_clip_s": round(len(clip) / SAMPLE_RATE, 2),
        "rtf_reps": settings.rtf_reps,
        "threads": threads,
        "beam_size": 1,
        "language": OPTIONS.language,
        "eval_set_cache": str(eval_set.path),
    }
    return runs, evaluation


# --------------------------------------------------------------------------- the gate


def wer_keys(metrics: dict[str, float]) -> list[str]:
    return [k for k in metrics if k.startswith("wer_") and not k.endswith("_delta")]


def eligible(run: VariantRun, reference: VariantRun) -> tuple[bool, str]:
    """Within +1 WER point of the reference on clean audio and at every SNR it transcribes, and timed."""
    if RANK_BY not in run.metrics:
        return False, "no RTF measured"
    for key in wer_keys(reference.metrics):
        if reference.metrics[key] > GATED_REFERENCE_WER:
            continue
        delta = run.metrics.get(key, math.inf) - reference.metrics[key]
        if delta > MAX_WER_INCREASE + 1e-12:
            return False, f"{key} +{100 * delta:.2f} points over {_label(REFERENCE)}"
    return True, "passes"


def _label(variant: tuple[str, str]) -> str:
    return "/".join(variant)


def reference_of(runs: Sequence[VariantRun]) -> VariantRun | None:
    return next((r for r in runs if (r.engine, r.precision) == REFERENCE), None)


def gate(runs: Sequence[VariantRun]) -> None:
    """Each run's `gate` word and its WER deltas against the reference."""
    reference = reference_of(runs)
    for run in runs:
        if reference is None:
            run.gate = f"no {_label(REFERENCE)} reference"
            continue
        for key in wer_keys(reference.metrics):
            if key in run.metrics:
                run.metrics[f"{key}_delta"] = run.metrics[key] - reference.metrics[key]
        run.gate = eligible(run, reference)[1]


def choose(runs: Sequence[VariantRun]) -> VariantRun | None:
    """The fastest (lowest RTF) variant the gate lets through; None without the reference."""
    reference = reference_of(runs)
    if reference is None:
        return None
    passing = [r for r in runs if eligible(r, reference)[0]]
    return min(passing, key=lambda r: r.metrics[RANK_BY], default=None)


# --------------------------------------------------------------------------- catalog and MLflow


def speech_spec(name: str, catalog: Path) -> SpeechSpec:
    """The model's catalog entry, read as a `SpeechSpec` straight from the YAML."""
    entries = (yaml.safe_load(catalog.read_text()) or {}).get("models", [])
    entry = next((e for e in entries if e.get("name") == name), None)
    if entry is None:
        raise SystemExit(f"{name} is not in {catalog}")
    if entry.get("kind") != "speech-to-text":
        raise SystemExit(f"{name} is a {entry.get('kind')}, not a speech-to-text model")
    return SpeechSpec.model_validate(entry)


def variant_manifest(spec: SpeechSpec, run: VariantRun) -> dict[str, Any]:
    """What a registry version of a speech model is: the catalog's weights, one engine, one precision."""
    return {
        "kind": "speech-variant",
        "model": spec.name,
        "engine": run.engine,
        "precision": run.precision,
        "source": spec.source.model_dump(),
        "metrics": {k: v for k, v in run.metrics.items() if math.isfinite(v)},
        "made_by": "python -m infergraph.optimize.speech",
    }


def log_and_register(
    client: MlflowClient, spec: SpeechSpec, run: VariantRun, evaluation: dict[str, Any]
) -> None:
    """A nested run for one variant (params, metrics, manifest, first transcripts), registered."""
    parent = mlflow.active_run()
    experiment = parent.info.experiment_id if parent else None
    with mlflow.start_run(run_name=run.label, nested=True, experiment_id=experiment) as child:
        mlflow.set_tags(
            {
                "variant": run.label,
                "engine": run.engine,
                "precision": run.precision,
                "target": "cpu",
                "gate": run.gate,
            }
        )
        params = {"model": spec.name, "engine": run.engine, "precision": run.precision}
        mlflow.log_params({**params, **tracking.flat_params(evaluation)})
        mlflow.log_metrics({k: v for k, v in run.metrics.items() if math.isfinite(v)})
        mlflow.log_dict(variant_manifest(spec, run), f"model/{ARTIFACT_FILE}")
        mlflow.log_dict({"evaluation": evaluation, "first_transcripts": run.samples}, "evaluation.json")
        run_id = child.info.run_id
    m = run.metrics
    tags = {
        "kind": "speech-to-text",
        "engine": run.engine,
        "precision": run.precision,
        "wer_clean": f"{m.get('wer_clean', math.nan):.4f}",
        "rtf": f"{m.get('rtf', math.nan):.4f}",
        "gate": run.gate,
    }
    description = f"engines x precisions from `python -m infergraph.optimize.speech` ({ARTIFACT_FILE})"
    run.version = tracking.register_version(client, spec.name, run_id, tags, description)


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def _pct(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def table(runs: Sequence[VariantRun], promoted: VariantRun | None) -> tuple[list[str], list[list[str]]]:
    """Header and rows: WER in percent per condition, then speed, registry, gate."""
    conditions = [k.removeprefix("wer_") for k in wer_keys(runs[0].metrics)]
    header = [
        "variant",
        *(f"WER % {c}" for c in conditions),
        "RTF (30 s clip)",
        "audio s/s (passes of 8)",
        "load s",
        "registry",
        "gate",
    ]
    rows = []
    for r in runs:
        m = r.metrics
        rows.append(
            [
                r.label,
                *(_pct(m.get(f"wer_{c}")) for c in conditions),
                _fmt(m.get("rtf"), ".4f"),
                _fmt(m.get("audio_s_per_s"), ".2f"),
                _fmt(m.get("load_s"), ".1f"),
                f"v{r.version}" if r.version else "-",
                f"{ALIAS} ({r.gate})" if r is promoted else r.gate,
            ]
        )
    return header, rows


def markdown(
    runs: Sequence[VariantRun], promoted: VariantRun | None, evaluation: dict[str, Any], title: str
) -> str:
    """The table, then how it was measured and what the gate chose."""
    header, rows = table(runs, promoted)
    e = evaluation
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += [
        "",
        f"- WER: {e['sentences']} sentences of {e['text']} ({e['audio_s']:.0f} s of audio) read by "
        f"Festival ({e['voice']}), each one window; clean and with white Gaussian noise at "
        f"{', '.join(f'{s:g}' for s in e['snrs_db'])} dB SNR. Greedy, language en, {e['pass_windows']} "
        "windows per pass. Lowercased, digits to words, punctuation stripped (`speech_data.normalise`).",
        f"- Speed: {e['threads']} threads on {platform.machine()}; RTF = compute s / audio s on a "
        f"{e['rtf_clip_s']:.1f} s clip (one window), median of {e['rtf_reps']} interleaved; audio s/s = "
        "clean-set audio / the clean WER pass's compute time (short clips are padded to 30 s). "
        "Shared 2-core box: compare within a run.",
        f"- Gate: the lowest RTF with WER <= {_label(REFERENCE)}'s + {100 * MAX_WER_INCREASE:g} point on "
        f"clean audio and at every SNR where its own WER is <= {100 * GATED_REFERENCE_WER:g}% (others "
        f"are shown, not gated); promoted: {promoted.label if promoted else 'none'}.",
    ]
    return "\n".join(lines) + "\n"


def console_table(runs: Sequence[VariantRun], promoted: VariantRun | None, title: str) -> Table:
    header, rows = table(runs, promoted)
    out = Table(title=title, caption="WER in percent; the gate's reasons are in optimize.md")
    for col in header:
        out.add_column(col, justify="left" if col in ("variant", "gate") else "right")
    for row, r in zip(rows, runs, strict=True):
        out.add_row(*row[:-1], "promoted" if r is promoted else ("passes" if r.gate == "passes" else "fails"))
    return out


def plot(runs: Sequence[VariantRun], promoted: VariantRun | None, model: str, path: Path) -> Path:
    """Left: WER per condition, a group of bars per variant. Right: RTF per variant (green:
    promoted, blue: passes the gate, grey: fails)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = wer_keys(runs[0].metrics)
    fig, (wer_ax, rtf_ax) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(runs))
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        values = [100 * r.metrics.get(key, math.nan) for r in runs]
        wer_ax.bar(x + (i - (len(keys) - 1) / 2) * width, values, width, label=key.removeprefix("wer_"))
    wer_ax.set_xticks(x, [r.label for r in runs])
    wer_ax.set_ylabel("WER (%)")
    wer_ax.set_title("word error rate (lower is better)")
    wer_ax.legend(fontsize=8)
    colors = [
        "tab:green" if r is promoted else ("tab:blue" if r.gate == "passes" else "tab:gray") for r in runs
    ]
    rtf = [r.metrics.get("rtf", math.nan) for r in runs]
    rtf_ax.bar(x, rtf, color=colors)
    for xi, value in zip(x, rtf, strict=True):
        rtf_ax.annotate(_fmt(value, ".3f"), (xi, value), ha="center", va="bottom", fontsize=8)
    rtf_ax.set_xticks(x, [r.label for r in runs])
    rtf_ax.set_ylabel("real-time factor (compute s / audio s)")
    rtf_ax.set_title("speed on a ~30 s clip (lower is faster)")
    for ax in (wer_ax, rtf_ax):
        ax.grid(alpha=0.3, axis="y")
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"{model}: engines x precisions; green = promoted ({ALIAS}), grey = fails the gate")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- main


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", default=MODEL, help="a speech-to-text entry of the catalog")
    ap.add_argument("--quick", action="store_true", help="12 sentences, one SNR, CTranslate2 fp32 and int8")
    ap.add_argument("--sentences", type=int, help="how many sentences (default 300; --quick: 12)")
    ap.add_argument(
        "--variants",
        nargs="+",
        choices=[_label(v) for v in VARIANTS],
        help=f"a subset, as engine/precision ({_label(REFERENCE)}, the reference, is added)",
    )
    ap.add_argument("--catalog", help="the catalog YAML (default: configs/optimize.yaml's)")
    ap.add_argument(
        "--tracking-uri", help="MLflow store (default: configs/optimize.yaml's, a local SQLite file)"
    )
    ap.add_argument(
        "--artifact-root", help="where MLflow keeps run artifacts (default: configs/optimize.yaml's)"
    )
    ap.add_argument("--results-dir", default="results/speech", help="optimize.json, .md and .png")
    ap.add_argument("--data-cache", help="where the evaluation set is cached (default: <cache>/speech-eval)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-promote", action="store_true", help="measure and register, leave the alias alone")
    return ap.parse_args(argv)


def _promote(
    client: MlflowClient, spec: SpeechSpec, runs: Sequence[VariantRun], console: Console
) -> VariantRun | None:
    best = choose(runs)
    if best is None:
        console.print(f"[red]{spec.name}: no variant passes the gate; {ALIAS} alias left as it was")
        return None
    assert best.version is not None
    why = (
        f"lowest RTF ({best.metrics[RANK_BY]:.4f}) with WER within +{100 * MAX_WER_INCREASE:g} point of "
        f"{_label(REFERENCE)} on clean audio and at every SNR"
    )
    tracking.promote(client, spec.name, ALIAS, best.version, why)
    console.print(f"[green]{spec.name}: models:/{spec.name}@{ALIAS} -> v{best.version} ({best.label})")
    return best


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    settings = QUICK if args.quick else FULL
    if args.sentences:
        settings = dataclasses.replace(settings, sentences=args.sentences)
    if args.variants:
        chosen = tuple(v for v in VARIANTS if v == REFERENCE or _label(v) in args.variants)
        settings = dataclasses.replace(settings, variants=chosen)
    config = load_config(project_path("configs/optimize.yaml"))
    tracking_uri = absolute_tracking_uri(args.tracking_uri or config.tracking_uri, PROJECT_ROOT)
    artifact_root = project_path(args.artifact_root or config.artifact_root)
    results_dir = project_path(args.results_dir)
    spec = speech_spec(args.model, project_path(args.catalog or config.catalog))
    eval_set = speech_data.build_eval_set(
        settings.sentences,
        settings.snrs,
        settings.seed,
        cache=Path(args.data_cache) if args.data_cache else None,
        console=console,
    )

    client = tracking.connect(tracking_uri, artifact_root)
    experiment = tracking.experiment_for(client, spec.name, artifact_root)
    started = time.monotonic()
    with mlflow.start_run(
        experiment_id=experiment, run_name=f"speech variants{' --quick' if args.quick else ''}"
    ):
        variants = ",".join(map(_label, settings.variants))
        mlflow.log_params(
            {
                "quick": args.quick,
                "model": spec.name,
                "variants": variants,
                "max_wer_increase": MAX_WER_INCREASE,
                "rank_by": RANK_BY,
                "alias": ALIAS,
            }
        )
        runs, evaluation = measure(spec, eval_set, settings, args.threads, console)
        for run in runs:
            log_and_register(client, spec, run, evaluation)
        if args.no_promote:
            best = choose(runs)
            console.print(f"{spec.name}: the gate picks {best.label if best else 'none'} (--no-promote)")
            promoted = None
        else:
            promoted = _promote(client, spec, runs, console)
        mlflow.set_tag("promoted", promoted.label if promoted else "none")
        reference = reference_of(runs)
        if reference is not None:
            mlflow.log_metrics({f"reference_{k}": reference.metrics[k] for k in wer_keys(reference.metrics)})
        elapsed = time.monotonic() - started
        mlflow.log_metric("wall_s", elapsed)
        title = f"{spec.name} engines x precisions, {time.strftime('%Y-%m-%d %H:%M')} ({elapsed:.0f} s)"
        Console(width=max(console.width, 150)).print(console_table(runs, promoted, title))
        paths = write_results(results_dir, spec, runs, promoted, evaluation, title, args.quick)
        for path in paths:
            mlflow.log_artifact(str(path))
    console.print(f"wrote {', '.join(map(str, paths))}; MLflow store {tracking_uri}")
    return 0


def write_results(
    results_dir: Path,
    spec: SpeechSpec,
    runs: Sequence[VariantRun],
    promoted: VariantRun | None,
    evaluation: dict[str, Any],
    title: str,
    quick: bool,
) -> list[Path]:
    """optimize.md, optimize.json and optimize.png under `results_dir`."""
    import ctranslate2
    import torch

    results_dir.mkdir(parents=True, exist_ok=True)
    md = atomic_write_text(results_dir / "optimize.md", markdown(runs, promoted, evaluation, title))
    summary = {
        "model": spec.name,
        "quick": quick,
        "promoted": promoted.label if promoted else None,
        "gate": {"reference": _label(REFERENCE), "max_wer_increase": MAX_WER_INCREASE, "rank_by": RANK_BY},
        "evaluation": evaluation,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "ctranslate2": ctranslate2.__version__,
        },
        "variants": [
            {
                "engine": r.engine,
                "precision": r.precision,
                "version": r.version,
                "gate": r.gate,
                **r.metrics,
                "first_transcripts": r.samples,
            }
            for r in runs
        ],
    }
    js = atomic_write_text(results_dir / "optimize.json", json.dumps(summary, indent=2) + "\n")
    png = plot(runs, promoted, spec.name, results_dir / "optimize.png")
    return [md, js, png]


if __name__ == "__main__":
    raise SystemExit(main())
