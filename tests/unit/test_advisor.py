"""The tuning advisor's decisions, without a service: which trial wins, what the SLO means, and that
the recommended serve.yaml differs from the shipped one only where the sweep changed it."""

from __future__ import annotations

import argparse

import yaml

from infergraph.bench.advisor import (
    IN_ROUTER,
    Trial,
    better,
    deployment,
    in_router,
    judge,
    knob_value,
    verdict,
    with_changes,
    write_recommendation,
)
from infergraph.testing.service import DEFAULT_CONFIG

MODEL = "all-MiniLM-L6-v2"
ARGS = argparse.Namespace(slo_tier="premium", slo_p99_ms=150.0, max_refused_pct=1.0, load="--x", seconds=30.0)


def trial(p99: float | None, meets: bool, **changes) -> Trial:
    return Trial("t", changes, p99, 10.0, 0.0, 10.0, {}, 0, meets)


def group(sent: int, answered: int, refused: int, p99: float | None) -> dict:
    return {
        "sent": sent,
        "answered": answered,
        "rejected_total": refused,
        "http_errors": refused,
        "unaccounted": 0,
        "latency_ms": {"p50": 10.0, "p99": p99},
        "rps_answered": answered / 10,
    }


def summary(premium_p99: float, premium_refused: int = 0, batch_answered: int = 50) -> dict:
    tiers = {
        "premium": group(100, 100 - premium_refused, premium_refused, premium_p99),
        "batch": group(60, batch_answered, 60 - batch_answered, 900.0 if batch_answered else None),
    }
    refused = premium_refused + 60 - batch_answered
    return {"tiers": tiers, "total": group(160, 160 - refused, refused, 800.0)}


def test_meeting_the_slo_beats_a_lower_p99_that_misses_it():
    assert better(trial(140, True), trial(90, False), 5)
    assert not better(trial(90, False), trial(140, True), 5)


def test_a_gain_within_noise_does_not_replace_the_best():
    assert not better(trial(97, True), trial(100, True), 5)
    assert better(trial(90, True), trial(100, True), 5)


def test_the_slo_needs_the_tier_fast_few_refusals_and_every_tier_served():
    assert judge(summary(120), ARGS)["meets_slo"]
    assert not judge(summary(160), ARGS)["meets_slo"]  # too slow
    assert not judge(summary(120, premium_refused=5), ARGS)["meets_slo"]  # 5% refused
    assert not judge(summary(120, batch_answered=0), ARGS)["meets_slo"]  # batch starved


def test_the_recommendation_changes_only_the_winning_knobs(tmp_path):
    shipped = yaml.safe_load(DEFAULT_CONFIG.read_text())
    changes = {"user_config.max_batch_sentences": 8, "num_replicas": 2}
    changed = with_changes(shipped, MODEL, changes)
    dep = deployment(changed, MODEL)
    assert dep["user_config"]["max_batch_sentences"] == 8 and dep["num_replicas"] == 2
    assert deployment(shipped, MODEL)["user_config"]["max_batch_sentences"] != 8  # not modified in place
    out = tmp_path / "recommended.yaml"
    write_recommendation(out, DEFAULT_CONFIG, MODEL, trial(200, False), trial(120, True, **changes), ARGS)
    text = out.read_text()
    assert "premium p99 120" in text and "shipped 200" in text
    recommended = yaml.safe_load(text)
    assert recommended == with_changes(shipped, MODEL, changes)


def test_the_in_router_knob_moves_a_model_in_and_out_of_the_routers_list():
    shipped = yaml.safe_load(DEFAULT_CONFIG.read_text())
    e5 = "multilingual-e5-small"
    assert knob_value(shipped, MODEL, IN_ROUTER) is True and knob_value(shipped, e5, IN_ROUTER) is False
    both = with_changes(shipped, e5, {IN_ROUTER: True, "user_config.max_batch_sentences": 8})
    assert in_router(both) == [MODEL, e5] and deployment(both, e5)["user_config"]["max_batch_sentences"] == 8
    assert IN_ROUTER not in deployment(both, e5)  # not written into the deployment's entry
    assert in_router(with_changes(shipped, MODEL, {IN_ROUTER: False})) == []
    assert in_router(shipped) == [MODEL]  # not modified in place


def test_validation_confirms_only_what_the_alternated_rounds_show():
    shipped = [trial(140, True), trial(190, False), trial(145, True)]
    assert verdict(shipped, [trial(140, True), trial(144, True), trial(200, False)], 15).startswith(
        "not confirmed"
    )
    assert verdict(shipped, [trial(100, True), trial(110, True), trial(120, True)], 15).startswith(
        "confirmed"
    )


class Deploys:
    """Stands in for the advisor's Target: records what was deployed."""

    config: dict = {"applications": [{"deployments": [{"name": MODEL}]}]}

    def __init__(self) -> None:
        self.deployed: list[dict] = []

    def deploy(self, config, model):
        self.deployed.append(config)
        return 0.0


def test_a_lucky_trial_must_win_again_before_it_becomes_the_best(monkeypatch, tmp_path):
    from infergraph.bench import advisor

    again = {"shipped (again)": 130.0, "max_batch_sentences=32 (again)": 145.0}
    monkeypatch.setattr(
        advisor, "measure", lambda target, args, label, changes, out: trial(again[label], True, **changes)
    )
    args = argparse.Namespace(confirm=True, min_gain_pct=15.0, model=MODEL)
    best = Trial("shipped", {}, 231.0, 10.0, 0.0, 10.0, {}, 0, False)
    lucky = Trial(
        "max_batch_sentences=32", {"user_config.max_batch_sentences": 32}, 133.0, 10.0, 0.0, 10.0, {}, 0, True
    )
    trials: list[Trial] = []
    target = Deploys()
    kept = advisor.confirmed(target, args, tmp_path, best, lucky, trials)
    assert kept.changes == {} and kept.slo_p99_ms == 130.0  # not confirmed: the fresh shipped figure
    assert len(trials) == 2 and target.deployed  # the best so far is deployed again

    again["max_batch_sentences=32 (again)"] = 90.0
    moved = advisor.confirmed(target, args, tmp_path, best, lucky, [])
    assert moved.changes == {"user_config.max_batch_sentences": 32} and moved.slo_p99_ms == 90.0


def test_a_registry_variant_is_found_by_version_and_its_quality_is_stated(tmp_path):
    from mlflow import MlflowClient

    from infergraph.bench.advisor import variant_exists

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    client.create_registered_model(MODEL)
    tags = {"variant": "onnx-int8-mixed", "quality_pct_of_fp32": "96.28"}
    client.create_model_version(MODEL, source=str(tmp_path), tags=tags)
    args = argparse.Namespace(**vars(ARGS), registry_uri=store)
    assert variant_exists(f"models:/{MODEL}/1", args) and variant_exists("base", args)
    assert not variant_exists(f"models:/{MODEL}/2", args)
    assert not variant_exists(f"models:/{MODEL}@production", args)  # no alias set
    out = tmp_path / "recommended.yaml"
    changes = {"user_config.variant": f"models:/{MODEL}/1"}
    write_recommendation(out, DEFAULT_CONFIG, MODEL, trial(200, False), trial(90, True, **changes), args)
    assert "# Variant: onnx-int8-mixed, 96.28% of FP32 quality" in out.read_text()
