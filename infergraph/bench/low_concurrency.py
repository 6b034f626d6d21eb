"""Single sentences from 1 and 8 clients, all-MiniLM-L6-v2 alone behind the router: the low-concurrency
points of the encoders issue (where a fixed batch wait costs most).

    uv run python -m infergraph.bench.low_concurrency [--label NAME] [--seconds 20]

Prints one JSON line per point (sentences/s, p50, p99). To compare two versions of the code, run it
on each, alternating, on the same machine (docs/benchmarks.md#low-concurrency).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import yaml

from infergraph.bench.loadgen import closed_loop
from infergraph.corpus import load_corpus
from infergraph.testing.service import serving_only, start_service

MODEL = "all-MiniLM-L6-v2"


def minilm_only(workdir: Path) -> Path:
    cfg = serving_only([MODEL])
    app = cfg["applications"][0]
    app["args"]["registry"]["default_variant"] = "base"
    path = workdir / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label", default="infergraph")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--clients", default="1,8")
    a = ap.parse_args(argv)
    service = start_service(minilm_only(Path(tempfile.mkdtemp(prefix="ig-lowc-"))))
    try:
        corpus, url = load_corpus(), f"{service.base_url}/v1/embeddings"
        for clients in (int(c) for c in a.clients.split(",")):
            r = asyncio.run(closed_loop(url, corpus, MODEL, 1, clients, a.seconds, 3.0))
            row = {
                "label": a.label,
                "clients": clients,
                "sentences_per_s": round(r.sentences_per_s, 1),
                "p50_ms": round(r.percentile_ms(50), 2),
                "p99_ms": round(r.percentile_ms(99), 2),
                "errors": r.errors,
            }
            print(json.dumps(row), flush=True)
    finally:
        service.stop()


if __name__ == "__main__":
    main()
