"""The window scheduler's promises: a premium clip waits for at most the pass already running, deadlines
refuse work that has not started, and every accepted window is answered.

The engine here is a stand-in that records which windows each pass held (the scheduling policy is
under test; the real engines are tested in test_speech_engines.py and through the service)."""

import threading
import time

import numpy as np
import pytest

from infergraph.runtimes.speech.engine import DecodeOptions, Segment, WindowInput, WindowOutput
from infergraph.runtimes.speech.scheduler import DeadlineExceeded, WindowScheduler


class RecordingEngine:
    """Stand-in engine: each pass takes `pass_s` and answers each window with its tag."""

    name, precision, multilingual = "recording", "fp32", False

    def __init__(self, pass_s: float = 0.05) -> None:
        self.pass_s = pass_s
        self.passes: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()

    def transcribe(self, windows):
        self.gate.wait()
        time.sleep(self.pass_s)
        tags = [w.options.prompt for w in windows]
        self.passes.append(tags)
        return [WindowOutput("en", [Segment(0, 1, tag)]) for tag in tags]


def windows(tag: str, n: int) -> list[WindowInput]:
    return [WindowInput(np.zeros(16000, np.float32), DecodeOptions(prompt=f"{tag}{i}")) for i in range(n)]


def test_premium_rides_the_next_pass_not_behind_a_long_batch_request():
    engine = RecordingEngine()
    scheduler = WindowScheduler(engine, max_windows=4)
    engine.gate.clear()
    batch = scheduler.submit(windows("b", 40), rank=2)  # an hour of batch audio, in miniature
    time.sleep(0.05)  # the first batch pass has started (held at the gate)
    premium = scheduler.submit(windows("p", 2), rank=0)
    engine.gate.set()
    outputs, _ = premium.result(timeout=5)
    assert [o.segments[0].text for o in outputs] == ["p0", "p1"]
    batch.result(timeout=10)
    first_with_premium = next(i for i, p in enumerate(engine.passes) if "p0" in p)
    assert first_with_premium == 1  # the pass right after the one running when it arrived
    assert engine.passes[1][:2] == ["p0", "p1"]
    scheduler.close()


def test_with_an_express_lane_premium_starts_beside_a_running_bulk_pass():
    engine = RecordingEngine(pass_s=0.5)
    scheduler = WindowScheduler(engine, max_windows=4, express_lane=True)
    bulk = scheduler.submit(windows("b", 8), rank=2)
    time.sleep(0.05)  # the first bulk pass is running
    sent = time.perf_counter()
    outputs, _ = scheduler.submit(windows("p", 1), rank=0).result(timeout=5)
    assert time.perf_counter() - sent < 0.75  # its own pass, not the bulk pass's remainder first
    assert outputs[0].segments[0].text == "p0"
    bulk.result(timeout=5)
    assert ["p0"] in engine.passes
    assert all("p0" not in p for p in engine.passes if p != ["p0"])
    scheduler.close()


def test_the_express_lane_lets_standard_overtake_a_running_batch_pass_but_not_a_standard_one():
    engine = RecordingEngine(pass_s=0.5)
    scheduler = WindowScheduler(engine, max_windows=4, express_lane=True)
    bulk = scheduler.submit(windows("b", 8), rank=2)
    time.sleep(0.05)
    sent = time.perf_counter()
    scheduler.submit(windows("s", 1), rank=1).result(timeout=5)
    assert time.perf_counter() - sent < 0.75  # beside the batch pass
    bulk.result(timeout=5)
    engine.passes.clear()
    first = scheduler.submit(windows("x", 4), rank=1)
    time.sleep(0.05)
    scheduler.submit(windows("y", 1), rank=1).result(timeout=5)
    first.result(timeout=5)
    assert engine.passes == [["x0", "x1", "x2", "x3"], ["y0"]]  # same tier: it waits its turn
    scheduler.close()


def test_the_express_lane_leaves_bulk_work_alone():
    engine = RecordingEngine(pass_s=0.2)
    scheduler = WindowScheduler(engine, max_windows=2, express_lane=True)
    scheduler.submit(windows("b", 6), rank=2).result(timeout=5)
    scheduler.submit(windows("s", 2), rank=1).result(timeout=5)
    assert engine.passes == [["b0", "b1"], ["b2", "b3"], ["b4", "b5"], ["s0", "s1"]]  # one lane: in order
    scheduler.close()


def test_windows_from_different_requests_share_a_pass_and_come_back_in_order():
    engine = RecordingEngine()
    scheduler = WindowScheduler(engine, max_windows=8)
    engine.gate.clear()
    scheduler.submit(windows("hold", 1))  # the engine is busy with it while the others arrive
    time.sleep(0.05)
    futures = [scheduler.submit(windows(tag, 3), rank=1) for tag in "xyz"]
    engine.gate.set()
    for tag, future in zip("xyz", futures, strict=True):
        outputs, compute_s = future.result(timeout=5)
        assert [o.segments[0].text for o in outputs] == [f"{tag}{i}" for i in range(3)]
        assert compute_s > 0
    assert engine.passes[1] == ["x0", "x1", "x2", "y0", "y1", "y2", "z0", "z1"]
    scheduler.close()


def test_a_deadline_that_passes_before_a_request_starts_refuses_it_and_others_go_on():
    engine = RecordingEngine(pass_s=0.1)
    scheduler = WindowScheduler(engine, max_windows=2)
    busy = scheduler.submit(windows("a", 4), rank=1)  # two passes
    late = scheduler.submit(windows("l", 2), rank=2, deadline=time.time() + 0.05)  # behind it
    with pytest.raises(DeadlineExceeded):
        late.result(timeout=5)
    busy.result(timeout=5)
    assert not any("l0" in p for p in engine.passes)  # cost nothing
    assert scheduler.stats.refused == 1
    scheduler.close()


def test_an_engine_failure_fails_its_requests_explicitly_and_the_scheduler_lives_on():
    engine = RecordingEngine()
    scheduler = WindowScheduler(engine, max_windows=4)
    original = engine.transcribe

    def fail_once(ws):
        engine.transcribe = original
        raise RuntimeError("engine fell over")

    engine.transcribe = fail_once
    with pytest.raises(RuntimeError, match="fell over"):
        scheduler.submit(windows("f", 2)).result(timeout=5)
    outputs, _ = scheduler.submit(windows("ok", 1)).result(timeout=5)
    assert outputs[0].segments[0].text == "ok0"
    scheduler.close()


def test_within_a_tier_the_earliest_deadline_goes_first():
    engine = RecordingEngine()
    scheduler = WindowScheduler(engine, max_windows=1)
    engine.gate.clear()
    scheduler.submit(windows("first", 1), rank=1)  # taken at once, held at the gate
    time.sleep(0.05)
    relaxed = scheduler.submit(windows("r", 1), rank=1, deadline=time.time() + 60)
    urgent = scheduler.submit(windows("u", 1), rank=1, deadline=time.time() + 5)
    engine.gate.set()
    urgent.result(timeout=5), relaxed.result(timeout=5)
    assert engine.passes[1:] == [["u0"], ["r0"]]
    scheduler.close()


def test_no_windows_is_an_empty_answer_at_once():
    scheduler = WindowScheduler(RecordingEngine())
    assert scheduler.submit([]).result(timeout=1) == ([], 0.0)
    scheduler.close()
