"""Re-ranking speed, side by side in one run: a 20-document `/v1/rerank` request against embedding
the same 21 texts (query + documents) with `/v1/embeddings`, at 1 and 4 closed-loop clients.

    uv run python -m infergraph.bench.rerank                  # starts the service (configs/serve.yaml)
    uv run python -m infergraph.bench.rerank --url http://127.0.0.1:8000 --duration 20

The hybrid re-ranker embeds the same texts through the encoder's deployment plus BM25 and one more
handle hop; the issue's bar is p50(rerank) <= 1.5 x p50(embeddings). Requests replay Debian FAQ
questions with 20 English FAQ passages each (the answer among them), deterministically.
Writes results/rerank/speed.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from infergraph.bench.loadgen import LoadResult, closed_loop
from infergraph.optimize.data import debian_faq
from infergraph.paths import PROJECT_ROOT
from infergraph.testing.service import start_service

DOCUMENTS = 20


def requests(n: int = 200) -> list[tuple[str, list[str]]]:
    """(question, 20 passages) pairs: the answer plus 19 others, rotating through the FAQ."""
    faq = debian_faq("en")
    out = []
    for k in range(n):
        i = k % len(faq.questions)
        others = [faq.passages[(i + 1 + 7 * j) % len(faq.passages)] for j in range(DOCUMENTS - 1)]
        docs = others[: k % DOCUMENTS] + [faq.passages[i]] + others[k % DOCUMENTS :]
        out.append((faq.questions[i], docs))
    return out


def run(base: str, reranker: str, encoder: str, clients: list[int], duration: float, warmup: float):
    pairs = requests()

    def rerank_body(k: int) -> bytes:
        query, docs = pairs[k % len(pairs)]
        return orjson.dumps({"model": reranker, "query": query, "documents": docs})

    def embed_body(k: int) -> bytes:
        query, docs = pairs[k % len(pairs)]
        return orjson.dumps({"model": encoder, "input": [query, *docs], "truncate": True})

    rows: list[dict] = []
    for c in clients:
        for label, path, body in (
            ("embeddings, 21 texts", "/v1/embeddings", embed_body),
            (f"rerank, {DOCUMENTS} documents", "/v1/rerank", rerank_body),
        ):
            got: LoadResult = asyncio.run(
                closed_loop(base + path, [], reranker, 1, c, duration, warmup, make_body=body)
            )
            rows.append(
                {
                    "what": label,
                    "clients": c,
                    "requests_per_s": len(got.latencies_s) / got.seconds,
                    "pairs_per_s": len(got.latencies_s) * DOCUMENTS / got.seconds,
                    "p50_ms": got.percentile_ms(50),
                    "p99_ms": got.percentile_ms(99),
                    "errors": got.errors,
                    "last_error": got.last_error,
                }
            )
    return rows


def report(rows: list[dict], console: Console) -> None:
    table = Table(title="rerank vs embeddings of the same texts (one run, this machine)")
    for col in ("what", "clients", "req/s", "pairs/s", "p50 ms", "p99 ms", "errors", "p50 / embeddings"):
        table.add_column(col, justify="left" if col == "what" else "right")
    base = {r["clients"]: r["p50_ms"] for r in rows if r["what"].startswith("embeddings")}
    for r in rows:
        table.add_row(
            r["what"],
            str(r["clients"]),
            f"{r['requests_per_s']:.1f}",
            f"{r['pairs_per_s']:.0f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            str(r["errors"]),
            f"{r['p50_ms'] / base[r['clients']]:.2f}x",
        )
    console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running service (default: start configs/serve.yaml)")
    ap.add_argument("--reranker", default="rerank-hybrid-en")
    ap.add_argument("--encoder", default="all-MiniLM-L6-v2")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "rerank" / "speed.json")
    a = ap.parse_args()
    console = Console(width=150)
    service = None if a.url else start_service()
    try:
        base = a.url or service.base_url  # type: ignore[union-attr]
        console.print(f"[bold]measuring {base}[/] ({a.duration:.0f} s per point)")
        rows = run(base.rstrip("/"), a.reranker, a.encoder, a.clients, a.duration, a.warmup)
    finally:
        if service is not None:
            service.stop()
    report(rows, console)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"reranker": a.reranker, "encoder": a.encoder, "rows": rows}, indent=2))
    console.print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
