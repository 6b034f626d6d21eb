"""A Llama-architecture forward pass in plain PyTorch over a paged KV cache.

Why not `transformers`' own model: its cache is one contiguous tensor per sequence, so sequences of
different lengths cannot share a forward pass without padding every step, and each new request
allocates. Here K/V live in a block pool preallocated once from a memory budget; a sequence owns a
list of blocks (its block table), and one call runs a flat batch of tokens from many sequences: some
decoding one token, some in a prefill chunk. Matmuls see all tokens at once; only attention is split:
one SDPA call for every decoding sequence together (keys padded to the longest context and masked)
and one per prefill chunk. Numerics follow `LlamaForCausalLM` (RMSNorm in fp32, RoPE tables from
transformers' own init functions), so greedy decoding gives the same tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from infergraph.runtimes.llm.quant import Int4Linear, Int8Linear, quantize

Weight = torch.Tensor | Int8Linear | Int4Linear

# precision -> dtype of activations and KV cache (int8/int4: weight-only quantisation, quant.py)
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32, "int4": torch.float32}
# Static RoPE variants: their frequencies do not depend on the sequence length.
_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass(frozen=True)
class LlamaShape:
    """The sizes the forward needs, from a transformers `config.json`."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    eps: float
    tied: bool
    max_positions: int

    @classmethod
    def from_config(cls, config: dict) -> LlamaShape:
        if config.get("model_type") not in ("llama", "mistral"):
            raise ValueError(f"model_type {config.get('model_type')!r}: only Llama-family models run here")
        if config.get("attention_bias") or config.get("mlp_bias"):
            raise ValueError("attention or MLP biases are not supported (not a plain Llama)")
        if config.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {config.get('hidden_act')!r}: only silu is supported")
        if config.get("model_type") == "mistral" and config.get("sliding_window"):
            raise ValueError("sliding-window attention is not supported")
        heads = config["num_attention_heads"]
        return cls(
            vocab=config["vocab_size"],
            hidden=config["hidden_size"],
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            intermediate=config["intermediate_size"],
            eps=config["rms_norm_eps"],
            tied=bool(config.get("tie_word_embeddings", False)),
            max_positions=config["max_position_embeddings"],
        )


def rope_tables(model_dir: Path, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [positions, head_dim], computed as `LlamaRotaryEmbedding` computes them."""
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = AutoConfig.from_pretrained(model_dir)
    scaling = getattr(config, "rope_scaling", None) or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in _ROPE_TYPES:
        raise ValueError(f"RoPE type {rope_type!r} is not supported (supported: {_ROPE_TYPES})")
    inv_freq, scale = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    pos = torch.arange(positions, dtype=torch.float32)
    freqs = (inv_freq.float()[:, None] @ pos[None, :]).T  # the same outer product as transformers
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * scale, emb.sin() * scale


class KVPool:
    """K and V of every layer in blocks of `block_size` tokens, allocated once.

    `data[layer]` is [2, num_blocks * block_size, kv_heads, head_dim]; a token at position p of a
    sequence lives in slot `table[p // block_size] * block_size + p % block_size`.
    """

    def __init__(self, shape: LlamaShape, num_blocks: int, block_size: int, dtype: torch.dtype) -> None:
        if num_blocks < 1:
            raise ValueError("the KV budget holds no block")
        self.num_blocks, self.block_size = num_blocks, block_size
        slots = num_blocks * block_size
        self.data = torch.zeros(shape.layers, 2, slots, shape.kv_heads, shape.head_dim, dtype=dtype)

    @staticmethod
    def blocks_for_budget(shape: LlamaShape, budget_mb: float, block_size: int, dtype: torch.dtype) -> int:
        itemsize = torch.empty((), dtype=dtype).element_size()
        per_block = 2 * shape.layers * block_size * shape.kv_heads * shape.head_dim * itemsize
        return int(budget_mb * 2**20) // per_block


@dataclass(frozen=True)
class SeqInput:
    """One sequence's share of a step: `tokens` at positions start.. ; logits wanted or not."""

    tokens: list[int]
    start: int
    block_table: list[int]
    want_logits: bool


@dataclass
class _Prefill:
    rows: slice
    start: int
    keys: torch.Tensor | None  # slots of positions 0..end; None: first chunk, attend to its own K/V
    mask: torch.Tensor | None


@dataclass
class StepBatch:
    """Everything one forward needs, as tensors, built once per step (not per layer)."""

    input_ids: torch.Tensor  # [N]
    cos: torch.Tensor  # [N, 1, head_dim]
    sin: torch.Tensor
    write_slots: torch.Tensor  # [N]
    n_decode: int  # decoding sequences come first: rows 0..n_decode-1
    decode_keys: torch.Tensor | None  # [n_decode, max_ctx] slots
    decode_mask: torch.Tensor | None  # [n_decode, 1, 1, max_ctx] True = attend
    prefills: list[_Prefill]
    logit_rows: torch.Tensor  # last row of each sequence that wants logits, in the caller's order


class LlamaPaged:
    """Weights of a Llama model, laid out for batched CPU inference (QKV and gate/up fused)."""

    def __init__(self, model_dir: Path, precision: str = "fp32", max_positions: int | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {sorted(PRECISIONS)}")
        config = json.loads((Path(model_dir) / "config.json").read_text())
        self.shape = s = LlamaShape.from_config(config)
        dtype = PRECISIONS[precision]
        self.precision, self.dtype = precision, dtype
        sd = _load_state_dict(Path(model_dir))

        def w(name: str) -> torch.Tensor:
            return sd.pop(name).to(dtype).contiguous()

        def linear(*names: str) -> Weight:  # several projections of one input: one matmul
            return quantize(torch.cat([w(name) for name in names]).contiguous(), precision)

        self.embed = w("model.embed_tokens.weight")
        head = self.embed if s.tied or "lm_head.weight" not in sd else w("lm_head.weight")
        self.lm_head = quantize(head, "int8" if precision == "int4" else precision)  # GGUF: a Q8_0 head
        self.final_norm = w("model.norm.weight")
        self.qkv: list[Weight] = []
        self.o: list[Weight] = []
        self.gate_up: list[Weight] = []
        self.down: list[Weight] = []
        self.norm_in: list[torch.Tensor] = []
        self.norm_post: list[torch.Tensor] = []
        for i in range(s.layers):
            p = f"model.layers.{i}."
            self.qkv.append(linear(*(p + f"self_attn.{x}_proj.weight" for x in ("q", "k", "v"))))
            self.o.append(linear(p + "self_attn.o_proj.weight"))
            self.gate_up.append(linear(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"))
            self.down.append(linear(p + "mlp.down_proj.weight"))
            self.norm_in.append(w(p + "input_layernorm.weight"))
            self.norm_post.append(w(p + "post_attention_layernorm.weight"))
        self.max_positions = min(max_positions or s.max_positions, s.max_positions)
        cos, sin = rope_tables(Path(model_dir), self.max_positions)
        self.cos, self.sin = cos.to(dtype), sin.to(dtype)
        self.q_size, self.kv_size = s.heads * s.head_dim, s.kv_heads * s.head_dim

    # ------------------------------------------------------------------ batch building

    def build_batch(self, seqs: list[SeqInput], block_size: int) -> StepBatch:
        """Rows: single-token (decoding) sequences first, then prefill chunks. Logits come back in the
        order of `seqs` (those with `want_logits`)."""
        decodes = [s for s in seqs if len(s.tokens) == 1]
        prefills = [s for s in seqs if len(s.tokens) > 1]
        ordered = decodes + prefills
        ids: list[int] = []
        pos: list[int] = []
        for s in ordered:
            ids.extend(s.tokens)
            pos.extend(range(s.start, s.start + len(s.tokens)))
        positions = torch.tensor(pos, dtype=torch.long)
        tables = _tables(ordered)
        row_seq = torch.repeat_interleave(
            torch.arange(len(ordered)), torch.tensor([len(s.tokens) for s in ordered])
        )
        write_slots = tables[row_seq, positions // block_size] * block_size + positions % block_size

        decode_keys = decode_mask = None
        if decodes:
            ctx = torch.tensor([s.start + 1 for s in decodes])
            span = torch.arange(int(ctx.max()))
            decode_keys = _slots(tables[: len(decodes)], span, block_size)
            decode_mask = (span[None, :] < ctx[:, None])[:, None, None, :]

        chunks: list[_Prefill] = []
        row = len(decodes)
        for i, s in enumerate(prefills, start=len(decodes)):
            n = len(s.tokens)
            keys = mask = None
            if s.start > 0:  # later chunk: attend to the cached prefix too
                span = torch.arange(s.start + n)
                keys = _slots(tables[i : i + 1], span, block_size)[0]
                mask = span[None, :] <= torch.arange(s.start, s.start + n)[:, None]
            chunks.append(_Prefill(slice(row, row + n), s.start, keys, mask))
            row += n

        ends = (torch.cumsum(torch.tensor([len(s.tokens) for s in ordered]), 0) - 1).tolist()
        end_of = {id(s): end for s, end in zip(ordered, ends, strict=True)}
        return StepBatch(
            input_ids=torch.tensor(ids, dtype=torch.long),
            cos=self.cos[positions][:, None, :],
            sin=self.sin[positions][:, None, :],
            write_slots=write_slots,
            n_decode=len(decodes),
            decode_keys=decode_keys,
            decode_mask=decode_mask,
            prefills=chunks,
            logit_rows=torch.tensor([end_of[id(s)] for s in seqs if s.want_logits], dtype=torch.long),
        )

    # ------------------------------------------------------------------ forward

    @torch.inference_mode()
    def forward(self, batch: StepBatch, kv: KVPool) -> torch.Tensor:
        """Logits [len(logit_rows), vocab] (fp32) for the last token of each sequence that wants them."""
        s = self.shape
        n = batch.input_ids.shape[0]
        x = F.embedding(batch.input_ids, self.embed)
        for layer in range(s.layers):
            h = _rms_norm(x, self.norm_in[layer], s.eps)
            qkv = _mm(h, self.qkv[layer])
            qk = qkv[:, : self.q_size + self.kv_size].view(n, s.heads + s.kv_heads, s.head_dim)
            qk = _rope(qk, batch.cos, batch.sin)  # q and k heads in one go
            q, k = qk[:, : s.heads], qk[:, s.heads :]
            v = qkv[:, self.q_size + self.kv_size :].view(n, s.kv_heads, s.head_dim)
            cache_k, cache_v = kv.data[layer, 0], kv.data[layer, 1]
            cache_k.index_copy_(0, batch.write_slots, k)
            cache_v.index_copy_(0, batch.write_slots, v)
            attn = self._attention(batch, q, k, v, cache_k, cache_v)
            x = x + _mm(attn.reshape(n, self.q_size), self.o[layer])
            h = _rms_norm(x, self.norm_post[layer], s.eps)
            gate, up = _mm(h, self.gate_up[layer]).split(s.intermediate, dim=-1)
            x = x + _mm(F.silu(gate) * up, self.down[layer])
        last = _rms_norm(x.index_select(0, batch.logit_rows), self.final_norm, s.eps)
        return _mm(last, self.lm_head).float()

    def _attention(
        self,
        batch: StepBatch,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cache_k: torch.Tensor,
        cache_v: torch.Tensor,
    ) -> torch.Tensor:
        """[N, heads, head_dim]: decodes in one SDPA call over their gathered, masked contexts;
        each prefill chunk causally over its prefix + itself."""
        out = torch.empty_like(q)
        d = batch.n_decode
        if d:
            assert batch.decode_keys is not None
            keys = batch.decode_keys
            kk = cache_k[keys].transpose(1, 2)  # [d, kv_heads, ctx, head_dim]
            vv = cache_v[keys].transpose(1, 2)
            out[:d] = F.scaled_dot_product_attention(
                q[:d, :, None, :], kk, vv, attn_mask=batch.decode_mask, enable_gqa=True
            )[:, :, 0, :]
        for p in batch.prefills:
            qq = q[p.rows].transpose(0, 1)[None]  # [1, heads, n, head_dim]
            if p.keys is None:
                kk, vv = k[p.rows].transpose(0, 1)[None], v[p.rows].transpose(0, 1)[None]
                o = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, enable_gqa=True)
            else:
                kk, vv = cache_k[p.keys].transpose(0, 1)[None], cache_v[p.keys].transpose(0, 1)[None]
                o = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=p.mask, enable_gqa=True)
            out[p.rows] = o[0].transpose(0, 1)
        return out


def _mm(x: torch.Tensor, weight: Weight) -> torch.Tensor:
    """x @ weight.T, for a plain or a quantised weight."""
    return F.linear(x, weight) if isinstance(weight, torch.Tensor) else weight(x)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`LlamaRMSNorm`, operation for operation (variance in fp32)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos) + (rotated * sin)


def _tables(seqs: list[SeqInput]) -> torch.Tensor:
    """Block tables padded with block 0 into one [n_seqs, max_blocks] tensor."""
    width = max(len(s.block_table) for s in seqs)
    return torch.tensor([s.block_table + [0] * (width - len(s.block_table)) for s in seqs], dtype=torch.long)


def _slots(tables: torch.Tensor, span: torch.Tensor, block_size: int) -> torch.Tensor:
    """Cache slots of positions `span` for each row of `tables`: [rows, len(span)]."""
    return tables[:, span // block_size] * block_size + span % block_size


def _load_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights (convert .bin checkpoints first)")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(f)))
    return sd
