"""Closed-loop HTTP load: C workers, each sends a request and waits for it before the next.

Inputs are replayed deterministically from the frozen corpus (request k carries sentences
[k*B, k*B+B) modulo its size), as in the peer benchmark, so runs are comparable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import numpy as np
import orjson

from infergraph.testing import DEV_KEY


@dataclass
class LoadResult:
    batch: int
    concurrency: int
    seconds: float
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    last_error: str | None = None

    @property
    def sentences_per_s(self) -> float:
        return len(self.latencies_s) * self.batch / self.seconds

    def percentile_ms(self, p: float) -> float:
        return float(np.percentile(self.latencies_s, p) * 1000) if self.latencies_s else float("nan")


async def closed_loop(
    url: str,
    corpus: list[str],
    model: str,
    batch: int,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    api_key: str = DEV_KEY,
    make_body: Callable[[int], bytes] | None = None,
) -> LoadResult:
    """Run the load; only requests that finish inside the measured window count.

    `make_body(k)` builds request k (default: `batch` corpus sentences for /v1/embeddings)."""
    counter = 0
    measuring = False
    stop = False
    result = LoadResult(batch, concurrency, duration_s)

    def embeddings_body(k: int) -> bytes:
        start = k * batch
        texts = [corpus[(start + j) % len(corpus)] for j in range(batch)]
        return orjson.dumps({"model": model, "input": texts})

    body = make_body or embeddings_body

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal counter
        while not stop:
            k, counter = counter, counter + 1
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body(k)) as r:
                    raw = await r.read()
                    ok = r.status == 200
            except aiohttp.ClientError as exc:
                ok, raw = False, repr(exc).encode()
            elapsed = time.perf_counter() - t0
            if not measuring or stop:
                continue
            if ok:
                result.latencies_s.append(elapsed)
            else:
                result.errors += 1
                result.last_error = raw[:300].decode(errors="replace")

    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), headers=headers, timeout=timeout
    ) as session:
        tasks = [asyncio.create_task(worker(session)) for _ in range(concurrency)]
        await asyncio.sleep(warmup_s)
        measuring = True
        t0 = time.perf_counter()
        await asyncio.sleep(duration_s)
        result.seconds = time.perf_counter() - t0
        stop = True
        await asyncio.gather(*tasks, return_exceptions=True)
    return result
