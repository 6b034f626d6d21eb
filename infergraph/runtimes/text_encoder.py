"""Text-encoder runtime: tokenize, bucket by length, run the engine in batches, restore order.

Padding is the hidden tax on CPU: a batch padded to its longest sentence can cost several times
the FLOPs of its real tokens. So sentences are sorted by token count and cut into forward passes
bounded in sequences, in padded tokens and in padding per real token. On a CPU a larger batch buys
little (the weights stay in cache either way), so a short pass with no padding beats a long padded one.

Passes run on `lanes` threads at once when the engine allows concurrent calls (ONNX Runtime does):
one single-threaded pass per core keeps every core busy without intra-op thread hand-offs, which
on the 2-core reference box measured ~15-30% more sentences/s than one 2-thread pass at a time.

On a GPU the engine (`engines.varlen_engine.VarlenEngine`) takes the planned passes itself
(`embed_passes`): it packs them without padding, so they are planned by real tokens alone, and it
overlaps packing with the GPU's work on the previous pass (docs/gpu.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from infergraph.runtimes.engines.base import EncoderEngine


class InputTooLongError(ValueError):
    """An input has more tokens than the model accepts (the caller answers 400)."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(
            f"input[{index}] has {tokens} tokens; this model accepts at most {limit} tokens per input"
        )
        self.index, self.tokens, self.limit = index, tokens, limit


@dataclass(frozen=True)
class BatchLimits:
    """Upper bounds on one forward pass.

    Small, length-sorted forward passes win on CPU: on the reference 2-core box MiniLM ran at
    ~190 sentences/s with 16 sequences / 512 padded tokens per pass vs ~80 with 32 unsorted. With
    padding capped at 15% of the real tokens and two lanes as well, the INT8 variant went from ~200
    to ~270-300 sentences/s on 32-sentence calls (AVX2 box; `bench/forward_sweep.py --variant`).
    """

    max_sequences: int = 16
    max_padded_tokens: int = 512
    max_padding_ratio: float = 1.15  # padded tokens / real tokens in one pass (1.0: equal lengths only)


def _cut(row: list[int], special: list[int], limit: int, direction: str) -> list[int]:
    """`row` cut to `limit` tokens from its end ("right") or start ("left"), keeping the special
    tokens that open and close it ([CLS] ... [SEP], <s> ... </s>)."""
    lead = next((i for i, s in enumerate(special) if not s), len(row))
    trail = next((i for i, s in enumerate(reversed(special)) if not s), 0)
    body = row[lead : len(row) - trail]
    keep = max(0, limit - lead - trail)
    kept = body[:keep] if direction == "right" else body[len(body) - keep :]
    return row[:lead] + kept + row[len(row) - trail :]


def plan_batches(lengths: Sequence[int], limits: BatchLimits, packed: bool = False) -> list[list[int]]:
    """Group indices into forward passes: sorted by length, each within `limits`.

    `packed`: the engine runs a pass with no padding (`VarlenEngine`), so `max_padded_tokens`
    bounds the real tokens of a pass and the padding ratio does not apply. Returns lists of
    indices into `lengths`; every index appears exactly once.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0  # real tokens in `current`
    for i in order:
        longest = lengths[i]  # sorted ascending: the newcomer is the longest so far
        padded = real + longest if packed else (len(current) + 1) * longest
        if current and (
            len(current) + 1 > limits.max_sequences
            or padded > limits.max_padded_tokens
            or (not packed and padded > limits.max_padding_ratio * (real + longest))
        ):
            batches.append(current)
            current, real = [], 0
        current.append(i)
        real += longest
    if current:
        batches.append(current)
    return batches


def run_passes(
    passes: list[list[int]],
    lengths: Sequence[int],
    forward: Callable[[list[int]], None],
    pool: ThreadPoolExecutor | None,
) -> None:
    """Run `forward` on every pass: in order without a pool, else on its lanes, longest passes first
    so the lanes finish together. An engine error is re-raised here."""
    if pool is None or len(passes) <= 1:
        for batch in passes:
            forward(batch)
        return
    passes = sorted(passes, key=lambda b: -len(b) * max(lengths[i] for i in b))
    for done in pool.map(forward, passes):
        del done


class TextEncoder:
    """Sentence embeddings from a tokenizer and an `EncoderEngine`."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        engine: EncoderEngine,
        max_length: int,
        limits: BatchLimits | None = None,
        prefix: str = "",
        known_prefixes: Sequence[str] = (),
        pad_id: int = 0,
        lanes: int = 1,
    ) -> None:
        self.tokenizer = tokenizer
        self.engine = engine
        self.max_length = max_length
        self.limits = limits or BatchLimits()
        self.prefix = prefix
        self.known_prefixes = tuple(known_prefixes)
        self.pad_id = pad_id
        # Forward passes run at once; only for engines whose `embed` may be called concurrently.
        self.lanes = max(1, lanes) if getattr(engine, "concurrent_calls", False) else 1
        self._pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="forward") if self.lanes > 1 else None
        # Inputs longer than this many characters cannot fit in max_length tokens for any
        # tokenizer we serve; refusing them early keeps a huge string from costing tokenizer time.
        self.max_chars = max_length * 64

    @property
    def dim(self) -> int:
        return self.engine.dim

    def _with_prefix(self, text: str) -> str:
        if not self.prefix or text.startswith(self.known_prefixes or (self.prefix,)):
            return text
        return self.prefix + text

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with special tokens; raises InputTooLongError for an input over max_length."""
        for i, text in enumerate(texts):
            if len(text) > self.max_chars:
                raise InputTooLongError(i, len(text), self.max_length)
        prepared = [self._with_prefix(t) for t in texts]
        ids = [enc.ids for enc in self.tokenizer.encode_batch(prepared, add_special_tokens=True)]
        for i, row in enumerate(ids):
            if len(row) > self.max_length:
                raise InputTooLongError(i, len(row), self.max_length)
        return ids

    def tokenize_truncating(
        self, texts: Sequence[str], direction: Literal["right", "left"] = "right"
    ) -> tuple[list[list[int]], int]:
        """Token ids cut to max_length where needed (the end, or the start for "left"), keeping the
        special tokens at both ends; returns the ids and how many inputs were cut."""
        keep_chars = slice(None, self.max_chars) if direction == "right" else slice(-self.max_chars, None)
        prepared = [self._with_prefix(t if len(t) <= self.max_chars else t[keep_chars]) for t in texts]
        encodings = self.tokenizer.encode_batch(prepared, add_special_tokens=True)
        ids, cut = [], 0
        for text, enc in zip(texts, encodings, strict=True):
            row = enc.ids
            if len(row) > self.max_length or len(text) > self.max_chars:
                cut += 1
            if len(row) > self.max_length:
                row = _cut(row, enc.special_tokens_mask, self.max_length, direction)
            ids.append(row)
        return ids, cut

    def encode_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Embed already tokenized inputs, in their original order."""
        lengths = [len(row) for row in ids]
        embed_passes = getattr(self.engine, "embed_passes", None)
        if embed_passes is not None:  # the engine packs and pipelines the passes itself (GPU)
            return embed_passes(
                ids, plan_batches(lengths, self.limits, packed=getattr(self.engine, "packed", False))
            )
        out = np.empty((len(ids), self.dim), dtype=np.float32)

        def forward(batch: list[int]) -> None:
            width = max(lengths[i] for i in batch)
            input_ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for r, i in enumerate(batch):
                input_ids[r, : lengths[i]] = ids[i]
                mask[r, : lengths[i]] = 1
            out[batch] = self.engine.embed(input_ids, mask)

        run_passes(plan_batches(lengths, self.limits), lengths, forward, self._pool)
        return out

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed raw strings: (len(texts), dim) float32, L2-normalised."""
        return self.encode_ids(self.tokenize(texts))
