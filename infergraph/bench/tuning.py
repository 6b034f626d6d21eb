"""Measure the serve.yaml settings instead of guessing them: each variant differs from the shipped
configs/serve.yaml in one setting, and runs the same two load shapes through HTTP.

    uv run python -m infergraph.bench.tuning [--duration 10] [--only shipped,access_log_on]

Prints sentences/s for single-sentence requests x32 clients and 32-sentence requests x4 clients.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from infergraph.bench.loadgen import closed_loop
from infergraph.corpus import load_corpus
from infergraph.testing.service import DEFAULT_CONFIG, start_service

Config = dict[str, Any]


def _deployments(cfg: Config) -> list[dict]:
    return cfg["applications"][0]["deployments"]


def _access_log_on(cfg: Config) -> None:
    cfg["logging_config"]["enable_access_log"] = True


def _max_ongoing_default(cfg: Config) -> None:
    for dep in _deployments(cfg):
        dep.pop("max_ongoing_requests", None)  # Serve's default: 5


def _engine_threads_1(cfg: Config) -> None:
    cfg["applications"][0]["runtime_env"]["env_vars"]["INFERGRAPH_ENGINE_THREADS"] = "1"


def _forward_32_unbounded(cfg: Config) -> None:
    for dep in _deployments(cfg):
        if "user_config" in dep:
            dep["user_config"].update(max_forward_sequences=32, max_forward_tokens=1_000_000)


VARIANTS: dict[str, Callable[[Config], None]] = {
    "shipped": lambda cfg: None,
    "access_log_on": _access_log_on,
    "max_ongoing_default": _max_ongoing_default,
    "engine_threads_1": _engine_threads_1,
    "forward_32_unbounded": _forward_32_unbounded,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--only", default=",".join(VARIANTS))
    a = ap.parse_args()
    console = Console()
    corpus = load_corpus()
    base = yaml.safe_load(DEFAULT_CONFIG.read_text())
    table = Table(title="serve.yaml variants, all-MiniLM-L6-v2 through HTTP (sentences/s, p99 ms)")
    for col in ("variant", "start-up s", "1 sent x32 clients", "32 sent x4 clients", "errors"):
        table.add_column(col, justify="right")
    workdir = Path(tempfile.mkdtemp(prefix="ig-tuning-"))
    for name in a.only.split(","):
        cfg = copy.deepcopy(base)
        VARIANTS[name](cfg)
        path = workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        with console.status(f"{name}: starting"):
            service = start_service(path)
        try:
            cells, errors = [], 0
            for batch, conc in ((1, 32), (32, 4)):
                with console.status(f"{name}: {batch} sentences x {conc} clients"):
                    url = f"{service.base_url}/v1/embeddings"
                    res = asyncio.run(
                        closed_loop(url, corpus, "all-MiniLM-L6-v2", batch, conc, a.duration, a.warmup)
                    )
                cells.append(f"{res.sentences_per_s:.1f} · {res.percentile_ms(99):.0f}")
                errors += res.errors
        finally:
            service.stop()
        table.add_row(name, f"{service.startup_s:.0f}", *cells, str(errors))
        console.print(f"{name}: {cells}")
    console.print(table)


if __name__ == "__main__":
    main()
