"""A tenant's rate limit with 1 and 3 router replicas: admitted requests/s against the configured rate.

    uv run python -m infergraph.bench.tenant_limits [--rps 20] [--seconds 10] [--per-replica]

Serves all-MiniLM-L6-v2 behind N router replicas, with one extra tenant limited to `--rps`
requests/s (burst `--rps`). 16 clients send it tiny embedding requests back to back for `--seconds`;
admitted = answered requests. The bar (reliability issue, outcome 4): within 10% of
burst + rate x seconds with 1 and with 3 routers. `--per-replica` serves the same with
`shared_tenant_limits: false` (each router keeps its own limits: N routers admit about N times the
rate), to show what the TenantLedger changes. Writes results/faults/tenant_limits.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import orjson
import yaml
from rich.console import Console
from rich.table import Table

from infergraph.paths import PROJECT_ROOT
from infergraph.testing.service import serving_only, start_service

MODEL = "all-MiniLM-L6-v2"
KEY = "sk-ig-limited"


@dataclass
class Measured:
    routers: int
    shared: bool
    rps: float
    seconds: float
    admitted: int
    refused: int
    other: int

    @property
    def allowed(self) -> float:
        return self.rps + self.rps * self.seconds  # the burst, then the rate

    @property
    def ratio(self) -> float:
        return self.admitted / self.allowed


def limited_service_config(workdir: Path, routers: int, shared: bool, rps: float) -> Path:
    """serve.yaml with MiniLM only, `routers` router replicas and tenant `limited` at `rps`."""
    from infergraph.deployments.tenants import hash_key

    tenants = yaml.safe_load((PROJECT_ROOT / "configs" / "tenants.yaml").read_text())
    tenants["tenants"].append(
        {
            "name": "limited",
            "key_sha256": hash_key(KEY),
            "tier": "standard",
            "rate": {"requests_per_s": rps, "burst": max(1, round(rps))},
            "models": [MODEL],
        }
    )
    (workdir / "tenants.yaml").write_text(yaml.safe_dump(tenants))
    cfg = serving_only([MODEL])
    app = cfg["applications"][0]
    app["args"].update(tenants=str(workdir / "tenants.yaml"), shared_tenant_limits=shared)
    app["args"]["registry"]["default_variant"] = "base"
    router = next(d for d in app["deployments"] if d["name"] == "Router")
    router.update(num_replicas=routers, ray_actor_options={"num_cpus": 0.1})
    path = workdir / f"serve-{routers}-{'shared' if shared else 'local'}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def blast(url: str, seconds: float, clients: int = 16) -> tuple[int, int, int, float]:
    """(admitted, refused with 429, other answers, seconds) for back-to-back tiny requests."""
    body = orjson.dumps({"model": MODEL, "input": "a"})
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    counts = {"ok": 0, "refused": 0, "other": 0}
    started = time.monotonic()

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() - started < seconds:
            async with session.post(f"{url}/v1/embeddings", data=body, headers=headers) as r:
                await r.read()
                key = "ok" if r.status == 200 else "refused" if r.status == 429 else "other"
                counts[key] += 1
                if r.status == 429:
                    await asyncio.sleep(0.01)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return counts["ok"], counts["refused"], counts["other"], time.monotonic() - started


def measure(workdir: Path, routers: int, shared: bool, rps: float, seconds: float) -> Measured:
    service = start_service(limited_service_config(workdir, routers, shared, rps))
    try:
        admitted, refused, other, took = asyncio.run(blast(service.base_url, seconds))
    finally:
        service.stop()
    return Measured(routers, shared, rps, took, admitted, refused, other)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rps", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--per-replica", action="store_true", help="also measure per-replica limits")
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "faults")
    a = ap.parse_args(argv)
    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="ig-limits-"))
    runs = [(1, True), (3, True)] + ([(1, False), (3, False)] if a.per_replica else [])
    results = []
    for routers, shared in runs:
        with console.status(f"{routers} router replica(s), {'shared' if shared else 'per-replica'} limits"):
            results.append(measure(workdir, routers, shared, a.rps, a.seconds))
        console.print(asdict(results[-1]))
    table = Table(
        title=f"tenant limited to {a.rps:g} requests/s (burst {a.rps:g}), 16 clients, {a.seconds:g} s"
    )
    for col in ("routers", "limits", "admitted", "allowed", "admitted / allowed", "429s", "other"):
        table.add_column(col, justify="right")
    for m in results:
        table.add_row(
            str(m.routers),
            "shared (ledger)" if m.shared else "per replica",
            str(m.admitted),
            f"{m.allowed:.0f}",
            f"{m.ratio:.2f}",
            str(m.refused),
            str(m.other),
        )
    console.print(table)
    a.out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(m) | {"allowed": m.allowed, "ratio": m.ratio} for m in results]
    (a.out / "tenant_limits.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
