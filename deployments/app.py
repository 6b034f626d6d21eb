"""Application builder that `serve run configs/serve.yaml` imports: router + one deployment per model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from ray.serve import Application

from deployments.encoder import TextEncoderDeployment
from deployments.router import DEFAULT_MAX_BODY_BYTES, AdmissionConfig, Router
from deployments.tenants import load_tenants
from runtimes.catalog import load_catalog

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class AppArgs(BaseModel):
    """`args:` of the application in serve.yaml."""

    model_config = ConfigDict(extra="forbid")
    catalog: str = "configs/models.yaml"
    models: list[str] = ["all-MiniLM-L6-v2", "multilingual-e5-small"]
    engine: Literal["onnx", "torch"] = "onnx"
    tenants: str = "configs/tenants.yaml"
    admission: AdmissionConfig = AdmissionConfig()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


def project_path(path: str) -> Path:
    """Relative paths are the project's: replicas do not share the CLI's working dir."""
    return Path(path) if Path(path).is_absolute() else PROJECT_ROOT / path


def build_app(args: dict[str, Any]) -> Application:
    opts = AppArgs.model_validate(args or {})
    catalog = load_catalog(project_path(opts.catalog))
    tenants = load_tenants(project_path(opts.tenants))  # a bad file fails here, not in a replica
    handles = {}
    for name in opts.models:
        spec = catalog.get(name).model_dump()
        deployment = TextEncoderDeployment.options(name=name)  # type: ignore[attr-defined]
        handles[name] = deployment.bind(spec, engine=opts.engine)
    return Router.bind(  # type: ignore[attr-defined]
        handles,
        tenants=tenants.model_dump(mode="json"),
        admission=opts.admission.model_dump(),
        max_body_bytes=opts.max_body_bytes,
    )
