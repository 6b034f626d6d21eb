"""One engine, many requests: windows from every request wait in one priority queue and an engine
thread runs them in passes of up to `max_windows` (one batched encoder + decoder call each).

Each pass takes the most urgent windows first (tier rank, then deadline, then arrival), so a premium
clip never waits behind the rest of a batch-tier hour. With `express_lane`, a second engine thread
takes windows that outrank the pass the first one is running (premium beside a standard or batch
pass, standard beside a batch pass): they start at once, sharing the cores for that moment, instead
of waiting for a pass of many 30 s windows (seconds). The lane idles otherwise, so the main lane
keeps every core and can run large, efficient passes. A request whose deadline passes
before any of its windows started is refused and costs nothing; once started, it is finished (an
accepted request is answered).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from infergraph.runtimes.speech.engine import SpeechEngine, WindowInput, WindowOutput


class DeadlineExceeded(Exception):
    """The request's deadline passed while all its windows were still waiting."""


@dataclass
class _Request:
    windows: Sequence[WindowInput]
    future: Future[tuple[list[WindowOutput], float]]  # outputs in window order, and compute seconds
    deadline: float
    outputs: dict[int, WindowOutput] = field(default_factory=dict)
    started: bool = False
    compute_s: float = 0.0  # its share of the passes it was in


@dataclass(order=True)
class _Item:
    rank: int
    deadline: float
    seq: int
    index: int  # windows of one request go in order
    request: _Request = field(compare=False)


@dataclass
class PassStats:
    passes: int = 0
    windows: int = 0
    refused: int = 0
    busy_s: float = 0.0


class WindowScheduler:
    def __init__(
        self,
        engine: SpeechEngine,
        max_windows: int = 8,
        express_lane: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine, self.max_windows, self.clock = engine, max_windows, clock
        self.stats = PassStats()
        self._heap: list[_Item] = []
        self._seq = itertools.count()
        self._wake = threading.Condition()
        self._closed = False
        self._running_rank: int | None = None  # the least urgent rank in the main lane's pass
        lanes = [(False, "speech-engine")] + ([(True, "speech-express")] if express_lane else [])
        self._threads = [
            threading.Thread(target=self._loop, args=(express,), name=name, daemon=True)
            for express, name in lanes
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, windows: Sequence[WindowInput], rank: int = 1, deadline: float = float("inf")
    ) -> Future[tuple[list[WindowOutput], float]]:
        """Queue one request's windows; the future gives their outputs (in order) and the request's
        compute seconds, or raises DeadlineExceeded / the engine's error."""
        request = _Request(windows, Future(), deadline)
        if not windows:
            request.future.set_result(([], 0.0))
            return request.future
        with self._wake:
            seq = next(self._seq)
            for i in range(len(windows)):
                heapq.heappush(self._heap, _Item(rank, deadline, seq, i, request))
            self._wake.notify_all()
        return request.future

    def queued_windows(self) -> int:
        with self._wake:
            return len(self._heap)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)

    # --- the engine thread -------------------------------------------------------------------------
    def _takes(self, express: bool) -> bool:
        """Whether the lane may take the most urgent waiting window now: the main lane anything, the
        express lane only what outranks the main lane's running pass."""
        if not self._heap:
            return False
        if not express:
            return True
        return self._running_rank is not None and self._heap[0].rank < self._running_rank

    def _next_pass(self, express: bool) -> list[_Item]:
        with self._wake:
            while not self._closed and not self._takes(express):
                self._wake.wait()
            now, chosen = self.clock(), list[_Item]()
            while len(chosen) < self.max_windows and self._takes(express):
                item = heapq.heappop(self._heap)
                if item.request.future.done():
                    continue  # refused or failed: its other windows go too
                if not item.request.started and item.deadline < now:
                    self.stats.refused += 1
                    item.request.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                    continue
                item.request.started = True
                chosen.append(item)
            if chosen and not express:
                self._running_rank = max(it.rank for it in chosen)
                self._wake.notify_all()  # the express lane may now take what outranks this pass
            return chosen

    def _loop(self, express: bool) -> None:
        while not self._closed:
            chosen = self._next_pass(express)
            if not chosen:
                continue
            try:
                self._run(chosen)
            finally:
                if not express:
                    with self._wake:
                        self._running_rank = None
                        self._wake.notify_all()

    def _run(self, chosen: list[_Item]) -> None:
        began = time.perf_counter()
        try:
            outputs = self.engine.transcribe([it.request.windows[it.index] for it in chosen])
        except Exception as exc:  # the pass failed: its requests are answered with the error
            with self._wake:
                for it in chosen:
                    if not it.request.future.done():
                        it.request.future.set_exception(exc)
            return
        took = time.perf_counter() - began
        with self._wake:  # two lanes may finish windows of one request
            self._record(chosen, outputs, took)

    def _record(self, chosen: list[_Item], outputs: list[WindowOutput], took: float) -> None:
        self.stats.passes += 1
        self.stats.windows += len(chosen)
        self.stats.busy_s += took
        for it, out in zip(chosen, outputs, strict=True):
            request = it.request
            request.outputs[it.index] = out
            request.compute_s += took / len(chosen)
            if len(request.outputs) == len(request.windows) and not request.future.done():
                ordered = [request.outputs[i] for i in range(len(request.windows))]
                request.future.set_result((ordered, request.compute_s))
