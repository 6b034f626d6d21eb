"""Packed (unpadded) BERT forward for GPUs: CUDA graphs per token bucket, pinned asynchronous copies.

A small encoder on a GPU is bound by kernel launches, padding and host<->device copies, not by
FLOPs (docs/gpu.md). So a forward pass packs its sentences end to end with no padding tokens
(attention runs over variable-length sequences through FlashAttention's varlen kernel), the ~80
kernels of a pass are replayed from a CUDA graph captured once per (tokens, sentences, longest)
bucket, and pass k+1 is packed into pinned host memory while the GPU still runs pass k: the host
waits once per call, not once per pass. On a CPU (the unit tests) the same forward runs eagerly
with per-sentence attention, so the packing, positions and pooling are checked without a GPU.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}
FLASH_BLOCK = 128  # FlashAttention's query tile: the longest sentence is bucketed to a multiple of it


def bucket(n: int, steps_per_octave: int = 8, floor: int = 16) -> int:
    """`n` rounded up to one of `steps_per_octave` sizes per power of two (at most 1/steps waste),
    so a stream of passes of any size reuses a small set of captured graphs."""
    if n <= floor:
        return floor
    step = max(1, (1 << (n.bit_length() - 1)) // steps_per_octave)
    return -(-n // step) * step


@dataclass
class _Layer:
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    up_w: torch.Tensor
    up_b: torch.Tensor
    down_w: torch.Tensor
    down_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: torch.Tensor  # int32 [ids | positions | sentence of each token | cumulative lengths]
    output: torch.Tensor  # float32 (sentences, dim)


def pack(rows: Sequence[Sequence[int]], tokens: int, sentences: int, pad_id: int = 0) -> np.ndarray:
    """One int32 buffer for a pass: token ids, positions, the sentence each token belongs to and the
    cumulative lengths (FlashAttention's cu_seqlens), laid out for buckets of `tokens` x `sentences`.
    Slack tokens belong to the dummy sentence `sentences` (dropped by pooling), slack sentences are
    empty."""
    lens = np.fromiter((len(r) for r in rows), np.int32, len(rows))
    real = int(lens.sum())
    if real > tokens or len(rows) > sentences:
        raise ValueError(f"{real} tokens / {len(rows)} sentences do not fit {tokens} x {sentences}")
    buf = np.empty(3 * tokens + sentences + 1, np.int32)
    ids, pos, seg, cu = (
        buf[:tokens],
        buf[tokens : 2 * tokens],
        buf[2 * tokens : 3 * tokens],
        buf[3 * tokens :],
    )
    ids[:real] = np.fromiter(chain.from_iterable(rows), np.int32, real)
    ids[real:] = pad_id
    cu[0] = 0
    np.cumsum(lens, out=cu[1 : len(rows) + 1])
    cu[len(rows) + 1 :] = real
    starts = np.repeat(cu[: len(rows)], lens)
    pos[:real] = np.arange(real, dtype=np.int32) - starts
    pos[real:] = 0
    seg[:real] = np.repeat(np.arange(len(rows), dtype=np.int32), lens)
    seg[real:] = sentences
    return buf


def _state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors in float32, read as stored: no transformers import, no key renames
    between transformers versions."""
    if (model_dir / "model.safetensors").exists():
        from safetensors.torch import load_file

        return {k: v.float() for k, v in load_file(str(model_dir / "model.safetensors")).items()}
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(model_dir), dtype=torch.float32).state_dict()


class VarlenEngine:
    """BERT-family encoder (absolute positions) as a packed forward pass; mean pooling + L2 norm.

    Takes the whole call's passes at once (`embed_passes`), so the TextEncoder plans passes without
    a padding cap (`packed`). `graphs`: replay CUDA graphs (GPU only); `pad_to_longest` charges
    every pass the padded token count, to measure what padding costs (a benchmark lever only).
    """

    packed = True
    concurrent_calls = False

    def __init__(
        self,
        model_dir: Path,
        device: str = "cuda",
        dtype: str = "float16",
        graphs: bool = True,
        max_graphs: int = 256,
        graph_max_tokens: int = 16384,
        pad_to_longest: bool = False,
    ) -> None:
        config = json.loads((Path(model_dir) / "config.json").read_text())
        kind = config.get("model_type")
        if kind != "bert" or config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{model_dir}: the varlen engine runs BERT encoders, not {kind}")
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        self.on_gpu = self.device.type == "cuda"
        self.flash = self.on_gpu and self.dtype in (torch.float16, torch.bfloat16)
        self.graphs = graphs and self.flash
        self.pad_to_longest = pad_to_longest
        self.max_graphs = max_graphs
        self.graph_max_tokens = graph_max_tokens
        self.capture_s = 0.0  # time spent capturing graphs so far
        self.dim = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))  # BertConfig's defaults
        self.act = ACTIVATIONS[config.get("hidden_act", "gelu")]
        self.pad_id = int(config.get("pad_token_id") or 0)
        self._load_weights(_state_dict(Path(model_dir)))
        self.name = f"torch-varlen-{dtype}-{self.device.type}{'-graphs' if self.graphs else ''}"
        self._graphs: OrderedDict[tuple[int, int, int], _Graph] = OrderedDict()
        self._lock = threading.Lock()
        self._staging: list[torch.Tensor] = []  # two pinned int32 slots for packed passes
        self._copied: list[torch.cuda.Event] = []  # each slot's last host-to-device copy
        self._host_out: torch.Tensor | None = None
        if self.on_gpu:
            self.stream = torch.cuda.Stream(self.device)
            self._pool = torch.cuda.graph_pool_handle()
        self.forward: Callable[[torch.Tensor, int, int, int], torch.Tensor] = self._forward
        if self.graphs:
            self.warm_up()

    def warm_up(self, max_tokens: int = 512) -> None:
        """Capture the graphs of one-sentence passes now (about 40, well under a second), so that a
        first short request never waits for a capture; other shapes are captured on first use."""
        with torch.inference_mode(), torch.cuda.stream(self.stream):
            for tokens in sorted({bucket(n) for n in range(1, max_tokens + 1)}):
                self._graph((tokens, 1, -(-min(tokens, max_tokens) // FLASH_BLOCK) * FLASH_BLOCK))
        self.stream.synchronize()

    def _load_weights(self, sd: dict[str, torch.Tensor]) -> None:
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in sd else ""

        def w(key: str) -> torch.Tensor:
            return sd[prefix + key].to(self.device, self.dtype).contiguous()

        self.word = w("embeddings.word_embeddings.weight")
        # Token type is always 0 here: its row is folded into the position table (one add less).
        self.position = (
            sd[prefix + "embeddings.position_embeddings.weight"]
            + sd[prefix + "embeddings.token_type_embeddings.weight"][0]
        ).to(self.device, self.dtype)
        self.emb_ln = (w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"))
        self.layers = []
        i = 0
        while f"{prefix}encoder.layer.{i}.attention.self.query.weight" in sd:
            p = f"encoder.layer.{i}."
            att = p + "attention.self."
            self.layers.append(
                _Layer(
                    qkv_w=torch.cat([w(att + f"{n}.weight") for n in ("query", "key", "value")]),
                    qkv_b=torch.cat([w(att + f"{n}.bias") for n in ("query", "key", "value")]),
                    out_w=w(p + "attention.output.dense.weight"),
                    out_b=w(p + "attention.output.dense.bias"),
                    ln1_w=w(p + "attention.output.LayerNorm.weight"),
                    ln1_b=w(p + "attention.output.LayerNorm.bias"),
                    up_w=w(p + "intermediate.dense.weight"),
                    up_b=w(p + "intermediate.dense.bias"),
                    down_w=w(p + "output.dense.weight"),
                    down_b=w(p + "output.dense.bias"),
                    ln2_w=w(p + "output.LayerNorm.weight"),
                    ln2_b=w(p + "output.LayerNorm.bias"),
                )
            )
            i += 1

    # --- the forward pass -------------------------------------------------------------------------
    def _attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, longest: int
    ) -> torch.Tensor:
        """(tokens, heads, head_dim) -> same: each sentence attends only to itself."""
        if self.flash:
            return torch.ops.aten._flash_attention_forward(
                q, k, v, cu, cu, longest, longest, 0.0, False, False
            )[0]
        out = torch.empty_like(q)  # CPU / fp32: one SDPA call per sentence (tests, not speed)
        bounds = cu.tolist()
        for s, e in zip(bounds[:-1], bounds[1:], strict=False):
            if e > s:
                qs, ks, vs = (t[s:e].transpose(0, 1) for t in (q, k, v))
                out[s:e] = F.scaled_dot_product_attention(qs, ks, vs).transpose(0, 1)
        return out

    def _forward(self, inputs: torch.Tensor, tokens: int, sentences: int, longest: int) -> torch.Tensor:
        """Packed inputs (see `pack`) -> (sentences, dim) float32 unit vectors. Shape-static given
        the three ints, so it can be captured into a CUDA graph."""
        t, d, h = tokens, self.dim, self.heads
        ids, pos, seg = inputs[:t], inputs[t : 2 * t], inputs[2 * t : 3 * t]
        cu = inputs[3 * t :]
        x = F.embedding(ids, self.word) + F.embedding(pos, self.position)
        x = F.layer_norm(x, (d,), *self.emb_ln, self.eps)
        for layer in self.layers:
            qkv = F.linear(x, layer.qkv_w, layer.qkv_b).view(t, 3, h, d // h)
            att = self._attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, longest).reshape(t, d)
            x = F.layer_norm(
                F.linear(att, layer.out_w, layer.out_b) + x, (d,), layer.ln1_w, layer.ln1_b, self.eps
            )
            up = self.act(F.linear(x, layer.up_w, layer.up_b))
            x = F.layer_norm(
                F.linear(up, layer.down_w, layer.down_b) + x, (d,), layer.ln2_w, layer.ln2_b, self.eps
            )
        sums = torch.zeros(sentences + 1, d, dtype=torch.float32, device=x.device)
        sums.index_add_(0, seg, x.float())  # slack tokens land in row `sentences`, dropped below
        counts = (cu[1:] - cu[:-1]).clamp(min=1).unsqueeze(1)
        return F.normalize(sums[:sentences] / counts, dim=-1)

    # --- buckets, graphs, buffers -----------------------------------------------------------------
    def _key(self, lens: np.ndarray) -> tuple[tuple[int, int, int], bool]:
        """(tokens, sentences, longest) of a pass and whether it replays a graph. Graph shapes are
        rounded up to buckets; a pass over `graph_max_tokens` runs eagerly at its exact shape, since
        its kernels take longer than their launches and bucket slack would cost more than it saves."""
        longest = int(lens.max())
        real = len(lens) * longest if self.pad_to_longest else int(lens.sum())
        if not self.on_gpu:
            return (real, len(lens), longest), False
        longest = -(-longest // FLASH_BLOCK) * FLASH_BLOCK
        if self.graphs and bucket(real) <= self.graph_max_tokens:
            return (bucket(real), 1 << (len(lens) - 1).bit_length(), longest), True
        return (real, len(lens), longest), False

    def _graph(self, key: tuple[int, int, int]) -> _Graph:
        """The captured graph for `key` (captured now if new; least recently used ones evicted)."""
        if key in self._graphs:
            self._graphs.move_to_end(key)
            return self._graphs[key]
        t0 = time.perf_counter()
        tokens, sentences, _ = key
        inputs = torch.zeros(3 * tokens + sentences + 1, dtype=torch.int32, device=self.device)
        inputs[2 * tokens : 3 * tokens] = sentences  # all sentences empty, every token slack
        output = torch.empty(sentences, self.dim, dtype=torch.float32, device=self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(self.stream)
        with torch.cuda.stream(side):
            self.forward(inputs, *key)  # warm-up outside capture: kernels chosen, workspaces made
        self.stream.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=side):
            output.copy_(self.forward(inputs, *key))
        self.stream.wait_stream(side)
        self.capture_s += time.perf_counter() - t0
        self._graphs[key] = entry = _Graph(graph, inputs, output)
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return entry

    def _stage(self, slot: int, buf: np.ndarray) -> torch.Tensor:
        """`buf` in pinned slot `slot` (two slots: pass k+1 is packed while pass k's copy runs)."""
        while len(self._staging) <= slot:
            self._staging.append(torch.empty(0, dtype=torch.int32).pin_memory())
            self._copied.append(torch.cuda.Event())
        self._copied[slot].synchronize()  # the copy that last read this slot is done
        if self._staging[slot].numel() < buf.size:
            self._staging[slot] = torch.empty(2 * buf.size, dtype=torch.int32).pin_memory()
        pinned = self._staging[slot][: buf.size]
        pinned.numpy()[:] = buf
        return pinned

    def _pinned_out(self, n: int) -> torch.Tensor:
        if self._host_out is None or self._host_out.shape[0] < n:
            self._host_out = torch.empty(max(n, 1024), self.dim, dtype=torch.float32).pin_memory()
        return self._host_out[:n]

    # --- the engine interface ---------------------------------------------------------------------
    @torch.inference_mode()
    def embed_passes(self, rows: Sequence[Sequence[int]], passes: list[list[int]]) -> np.ndarray:
        """Embed `rows` (token ids) in the given passes; (len(rows), dim) float32 in `rows`' order."""
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        order = [i for batch in passes for i in batch]
        if not order:
            return out
        with self._lock:
            if not self.on_gpu:
                done = [self._run_cpu([rows[i] for i in batch]) for batch in passes]
                out[order] = np.concatenate(done)
                return out
            host = self._pinned_out(len(order))
            with torch.cuda.stream(self.stream):
                start = 0
                for k, batch in enumerate(passes):
                    sub = [rows[i] for i in batch]
                    key, graphed = self._key(np.fromiter((len(r) for r in sub), np.int32, len(sub)))
                    staged = self._stage(k % 2, pack(sub, key[0], key[1], self.pad_id))
                    if graphed:
                        entry = self._graph(key)
                        entry.inputs.copy_(staged, non_blocking=True)
                        self._record_copy(k % 2)
                        entry.graph.replay()
                        result = entry.output
                    else:
                        inputs = staged.to(self.device, non_blocking=True)
                        self._record_copy(k % 2)
                        result = self.forward(inputs, *key)
                    host[start : start + len(batch)].copy_(result[: len(batch)], non_blocking=True)
                    start += len(batch)
                self.stream.synchronize()
            out[order] = host.numpy()
        return out

    def _record_copy(self, slot: int) -> None:
        self._copied[slot].record(self.stream)

    def _run_cpu(self, sub: list[Sequence[int]]) -> np.ndarray:
        lens = np.fromiter((len(r) for r in sub), np.int32, len(sub))
        key, _ = self._key(lens)
        inputs = torch.from_numpy(pack(sub, key[0], key[1], self.pad_id))
        return self.forward(inputs, *key).numpy()

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """The padded-batch interface of every engine: one pass over the unpadded rows."""
        lengths = attention_mask.sum(axis=1)
        rows = [row[:n] for row, n in zip(input_ids.tolist(), lengths.tolist(), strict=True)]
        return self.embed_passes(rows, [list(range(len(rows)))])

    def use_compiled(self, dynamic: bool = True) -> None:
        """Run the forward through torch.compile (a benchmark lever; graphs still apply on top)."""
        self.forward = torch.compile(self._forward, dynamic=dynamic)
        self._graphs.clear()
