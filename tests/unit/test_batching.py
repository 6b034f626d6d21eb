"""The replica's priority batcher: urgent work first, expired work never computed."""

import asyncio
import time

import pytest

from infergraph.runtimes.batching import DeadlineExceededError, PriorityBatcher


def test_premium_goes_into_the_next_batch_ahead_of_queued_batch_work():
    batches: list[list[str]] = []

    async def run(items):
        batches.append(items)
        await asyncio.sleep(0.05)
        return [i.upper() for i in items]

    async def scenario():
        b = PriorityBatcher(run, max_weight=2, wait_s=0.0)
        first = asyncio.create_task(b.submit("first", 1, rank=2))
        await asyncio.sleep(0.01)  # "first" is computing; the rest queue up behind it
        queued = [asyncio.create_task(b.submit(f"batch{i}", 1, rank=2)) for i in range(4)]
        await asyncio.sleep(0)
        premium = asyncio.create_task(b.submit("premium", 1, rank=0))
        results = await asyncio.gather(first, premium, *queued)
        assert results[1] == "PREMIUM"

    asyncio.run(scenario())
    assert batches[0] == ["first"]
    assert batches[1][0] == "premium", batches


def test_work_past_its_deadline_is_failed_without_compute():
    computed: list[str] = []

    async def run(items):
        computed.extend(items)
        await asyncio.sleep(0.05)
        return items

    async def scenario():
        b = PriorityBatcher(run, max_weight=1, wait_s=0.0)
        busy = asyncio.create_task(b.submit("busy", 1, rank=1))
        await asyncio.sleep(0.01)
        late = asyncio.create_task(b.submit("late", 1, rank=1, deadline=time.time() + 0.01))
        await busy
        with pytest.raises(DeadlineExceededError):
            await late

    asyncio.run(scenario())
    assert computed == ["busy"]


def test_a_failing_batch_fails_its_requests_and_the_batcher_keeps_serving():
    async def run(items):
        if "bad" in items:
            raise RuntimeError("engine error")
        return items

    async def scenario():
        b = PriorityBatcher(run, max_weight=1, wait_s=0.0)
        with pytest.raises(RuntimeError):
            await b.submit("bad", 1, rank=1)
        assert await b.submit("good", 1, rank=1) == "good"

    asyncio.run(scenario())


def test_batches_fill_by_weight():
    batches: list[list[str]] = []

    async def run(items):
        batches.append(items)
        return items

    async def scenario():
        b = PriorityBatcher(run, max_weight=4, wait_s=0.05)
        await asyncio.gather(*(b.submit(f"r{i}", 2, rank=1) for i in range(4)))

    asyncio.run(scenario())
    assert [len(x) for x in batches] == [2, 2], "two 2-sentence requests per 4-sentence batch"


def test_a_premium_batch_is_not_padded_with_bulk_work():
    batches: list[list[str]] = []

    async def run(items):
        batches.append(items)
        await asyncio.sleep(0.02)
        return items

    async def scenario():
        b = PriorityBatcher(run, max_weight=8, wait_s=0.0)
        busy = asyncio.create_task(b.submit("busy", 1, rank=2))
        await asyncio.sleep(0.005)
        bulk = [asyncio.create_task(b.submit(f"bulk{i}", 2, rank=2)) for i in range(3)]
        urgent = asyncio.create_task(b.submit("premium", 1, rank=0))
        await asyncio.gather(busy, urgent, *bulk)

    asyncio.run(scenario())
    assert batches[1] == ["premium"], batches
    assert batches[2] == ["bulk0", "bulk1", "bulk2"]


def test_a_lone_client_does_not_pay_the_batch_wait():
    async def run(items):
        return items

    async def scenario():
        b = PriorityBatcher(run, max_weight=16, wait_s=0.3)
        started = time.perf_counter()
        for i in range(3):  # one request at a time, as a single client sends them
            await b.submit(f"r{i}", 1, rank=1)
        return time.perf_counter() - started

    assert asyncio.run(scenario()) < 0.15, "each lone request waited for company that never came"


def test_after_a_shared_batch_a_request_still_waits_for_company():
    batches: list[list[str]] = []

    async def run(items):
        batches.append(items)
        return items

    async def scenario():
        b = PriorityBatcher(run, max_weight=16, wait_s=0.1)
        await asyncio.gather(b.submit("x", 1, rank=1), b.submit("y", 1, rank=1))  # a batch of two
        first = asyncio.create_task(b.submit("a", 1, rank=1))
        await asyncio.sleep(0.03)
        await asyncio.gather(first, b.submit("b", 1, rank=1))

    asyncio.run(scenario())
    assert batches[-1] == ["a", "b"], batches


@pytest.mark.parametrize("max_running", [1, 2])
def test_work_arriving_during_a_batch_starts_at_once_when_a_second_batch_may_run(max_running):
    """Two batches at once: the second starts while the first computes (on the lane the first
    leaves idle) instead of waiting for it to end; with one, it waits."""
    started: dict[str, float] = {}

    async def run(items):
        for item in items:
            started[item] = time.perf_counter()
        await asyncio.sleep(0.1)
        return items

    async def scenario():
        b = PriorityBatcher(run, max_weight=4, wait_s=0.0, max_running=max_running)
        first = asyncio.create_task(b.submit("a", 1, rank=1))
        await asyncio.sleep(0.02)
        second = asyncio.create_task(b.submit("b", 1, rank=1))
        assert await asyncio.gather(first, second) == ["a", "b"]

    asyncio.run(scenario())
    waited = started["b"] - started["a"]
    if max_running == 2:
        assert waited < 0.05, waited
    else:
        assert waited >= 0.09, waited
