"""`python -m infergraph.bench.advisor`: the serve.yaml that meets a stated SLO, measured, not guessed.

    uv run python -m infergraph.bench.advisor --slo-tier premium --slo-p99-ms 150 \\
        [--model all-MiniLM-L6-v2] [--load "<loadtest/locustfile.py options>"] [--seconds 45]
    uv run python -m infergraph.bench.advisor --validate results/tuning/<run>/recommended-serve.yaml

The SLO: the `--slo-tier` tier's p99 latency at most `--slo-p99-ms` under the offered load of
`--load` (options of loadtest/locustfile.py: the kind mix, tiers, users, pace), with at most
`--max-refused-pct` of that tier's requests refused and every tier still answered (no starvation).

Starts the service from `--config` (or uses `--url` and `--dashboard` of a running one) and sweeps the
settings of one model's deployment that matter, one knob at a time from the best so far (coordinate
descent): batch size and wait, forward-pass limits and the served variant (`user_config`, applied
live by `serve deploy`), replicas and CPU shares (replicas restart). A trial is: `serve deploy`, wait
until it is live, warm up, then Locust's steady shape for `--seconds`. A value replaces the best so
far when it meets the SLO where the best does not, or lowers the SLO tier's p99 by more than
`--min-gain-pct`, and (`--confirm`, the default) does so again when both are measured once more,
the best first: one lucky trial does not move the sweep (a shipped config measured twice on this box
gave premium p99 133 and 188 ms). Every trial is an MLflow run (experiment `tuning`, the knob
values as `knob.*` params). Writes, under `--out`/<time>: trials.jsonl, trials.png, and recommended-serve.yaml
(`--config` with only the winning changes, the measured figures in its header).

Validation (after the sweep, or alone with `--validate FILE`): the shipped config and the
recommended one alternate on the same service for `--rounds` rounds each, same load; the table says
which meets the SLO and by how much (validation.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.table import Table

from infergraph.paths import PROJECT_ROOT
from infergraph.testing.service import AUTH, DEFAULT_CONFIG, RunningService, start_service
from loadtest import report as loadreport

console = Console()
LOCUSTFILE = "loadtest/locustfile.py"
EXPERIMENT = "tuning"
# Twice the users of loadtest/'s default mix (3 premium, 3 standard, 18 batch: about what the English
# encoder sustains on the 2-core reference box), premium users at 3 requests/s each (18/s in all, so
# its p99 rests on ~800 requests a trial): bulk work saturates the encoder while premium must stay fast.
DEFAULT_LOAD = "--ig-kinds embeddings:1 --ig-base-users 48 --ig-premium-rps 3"
Changes = dict[str, Any]  # dotted path in the deployment's entry (or IN_ROUTER) -> value
# Not a path in the deployment's entry: whether the model is in the application's `in_router` list,
# i.e. computed by the router itself (deployments/in_router.py).
IN_ROUTER = "in_router"


@dataclass(frozen=True)
class Knob:
    path: str  # in the deployment's entry of serve.yaml, dotted
    values: tuple[Any, ...]
    restarts: bool = False  # replicas restart (Serve starts new ones) instead of reconfiguring


KNOBS = (
    Knob("user_config.max_batch_sentences", (8, 16, 32, 64)),
    Knob("user_config.batch_wait_timeout_s", (0.0, 0.002, 0.004, 0.01)),
    Knob("user_config.max_forward_sequences", (8, 16, 32)),
    Knob("user_config.max_forward_tokens", (256, 512, 1024)),
    Knob("user_config.variant", ("base", "models:/{model}@production")),
    Knob("num_replicas", (1, 2), restarts=True),  # the CPU shares are split between the replicas
    Knob("ray_actor_options.num_cpus", (0.35, 0.5, 0.7, 0.9), restarts=True),
    Knob(IN_ROUTER, (False, True), restarts=True),  # the router restarts with or without its copy
)


UNPLACEABLE_AFTER_S = 60.0  # longer than a replica's graceful shutdown (Serve's default 20 s)


class UnschedulableError(RuntimeError):
    """Ray cannot place the trial's replicas (not enough CPU shares left)."""


@dataclass
class Trial:
    label: str
    changes: Changes
    slo_p99_ms: float | None  # the SLO tier's p99
    slo_p50_ms: float | None
    slo_refused_pct: float
    answered_per_s: float | None
    tiers: dict[str, dict[str, Any]]  # per tier: answered, refused, p50, p99
    errors: int  # answers other than 200 and refusals, and requests with no answer
    meets_slo: bool
    mlflow_run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --- serve.yaml ---------------------------------------------------------------------------------
def deployment(config: dict[str, Any], model: str) -> dict[str, Any]:
    for app in config["applications"]:
        for dep in app.get("deployments", []):
            if dep["name"] == model:
                return dict(dep)
    raise KeyError(f"no deployment named {model!r} in the config")


def get(dep: dict[str, Any], path: str) -> Any:
    node: Any = dep
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def in_router(config: dict[str, Any]) -> list[str]:
    """The models the config's router computes itself."""
    return [m for app in config["applications"] for m in (app.get("args") or {}).get(IN_ROUTER) or []]


def knob_value(config: dict[str, Any], model: str, path: str) -> Any:
    """What `config` sets for a knob of `model` (None: not set)."""
    if path == IN_ROUTER:
        return model in in_router(config)
    return get(deployment(config, model), path)


def with_changes(config: dict[str, Any], model: str, changes: Changes) -> dict[str, Any]:
    """A copy of `config` whose `model` deployment has `changes` applied."""
    out = copy.deepcopy(config)
    for app in out["applications"]:
        if IN_ROUTER in changes and "args" in app:
            others = [m for m in app["args"].get(IN_ROUTER) or [] if m != model]
            app["args"][IN_ROUTER] = [*others, model] if changes[IN_ROUTER] else others
        for dep in app.get("deployments", []):
            if dep["name"] != model:
                continue
            for path, value in changes.items():
                if path == IN_ROUTER:
                    continue
                *parents, last = path.split(".")
                node = dep
                for key in parents:
                    node = node.setdefault(key, {})
                node[last] = value
    return out


# --- the running service --------------------------------------------------------------------------
class Target:
    """The service under test: where it answers, how `serve deploy` reaches it, the config it runs."""

    def __init__(self, url: str, dashboard: str, config: dict[str, Any], workdir: Path) -> None:
        self.url, self.dashboard, self.config, self.workdir = url, dashboard, config, workdir
        self.env = {**os.environ, "RAY_AUTH_MODE": "token"}  # clusters started by `serve run` use it
        self.serve_cli = str(Path(sys.executable).parent / "serve")
        self.deployed: dict[str, Any] = config

    def deploy(self, config: dict[str, Any], model: str, timeout_s: float = 300) -> float:
        """`serve deploy` `config` and wait until Serve reports it running and the model answers;
        returns the seconds it took."""
        started = time.monotonic()
        if config == self.deployed:
            return 0.0
        (self.workdir / "deploys").mkdir(exist_ok=True)
        path = self.workdir / "deploys" / f"{time.time_ns()}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        subprocess.run(
            [self.serve_cli, "deploy", "-a", self.dashboard, str(path)],
            check=True,
            env=self.env,
            capture_output=True,
            timeout=120,
        )
        new, old = deployment(config, model), deployment(self.deployed, model)
        restarts = new | {"user_config": None} != old | {"user_config": None}  # more than user_config
        restarts |= in_router(config) != in_router(self.deployed)  # the router restarts
        self.deployed = config
        wanted = new.get("user_config") or {}
        computed_in = "router" if model in in_router(config) else "replica"
        waiting_for_cpus: float | None = None  # since when a new replica waits to be placed
        while True:
            status = self.status() if restarts else {}  # one `serve status` (seconds) per look
            applied = self._applied(model, wanted, computed_in)
            if applied and (not restarts or self._healthy(model, status)):
                return time.monotonic() - started
            if restarts and "to be scheduled" in json.dumps(status):
                # Serve stops an old replica before it starts the new one (max_surge_percent 0), so
                # a replacement waits for the old one's CPU shares while it drains: only a wait that
                # outlasts the drain means Ray cannot place it.
                waiting_for_cpus = waiting_for_cpus or time.monotonic()
                if time.monotonic() - waiting_for_cpus > UNPLACEABLE_AFTER_S:
                    raise UnschedulableError(f"{path.name}: Ray cannot place the replicas")
            else:
                waiting_for_cpus = None
            if time.monotonic() - started > timeout_s:
                late = f"{path.name} not running after {timeout_s:.0f} s"
                raise TimeoutError(f"{late}: {status or self.status()}")
            time.sleep(0.5 if not restarts else 2)

    def _applied(self, model: str, user_config: dict[str, Any], computed_in: str = "replica") -> bool:
        """The model's card shows `user_config` (Serve called `reconfigure` on its replica) and that
        it is computed where the config says (the router's copy has loaded, or is gone)."""
        try:
            card = httpx.get(f"{self.url}/v1/models/{model}", headers=AUTH, timeout=10).json()
        except (httpx.HTTPError, ValueError):
            return False
        if card.get("computed_in", "replica") != computed_in:
            return False
        batching = card.get("batching") or {}
        if any(batching.get(k) != v for k, v in user_config.items() if k != "variant"):
            return False
        return "variant" not in user_config or card.get("variant_requested") == user_config["variant"]

    def status(self) -> dict[str, Any]:
        out = subprocess.run(
            [self.serve_cli, "status", "-a", self.dashboard],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        return yaml.safe_load(out) or {}

    def _healthy(self, model: str, status: dict[str, Any]) -> bool:
        """`status` (`serve status`) shows every deployment healthy and the model answers (replicas
        were replaced)."""
        apps = status.get("applications") or {}
        if not apps or any(app.get("status") != "RUNNING" for app in apps.values()):
            return False
        deps = {name: d for app in apps.values() for name, d in (app.get("deployments") or {}).items()}
        if any(d.get("status") != "HEALTHY" for d in deps.values()):
            return False
        body = {"model": model, "input": "ready?"}
        try:
            r = httpx.post(f"{self.url}/v1/embeddings", json=body, headers=AUTH, timeout=30)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    def warm_up(self, model: str, seconds: float) -> None:
        """Requests of a few sizes, so that a new replica's first passes are not measured."""
        end = time.monotonic() + seconds
        with httpx.Client(base_url=self.url, headers=AUTH, timeout=30) as client:
            while time.monotonic() < end:
                for n in (1, 8, 32):
                    client.post("/v1/embeddings", json={"model": model, "input": ["warm up"] * n})


# --- one measured trial -------------------------------------------------------------------------
def run_load(target: Target, load: str, seconds: float, run_dir: Path) -> None:
    """Locust's steady shape with the stated mix, as its own process (it must not share this one)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        LOCUSTFILE,
        "--headless",
        "--only-summary",
        "-H",
        target.url,
        "--ig-shape",
        "steady",
        "--ig-steady-s",
        str(seconds),
        "--ig-log",
        str(run_dir / "requests.jsonl"),
        "--json-file",
        str(run_dir / "locust"),
        "--exit-code-on-error",
        "0",
        *shlex.split(load),
    ]
    with open(run_dir / "locust.log", "wb") as out:
        subprocess.run(cmd, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=seconds + 180)


def judge(summary: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The SLO tier's figures, every tier's, and whether the SLO holds."""
    tiers = {
        name: {
            "answered": s["answered"],
            "refused": s["rejected_total"],
            "p50_ms": s["latency_ms"]["p50"],
            "p99_ms": s["latency_ms"]["p99"],
            "answered_per_s": s["rps_answered"],
        }
        for name, s in summary["tiers"].items()
    }
    slo = summary["tiers"].get(args.slo_tier)
    total = summary["total"]
    errors = total["http_errors"] - total["rejected_total"] + total["unaccounted"]
    refused_pct = 100 * slo["rejected_total"] / slo["sent"] if slo and slo["sent"] else 100.0
    p99 = slo["latency_ms"]["p99"] if slo else None
    meets = (
        p99 is not None
        and p99 <= args.slo_p99_ms
        and refused_pct <= args.max_refused_pct
        and errors == 0
        and all(t["answered"] > 0 for t in tiers.values())
    )
    return {
        "slo_p99_ms": p99,
        "slo_p50_ms": slo["latency_ms"]["p50"] if slo else None,
        "slo_refused_pct": round(refused_pct, 2),
        "answered_per_s": total["rps_answered"],
        "tiers": tiers,
        "errors": errors,
        "meets_slo": meets,
    }


def measure(target: Target, args: argparse.Namespace, label: str, changes: Changes, out: Path) -> Trial:
    config = with_changes(target.config, args.model, changes)
    console.print(f"[bold]{label}[/bold]: deploying", end=" ")
    took = target.deploy(config, args.model)
    console.print(f"({took:.0f} s), warming up, {args.seconds:g} s of load ...")
    target.warm_up(args.model, args.warmup)
    (out / "trials").mkdir(exist_ok=True)
    run_dir = out / "trials" / f"{len(list((out / 'trials').iterdir())):02d}"
    run_load(target, args.load, args.seconds, run_dir)
    params = {f"knob.{k}": v for k, v in changes.items()} | {
        "trial": label,
        "slo": f"{args.slo_tier} p99 <= {args.slo_p99_ms:g} ms",
        "load": args.load,
        "model": args.model,
    }
    summary = loadreport.report(
        run_dir,
        make_plot=False,
        quiet=True,
        tracking_uri=None if args.no_mlflow else args.tracking_uri,
        run_name=f"{args.model} {label}",
        experiment_name=EXPERIMENT,
        extra_params=params,
    )
    trial = Trial(label, dict(changes), **judge(summary, args), mlflow_run_id=summary.get("mlflow_run_id"))
    verdict = "[green]meets[/green]" if trial.meets_slo else "[red]misses[/red]"
    console.print(
        f"  {args.slo_tier} p99 {trial.slo_p99_ms} ms, p50 {trial.slo_p50_ms} ms, refused "
        f"{trial.slo_refused_pct}%, {trial.answered_per_s} answered/s, errors {trial.errors}: "
        f"{verdict} the SLO"
    )
    with open(out / "trials.jsonl", "a") as f:
        f.write(json.dumps(asdict(trial)) + "\n")
    return trial


def settle(target: Target, args: argparse.Namespace, out: Path) -> None:
    """The same load, unmeasured, before the first trial: a fresh service's first minute (caches,
    allocators, Serve's routing state) is slower than the rest and would count against `shipped`."""
    if args.settle_s > 0:
        console.print(f"settling: {args.settle_s:g} s of the load, not measured")
        run_load(target, args.load, args.settle_s, out / "settle")


def better(candidate: Trial, best: Trial, min_gain_pct: float) -> bool:
    if candidate.meets_slo != best.meets_slo:
        return candidate.meets_slo
    if candidate.slo_p99_ms is None:
        return False
    if best.slo_p99_ms is None:
        return True
    return candidate.slo_p99_ms < best.slo_p99_ms * (1 - min_gain_pct / 100)


# --- the sweep ----------------------------------------------------------------------------------
def sweep(target: Target, args: argparse.Namespace, out: Path) -> tuple[Trial, Trial, list[Trial]]:
    """Coordinate descent over KNOBS; returns (shipped, best, all trials)."""
    settle(target, args, out)
    shipped = measure(target, args, "shipped", {}, out)
    best, trials = shipped, [shipped]
    shipped_dep = deployment(target.config, args.model)
    chosen = set(args.knobs.split(",")) if args.knobs else None
    for knob in KNOBS:
        if chosen is not None and knob.path not in chosen:
            continue
        current = best.changes.get(knob.path, knob_value(target.config, args.model, knob.path))
        if knob.path == "user_config.variant" and current is None:  # unset: the registry's default
            default = f"models:/{args.model}@production"
            current = default if variant_exists(default, args) else "base"
        values = knob.values
        if knob.path == "user_config.variant" and args.variants:
            values += tuple(args.variants.split(","))
        for raw in values:
            value = raw.format(model=args.model) if isinstance(raw, str) else raw
            if value == current or (knob.path == "user_config.variant" and not variant_exists(value, args)):
                continue
            changes = {**best.changes, knob.path: value}
            if knob.path == "num_replicas":  # the same CPU shares, split between the replicas
                cpus = get(shipped_dep, "ray_actor_options.num_cpus") or 1.0
                changes["ray_actor_options.num_cpus"] = round(cpus / float(value), 3)
            label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in changes.items())
            try:
                trial = measure(target, args, label, changes, out)
            except UnschedulableError as exc:
                console.print(f"  [yellow]{exc}: skipped[/yellow]")
                target.deploy(with_changes(target.config, args.model, best.changes), args.model)
                continue
            trials.append(trial)
            if better(trial, best, args.min_gain_pct):
                best = confirmed(target, args, out, best, trial, trials)
    return shipped, best, trials


def confirmed(
    target: Target, args: argparse.Namespace, out: Path, best: Trial, candidate: Trial, trials: list[Trial]
) -> Trial:
    """The new best if `candidate` beats `best` again when both are measured once more (best first),
    else `best`; the fresh measurements become the reference for the next comparisons."""
    if not args.confirm:
        return candidate
    console.print(
        f"  better than the best so far: measuring both again ({best.label}, then {candidate.label})"
    )
    best_again = measure(target, args, f"{best.label} (again)", best.changes, out)
    candidate_again = measure(target, args, f"{candidate.label} (again)", candidate.changes, out)
    trials += [best_again, candidate_again]
    if better(candidate_again, best_again, args.min_gain_pct):
        return candidate_again
    console.print("  [yellow]not confirmed: the best so far stays[/yellow]")
    target.deploy(with_changes(target.config, args.model, best.changes), args.model)
    return best_again


def registry_version(variant: str, args: argparse.Namespace) -> Any | None:
    """The registry's model version that `variant` (models:/<name>@<alias> or models:/<name>/<version>)
    names, or None (not a registry variant, or not in the registry)."""
    if not variant.startswith("models:/"):
        return None
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=args.registry_uri, registry_uri=args.registry_uri)
    path = variant.removeprefix("models:/")
    try:
        if "@" in path:
            return client.get_model_version_by_alias(*path.split("@", 1))
        return client.get_model_version(*path.rsplit("/", 1))
    except Exception:
        return None


def variant_exists(variant: str, args: argparse.Namespace) -> bool:
    """`base` or a folder always; a registry variant only when the registry has it (else the replica
    cannot start)."""
    return not variant.startswith("models:/") or registry_version(variant, args) is not None


def variant_quality(variant: str, args: argparse.Namespace) -> str | None:
    """What the optimize pipeline measured of a registry variant: its quality against FP32."""
    version = registry_version(variant, args)
    if version is None or "quality_pct_of_fp32" not in version.tags:
        return None
    return f"{version.tags.get('variant', variant)}, {version.tags['quality_pct_of_fp32']}% of FP32 quality"


def write_recommendation(
    path: Path, config_path: Path, model: str, shipped: Trial, best: Trial, args: argparse.Namespace
) -> None:
    """`config_path` with only the winning changes, and the figures that justify them on top."""
    config = with_changes(yaml.safe_load(config_path.read_text()), model, best.changes)
    changes = ", ".join(f"{k}={v}" for k, v in best.changes.items()) or "none (the shipped settings won)"
    header = [
        f"# Recommended by `python -m infergraph.bench.advisor` on {datetime.now():%Y-%m-%d %H:%M}.",
        f"# SLO: {args.slo_tier} p99 <= {args.slo_p99_ms:g} ms, <= {args.max_refused_pct:g}% refused, "
        "every tier answered,",
        f"#      load: {args.load} ({args.seconds:g} s per trial)",
        f"# Changes to {model}: {changes}",
        f"# Measured: {args.slo_tier} p99 {best.slo_p99_ms} ms (shipped {shipped.slo_p99_ms} ms), "
        f"p50 {best.slo_p50_ms} ms (shipped {shipped.slo_p50_ms} ms),",
        f"#           {best.answered_per_s} answered/s (shipped {shipped.answered_per_s}); "
        f"meets the SLO: {best.meets_slo} (shipped {shipped.meets_slo})",
    ]
    variant = best.changes.get("user_config.variant")
    if variant and (quality := variant_quality(variant, args)):  # a quality trade is said, not implied
        header.append(f"# Variant: {quality} (measured by the optimize pipeline)")
    path.write_text("\n".join([*header, ""]) + yaml.safe_dump(config, sort_keys=False))


def plot(trials: list[Trial], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(trials) + 2), 4.5))
    xs = range(len(trials))
    colors = ["tab:green" if t.meets_slo else "tab:red" for t in trials]
    ax.bar(xs, [t.slo_p99_ms or 0 for t in trials], color=colors)
    ax.axhline(args.slo_p99_ms, color="black", linestyle="--", label=f"SLO {args.slo_p99_ms:g} ms")
    ax.set_xticks(list(xs), [t.label for t in trials], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(f"{args.slo_tier} p99 (ms)")
    ax.set_title(f"{args.model}: trials (green meets the SLO)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- validation: shipped vs recommended, alternated ------------------------------------------------
def validate(target: Target, args: argparse.Namespace, recommended: Path, out: Path) -> dict[str, Any]:
    rec = yaml.safe_load(recommended.read_text())
    changes = {
        knob.path: value
        for knob in KNOBS
        if (value := knob_value(rec, args.model, knob.path))
        != knob_value(target.config, args.model, knob.path)
        and value is not None
    }
    rounds: dict[str, list[Trial]] = {"shipped": [], "recommended": []}
    if args.validate:  # a fresh service: settle it first, as the sweep does
        settle(target, args, out)
    for i in range(args.rounds):
        rounds["shipped"].append(measure(target, args, f"validate {i + 1}: shipped", {}, out))
        rounds["recommended"].append(measure(target, args, f"validate {i + 1}: recommended", changes, out))
    table = Table(
        title=f"shipped vs recommended, {args.rounds} alternated rounds "
        f"({args.slo_tier} p99 SLO {args.slo_p99_ms:g} ms)"
    )
    for col in ("config", "p99 ms per round", "p50 ms per round", "answered/s", "meets the SLO"):
        table.add_column(col, justify="right")
    result: dict[str, Any] = {"changes": changes, "rounds": {}}
    for name, trials in rounds.items():
        table.add_row(
            name,
            " / ".join(str(t.slo_p99_ms) for t in trials),
            " / ".join(str(t.slo_p50_ms) for t in trials),
            " / ".join(str(t.answered_per_s) for t in trials),
            " / ".join("yes" if t.meets_slo else "no" for t in trials),
        )
        result["rounds"][name] = [asdict(t) for t in trials]
    console.print(table)
    result["verdict"] = verdict(rounds["shipped"], rounds["recommended"], args.min_gain_pct)
    console.print(f"[bold]validation: {result['verdict']}[/bold]")
    (out / "validation.json").write_text(json.dumps(result, indent=2) + "\n")
    if recommended.parent == out:  # the sweep's file says whether its figures held up
        text = recommended.read_text()
        recommended.write_text(
            f"# Validation ({args.rounds} alternated rounds): {result['verdict']}\n" + text
        )
    return result


def verdict(shipped: list[Trial], recommended: list[Trial], min_gain_pct: float) -> str:
    """Whether the alternated rounds confirm the sweep: the recommended config meets the SLO in more
    rounds, or as many with a median p99 lower by more than `min_gain_pct`."""

    def median_p99(trials: list[Trial]) -> float:
        return statistics.median(t.slo_p99_ms if t.slo_p99_ms is not None else math.inf for t in trials)

    met = sum(t.meets_slo for t in recommended), sum(t.meets_slo for t in shipped)
    p99 = median_p99(recommended), median_p99(shipped)
    figures = f"SLO met in {met[0]} vs {met[1]} rounds, median p99 {p99[0]:.0f} vs {p99[1]:.0f} ms"
    if met[0] > met[1] or (met[0] == met[1] and p99[0] < p99[1] * (1 - min_gain_pct / 100)):
        return f"confirmed ({figures})"
    return f"not confirmed, keep the shipped settings ({figures})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the shipped serve.yaml")
    ap.add_argument("--model", default="all-MiniLM-L6-v2", help="the deployment whose knobs are swept")
    ap.add_argument("--slo-tier", default="premium")
    ap.add_argument("--slo-p99-ms", type=float, default=150.0)
    ap.add_argument("--max-refused-pct", type=float, default=1.0, help="of the SLO tier's requests")
    ap.add_argument("--load", default=DEFAULT_LOAD, help="loadtest/locustfile.py options: mix, users, pace")
    ap.add_argument("--seconds", type=float, default=45.0, help="load per trial")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up requests per trial")
    ap.add_argument("--settle-s", type=float, default=20.0, help="unmeasured load before the first trial")
    ap.add_argument("--min-gain-pct", type=float, default=15.0, help="p99 gain that counts as better")
    ap.add_argument("--knobs", default="", help="comma-separated knob paths (default: all of KNOBS)")
    ap.add_argument(
        "--variants",
        default="",
        help="more variants the sweep may serve, comma-separated (models:/<name>/<version> or @<alias>); "
        "one the optimize gate refused trades quality for speed, which the recommendation states",
    )
    ap.add_argument(
        "--confirm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the best so far and a better trial once more before moving (default: on)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="validation rounds per config (0: none)")
    ap.add_argument("--validate", type=Path, help="only validate this recommended serve.yaml")
    ap.add_argument("--url", help="a running service (default: start one from --config)")
    ap.add_argument("--dashboard", help="its Ray dashboard, for serve deploy (with --url)")
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "tuning")
    ap.add_argument("--tracking-uri", default=loadreport.DEFAULT_TRACKING_URI)
    ap.add_argument("--registry-uri", default=loadreport.DEFAULT_TRACKING_URI, help="where variants resolve")
    ap.add_argument("--no-mlflow", action="store_true")
    args = ap.parse_args(argv)
    # SIGTERM (a timeout, a job runner) ends the run through `finally`: the service it started stops.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    out = args.out / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    service: RunningService | None = None
    if args.url:
        config = yaml.safe_load(args.config.read_text())
        target = Target(args.url, args.dashboard or "http://127.0.0.1:8265", config, out)
    else:
        with console.status(f"starting the service from {args.config}"):
            service = start_service(args.config)
        console.print(f"service up in {service.startup_s:.0f} s at {service.base_url}")
        config = yaml.safe_load(service.config.read_text())
        target = Target(service.base_url, service.dashboard_url(), config, out)
    try:
        if args.validate:
            validate(target, args, args.validate, out)
            return 0
        shipped, best, trials = sweep(target, args, out)
        recommended = out / "recommended-serve.yaml"
        write_recommendation(recommended, args.config, args.model, shipped, best, args)
        plot(trials, args, out / "trials.png")
        console.print(recommended.read_text().split("\n\n")[0])
        console.print(f"wrote {recommended}, {out / 'trials.jsonl'}, {out / 'trials.png'}")
        if args.rounds and best.changes:
            validate(target, args, recommended, out)
        elif args.rounds:
            console.print("the shipped settings won: nothing to validate")
    finally:
        if service is not None:
            service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
