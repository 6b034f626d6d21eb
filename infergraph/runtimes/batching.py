"""A priority- and deadline-aware dynamic batcher for one model replica.

Ray Serve's `@serve.batch` is a FIFO queue: a premium request that arrives behind a queue of
batch-tier work waits its turn. This batcher keeps waiting work in a heap ordered by (tier rank,
deadline, arrival), so the next batch takes the most urgent work first, and work whose deadline
has already passed is failed before it costs compute. Batches are filled by weight (sentences),
like `serve.batch(batch_size_fn=...)`, and at most `max_running` run at once (default one: a big
batch's passes use every core anyway; a second lets work that arrives during a small batch start on
the core that batch leaves idle instead of waiting for it to end).

Express batches: a batch that starts with work of rank <= `express_rank` (premium) takes only such
work, so urgent requests are not padded out with bulk work and come back after one small batch.

No wait for a lone request on an idle replica: when the only waiting request arrives after the last
batch (itself a single request) had finished with nothing else waiting (a client alone, or a quiet
spell), `wait_s` would only add latency, so it runs at once. When work arrives while batches run
(several clients), the wait applies as before: skipping it there measured ~6% fewer sentences/s at
8 clients.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

P = TypeVar("P")
R = TypeVar("R")


class DeadlineExceededError(Exception):
    """The request's deadline passed while it waited; it was never computed."""


@dataclass(order=True)
class _Waiting:
    key: tuple[int, float, int]
    arrived: float = field(compare=False)
    weight: int = field(compare=False)
    payload: Any = field(compare=False)
    future: asyncio.Future = field(compare=False)


class PriorityBatcher(Generic[P, R]):
    """`await submit(...)` resolves with what `run` returned for that payload.

    `run` gets the payloads of one batch, most urgent first, and returns one result per payload.
    """

    def __init__(
        self,
        run: Callable[[list[P]], Awaitable[list[R]]],
        max_weight: int,
        wait_s: float,
        express_rank: int = 0,
        clock: Callable[[], float] = time.time,
        max_running: int = 1,
    ) -> None:
        self.run, self.max_weight, self.wait_s, self.clock = run, max_weight, wait_s, clock
        self.express_rank, self.max_running = express_rank, max_running
        self._heap: list[_Waiting] = []
        self._seq = itertools.count()
        self._arrived = asyncio.Event()
        self._batch_ended = asyncio.Event()
        self._running: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self._idle = True  # the last batch held one request and nothing was waiting when it ended

    def __len__(self) -> int:
        return len(self._heap)

    async def submit(self, payload: P, weight: int, rank: int, deadline: float = float("inf")) -> R:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        now = self.clock()
        heapq.heappush(self._heap, _Waiting((rank, deadline, next(self._seq)), now, weight, payload, future))
        self._arrived.set()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._serve_forever())
        return await future  # a cancelled caller cancels the future; the loop then skips it

    async def _serve_forever(self) -> None:
        while True:
            while not self._heap:
                self._arrived.clear()
                await self._arrived.wait()
            while len(self._running) >= self.max_running:  # what arrives meanwhile joins the batch
                self._batch_ended.clear()
                await self._batch_ended.wait()
            await self._let_batch_fill()
            batch = self._take_batch()
            if batch:
                task = asyncio.create_task(self._run_batch(batch))
                self._running.add(task)
                task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        self._batch_ended.set()

    async def _let_batch_fill(self) -> None:
        """Wait until the oldest waiting item is `wait_s` old or a full batch is waiting (a lone
        request after a lone request does not wait: see the module docstring)."""
        if len(self._heap) == 1 and self._idle:
            return
        while sum(w.weight for w in self._heap) < self.max_weight:
            remaining = min(w.arrived for w in self._heap) + self.wait_s - self.clock()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Waiting]:
        now, weight = self.clock(), 0
        batch: list[_Waiting] = []
        while self._heap:
            head = self._heap[0]
            if head.future.done():  # its caller went away
                heapq.heappop(self._heap)
                continue
            if head.key[1] < now:
                heapq.heappop(self._heap).future.set_exception(DeadlineExceededError())
                continue
            if batch and weight + head.weight > self.max_weight:
                break
            if batch and batch[0].key[0] <= self.express_rank < head.key[0]:
                break  # an express batch: no bulk work in it
            batch.append(heapq.heappop(self._heap))
            weight += head.weight
        return batch

    async def _run_batch(self, batch: list[_Waiting]) -> None:
        try:
            results = await self.run([w.payload for w in batch])
        except Exception as exc:  # one failed batch fails its requests, not the replica
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(exc)
            return
        self._idle = len(batch) == 1 and not self._heap
        for w, result in zip(batch, results, strict=True):
            if not w.future.done():
                w.future.set_result(result)
