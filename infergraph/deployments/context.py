"""What every kind's `bind` gets from the application's arguments (deployments/app.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class BuildContext:
    engine: Literal["onnx", "torch"]  # encoders' engine for the base model
    tracking_uri: str  # the MLflow registry variants come from
    default_variant: str  # `{name}` is the model's name; "base" skips the registry
    registry_cache: str | None
    alias_refresh_s: float
