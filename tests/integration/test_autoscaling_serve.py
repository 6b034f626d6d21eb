"""Queue-depth autoscaling on the real service: a load step scales MiniLM 1 -> 2, idling scales it back.

The service runs tests/integration/serve-autoscaling.yaml (deployments/autoscaling.py as the
application's policy, MiniLM with min 1 / max 2 and short delays). Its module fixture stops it before
the next module starts the shared service of conftest.py, so two clusters never share the cores.
Replica counts are read from GET /admin/usage, which the router refreshes from `serve.status()`.
"""

import asyncio
import contextlib
import os
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from infergraph.testing import ADMIN_KEY, DEV_KEY
from infergraph.testing.service import start_service

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).with_name("serve-autoscaling.yaml")
MINILM = "all-MiniLM-L6-v2"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CLIENTS, SENTENCES = 32, 16
MAX_LOAD_S, HOLD_AT_TWO_S, SCALE_DOWN_WITHIN_S = 45.0, 5.0, 60.0


@pytest.fixture(scope="module")
def autoscaled_service():
    os.environ.setdefault("RAY_TMPDIR", "/tmp/igt-autoscale")
    running = start_service(CONFIG, ready_timeout_s=120)
    try:
        yield running
    finally:
        running.stop()


class Timeline:
    """What /admin/usage said about MiniLM over time: (seconds, replicas, queued, in flight)."""

    def __init__(self, base_url: str) -> None:
        self.base_url, self.started = base_url, time.monotonic()
        self.rows: list[tuple[float, int, int, int]] = []

    async def sample(self, client: httpx.AsyncClient) -> int:
        r = await client.get(f"{self.base_url}/admin/usage", headers=ADMIN, timeout=30)
        r.raise_for_status()
        q = r.json()["models"][MINILM]
        row = (
            time.monotonic() - self.started,
            q["replicas"],
            sum(q["queued"].values()),
            q["in_flight_units"],
        )
        self.rows.append(row)
        return row[1]

    def first(self, replicas: int, after: float = 0.0) -> float | None:
        return next((t for t, n, *_ in self.rows if n == replicas and t >= after), None)

    def __str__(self) -> str:
        lines = [f"{t:6.1f}s replicas={n} queued={q} in_flight={f}" for t, n, q, f in self.rows]
        return "\n".join(["MiniLM over time (GET /admin/usage):", *lines])


async def load_step(base_url: str, timeline: Timeline) -> tuple[Counter, float | None, float]:
    """32 clients post 16-sentence requests until MiniLM has run on 2 replicas for a few seconds
    (or MAX_LOAD_S passes); returns the status counts, when 2 replicas showed, when load stopped."""
    statuses: Counter = Counter()
    stop = asyncio.Event()
    auth = {"Authorization": f"Bearer {DEV_KEY}"}
    limits = httpx.Limits(max_connections=CLIENTS + 4)

    async def client_loop(client: httpx.AsyncClient, worker: int) -> None:
        n = 0
        while not stop.is_set():
            texts = [
                f"client {worker} request {n} sentence {i}: the queue grows, so does the fleet"
                for i in range(SENTENCES)
            ]
            try:
                r = await client.post(
                    f"{base_url}/v1/embeddings",
                    json={"model": MINILM, "input": texts},
                    headers=auth,
                    timeout=60,
                )
                statuses[r.status_code] += 1
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1
            n += 1

    async with httpx.AsyncClient(limits=limits) as client:
        workers = [asyncio.create_task(client_loop(client, w)) for w in range(CLIENTS)]
        at_two: float | None = None
        deadline = time.monotonic() + MAX_LOAD_S
        while time.monotonic() < deadline:
            if await timeline.sample(client) == 2 and at_two is None:
                at_two = time.monotonic()
            if at_two is not None and time.monotonic() - at_two >= HOLD_AT_TWO_S:
                break
            await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*workers)  # every request in flight gets its answer
        stopped = time.monotonic() - timeline.started
    return statuses, (at_two - timeline.started if at_two else None), stopped


async def wait_for_one(timeline: Timeline) -> None:
    async with httpx.AsyncClient() as client:
        deadline = time.monotonic() + SCALE_DOWN_WITHIN_S
        while await timeline.sample(client) != 1 and time.monotonic() < deadline:
            await asyncio.sleep(1)
        for _ in range(3):  # and it stays there
            await asyncio.sleep(1)
            await timeline.sample(client)


def policy_log() -> str:
    """The policy's decisions from the Serve controller's log (best effort, for the report)."""
    logs = Path(os.environ["RAY_TMPDIR"]) / "ray" / "session_latest" / "logs" / "serve"
    lines = []
    for path in logs.glob("controller_*.log"):
        with contextlib.suppress(OSError):
            lines += [ln for ln in path.read_text(errors="replace").splitlines() if "scaling" in ln]
    return "\n".join(lines[-20:])


@pytest.mark.timeout(300)
def test_queue_depth_scales_minilm_up_and_down(autoscaled_service):
    base = autoscaled_service.base_url
    timeline = Timeline(base)
    asyncio.run(wait_for_one(timeline))
    assert timeline.rows[-1][1] == 1, f"MiniLM did not start on 1 replica\n{timeline}"

    statuses, at_two, stopped = asyncio.run(load_step(base, timeline))
    asyncio.run(wait_for_one(timeline))
    report = f"{timeline}\nstatuses: {dict(statuses)}\npolicy:\n{policy_log()}"
    print(report)

    assert set(statuses) <= {200, 429, 503}, report  # answered or explicitly refused, nothing else
    assert statuses[200] > 0, report
    assert at_two is not None, f"MiniLM never ran 2 replicas under load\n{report}"
    back_at_one = timeline.first(1, after=stopped)
    assert back_at_one is not None, (
        f"MiniLM still on 2 replicas {SCALE_DOWN_WITHIN_S:.0f}s after the load\n{report}"
    )
    assert all(n == 1 for t, n, *_ in timeline.rows if t >= back_at_one), report
