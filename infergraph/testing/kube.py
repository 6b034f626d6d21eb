"""Rendering and checking the `k8s/` kustomize tree offline: Debian's `kubectl` renders it, JSON
schemas check it (KubeRay's CRDs copied under `k8s/crds/`, Kubernetes' own from kubernetes-validate)."""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from infergraph.debian import ensure_command
from infergraph.paths import PROJECT_ROOT

K8S = PROJECT_ROOT / "k8s"
CRDS = K8S / "crds"
KUBERNETES_VERSION = "1.32"  # the schemas core kinds are checked against (Debian's kubectl's own)
PACKAGES = ("kubectl",)


@functools.cache
def ensure_kubectl() -> str:
    """The path of a `kubectl` whose built-in kustomize reads these kustomizations (v5: kubectl 1.27+),
    installing the `kubectl` package first where we may (root with apt-get: the test command sets up a
    fresh machine by itself). Debian's own `kubernetes-client` (1.20, kustomize v2) is too old."""
    found = ensure_command("kubectl", PACKAGES)
    if not found:
        raise RuntimeError(
            f"kubectl renders the kustomize tree: apt-get install {' '.join(PACKAGES)} "
            "(kubectl 1.27 or newer, e.g. from pkgs.k8s.io)"
        )
    version = subprocess.run([found, "version", "--client"], capture_output=True, text=True).stdout
    match = re.search(r"Kustomize Version: v(\d+)", version)
    if not match or int(match.group(1)) < 5:
        raise RuntimeError(f"{found} is too old for k8s/ (needs kustomize v5, kubectl 1.27+): {version!r}")
    return found


def render(path: str | Path) -> list[dict[str, Any]]:
    """The manifests `kubectl kustomize <path>` gives (path relative to the project)."""
    path = Path(path) if Path(path).is_absolute() else PROJECT_ROOT / path
    out = subprocess.run(
        [ensure_kubectl(), "kustomize", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _closed(schema: Any) -> Any:
    """`schema` with unknown fields refused where the API server would refuse them: kubectl's strict
    field validation (its default) rejects fields a structural schema does not declare."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _closed(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(kind: str, version: str = "v1") -> Any:
    """A jsonschema validator for KubeRay's `kind` (RayService, RayCluster) at `version`."""
    import jsonschema

    name = {"RayService": "rayservices", "RayCluster": "rayclusters"}[kind]
    with open(CRDS / f"ray.io_{name}.yaml") as f:
        crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = _closed(served["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def validate_crd(doc: dict[str, Any]) -> None:
    """Raises jsonschema.ValidationError when `doc` does not fit its KubeRay CRD."""
    group, version = doc["apiVersion"].split("/")
    assert group == "ray.io", doc["apiVersion"]
    crd_validator(doc["kind"], version).validate(doc)


def validate_core(doc: dict[str, Any]) -> None:
    """Raises when `doc` does not fit Kubernetes' own schema (strict: unknown fields refused)."""
    import kubernetes_validate

    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
