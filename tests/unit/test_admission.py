"""The router's per-model queue: priority, starvation guard, deadlines, full queues, cancellation.

A stand-in deployment (`FakeModel`) records what was sent and answers only when the test says so.
"""

import asyncio

import pytest

from infergraph.deployments.admission import ModelQueue
from infergraph.deployments.tenants import Rejection, TierPolicy
from infergraph.protocol.common import Tier

TIERS = {t: TierPolicy(deadline_ms=10_000, queue_limit=4) for t in Tier}


class FakeModel:
    """Stand-in for a model deployment: each call waits until the test releases it."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release = asyncio.Event()

    async def send(self, group):
        self.calls.append([t.work[0] for t in group])
        await self.release.wait()
        return [f"vec:{t.work[0]}" for t in group]


def queue(model: FakeModel, **kw) -> ModelQueue:
    kw.setdefault("max_calls_per_replica", 1)
    kw.setdefault("express_calls_per_replica", 0)
    kw.setdefault("max_group_requests", 1)
    return ModelQueue(model.send, TIERS, **kw)


def submit(q: ModelQueue, texts: list[str], tier: Tier, deadline: float):
    """A request of `texts`, weighing one unit per text (as the encoders meter them)."""
    return q.submit(texts, len(texts), tier, deadline)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def far() -> float:
    import time

    return time.time() + 60


def test_premium_overtakes_queued_batch_work():
    async def scenario():
        model = FakeModel()
        q = queue(model)
        first = asyncio.create_task(submit(q, ["busy"], Tier.batch, far()))
        await settle()  # "busy" holds the only call slot
        batch = [asyncio.create_task(submit(q, [f"b{i}"], Tier.batch, far())) for i in range(3)]
        await settle()
        premium = asyncio.create_task(submit(q, ["p"], Tier.premium, far()))
        await settle()
        model.release.set()
        results = await asyncio.gather(first, premium, *batch)
        assert [r for r, _ in results][:2] == ["vec:busy", "vec:p"]
        return model.calls

    calls = asyncio.run(scenario())
    assert calls[:2] == [["busy"], ["p"]], "premium must leave before batch work that queued earlier"


def test_starvation_guard_lets_a_lower_tier_through():
    async def scenario():
        model = FakeModel()
        q = queue(model, starvation_guard=2)
        q.tiers = {t: TierPolicy(deadline_ms=10_000, queue_limit=100) for t in Tier}
        tasks = [asyncio.create_task(submit(q, ["busy"], Tier.premium, far()))]
        await settle()
        tasks.append(asyncio.create_task(submit(q, ["batch"], Tier.batch, far())))
        tasks += [asyncio.create_task(submit(q, [f"p{i}"], Tier.premium, far())) for i in range(6)]
        await settle()
        model.release.set()
        await asyncio.gather(*tasks)
        return [c[0] for c in model.calls]

    order = asyncio.run(scenario())
    assert order.index("batch") == 3, f"batch goes after two premium dispatches: {order}"


def test_full_queue_answers_429_with_retry_after():
    async def scenario():
        model = FakeModel()
        q = queue(model)
        # one goes out, four wait: the batch queue is full
        tasks = [asyncio.create_task(submit(q, [f"r{i}"], Tier.batch, far())) for i in range(5)]
        await settle()
        with pytest.raises(Rejection) as info:
            await submit(q, ["one too many"], Tier.batch, far())
        premium = asyncio.create_task(submit(q, ["p"], Tier.premium, far()))  # other tiers still get in
        model.release.set()
        await asyncio.gather(premium, *tasks)
        return info.value

    refusal = asyncio.run(scenario())
    assert (refusal.status, refusal.code) == (429, "queue_full")
    assert int(refusal.retry_after) >= 1


def test_unreachable_deadline_is_refused_before_any_compute():
    async def scenario():
        model = FakeModel()
        q = queue(model, prior_s_per_unit=0.5)
        busy = asyncio.create_task(submit(q, ["x"], Tier.batch, far()))
        await settle()
        ahead = asyncio.create_task(submit(q, ["y"] * 10, Tier.premium, far()))  # ~5 s of premium work queued
        await settle()
        import time

        with pytest.raises(Rejection) as info:
            await submit(q, ["urgent"], Tier.premium, time.time() + 1.0)
        relaxed = asyncio.create_task(submit(q, ["relaxed"], Tier.premium, time.time() + 30))
        model.release.set()
        await asyncio.gather(busy, ahead, relaxed)
        return info.value, model.calls

    refusal, calls = asyncio.run(scenario())
    assert (refusal.status, refusal.code) == (503, "deadline_exceeded")
    assert ["urgent"] not in calls and ["relaxed"] in calls, "only the request that cannot make it is refused"


def test_deadline_passing_in_the_queue_fails_it_at_dispatch():
    async def scenario():
        import time

        model = FakeModel()
        q = queue(model, prior_s_per_unit=0.0001)
        busy = asyncio.create_task(submit(q, ["busy"], Tier.batch, far()))
        await settle()
        late = asyncio.create_task(submit(q, ["late"], Tier.standard, time.time() + 0.05))
        await asyncio.sleep(0.1)
        model.release.set()
        await busy
        with pytest.raises(Rejection) as info:
            await late
        return info.value, model.calls

    refusal, calls = asyncio.run(scenario())
    assert refusal.code == "deadline_exceeded"
    assert ["late"] not in calls


def test_client_that_goes_away_leaves_the_queue():
    async def scenario():
        model = FakeModel()
        q = queue(model)
        cancelled = []
        q.on_cancelled = cancelled.append
        busy = asyncio.create_task(submit(q, ["busy"], Tier.batch, far()))
        await settle()
        gone = asyncio.create_task(submit(q, ["gone"], Tier.batch, far()))
        await settle()
        assert q.depth() == 1
        gone.cancel()
        await settle()
        depth = q.depth()
        model.release.set()
        await busy
        return depth, cancelled, model.calls

    depth, cancelled, calls = asyncio.run(scenario())
    assert depth == 0 and len(cancelled) == 1
    assert calls == [["busy"]], "cancelled work is never sent"


def test_queued_requests_leave_in_one_grouped_call():
    async def scenario():
        model = FakeModel()
        q = ModelQueue(model.send, TIERS, max_calls_per_replica=1, max_group_requests=8)
        busy = asyncio.create_task(submit(q, ["busy"], Tier.standard, far()))
        await settle()
        waiting = [asyncio.create_task(submit(q, [f"s{i}"], Tier.standard, far())) for i in range(4)]
        await settle()
        model.release.set()
        results = await asyncio.gather(busy, *waiting)
        return [r for r, _ in results], model.calls

    results, calls = asyncio.run(scenario())
    assert calls == [["busy"], ["s0", "s1", "s2", "s3"]]
    assert results == ["vec:busy", "vec:s0", "vec:s1", "vec:s2", "vec:s3"], "each caller gets its own answer"


def test_premium_has_an_express_lane_past_a_full_deployment():
    async def scenario():
        model = FakeModel()
        q = queue(model, express_calls_per_replica=1)
        busy = asyncio.create_task(submit(q, ["bulk"], Tier.batch, far()))
        await settle()
        more_bulk = asyncio.create_task(submit(q, ["more bulk"], Tier.batch, far()))
        premium = asyncio.create_task(submit(q, ["p"], Tier.premium, far()))
        await settle()
        sent_while_full = list(model.calls)
        model.release.set()
        await asyncio.gather(busy, more_bulk, premium)
        return sent_while_full

    sent = asyncio.run(scenario())
    assert sent == [["bulk"], ["p"]], "premium goes out at once; bulk waits for the deployment"


def test_a_held_stream_slot_waits_its_turn_and_counts_until_released():
    async def scenario():
        model = FakeModel()
        q = queue(model, max_in_flight_per_replica=2)
        first = await q.hold(2, Tier.standard, far())  # the replica is full while it streams
        waiting_batch = asyncio.create_task(q.hold(2, Tier.batch, far()))
        waiting_premium = asyncio.create_task(q.hold(2, Tier.premium, far()))
        await settle()
        assert not waiting_batch.done() and not waiting_premium.done()
        q.release(first)
        await settle()
        assert waiting_premium.done() and not waiting_batch.done()  # premium first: it fills the room
        q.release(waiting_premium.result())
        await settle()
        assert waiting_batch.done()
        q.release(waiting_batch.result())
        q.release(waiting_batch.result())  # releasing twice is harmless
        assert q.in_flight_units == 0 and model.calls == []  # slots never call the deployment

    asyncio.run(scenario())


def test_a_cancelled_stream_waiting_for_a_slot_leaves_the_queue():
    async def scenario():
        q = queue(FakeModel(), max_in_flight_per_replica=1)
        busy = await q.hold(1, Tier.standard, far())
        gone = asyncio.create_task(q.hold(1, Tier.standard, far()))
        await settle()
        gone.cancel()
        await settle()
        assert q.depth() == 0
        q.release(busy)
        assert q.in_flight_units == 0

    asyncio.run(scenario())


def test_a_large_request_on_an_idle_model_is_tried_not_refused():
    """A 503 that no retry can fix (the same estimate on an empty service) is no answer: on an idle
    model the request runs; with a backlog ahead of it, the same request is refused."""

    async def scenario():
        import time

        model = FakeModel()
        model.release.set()
        q = queue(model, prior_s_per_unit=0.01, max_in_flight_per_replica=512)
        big = ["short input"] * 400  # ~4 s at the prior rate, against a 1 s premium deadline
        await submit(q, big, Tier.premium, time.time() + 1.0)  # idle: tried
        model.release.clear()
        busy = asyncio.create_task(submit(q, ["busy"], Tier.premium, far()))
        await settle()
        with pytest.raises(Rejection) as info:
            await submit(q, big, Tier.premium, time.time() + 1.0)
        model.release.set()
        await busy
        return info.value

    assert asyncio.run(scenario()).code == "deadline_exceeded"


def test_a_silent_model_is_answered_503_just_after_the_deadline_and_frees_its_capacity():
    """A hung replica (no answer, no error) must not hold an accepted request past its deadline, nor
    the model's call slots forever: the watchdog answers 503 and cancels the call."""

    async def scenario():
        model = FakeModel()  # never released: silent
        q = queue(model, answer_grace_s=0.05)
        started = asyncio.get_running_loop().time()
        import time

        with pytest.raises(Rejection) as refused:
            await asyncio.wait_for(submit(q, ["hung"], Tier.premium, time.time() + 0.3), timeout=3)
        waited = asyncio.get_running_loop().time() - started
        await settle()
        return refused.value, waited, q.in_flight_units, q.in_flight_calls

    rejection, waited, units, calls = asyncio.run(scenario())
    assert (rejection.status, rejection.code) == (503, "deadline_exceeded") and rejection.retry_after_s
    assert 0.3 <= waited < 1.0
    assert (units, calls) == (0, 0), "the hung call still holds the model's capacity"
