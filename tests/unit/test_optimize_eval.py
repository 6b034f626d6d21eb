"""The quality measures the optimize pipeline gates on, on real data and the real weights."""

import numpy as np

from infergraph.optimize.data import lee_pairs
from infergraph.optimize.evaluate import fidelity, lee_scores


def test_lee_set_is_complete():
    data = lee_pairs()
    assert len(data.texts) == 50 and len(data.pairs) == 1225
    assert data.scores.min() >= 0 and data.scores.max() <= 1


def test_minilm_tracks_human_similarity_and_noise_does_not(minilm_onnx):
    scores = lee_scores(minilm_onnx.encode)
    assert 0.6 < scores["pearson"] < 0.72, scores  # 0.656 measured for FP32
    rng = np.random.default_rng(0)

    def noise(texts):
        v = rng.normal(size=(len(texts), 384))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    assert abs(lee_scores(noise)["pearson"]) < 0.1


def test_fidelity_sees_a_degraded_variant():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(20, 384))
    assert fidelity(reference, reference)["min_cosine"] > 0.9999
    degraded = reference + rng.normal(scale=0.5, size=reference.shape)
    assert fidelity(reference, degraded)["mean_cosine"] < 0.95


def test_dynamic_int8_is_a_quarter_of_the_size_and_keeps_quality(minilm_onnx, catalog, tmp_path):
    from infergraph.optimize.data import lee_pairs
    from infergraph.optimize.variants import dynamic_int8
    from infergraph.runtimes.catalog import cache_root, fingerprint, resolve_model_dir
    from infergraph.runtimes.engines.onnx_engine import OnnxEngine, export_onnx

    model_dir = resolve_model_dir(catalog.encoder("all-MiniLM-L6-v2"))
    onnx_path = export_onnx(model_dir, cache_root() / "onnx" / f"all-MiniLM-L6-v2-{fingerprint(model_dir)}")
    int8_path = dynamic_int8(onnx_path, tmp_path / "int8")
    assert int8_path.stat().st_size < onnx_path.stat().st_size / 3

    fp32 = minilm_onnx.engine
    try:
        minilm_onnx.engine = OnnxEngine(int8_path, threads=2)
        int8_scores = lee_scores(minilm_onnx.encode)
        int8_vectors = minilm_onnx.encode(lee_pairs().texts)
    finally:
        minilm_onnx.engine = fp32
    fp32_scores = lee_scores(minilm_onnx.encode)
    assert int8_scores["pearson"] >= 0.99 * fp32_scores["pearson"], (int8_scores, fp32_scores)
    assert fidelity(minilm_onnx.encode(lee_pairs().texts), int8_vectors)["mean_cosine"] > 0.98
