"""The text-encoder runtime on the real offline weights: semantics, engine agreement, batching."""

import numpy as np
import pytest

from infergraph.runtimes.text_encoder import BatchLimits, InputTooLongError, plan_batches

PARAPHRASE = ("A man is playing a guitar.", "Someone is strumming an acoustic guitar.")
UNRELATED = "The central bank raised interest rates by half a percentage point."

TRANSLATIONS = {
    "en": "The weather is beautiful today, let's go for a walk in the park.",
    "fr": "Il fait très beau aujourd'hui, allons nous promener dans le parc.",
    "de": "Das Wetter ist heute wunderschön, lass uns im Park spazieren gehen.",
}
MIXED = [
    "short",
    "a somewhat longer sentence about databases and indexes",
    "x " * 120,
    "Ray Serve batches requests dynamically.",
    "Quantisation trades a little accuracy for a lot of speed on CPUs with VNNI.",
] * 7


def test_paraphrase_scores_above_unrelated(minilm_onnx):
    a, b, c = minilm_onnx.encode([*PARAPHRASE, UNRELATED])
    assert a @ b > 0.6
    assert a @ b > a @ c + 0.4


def test_embeddings_are_unit_length(minilm_onnx):
    vectors = minilm_onnx.encode(MIXED)
    assert vectors.shape == (len(MIXED), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_multilingual_translations_closer_than_unrelated(e5_onnx):
    vectors = e5_onnx.encode([*TRANSLATIONS.values(), UNRELATED])
    sims = vectors @ vectors.T
    for i in range(3):
        for j in range(3):
            if i != j:
                assert sims[i, j] > sims[i, 3] + 0.05, (i, j, sims)


def test_english_only_model_is_worse_at_translations(minilm_onnx, e5_onnx):
    """The reason a multilingual model is served at all."""
    en, fr = TRANSLATIONS["en"], TRANSLATIONS["fr"]
    e5 = e5_onnx.encode([en, fr])
    minilm = minilm_onnx.encode([en, fr])
    assert e5[0] @ e5[1] > minilm[0] @ minilm[1]


@pytest.mark.parametrize("model", ["minilm", "e5"])
def test_torch_and_onnx_engines_agree(model, request):
    onnx = request.getfixturevalue(f"{model}_onnx").encode(MIXED)
    torch = request.getfixturevalue(f"{model}_torch").encode(MIXED)
    cosines = (onnx * torch).sum(axis=1)
    assert cosines.min() >= 0.999, cosines.min()


def test_batching_does_not_change_results(minilm_onnx):
    """Length bucketing must return each sentence's own vector, in input order."""
    together = minilm_onnx.encode(MIXED)
    alone = np.stack([minilm_onnx.encode([s])[0] for s in MIXED[:5]])
    np.testing.assert_allclose(together[:5], alone, atol=1e-4)


def test_e5_prefix_added_once(e5_onnx):
    plain, prefixed, passage = e5_onnx.tokenize(["hello world", "query: hello world", "passage: hello world"])
    assert plain == prefixed
    assert passage != plain


def test_over_long_input_is_refused(minilm_onnx):
    with pytest.raises(InputTooLongError) as err:
        minilm_onnx.tokenize(["fine", "word " * 300])
    assert err.value.index == 1 and err.value.limit == 256


def test_huge_string_refused_before_tokenizing(minilm_onnx):
    with pytest.raises(InputTooLongError):
        minilm_onnx.tokenize(["a" * 10_000_000])


def test_plan_batches_respects_limits_and_covers_everything():
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(3, 200, size=500)]
    limits = BatchLimits(max_sequences=16, max_padded_tokens=1024)
    batches = plan_batches(lengths, limits)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for b in batches:
        assert len(b) <= 16
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 1024


def test_plan_batches_limits_padding():
    """Sorted batches pad far less than arrival order."""
    rng = np.random.default_rng(1)
    lengths = [int(x) for x in rng.integers(5, 100, size=256)]
    batches = plan_batches(lengths, BatchLimits(max_sequences=32, max_padded_tokens=10**9))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    arrival = sum(32 * max(lengths[i : i + 32]) for i in range(0, 256, 32))
    assert padded < 0.7 * arrival


def test_plan_batches_caps_padding_per_real_token():
    """No pass pads more than `max_padding_ratio` of its real tokens (a lone sentence pads nothing)."""
    rng = np.random.default_rng(2)
    lengths = [int(x) for x in rng.integers(5, 100, size=400)]
    limits = BatchLimits(max_sequences=16, max_padded_tokens=4096, max_padding_ratio=1.1)
    batches = plan_batches(lengths, limits)
    assert sorted(i for b in batches for i in b) == list(range(400))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 1.1 * sum(lengths[i] for i in b)
    equal_only = plan_batches([7, 9, 7, 9, 7], BatchLimits(max_padding_ratio=1.0))
    assert sorted(map(sorted, equal_only)) == [[0, 2, 4], [1, 3]]


def test_concurrent_lanes_give_the_same_vectors_in_order(minilm_onnx):
    """Passes run on two threads at once come back in the caller's order, equal to one at a time."""
    from infergraph.runtimes.text_encoder import TextEncoder

    assert minilm_onnx.lanes == 2  # the loader's default for ONNX with 2 threads
    one_lane = TextEncoder(minilm_onnx.tokenizer, minilm_onnx.engine, max_length=256, lanes=1)
    texts = [f"{t} {i}" for i, t in enumerate(MIXED * 3)]
    np.testing.assert_allclose(minilm_onnx.encode(texts), one_lane.encode(texts), atol=1e-5)


TRICKY = [
    "Hello, World!",
    "query: Ünïcödé façade — naïve café",
    "passage: 東京は日本の首都です。",
    "Москва — столица России.",
    "literal <s> and </s> and [CLS] tokens",
    "tabs\tand  double  spaces",
    "emoji 🙂 and ＦＵＬＬＷＩＤＴＨ",
]


@pytest.mark.parametrize("model", ["minilm", "e5"])
def test_tokens_match_transformers(model, request):
    """The runtime's tokenizer (tokenizers alone) counts exactly like transformers' own."""
    from transformers import AutoTokenizer

    from infergraph.runtimes.catalog import resolve_model_dir

    encoder = request.getfixturevalue(f"{model}_onnx")
    spec = request.getfixturevalue("catalog").get(
        "all-MiniLM-L6-v2" if model == "minilm" else "multilingual-e5-small"
    )
    reference = AutoTokenizer.from_pretrained(str(resolve_model_dir(spec)))
    texts = [encoder._with_prefix(t) for t in [*TRICKY, *MIXED[:5]]]
    expected = reference(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    assert encoder.tokenize(texts) == expected
    assert encoder.pad_id == reference.pad_token_id
