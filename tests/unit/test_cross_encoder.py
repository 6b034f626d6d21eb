"""Cross-encoder runtime on a real architecture: the MiniLM backbone with an UNTRAINED head.

Scores are meaningless for quality; what is tested is the runtime: engines agree, the document is
cut and the query never is, input order survives length sorting, INT8 tracks FP32, scores in [0, 1].
"""

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from infergraph.runtimes.catalog import CrossEncoderScorer, PathSource
from infergraph.runtimes.cross_encoder import QueryTooLongError, load_cross_encoder, relevance

MAX_LENGTH, MAX_QUERY = 256, 64


def _load(folder, engine="onnx", precision="fp32"):
    scorer = CrossEncoderScorer(
        type="cross-encoder",
        source=PathSource(type="path", path=str(folder)),
        engine=engine,
        precision=precision,
    )
    return load_cross_encoder(scorer, MAX_LENGTH, MAX_QUERY, threads=2, cache=folder.parent / "cache")


@pytest.fixture(scope="module")
def onnx_ce(untrained_cross_encoder):
    return _load(untrained_cross_encoder)


@pytest.fixture(scope="module")
def faq():
    from infergraph.optimize.data import debian_faq

    return debian_faq("en")


def test_the_untrained_model_says_so(untrained_cross_encoder):
    config = json.loads((untrained_cross_encoder / "config.json").read_text())
    assert config["id2label"] == {"0": "UNTRAINED"} and "UNTRAINED" in config["infergraph_note"]
    assert (untrained_cross_encoder / "tokenizer.json").exists()


def test_onnx_and_torch_agree(untrained_cross_encoder, onnx_ce, faq):
    torch_ce = _load(untrained_cross_encoder, engine="torch")
    for question in faq.questions[:3]:
        onnx_scores, torch_scores = (
            onnx_ce.score(question, faq.passages[:12]),
            torch_ce.score(question, faq.passages[:12]),
        )
        assert onnx_scores.dtype == np.float32 and onnx_scores.shape == (12,)
        np.testing.assert_allclose(onnx_scores, torch_scores, atol=1e-4)
        assert np.argsort(-onnx_scores).tolist() == np.argsort(-torch_scores).tolist()
        assert onnx_scores.std() > 1e-3  # not a constant head: the order above means something


def test_the_document_is_cut_and_the_query_is_not(onnx_ce, faq):
    query = faq.questions[0]
    long_document = " ".join(faq.passages)  # thousands of tokens
    pairs = onnx_ce.tokenize(query, [long_document, faq.passages[0]])
    assert len(pairs.ids[0]) == MAX_LENGTH and pairs.truncated == 1
    query_ids = onnx_ce.query_tokenizer.encode(query, add_special_tokens=False).ids
    assert pairs.ids[0][1 : 1 + len(query_ids)] == query_ids  # [CLS] query [SEP] document... [SEP]
    assert pairs.type_ids[0].count(0) == len(query_ids) + 2 and pairs.type_ids[0][-1] == 1
    assert pairs.tokens == sum(len(row) for row in pairs.ids)
    assert (
        len(pairs.ids[1])
        == len(query_ids)
        + len(onnx_ce.query_tokenizer.encode(faq.passages[0], add_special_tokens=False).ids)
        + 3
    )
    scores = onnx_ce.score(query, [long_document, "x" * 1_000_000])  # also a huge string: cut in characters
    assert ((scores >= 0) & (scores <= 1)).all()


def test_a_too_long_query_is_refused(onnx_ce):
    with pytest.raises(QueryTooLongError) as err:
        onnx_ce.tokenize("why " * (MAX_QUERY + 1), ["a document"])
    assert (
        isinstance(err.value, ValueError)
        and err.value.limit == MAX_QUERY
        and err.value.tokens == MAX_QUERY + 1
    )
    with pytest.raises(QueryTooLongError):
        onnx_ce.score("y" * 10_000_000, ["a document"])  # refused before tokenizing
    onnx_ce.tokenize("why " * MAX_QUERY, ["a document"])  # exactly the limit is fine


def test_results_come_back_in_input_order(onnx_ce, faq):
    query = faq.questions[5]
    documents = [faq.passages[i][: 20 + 37 * i] for i in range(20)]  # lengths vary: several sorted passes
    together = onnx_ce.score(query, documents)
    alone = np.array([onnx_ce.score(query, [d])[0] for d in documents])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    permutation = np.random.default_rng(0).permutation(len(documents))
    np.testing.assert_allclose(
        onnx_ce.score(query, [documents[i] for i in permutation]), together[permutation], atol=1e-5
    )
    first, second = onnx_ce.tokenize(query, documents[:7]), onnx_ce.tokenize(faq.questions[6], documents[7:])
    pooled = onnx_ce.score_tokenized([first, second])  # several requests share forward passes
    np.testing.assert_allclose(pooled[0], together[:7], atol=1e-5)
    np.testing.assert_allclose(pooled[1], onnx_ce.score(faq.questions[6], documents[7:]), atol=1e-5)
    assert onnx_ce.score(query, []).shape == (0,)


def test_int8_tracks_fp32(untrained_cross_encoder, onnx_ce, faq):
    int8 = _load(untrained_cross_encoder, precision="int8")
    assert "int8" in int8.engine_name
    fp32_scores, int8_scores = [], []
    for question in faq.questions[:10]:
        fp32_scores.append(onnx_ce.score(question, faq.passages[:20]))
        int8_scores.append(int8.score(question, faq.passages[:20]))
    fp32_all, int8_all = np.concatenate(fp32_scores), np.concatenate(int8_scores)
    assert spearmanr(fp32_all, int8_all).statistic > 0.9
    assert ((int8_all >= 0) & (int8_all <= 1)).all()
    assert not np.array_equal(fp32_all, int8_all)  # it really is another model


def test_int8_needs_onnx(untrained_cross_encoder):
    with pytest.raises(ValueError, match="onnx"):
        _load(untrained_cross_encoder, engine="torch", precision="int8")


def test_relevance_maps_heads_to_unit_range():
    single = relevance(np.array([[-1000.0], [0.0], [1000.0]]))
    assert single.tolist() == [0.0, 0.5, 1.0] and single.dtype == np.float32
    pair = relevance(np.array([[0.0, 0.0], [-500.0, 500.0], [3.0, 1.0]]))
    assert pair[0] == pytest.approx(0.5) and pair[1] == pytest.approx(1.0) and pair[2] < 0.5
    assert not np.isnan(pair).any()
