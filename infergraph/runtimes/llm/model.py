"""A Llama-architecture forward pass in plain PyTorch over a paged KV cache.

Why not `transformers`' own model: its cache is one contiguous tensor per sequence, so sequences of
different lengths cannot share a forward pass without padding every step, and each new request
allocates. Here K/V live in a block pool preallocated once from a memory budget; a sequence owns a
list of blocks (its block table), and one call runs a flat batch of tokens from many sequences: some
decoding one token, some in a prefill chunk. Matmuls see all tokens at once; only attention is split:
one call for every decoding sequence together (their contexts copied block by block, padded to the
longest and masked; SDPA in fp32, two batched matmuls in bf16) and one SDPA call per prefill chunk.
Numerics follow `LlamaForCausalLM` (RMSNorm in fp32, RoPE tables from transformers' own init
functions), so greedy decoding gives the same tokens.

On a GPU (`device="cuda"`, bf16) a step takes the packed path instead: every sequence's K/V
(its context, the new tokens included) is gathered from the pool into one unpadded buffer and one
FlashAttention varlen call (causal, bottom-right aligned: a chunk at positions s..s+n-1 sees keys
0..s+n-1) serves decodes and prefill chunks together, with grouped-query heads natively; the step's
index tensors travel in two copies from pinned memory; decode-only steps replay a CUDA graph
captured once per (sequences, context tokens) bucket. On the CPU the packed path can be forced
(`packed=True`, the unit tests): the same gather and an equivalent per-sequence SDPA.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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
    # transformers 4 names it rope_scaling (None for plain RoPE); 5 rope_parameters
    scaling = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in _ROPE_TYPES:
        raise ValueError(f"RoPE type {rope_type!r} is not supported (supported: {_ROPE_TYPES})")
    if rope_type == "default" and "default" not in ROPE_INIT_FUNCTIONS:  # transformers 5
        inv_freq, scale = _default_inv_freq(config), 1.0
    else:
        inv_freq, scale = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    pos = torch.arange(positions, dtype=torch.float32)
    freqs = (inv_freq.float()[:, None] @ pos[None, :]).T  # the same outer product as transformers
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * scale, emb.sin() * scale


def _default_inv_freq(config: Any) -> torch.Tensor:
    """Plain RoPE's frequencies, as transformers' default init computes them."""
    params = getattr(config, "rope_parameters", None) or {}
    base = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dim = int(head_dim * params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)))
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


class KVPool:
    """K and V of every layer in blocks of `block_size` tokens, allocated once.

    `data[layer]` is [2, num_blocks * block_size, kv_heads, head_dim]; a token at position p of a
    sequence lives in slot `table[p // block_size] * block_size + p % block_size`.
    """

    def __init__(
        self,
        shape: LlamaShape,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: str | torch.device = "cpu",
    ) -> None:
        if num_blocks < 1:
            raise ValueError("the KV budget holds no block")
        self.num_blocks, self.block_size = num_blocks, block_size
        # one block past the allocator's: padding rows of a graphed step write and read there
        self.scratch_slot = num_blocks * block_size
        slots = (num_blocks + 1) * block_size
        self.data = torch.zeros(
            shape.layers, 2, slots, shape.kv_heads, shape.head_dim, dtype=dtype, device=device
        )

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
    block_size: int
    decode_blocks: torch.Tensor | None  # [n_decode * width] the blocks holding each one's context
    decode_mask: torch.Tensor | None  # [n_decode, 1, 1, width * block_size] True = attend
    prefills: list[_Prefill]
    logit_rows: torch.Tensor  # last row of each sequence that wants logits, in the caller's order


class LlamaPaged:
    """Weights of a Llama model, laid out for batched inference (QKV and gate/up fused).

    `device`: where weights, KV pool and steps live ("cpu" by default, as before). `state_dict`:
    weights already in memory (e.g. a randomly initialised model), instead of the folder's
    safetensors; `config.json` is still read from `model_dir`. `packed`: the unpadded varlen
    attention path (default: on for a CUDA device in bf16, else off). `graphs`: replay decode-only
    steps from CUDA graphs (packed path on a GPU only). `int4_rows` (bf16 on the CPU): steps of at
    most that many tokens multiply by a second copy of the weights in int4 (the GGUF's own 4-bit
    blocks; an int8 head) with bf16 activations. Such steps read every weight for a few rows, so
    their time is reading weights: a quarter of the bytes. Bigger steps keep bf16, whose kernels win
    from ~16 rows up (docs/llm.md)."""

    def __init__(
        self,
        model_dir: Path,
        precision: str = "fp32",
        max_positions: int | None = None,
        device: str | torch.device = "cpu",
        state_dict: dict[str, torch.Tensor] | None = None,
        packed: bool | None = None,
        graphs: bool = True,
        max_graphs: int = 256,
        int4_rows: int = 0,
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {sorted(PRECISIONS)}")
        self.device = torch.device(device)
        on_gpu = self.device.type == "cuda"
        if on_gpu and precision in ("int8", "int4"):
            raise ValueError(f"precision {precision!r} runs on the CPU only (its kernels are CPU kernels)")
        if int4_rows and (on_gpu or precision != "bf16"):
            raise ValueError("int4_rows: small steps in int4 beside bf16 weights, on the CPU only")
        config = json.loads((Path(model_dir) / "config.json").read_text())
        self.shape = s = LlamaShape.from_config(config)
        dtype = PRECISIONS[precision]
        self.precision, self.dtype = precision, dtype
        sd = dict(state_dict) if state_dict is not None else _load_state_dict(Path(model_dir))

        def w(name: str) -> torch.Tensor:
            return sd.pop(name).to(device=self.device, dtype=dtype).contiguous()

        self.small = _SmallStepWeights(int4_rows)

        def linear(*names: str) -> Weight:  # several projections of one input: one matmul
            weight = torch.cat([sd.pop(name) for name in names]).to(self.device).contiguous()
            self.small.add(weight)  # from the full-precision weight: the GGUF's exact blocks
            return quantize(weight.to(dtype).contiguous(), precision)

        tied = s.tied or "lm_head.weight" not in sd
        self.small.set_head(sd["model.embed_tokens.weight" if tied else "lm_head.weight"])
        self.embed = w("model.embed_tokens.weight")
        head = self.embed if tied else w("lm_head.weight")
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
        self.cos, self.sin = cos.to(device=self.device, dtype=dtype), sin.to(device=self.device, dtype=dtype)
        self.q_size, self.kv_size = s.heads * s.head_dim, s.kv_heads * s.head_dim
        flash_ok = on_gpu and dtype in (torch.float16, torch.bfloat16)
        self.packed = flash_ok if packed is None else packed
        self.flash = flash_ok and self.packed
        self.graphs = graphs and self.flash
        self.max_graphs = max_graphs
        self.capture_s = 0.0  # seconds spent capturing graphs so far
        self.counters = {"graph_steps": 0, "eager_steps": 0, "graphs_captured": 0}
        self._graphs: OrderedDict[tuple[int, int, int], _DecodeGraph] = OrderedDict()
        self._pool = torch.cuda.graph_pool_handle() if self.graphs else None
        self._pinned: dict[str, torch.Tensor] = {}
        self._copied: dict[str, torch.cuda.Event] = {}
        self._scratch = threading.local()  # engines sharing this model step in their own threads

    # ------------------------------------------------------------------ one step

    @torch.inference_mode()
    def compute(self, seqs: list[SeqInput], kv: KVPool) -> torch.Tensor:
        """One model step: logits [sequences that want them, vocab] (fp32, on the model's device),
        in the order of `seqs`. The CPU path is `build_batch` + `forward`; the packed path (GPU)
        is `build_packed` + a graph replay (decode-only steps) or `_forward_packed`."""
        if not self.packed:
            batch = self.build_batch(seqs, kv.block_size)
            if self.device.type != "cpu":
                batch = _batch_to(batch, self.device)
            return self.forward(batch, kv)
        plan = build_packed(seqs, kv.block_size)
        if self.graphs and plan.decode_only:
            self.counters["graph_steps"] += 1
            return self._replay(plan, kv)
        self.counters["eager_steps"] += 1
        return self._eager(plan, kv)

    def _eager(self, plan: PackedPlan, kv: KVPool) -> torch.Tensor:
        n, k, rows = len(plan.ids), len(plan.gather), len(plan.logit_rows)
        i64 = self._to_device(
            "i64", np.concatenate([plan.ids, plan.pos, plan.write, plan.gather, plan.logit_rows])
        )
        i32 = self._to_device("i32", np.concatenate([plan.cu_q, plan.cu_k]))
        s = len(plan.cu_q)
        ids, pos, write = i64[:n], i64[n : 2 * n], i64[2 * n : 3 * n]
        gather, logit_rows = i64[3 * n : 3 * n + k], i64[3 * n + k : 3 * n + k + rows]
        cu_q, cu_k = i32[:s], i32[s:]
        return self._forward_packed(
            ids, pos, write, gather, cu_q, cu_k, plan.max_q, plan.max_k, logit_rows, kv
        )

    def _to_device(self, name: str, arr: np.ndarray, dst: torch.Tensor | None = None) -> torch.Tensor:
        """`arr` on the model's device (into `dst` if given); on a GPU through a pinned staging
        buffer and an asynchronous copy (a buffer is reused only once its last copy has finished)."""
        if self.device.type == "cpu":
            out = torch.from_numpy(arr)
            return out if dst is None else dst.copy_(out)
        staged, done = self._pinned.get(name), self._copied.get(name)
        if done is not None:
            done.synchronize()
        dtype = _TORCH_INT[arr.dtype]
        if staged is None or staged.numel() < arr.size or staged.dtype != dtype:
            staged = torch.empty(max(2 * arr.size, 4096), dtype=dtype).pin_memory()
            self._pinned[name] = staged
        view = staged[: arr.size]
        view.numpy()[:] = arr
        if dst is None:
            dst = view.to(self.device, non_blocking=True)
        else:
            dst.copy_(view, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._copied[name] = event
        return dst

    def _replay(self, plan: PackedPlan, kv: KVPool) -> torch.Tensor:
        """A decode-only step from the graph of its (sequences, context tokens) bucket. Padding rows
        are one-token sequences that write and read the pool's scratch slot."""
        from infergraph.runtimes.engines.varlen_engine import bucket

        n, k = len(plan.ids), len(plan.gather)
        rows = bucket(n, 4, floor=8)
        keys = bucket(k + rows - n, 8, floor=256)
        entry = self._graph(rows, keys, kv)
        scratch = kv.scratch_slot
        i64 = np.empty(3 * rows + keys, dtype=np.int64)
        i64[:rows] = 0
        i64[:n] = plan.ids
        i64[rows : 2 * rows] = 0
        i64[rows : rows + n] = plan.pos
        i64[2 * rows : 3 * rows + keys] = scratch
        i64[2 * rows : 2 * rows + n] = plan.write
        i64[3 * rows : 3 * rows + k] = plan.gather
        i32 = np.empty(2 * (rows + 1), dtype=np.int32)
        i32[: rows + 1] = np.arange(rows + 1)
        i32[rows + 1 : rows + 2 + n] = plan.cu_k
        i32[rows + 2 + n :] = plan.cu_k[-1] + np.arange(1, rows - n + 1)
        self._to_device("g64", i64, entry.i64)
        self._to_device("g32", i32, entry.i32)
        entry.graph.replay()
        return entry.out[:n]

    def _graph(self, rows: int, keys: int, kv: KVPool) -> _DecodeGraph:
        """The captured decode graph for `rows` sequences over `keys` gathered context tokens of
        pool `kv` (captured now if new; least recently used ones evicted)."""
        key = (id(kv), rows, keys)
        entry = self._graphs.get(key)
        if entry is not None and entry.kv is kv:
            self._graphs.move_to_end(key)
            return entry
        t0 = time.perf_counter()
        dev = self.device
        i64 = torch.full((3 * rows + keys,), kv.scratch_slot, dtype=torch.long, device=dev)
        i64[: 2 * rows] = 0
        i32 = torch.arange(rows + 1, dtype=torch.int32, device=dev).repeat(2)
        out = torch.empty(rows, self.shape.vocab, dtype=torch.float32, device=dev)

        def run() -> torch.Tensor:
            ids, pos, write = i64[:rows], i64[rows : 2 * rows], i64[2 * rows : 3 * rows]
            gather, cu_q, cu_k = i64[3 * rows :], i32[: rows + 1], i32[rows + 1 :]
            return self._forward_packed(ids, pos, write, gather, cu_q, cu_k, 1, self.max_positions, None, kv)

        current = torch.cuda.current_stream(dev)
        side = torch.cuda.Stream(dev)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            run()  # warm-up outside capture: kernels chosen, workspaces made
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=side, capture_error_mode="thread_local"):
            out.copy_(run())
        current.wait_stream(side)
        self.capture_s += time.perf_counter() - t0
        self.counters["graphs_captured"] += 1
        self._graphs[key] = entry = _DecodeGraph(graph, i64, i32, out, kv)
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return entry

    @torch.inference_mode()
    def _forward_packed(
        self,
        ids: torch.Tensor,
        pos: torch.Tensor,
        write: torch.Tensor,
        gather: torch.Tensor,
        cu_q: torch.Tensor,
        cu_k: torch.Tensor,
        max_q: int,
        max_k: int,
        logit_rows: torch.Tensor | None,
        kv: KVPool,
    ) -> torch.Tensor:
        """The packed forward: rows are the step's tokens sequence by sequence (`cu_q`); each
        sequence attends to its gathered context (`gather`, bounds `cu_k`), causally aligned at the
        end. Logits of `logit_rows` (None: every row). Shape-static given its inputs' sizes and the
        two ints, so it can be captured into a CUDA graph."""
        s = self.shape
        n = ids.shape[0]
        x = F.embedding(ids, self.embed)
        cos = self.cos.index_select(0, pos)[:, None, :]
        sin = self.sin.index_select(0, pos)[:, None, :]
        for layer in range(s.layers):
            h = _rms_norm(x, self.norm_in[layer], s.eps)
            qkv = _mm(h, self.qkv[layer])
            qk = _rope(
                qkv[:, : self.q_size + self.kv_size].view(n, s.heads + s.kv_heads, s.head_dim), cos, sin
            )
            q, k = qk[:, : s.heads], qk[:, s.heads :]
            v = qkv[:, self.q_size + self.kv_size :].view(n, s.kv_heads, s.head_dim)
            cache_k, cache_v = kv.data[layer, 0], kv.data[layer, 1]
            cache_k.index_copy_(0, write, k)
            cache_v.index_copy_(0, write, v)
            kk, vv = cache_k.index_select(0, gather), cache_v.index_select(0, gather)
            attn = self._varlen(q.contiguous(), kk, vv, cu_q, cu_k, max_q, max_k)
            x = x + _mm(attn.reshape(n, self.q_size), self.o[layer])
            h = _rms_norm(x, self.norm_post[layer], s.eps)
            gate, up = _mm(h, self.gate_up[layer]).split(s.intermediate, dim=-1)
            x = x + _mm(F.silu(gate) * up, self.down[layer])
        last = x if logit_rows is None else x.index_select(0, logit_rows)
        return _mm(_rms_norm(last, self.final_norm, s.eps), self.lm_head).float()

    def _varlen(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cu_q: torch.Tensor,
        cu_k: torch.Tensor,
        max_q: int,
        max_k: int,
    ) -> torch.Tensor:
        if self.flash:  # grouped-query heads natively; causal = aligned at the end when q < k
            out = torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, True, False)
            return out[0]
        return varlen_attention_reference(q, k, v, cu_q, cu_k)

    def _decode_buffers(self, size: int) -> list[torch.Tensor]:
        """Four flat buffers of at least `size` elements for `_DecodeContexts`, this thread's, grown
        by a quarter beyond what a step needs when one needs more."""
        buffers: list[torch.Tensor] | None = getattr(self._scratch, "decode", None)
        if buffers is None or buffers[0].numel() < size:
            grown = size + size // 4
            buffers = [torch.empty(grown, dtype=self.dtype, device=self.device) for _ in range(4)]
            self._scratch.decode = buffers
        return buffers

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

        decode_blocks = decode_mask = None
        if decodes:  # whole blocks: one contiguous copy each, the tail past a context masked
            ctx = torch.tensor([s.start + 1 for s in decodes])
            width = -(-int(ctx.max()) // block_size)
            decode_blocks = tables[: len(decodes), :width].reshape(-1)
            span = torch.arange(width * block_size)
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
            block_size=block_size,
            decode_blocks=decode_blocks,
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
        qkv_w, o_w, gate_up_w, down_w, head_w = self.small.pick(n) or (
            self.qkv,
            self.o,
            self.gate_up,
            self.down,
            self.lm_head,
        )
        x = F.embedding(batch.input_ids, self.embed)
        contexts = _DecodeContexts(batch, s, self._decode_buffers) if batch.n_decode else None
        for layer in range(s.layers):
            h = _rms_norm(x, self.norm_in[layer], s.eps)
            qkv = _mm(h, qkv_w[layer])
            qk = qkv[:, : self.q_size + self.kv_size].view(n, s.heads + s.kv_heads, s.head_dim)
            qk = _rope(qk, batch.cos, batch.sin)  # q and k heads in one go
            q, k = qk[:, : s.heads], qk[:, s.heads :]
            v = qkv[:, self.q_size + self.kv_size :].view(n, s.kv_heads, s.head_dim)
            cache_k, cache_v = kv.data[layer, 0], kv.data[layer, 1]
            cache_k.index_copy_(0, batch.write_slots, k)
            cache_v.index_copy_(0, batch.write_slots, v)
            attn = self._attention(batch, contexts, q, k, v, cache_k, cache_v)
            x = x + _mm(attn.reshape(n, self.q_size), o_w[layer])
            h = _rms_norm(x, self.norm_post[layer], s.eps)
            gate, up = _mm(h, gate_up_w[layer]).split(s.intermediate, dim=-1)
            x = x + _mm(F.silu(gate) * up, down_w[layer])
        last = _rms_norm(x.index_select(0, batch.logit_rows), self.final_norm, s.eps)
        return _mm(last, head_w).float()

    def _attention(
        self,
        batch: StepBatch,
        contexts: _DecodeContexts | None,
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
            assert contexts is not None
            kk, vv = contexts.gather(cache_k, cache_v)  # [kv_heads, d, ctx, head_dim]
            if q.dtype == torch.float32:
                out[:d] = F.scaled_dot_product_attention(
                    q[:d, :, None, :],
                    kk.transpose(0, 1),
                    vv.transpose(0, 1),
                    attn_mask=contexts.mask,
                    enable_gqa=True,
                )[:, :, 0, :]
            else:
                out[:d] = _decode_attention(q[:d], kk, vv, contexts.mask)
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


class _SmallStepWeights:
    """The int4 copy of the weights that steps of at most `rows` tokens use (`LlamaPaged.int4_rows`),
    added in the order the layers are built: qkv, o, gate_up, down per layer, then the head."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.weights: list[Weight] = []
        self.head: Weight | None = None
        self.steps = 0  # steps that used them
        self._by_kind: tuple[list[Weight], list[Weight], list[Weight], list[Weight]] | None = None

    def add(self, weight: torch.Tensor) -> None:
        if self.rows:
            self.weights.append(quantize(weight.float(), "int4"))

    def set_head(self, weight: torch.Tensor) -> None:
        if self.rows:
            self.head = quantize(weight.float(), "int8")  # the GGUF's head is Q8_0

    def pick(self, rows: int) -> tuple[list[Weight], list[Weight], list[Weight], list[Weight], Weight] | None:
        """(qkv, o, gate_up, down, head) for a step of `rows` tokens, or None: the main weights."""
        if not self.rows or rows > self.rows or self.head is None:
            return None
        self.steps += 1
        if self._by_kind is None:
            w = self.weights
            self._by_kind = w[0::4], w[1::4], w[2::4], w[3::4]
        return *self._by_kind, self.head


class _DecodeContexts:
    """The K and V contexts of a step's decoding sequences, gathered layer after layer into the
    model's buffers (kept from step to step), laid out [kv_heads, d, ctx, head_dim]: contiguous,
    kv head major, as the batched matmuls of `_decode_attention` want them.

    Why: at 16 sequences x 300 keys the gathers, not the matmuls, were most of attention's time.
    Copying whole blocks (a block is block_size consecutive slots) instead of indexing every token's
    slot, and reusing buffers instead of allocating fresh ones (page faults), took a 16-sequence
    bf16 decode step from 48 to 31 ms in process (2 cores)."""

    def __init__(
        self, batch: StepBatch, shape: LlamaShape, buffers: Callable[[int], list[torch.Tensor]]
    ) -> None:
        assert batch.decode_blocks is not None and batch.decode_mask is not None
        self.blocks, self.mask = batch.decode_blocks, batch.decode_mask
        d, bs, kvh, hd = batch.n_decode, batch.block_size, shape.kv_heads, shape.head_dim
        self.block_size = bs
        n_blocks = self.blocks.shape[0]
        size = n_blocks * bs * kvh * hd
        k_block, v_block, k_head, v_head = (b[:size] for b in buffers(size))
        self.by_block = [b.view(n_blocks, bs, kvh, hd) for b in (k_block, v_block)]
        self.by_head = [b.view(kvh, d, n_blocks // d * bs, hd) for b in (k_head, v_head)]

    def gather(self, cache_k: torch.Tensor, cache_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's contexts: K and V [kv_heads, d, ctx, head_dim] (valid until the next call)."""
        for cache, by_block, by_head in zip((cache_k, cache_v), self.by_block, self.by_head, strict=True):
            blocked = cache.view(-1, self.block_size, *cache.shape[1:])
            torch.index_select(blocked, 0, self.blocks, out=by_block)
            d = by_head.shape[1]
            by_head.copy_(by_block.view(d, -1, *cache.shape[1:]).permute(2, 0, 1, 3))
        return self.by_head[0], self.by_head[1]


def _decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One query token per sequence against its context, as two batched matmuls: q [d, heads, hd],
    k/v [kv_heads, d, ctx, hd] (contiguous), mask [d, 1, 1, ctx] (True = attend) -> [d, heads, hd].

    Why not SDPA: on the CPU its kernel in bf16 took 1.9 ms for 16 sequences x 300 keys against
    0.14 ms here, and a bf16 matmul over strided operands falls off oneDNN's fast path, hence the
    contiguous layout. The query heads that share a K/V head are its rows. Scores and softmax run
    in fp32."""
    d, heads, hd = q.shape
    kv_heads = k.shape[0]
    group = heads // kv_heads
    grouped = q.view(d, kv_heads, group, hd).transpose(0, 1).contiguous()  # [kv_heads, d, group, hd]
    scores = torch.matmul(grouped, k.transpose(-1, -2)).float() * hd**-0.5  # [kv_heads, d, group, ctx]
    weights = torch.softmax(scores.masked_fill_(~mask.transpose(0, 1), float("-inf")), dim=-1).to(q.dtype)
    return torch.matmul(weights, v).transpose(0, 1).reshape(d, heads, hd)


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


_TORCH_INT = {np.dtype(np.int64): torch.long, np.dtype(np.int32): torch.int32}


@dataclass
class PackedPlan:
    """One step for the packed path, as host arrays: rows sequence by sequence, in caller order."""

    ids: np.ndarray  # [N] int64
    pos: np.ndarray  # [N]
    write: np.ndarray  # [N] pool slots of the new tokens' K/V
    gather: np.ndarray  # [K] pool slots of every sequence's context (new tokens included), end to end
    cu_q: np.ndarray  # [S + 1] int32: rows of each sequence
    cu_k: np.ndarray  # [S + 1] int32: gathered keys of each sequence
    max_q: int
    max_k: int
    logit_rows: np.ndarray  # [L] last row of each sequence that wants logits

    @property
    def decode_only(self) -> bool:
        """One token per sequence, every one sampling: the shape a decode graph replays."""
        return self.max_q == 1 and len(self.logit_rows) == len(self.ids)


@dataclass
class _DecodeGraph:
    graph: torch.cuda.CUDAGraph
    i64: torch.Tensor  # ids | positions | write slots | gather slots
    i32: torch.Tensor  # cu_q | cu_k
    out: torch.Tensor  # logits of every row
    kv: KVPool  # the pool whose tensors the graph reads and writes


def build_packed(seqs: list[SeqInput], block_size: int) -> PackedPlan:
    """Host-side index arrays of one packed step (numpy, vectorised over sequences)."""
    n_seqs = len(seqs)
    lens = np.fromiter((len(s.tokens) for s in seqs), np.int64, n_seqs)
    starts = np.fromiter((s.start for s in seqs), np.int64, n_seqs)
    ends = starts + lens
    width = max(len(s.block_table) for s in seqs)
    tables = np.zeros((n_seqs, width), dtype=np.int64)
    for i, s in enumerate(seqs):
        tables[i, : len(s.block_table)] = s.block_table
    slots = (tables[:, :, None] * block_size + np.arange(block_size)).reshape(n_seqs, width * block_size)
    gather = slots[np.arange(width * block_size)[None, :] < ends[:, None]]
    cu_q = np.zeros(n_seqs + 1, dtype=np.int64)
    np.cumsum(lens, out=cu_q[1:])
    cu_k = np.zeros(n_seqs + 1, dtype=np.int64)
    np.cumsum(ends, out=cu_k[1:])
    n = int(cu_q[-1])
    row_seq = np.repeat(np.arange(n_seqs), lens)
    pos = starts[row_seq] + np.arange(n) - cu_q[row_seq]
    want = np.fromiter((s.want_logits for s in seqs), bool, n_seqs)
    return PackedPlan(
        ids=np.fromiter(itertools.chain.from_iterable(s.tokens for s in seqs), np.int64, n),
        pos=pos,
        write=slots[row_seq, pos],
        gather=gather,
        cu_q=cu_q.astype(np.int32),
        cu_k=cu_k.astype(np.int32),
        max_q=int(lens.max()),
        max_k=int(ends.max()),
        logit_rows=(cu_q[1:] - 1)[want],
    )


def varlen_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor
) -> torch.Tensor:
    """What the FlashAttention varlen call computes, one SDPA call per sequence (CPU, tests):
    query i of a sequence with nq queries and nk keys sees keys 0..i + nk - nq."""
    out = torch.empty_like(q)
    bq, bk = cu_q.tolist(), cu_k.tolist()
    for i in range(len(bq) - 1):
        nq, nk = bq[i + 1] - bq[i], bk[i + 1] - bk[i]
        if nq == 0:
            continue
        qq = q[bq[i] : bq[i + 1]].transpose(0, 1)[None]
        kk = k[bk[i] : bk[i + 1]].transpose(0, 1)[None]
        vv = v[bk[i] : bk[i + 1]].transpose(0, 1)[None]
        mask = torch.arange(nk)[None, :] <= torch.arange(nq)[:, None] + (nk - nq)
        o = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask.to(q.device), enable_gqa=True)
        out[bq[i] : bq[i + 1]] = o[0].transpose(0, 1)
    return out


def _batch_to(batch: StepBatch, device: torch.device) -> StepBatch:
    """The CPU-built batch of the unpacked path on `device` (e.g. fp32 on a GPU)."""

    def mv(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device)

    return StepBatch(
        input_ids=batch.input_ids.to(device),
        cos=batch.cos.to(device),
        sin=batch.sin.to(device),
        write_slots=batch.write_slots.to(device),
        n_decode=batch.n_decode,
        block_size=batch.block_size,
        decode_blocks=mv(batch.decode_blocks),
        decode_mask=mv(batch.decode_mask),
        prefills=[_Prefill(p.rows, p.start, mv(p.keys), mv(p.mask)) for p in batch.prefills],
        logit_rows=batch.logit_rows.to(device),
    )
