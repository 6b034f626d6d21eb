"""Build a ready `TextEncoder` from a catalog entry: resolve weights, pick and build the engine."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from infergraph.runtimes.artifact import Manifest, verify_artifact
from infergraph.runtimes.catalog import EncoderSpec, cache_root, fingerprint, resolve_model_dir
from infergraph.runtimes.engines.base import EncoderEngine
from infergraph.runtimes.text_encoder import BatchLimits, TextEncoder
from infergraph.runtimes.tokenizer import load_tokenizer

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

EngineKind = Literal["onnx", "torch"]


def split_threads(threads: int | None, lanes: int | None) -> tuple[int, int]:
    """(intra-op threads per forward pass, passes at once) for an engine that allows concurrent calls.

    By default one single-threaded pass per core: small passes gain little from intra-op threads.
    """
    cores = threads or os.cpu_count() or 1
    lanes = max(1, min(lanes or cores, cores))
    return max(1, cores // lanes), lanes


def default_device() -> str:
    """`INFERGRAPH_DEVICE` (e.g. `cuda`, `cuda:1`), else the CPU: a replica given a GPU by Ray sets it."""
    return os.environ.get("INFERGRAPH_DEVICE", "cpu")


GPU_PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def gpu_engine(model_dir: Path, device: str = "cuda", precision: str = "fp16") -> EncoderEngine:
    """The packed forward with CUDA graphs (docs/gpu.md) at `precision` (fp16 unless the GPU gate
    promoted another); models it cannot run (not BERT) fall back to the padded transformers forward."""
    from infergraph.runtimes.engines.varlen_engine import VarlenEngine

    if precision not in GPU_PRECISIONS:
        raise ValueError(f"GPU precision {precision!r}: expected one of {sorted(GPU_PRECISIONS)}")
    dtype = GPU_PRECISIONS[precision]
    try:
        return VarlenEngine(model_dir, device=device, dtype=dtype)
    except ValueError as e:
        from infergraph.runtimes.engines.torch_engine import TorchEngine

        log.info("%s; padded PyTorch forward instead", e)
        return TorchEngine(model_dir, device=device, dtype=dtype)


def build_engine(
    model_dir: Path,
    engine: EngineKind,
    name: str,
    threads: int | None = None,
    device: str = "cpu",
    cache: Path | None = None,
    gpu_precision: str = "fp16",
) -> EncoderEngine:
    if engine == "torch" and device.startswith("cuda"):
        return gpu_engine(model_dir, device, gpu_precision)
    if engine == "torch":
        from infergraph.runtimes.engines.torch_engine import TorchEngine

        return TorchEngine(model_dir, device=device, threads=threads)
    if engine == "onnx":
        from infergraph.runtimes.engines.onnx_engine import OnnxEngine, export_onnx

        out = (cache or cache_root()) / "onnx" / f"{name}-{fingerprint(model_dir)}"
        return OnnxEngine(export_onnx(model_dir, out), threads=threads)
    raise ValueError(f"unknown engine {engine!r}; expected 'onnx' or 'torch'")


def load_text_encoder(
    spec: EncoderSpec,
    engine: EngineKind = "onnx",
    threads: int | None = None,
    device: str | None = None,
    limits: BatchLimits | None = None,
    cache: Path | None = None,
    lanes: int | None = None,
    gpu_precision: str = "fp16",
) -> TextEncoder:
    """`threads`: cores to use; ONNX splits them into `lanes` concurrent passes (default: one per core).
    `device`: default `default_device()`; the torch engine on a GPU is the packed `VarlenEngine`, at
    `gpu_precision`."""
    device = device or default_device()
    model_dir = resolve_model_dir(spec, cache)
    tokenizer, pad_id = load_tokenizer(model_dir)
    lanes_used = 1
    if engine == "onnx":
        threads, lanes_used = split_threads(threads, lanes)
    built = build_engine(
        model_dir, engine, spec.name, threads=threads, device=device, cache=cache, gpu_precision=gpu_precision
    )
    log.info("loaded %s from %s on %s", spec.name, model_dir, built.name)
    return _text_encoder(spec, tokenizer, built, pad_id, limits, lanes_used)


def _text_encoder(
    spec: EncoderSpec,
    tokenizer: Tokenizer,
    engine: EncoderEngine,
    pad_id: int,
    limits: BatchLimits | None,
    lanes: int = 1,
) -> TextEncoder:
    return TextEncoder(
        tokenizer,
        engine,
        max_length=spec.max_length,
        limits=limits,
        prefix=spec.prefix,
        known_prefixes=spec.known_prefixes,
        pad_id=pad_id,
        lanes=lanes,
    )


def build_artifact_engine(
    artifact_dir: Path, manifest: Manifest, threads: int | None = None, device: str = "cpu"
) -> EncoderEngine:
    """The engine a verified artifact asks for (ONNX file, or transformers folder + optional INT8)."""
    if manifest.format == "onnx":
        from infergraph.runtimes.engines.onnx_engine import OnnxEngine

        return OnnxEngine(artifact_dir / manifest.weights, threads=threads)
    from infergraph.runtimes.engines.torch_engine import TorchEngine

    dtype = {"fp16": "float16", "bf16": "bfloat16"}.get(manifest.precision, "float32")
    return TorchEngine(
        artifact_dir / manifest.weights,
        device=device,
        dtype=dtype,
        threads=threads,
        dynamic_int8=manifest.torch_quantization == "dynamic_int8",
    )


def load_artifact_encoder(
    spec: EncoderSpec,
    artifact_dir: Path,
    threads: int | None = None,
    device: str = "cpu",
    limits: BatchLimits | None = None,
    lanes: int | None = None,
) -> tuple[TextEncoder, Manifest]:
    """A `TextEncoder` over an optimize artifact, after verifying every file's checksum."""
    manifest = verify_artifact(artifact_dir)
    if manifest.model != spec.name:
        raise ValueError(f"artifact {artifact_dir} is a variant of {manifest.model!r}, not {spec.name!r}")
    tokenizer, pad_id = load_tokenizer(artifact_dir)
    lanes_used = 1
    if manifest.format == "onnx":
        threads, lanes_used = split_threads(threads, lanes)
    built = build_artifact_engine(artifact_dir, manifest, threads=threads, device=device)
    log.info("loaded %s variant %s from %s on %s", spec.name, manifest.variant, artifact_dir, built.name)
    return _text_encoder(spec, tokenizer, built, pad_id, limits, lanes_used), manifest
