"""Turn a CTranslate2 Whisper folder (what the offline packages ship) into a transformers folder.

The torch engine needs `WhisperForConditionalGeneration` weights, and the only offline copies are
CTranslate2's `model.bin`. The file layout, as ctranslate2's own writer
(`ctranslate2/specs/model_spec.py`, `_serialize`) emits it, all little endian:

    u32 binary version (6), string spec name ("WhisperSpec"), u32 spec revision,
    u32 n_variables, n x (string name, u8 rank, u32 dims[rank], u8 dtype, u32 n_bytes, bytes),
    u32 n_aliases, n x (string alias, string target)

where a string is `u16 length (with the trailing NUL), bytes, NUL` and dtype indexes
(float32, int8, int16, int32, float16, bfloat16). Weights quantised to int8 carry a `weight_scale`
next to them (value = int8 / scale).

The Whisper spec fuses what transformers keeps apart: `self_attention/linear_0` is Q, K and V
stacked along dim 0 (K's bias slot is zeros: Whisper's k_proj has no bias), cross-attention
`attention/linear_0` is Q and `attention/linear_1` is K and V stacked; layer norms are gamma/beta;
`decoder/projection/weight` is an alias of the token embeddings (tied). Everything becomes fp32.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, "bfloat16")
_GELU = 3  # ctranslate2.specs.common_spec.Activation.GELU


@dataclass(frozen=True)
class Ct2Model:
    """The variables of one `model.bin`, aliases resolved, as numpy arrays (fp16 kept as stored)."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.variables[self.aliases.get(name, name)]

    def __contains__(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables

    def scalar(self, name: str) -> int:
        return int(self[name].reshape(-1)[0])

    def float32(self, name: str) -> np.ndarray:
        """The tensor in fp32, dequantising int8 weights with their `weight_scale`."""
        value = self[name]
        scale_name = name.removesuffix("weight") + "weight_scale"
        if value.dtype == np.int8 and name.endswith("weight") and scale_name in self:
            scale = self.float32(scale_name)
            return value.astype(np.float32) / scale.reshape(-1, *([1] * (value.ndim - 1)))
        return value.astype(np.float32)


def read_model_bin(path: Path) -> Ct2Model:
    """Parse `model.bin` (binary version 6, what ctranslate2 >= 3 writes). Arrays view the bytes read."""
    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        (value,) = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("H")
        text = data[pos : pos + n - 1].decode("utf-8")
        pos += n
        return text

    version = take("I")
    if version != 6:
        raise ValueError(f"{path}: CTranslate2 binary version {version}, only version 6 is supported")
    spec, revision = string(), take("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = string()
        shape = tuple(take("I") for _ in range(take("B")))
        dtype_id, n_bytes = take("B"), take("I")
        dtype = _DTYPES[dtype_id]
        if isinstance(dtype, str):
            raise ValueError(f"{path}: {name} is bfloat16, which this reader does not convert")
        variables[name] = np.frombuffer(
            data, dtype=dtype, count=n_bytes // np.dtype(dtype).itemsize, offset=pos
        )
        variables[name] = variables[name].reshape(shape)
        pos += n_bytes
    aliases = {}
    for _ in range(take("I")):
        alias = string()
        aliases[alias] = string()
    return Ct2Model(spec, revision, variables, aliases)


# --------------------------------------------------------------------------- CT2 spec -> transformers


def _n_layers(model: Ct2Model, prefix: str) -> int:
    pattern = re.compile(rf"{prefix}/layer_(\d+)/")
    return len({m.group(1) for name in model.variables if (m := pattern.match(name))})


def whisper_config(model: Ct2Model, tokenizer_json: Path) -> Any:
    """The `WhisperConfig` the CT2 tensors imply (sizes, heads, special token ids)."""
    from transformers import WhisperConfig

    if model.spec != "WhisperSpec":
        raise ValueError(f"not a Whisper model: spec {model.spec!r}")
    if model.scalar("decoder/activation") != _GELU or model.scalar("decoder/scale_embeddings"):
        raise ValueError("unexpected Whisper variant: activation must be GELU, embeddings unscaled")
    vocab = {t["content"]: t["id"] for t in json.loads(tokenizer_json.read_text())["added_tokens"]}
    eot = vocab["<|endoftext|>"]
    d_model = model["encoder/conv1/weight"].shape[0]
    return WhisperConfig(
        vocab_size=model["decoder/embeddings/weight"].shape[0],
        num_mel_bins=model["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=_n_layers(model, "encoder"),
        decoder_layers=_n_layers(model, "decoder"),
        encoder_attention_heads=model.scalar("encoder/num_heads"),
        decoder_attention_heads=model.scalar("decoder/num_heads"),
        encoder_ffn_dim=model["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=model["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=model["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=model["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=vocab["<|startoftranscript|>"],
    )


def state_dict(model: Ct2Model, n_encoder: int, n_decoder: int) -> dict[str, torch.Tensor]:
    """transformers' parameter names -> fp32 tensors, unfusing QKV / KV."""
    import torch

    out: dict[str, torch.Tensor] = {}

    def put(name: str, value: np.ndarray) -> None:
        out[name] = torch.from_numpy(np.array(value, dtype=np.float32))

    def linear(dst: str, src: str) -> None:
        put(f"{dst}.weight", model.float32(f"{src}/weight"))
        put(f"{dst}.bias", model.float32(f"{src}/bias"))

    def norm(dst: str, src: str) -> None:
        put(f"{dst}.weight", model.float32(f"{src}/gamma"))
        put(f"{dst}.bias", model.float32(f"{src}/beta"))

    def split(dst: str, src: str, parts: tuple[str, ...]) -> None:
        weights = np.split(model.float32(f"{src}/weight"), len(parts))
        biases = np.split(model.float32(f"{src}/bias"), len(parts))
        for part, w, b in zip(parts, weights, biases, strict=True):
            put(f"{dst}.{part}.weight", w)
            if part == "k_proj":
                if np.abs(b).max() > 1e-6:
                    raise ValueError(f"{src}: K has a bias, Whisper's k_proj has none")
            else:
                put(f"{dst}.{part}.bias", b)

    def layer(dst: str, src: str, cross: bool) -> None:
        split(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        if cross:
            linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
            split(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ("k_proj", "v_proj"))
            linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
            norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")

    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    put("model.encoder.embed_positions.weight", model.float32("encoder/position_encodings/encodings"))
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    for i in range(n_encoder):
        layer(f"model.encoder.layers.{i}", f"encoder/layer_{i}", cross=False)
    put("model.decoder.embed_tokens.weight", model.float32("decoder/embeddings/weight"))
    put("model.decoder.embed_positions.weight", model.float32("decoder/position_encodings/encodings"))
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    for i in range(n_decoder):
        layer(f"model.decoder.layers.{i}", f"decoder/layer_{i}", cross=True)
    projection = model.float32("decoder/projection/weight")
    if not np.array_equal(projection, out["model.decoder.embed_tokens.weight"].numpy()):
        raise ValueError("decoder/projection is not tied to the embeddings, as Whisper's proj_out is")
    return out


def convert_ct2_to_transformers(ct2_dir: Path, out: Path) -> None:
    """Write a transformers Whisper folder at `out`: fp32 safetensors, config, generation config,
    tokenizer (fast and slow files) and the feature extractor's preprocessor config."""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    model = read_model_bin(ct2_dir / "model.bin")
    ct2_config = json.loads((ct2_dir / "config.json").read_text())
    config = whisper_config(model, ct2_dir / "tokenizer.json")
    whisper = WhisperForConditionalGeneration(config)
    tensors = state_dict(model, config.encoder_layers, config.decoder_layers)
    missing, unexpected = whisper.load_state_dict(tensors, strict=False)
    # proj_out is tied to embed_tokens; Whisper's k_proj layers have no bias
    if set(missing) - {"proj_out.weight"} or unexpected:
        raise ValueError(f"conversion mismatch: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    whisper.tie_weights()
    _set_generation_config(whisper, ct2_dir, ct2_config)
    whisper.save_pretrained(out, safe_serialization=True)
    _write_tokenizer(ct2_dir / "tokenizer.json", out)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out)


def _set_generation_config(whisper: Any, ct2_dir: Path, ct2_config: dict[str, Any]) -> None:
    """What transformers' own Whisper `generate` needs to run on the converted model."""
    vocab = {
        t["content"]: t["id"] for t in json.loads((ct2_dir / "tokenizer.json").read_text())["added_tokens"]
    }
    gen = whisper.generation_config
    gen.max_length = whisper.config.max_target_positions
    gen.no_timestamps_token_id = vocab["<|notimestamps|>"]
    gen.suppress_tokens = list(ct2_config.get("suppress_ids", []))
    gen.begin_suppress_tokens = list(ct2_config.get("suppress_ids_begin", [220, vocab["<|endoftext|>"]]))
    gen.alignment_heads = ct2_config.get("alignment_heads")
    multilingual = whisper.config.vocab_size >= 51865
    gen.is_multilingual = multilingual
    if multilingual:
        names = {vocab[t] for t in ("<|startoftranscript|>", "<|translate|>", "<|transcribe|>")}
        gen.lang_to_id = {
            tok: i for tok, i in vocab.items() if i in set(ct2_config.get("lang_ids", [])) and i not in names
        }
        gen.task_to_id = {"transcribe": vocab["<|transcribe|>"], "translate": vocab["<|translate|>"]}


def _write_tokenizer(tokenizer_json: Path, out: Path) -> None:
    """tokenizer.json as is, plus vocab.json/merges.txt rebuilt from it so the slow `WhisperTokenizer`
    loads too, and the tokenizer config transformers writes for them."""
    from transformers import WhisperTokenizerFast

    bpe = json.loads(tokenizer_json.read_text())["model"]
    (out / "vocab.json").write_text(json.dumps(bpe["vocab"], ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = WhisperTokenizerFast(
        vocab_file=str(out / "vocab.json"),
        merges_file=str(out / "merges.txt"),
        tokenizer_file=str(tokenizer_json),
    )
    tokenizer.save_pretrained(out)
