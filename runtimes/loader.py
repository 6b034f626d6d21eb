"""Build a ready `TextEncoder` from a catalog entry: resolve weights, pick and build the engine."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from runtimes.catalog import ModelSpec, cache_root, fingerprint, resolve_model_dir
from runtimes.engines.base import EncoderEngine
from runtimes.text_encoder import BatchLimits, TextEncoder
from runtimes.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

EngineKind = Literal["onnx", "torch"]


def build_engine(
    model_dir: Path,
    engine: EngineKind,
    name: str,
    threads: int | None = None,
    device: str = "cpu",
    cache: Path | None = None,
) -> EncoderEngine:
    if engine == "torch":
        from runtimes.engines.torch_engine import TorchEngine

        return TorchEngine(model_dir, device=device, threads=threads)
    if engine == "onnx":
        from runtimes.engines.onnx_engine import OnnxEngine, export_onnx

        out = (cache or cache_root()) / "onnx" / f"{name}-{fingerprint(model_dir)}"
        return OnnxEngine(export_onnx(model_dir, out), threads=threads)
    raise ValueError(f"unknown engine {engine!r}; expected 'onnx' or 'torch'")


def load_text_encoder(
    spec: ModelSpec,
    engine: EngineKind = "onnx",
    threads: int | None = None,
    device: str = "cpu",
    limits: BatchLimits | None = None,
    cache: Path | None = None,
) -> TextEncoder:
    model_dir = resolve_model_dir(spec, cache)
    tokenizer, pad_id = load_tokenizer(model_dir)
    built = build_engine(model_dir, engine, spec.name, threads=threads, device=device, cache=cache)
    log.info("loaded %s from %s on %s", spec.name, model_dir, built.name)
    return TextEncoder(
        tokenizer,
        built,
        max_length=spec.max_length,
        limits=limits,
        prefix=spec.prefix,
        known_prefixes=spec.known_prefixes,
        pad_id=pad_id,
    )
