"""A model variant as files on disk: the contract between `optimize/` and the serving side.

An artifact is a folder with the weights (an ONNX file or a transformers folder), the tokenizer
files, and `manifest.json` naming the variant and the SHA-256 of every file. The optimize pipeline
writes it and registers it in MLflow; a deployment downloads it, verifies every checksum, and only
then loads it, so a truncated download or a swapped file never gets served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from infergraph.files import atomic_dir

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CHECKSUMS = "infergraph-checksums.json"  # a cache folder's record of its files (cached_folder)
# What a text-encoder artifact carries besides its weights, so it loads without the base folder.
TOKENIZER_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
)


class ArtifactError(RuntimeError):
    """The folder is not a complete, unmodified artifact."""


class Manifest(BaseModel):
    """What a variant is and how to run it; `files` maps each relative path to its SHA-256."""

    model_config = ConfigDict(extra="forbid")
    model: str  # the catalog name this variant serves as
    variant: str  # e.g. "onnx-int8", "distilled-l3-int8"
    format: Literal["onnx", "transformers"]
    precision: Literal["fp32", "fp16", "bf16", "int8"]
    target: Literal["cpu", "gpu"] = "cpu"  # fp16/bf16 are GPU targets: measured on CPU, marked so
    weights: str  # the ONNX file, or "." for a transformers folder
    torch_quantization: Literal["none", "dynamic_int8"] = "none"  # applied at load (PyTorch dynamic INT8)
    files: dict[str, str] = {}
    notes: str = ""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_artifact(out_dir: Path, manifest: Manifest, sources: Mapping[str, Path]) -> Path:
    """Copy `sources` (relative name -> file) into `out_dir` with a manifest of their checksums.

    Written beside the target and renamed (replacing an older `out_dir`), so a half-written artifact
    never looks finished.
    """
    if MANIFEST in sources:
        raise ArtifactError(f"{MANIFEST} is the artifact's own file; a source may not be named so")
    with atomic_dir(out_dir, replace=True) as tmp:
        files = {}
        for rel, src in sorted(sources.items()):
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            files[rel] = sha256_file(dst)
        done = manifest.model_copy(update={"files": files})
        (tmp / MANIFEST).write_text(done.model_dump_json(indent=2))
    return out_dir


def tokenizer_sources(model_dir: Path) -> dict[str, Path]:
    """The tokenizer and config files of a transformers folder that exist."""
    return {name: model_dir / name for name in TOKENIZER_FILES if (model_dir / name).exists()}


def read_manifest(artifact_dir: Path) -> Manifest:
    path = artifact_dir / MANIFEST
    if not path.exists():
        raise ArtifactError(f"{artifact_dir} has no {MANIFEST}: not an infergraph artifact")
    return Manifest.model_validate_json(path.read_text())


def verify_artifact(artifact_dir: Path) -> Manifest:
    """The manifest, after checking that every listed file exists with its recorded SHA-256."""
    manifest = read_manifest(artifact_dir)
    if not manifest.files:
        raise ArtifactError(f"{artifact_dir}/{MANIFEST} lists no files")
    for rel, expected in manifest.files.items():
        path = artifact_dir / rel
        if not path.is_file():
            raise ArtifactError(f"{artifact_dir}: {rel} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(
                f"{artifact_dir}: {rel} has SHA-256 {actual[:12]}…, the manifest says {expected[:12]}…"
            )
    if manifest.format == "onnx" and manifest.weights not in manifest.files:
        raise ArtifactError(f"{artifact_dir}: weights {manifest.weights!r} are not among the verified files")
    return manifest


# --------------------------------------------------------------------------- cache folders


def write_checksums(folder: Path, note: Mapping[str, Any] | None = None) -> None:
    """Record the SHA-256 of every file under `folder` (and `note`: what it was built from)."""
    files = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != CHECKSUMS
    }
    (folder / CHECKSUMS).write_text(json.dumps({"note": dict(note or {}), "files": files}, indent=2))


def checksums_hold(folder: Path, note: Mapping[str, Any] | None = None) -> bool:
    """True when `folder` has its checksum record, built from `note`, and every recorded file is
    there with its SHA-256."""
    try:
        record = json.loads((folder / CHECKSUMS).read_text())
    except (OSError, ValueError):
        return False
    files = record.get("files") or {}
    if record.get("note") != dict(note or {}) or not files:
        return False
    return all((folder / r).is_file() and sha256_file(folder / r) == digest for r, digest in files.items())


def cached_folder(out: Path, build: Callable[[Path], object], note: Mapping[str, Any] | None = None) -> Path:
    """`out` as `build(tmp)` fills it, built once and reused while its checksums hold.

    Every reuse checks the SHA-256 of every file first: a cache folder that was truncated, edited or
    swapped since (or built from another `note`) is rebuilt, never loaded. Built in a temporary folder
    and renamed, so an interrupted build never looks finished; when another process finished the same
    folder first, its copy is kept.
    """
    if checksums_hold(out, note):
        return out
    stale = out.exists()
    if stale:
        log.warning("%s: checksums do not hold (changed, incomplete or another source): rebuilding", out)
    with atomic_dir(out, replace=stale) as tmp:
        build(tmp)
        write_checksums(tmp, note)
    return out
