"""Application builder that `serve run configs/serve.yaml` imports: router + one deployment per model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from infergraph.deployments.admission import AdmissionConfig
from infergraph.deployments.context import BuildContext
from infergraph.deployments.encoder import encoder_arguments
from infergraph.deployments.kinds import KINDS
from infergraph.deployments.ledger import TenantLedger
from infergraph.deployments.router import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_UPLOAD_BYTES, Router
from infergraph.deployments.tenants import load_tenants, refuse_published_keys
from infergraph.paths import absolute_tracking_uri, launch_root, project_path
from infergraph.runtimes.catalog import Catalog, load_catalog


class RegistryArgs(BaseModel):
    """Where each encoder looks for its variant (deployments/variants.py)."""

    model_config = ConfigDict(extra="forbid")
    tracking_uri: str = "sqlite:///mlflow/mlflow.db"  # relative SQLite paths: the checkout's (launch_root)
    default_variant: str = "models:/{name}@production"  # `{name}`: the model; "base" skips the registry
    cache_dir: str | None = None  # downloaded variants; default ~/.cache/infergraph/registry
    alias_refresh_s: float = Field(30.0, ge=0)  # how often replicas check where an alias points; 0: never


class AppArgs(BaseModel):
    """`args:` of the application in serve.yaml."""

    model_config = ConfigDict(extra="forbid")
    catalog: str = "configs/models.yaml"
    models: list[str] = ["all-MiniLM-L6-v2", "multilingual-e5-small"]
    engine: Literal["onnx", "torch"] = "onnx"
    tenants: str = "configs/tenants.yaml"
    admission: AdmissionConfig = AdmissionConfig()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    body_timeout_s: float = Field(30.0, gt=0, description="a request body must arrive within this (408)")
    max_bodies_per_tenant: int = Field(
        32, ge=1, description="bodies one tenant may have arriving at once (429)"
    )
    model_admission: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per model: AdmissionConfig fields over `admission` and its kind's"
    )
    registry: RegistryArgs = RegistryArgs()
    allow_dev_keys: bool = Field(
        False, description="serve the published development keys on a non-loopback address too"
    )
    in_router: list[str] = Field(
        default_factory=list,
        description="text encoders the router also computes in its own process (deployments/in_router.py)",
    )
    shared_tenant_limits: bool = Field(
        True,
        description="rates and quotas per tenant across router replicas (a TenantLedger); off: per replica",
    )


def build_app(args: dict[str, Any]) -> Application:
    opts = AppArgs.model_validate(args or {})
    catalog = load_catalog(project_path(opts.catalog))
    tenants = load_tenants(project_path(opts.tenants))  # a bad file fails here, not in a replica
    refuse_published_keys(tenants, serve_http_host(), opts.allow_dev_keys)
    # Relative to the checkout, which is not where this code runs under `uv run serve run` (variants.py).
    root = launch_root()
    tracking_uri = absolute_tracking_uri(opts.registry.tracking_uri, root)
    cache = str(root / Path(opts.registry.cache_dir).expanduser()) if opts.registry.cache_dir else None
    registry = opts.registry
    ctx = BuildContext(opts.engine, tracking_uri, registry.default_variant, cache, registry.alias_refresh_s)
    bound: dict[str, Application] = {}
    for name in with_dependencies(catalog, opts.models):
        spec = catalog.get(name)
        bound[name] = KINDS[spec.kind].bind(spec, ctx, bound)
    in_router = {name: in_router_arguments(catalog, name, list(bound), ctx) for name in opts.in_router}
    ledger = None
    if opts.shared_tenant_limits:
        ledger = TenantLedger.bind(tenants.model_dump(mode="json"))  # type: ignore[attr-defined]
    return Router.bind(  # type: ignore[attr-defined]
        bound,
        {name: catalog.get(name).kind for name in bound},
        tenants=tenants.model_dump(mode="json"),
        admission=opts.admission.model_dump(),
        max_body_bytes=opts.max_body_bytes,
        max_upload_bytes=opts.max_upload_bytes,
        body_timeout_s=opts.body_timeout_s,
        max_bodies_per_tenant=opts.max_bodies_per_tenant,
        model_admission={
            name: {**KINDS[catalog.get(name).kind].admission, **opts.model_admission.get(name, {})}
            for name in bound
        },
        ledger=ledger,
        in_router=in_router,
    )


def in_router_arguments(catalog: Catalog, name: str, served: list[str], ctx: BuildContext) -> dict[str, Any]:
    """The arguments the router builds its copy of `name` with; only served text encoders qualify."""
    if name not in served:
        raise ValueError(f"in_router: {name!r} is not among the served models {served}")
    spec = catalog.get(name)
    if spec.kind != "text-encoder":
        raise ValueError(f"in_router: {name!r} is a {spec.kind}; only text encoders run in the router")
    # The router has no GPU: its copy runs ONNX on the CPU, whatever the deployments use. It follows
    # its deployment's card (the exact version served there), not the registry's alias.
    return encoder_arguments(spec, replace(ctx, engine="onnx", alias_refresh_s=0.0))


def with_dependencies(catalog: Catalog, models: list[str]) -> list[str]:
    """`models` plus the models they call (a hybrid re-ranker's encoder), callees first."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name not in ordered:
            spec = catalog.get(name)
            for callee in KINDS[spec.kind].calls(spec):
                visit(callee)
            ordered.append(name)

    for name in models:
        visit(name)
    return ordered


def serve_http_host() -> str | None:
    """Where Serve's HTTP ingress listens (`http_options.host`), asked of the running controller (the
    builder runs as a task of the cluster); None when there is none to ask (a build outside Serve)."""
    import ray

    if not ray.is_initialized():  # a build outside a cluster (tests, checks): asking would start Ray
        return None
    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client(raise_if_no_controller_running=False)
    except Exception:  # no Serve controller: nothing is listening anywhere yet
        return None
    return None if client is None else str(client.http_config.host)
