"""Which variant of a model a deployment serves: the base model, a registry entry, or a local artifact.

`resolve_variant` turns what `serve.yaml` asks for into a verified artifact folder on local disk:

- `base`: the catalog's base model (no artifact);
- `models:/<name>@<alias>` or `models:/<name>/<version>`: a version in the MLflow model registry,
  downloaded once into `<cache>/<name>/v<version>-<source key>` (into a temporary folder, renamed
  when complete and verified; the key keeps versions of two different stores apart);
- any other string: a local artifact folder (relative paths are the project's).

Every artifact's checksums are verified before it is returned; a folder that fails is never loaded.
When the *default* variant (`models:/{name}@production`) has no registry entry (no store, no such
model, no such alias), the base model is served with a reason that says so; a variant that was asked
for explicitly and cannot be resolved raises `VariantError`.

MLflow is imported only when a registry URI is actually resolved against an existing store: its
import costs seconds, and the shipped configuration (no store yet) must start fast. The tracking
store is never created here: a missing SQLite file means "no registry".
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from infergraph.aliases import PRODUCTION, PRODUCTION_GPU
from infergraph.files import move_into_place, scratch_dir
from infergraph.paths import absolute_tracking_uri, launch_root, sqlite_file
from infergraph.runtimes.artifact import ArtifactError, Manifest, verify_artifact
from infergraph.runtimes.catalog import cache_root
from infergraph.runtimes.sources import MODEL_NAME_PATTERN

log = logging.getLogger("ray.serve")

BASE = "base"
MODELS_SCHEME = "models:/"

VariantSource = Literal["registry", "path", "base"]


class VariantError(RuntimeError):
    """A requested variant cannot be served: unknown registry entry, bad artifact, failed checksum."""


class _NoRegistryEntry(VariantError):
    """The registry has no such entry (store, model, alias or version): the default falls back to base."""


@dataclass(frozen=True)
class ResolvedVariant:
    """A variant ready to load (or the base model), and how it was found."""

    requested: str  # what the configuration asked for
    source: VariantSource
    artifact_dir: Path | None = None  # None for the base model
    uri: str | None = None  # models:/<name>/<version> for registry variants
    version: str | None = None
    manifest: Manifest | None = None
    reason: str = ""  # for humans: why this variant (and why base, when it fell back)

    @property
    def variant(self) -> str:
        return self.manifest.variant if self.manifest else BASE

    @property
    def precision(self) -> str:
        return self.manifest.precision if self.manifest else "fp32"


def registry_cache_dir() -> Path:
    """Where registry downloads are kept unless `registry.cache_dir` says otherwise."""
    return cache_root() / "registry"


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`models:/name@alias` -> (name, alias, None); `models:/name/3` -> (name, None, "3")."""
    rest = uri[len(MODELS_SCHEME) :].strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        if re.fullmatch(MODEL_NAME_PATTERN, name) and re.fullmatch(MODEL_NAME_PATTERN, alias):
            return name, alias, None
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if re.fullmatch(MODEL_NAME_PATTERN, name) and version.isdigit():
            return name, None, version
    raise VariantError(
        f"{uri!r} is not a registry variant: expected models:/<name>@<alias> or models:/<name>/<version>, "
        "the name and alias one path segment each (letters, digits, '.', '_', '-')"
    )


def alias_version(uri: str, tracking_uri: str) -> str | None:
    """The version `models:/<name>@<alias>` points at now; None when the store, model or alias is not
    there (or `uri` names no alias). Cheap enough to ask every few seconds: nothing is downloaded."""
    try:
        name, alias, _ = parse_models_uri(uri)
    except VariantError:
        return None
    tracking_uri = absolute_tracking_uri(tracking_uri)
    db = sqlite_file(tracking_uri)
    if alias is None or (db is not None and not db.is_file()):
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def promoted_tags(name: str, tracking_uri: str, alias: str = PRODUCTION) -> tuple[dict[str, str] | None, str]:
    """The tags of the version `models:/<name>@<alias>` points at (kinds whose variants are settings,
    not files: the LLM's precision, the speech engine), and where they came from; None and the
    reason when there is no such entry or the store cannot be read (the model then serves its
    catalog settings: an unreadable store must not stop it from serving)."""
    requested = f"models:/{name}@{alias}"
    try:
        version = alias_version(requested, tracking_uri) if tracking_uri else None
        if version is None:
            return None, f"no registry entry {requested}"
        from mlflow import MlflowClient

        uri = absolute_tracking_uri(tracking_uri)
        tags = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(name, version).tags
    except Exception as exc:
        return None, f"registry not readable ({exc})"
    return dict(tags), f"models:/{name}/{version}"


GPU_ALIAS = PRODUCTION_GPU  # `python -m infergraph.optimize --gpu-results` moves it (config: gpu_gate)


def promoted_gpu_precision(name: str, tracking_uri: str) -> tuple[str | None, str]:
    """The precision the GPU gate promoted for `name` (`models:/<name>@production-gpu`, a version
    tagged target gpu), and where it came from; None when there is none."""
    tags, reason = promoted_tags(name, tracking_uri, alias=GPU_ALIAS)
    if tags and tags.get("target") == "gpu" and tags.get("precision"):
        return tags["precision"], reason
    return None, reason if not tags else f"{reason} is not a GPU version"


def resolve_variant(
    spec_name: str,
    variant: str,
    tracking_uri: str,
    cache: Path | None = None,
    allow_base_fallback: bool = False,
) -> ResolvedVariant:
    """What to serve for `variant`; raises `VariantError` when it cannot be served.

    `allow_base_fallback` is for the configured default only: a registry with no entry for it then
    gives the base model with the reason, instead of an error.
    """
    if variant == BASE:
        return ResolvedVariant(requested=variant, source="base", reason="the base model was requested")
    if variant.startswith(MODELS_SCHEME):
        try:
            return _resolve_registry(spec_name, variant, absolute_tracking_uri(tracking_uri), cache)
        except _NoRegistryEntry as exc:
            if not allow_base_fallback:
                raise
            reason = f"no registry entry {variant} ({exc}); serving the base model"
            return ResolvedVariant(requested=variant, source="base", reason=reason)
    path = Path(variant).expanduser()
    path = path if path.is_absolute() else launch_root() / path
    if not path.is_dir():
        raise VariantError(f"variant {variant!r}: {path} is not a folder (nor 'base' nor a models:/ URI)")
    manifest = _verified(spec_name, variant, path)
    return ResolvedVariant(
        requested=variant,
        source="path",
        artifact_dir=path,
        manifest=manifest,
        reason=f"local artifact {path} ({manifest.variant})",
    )


def _verified(spec_name: str, requested: str, artifact_dir: Path) -> Manifest:
    try:
        manifest = verify_artifact(artifact_dir)
    except (ArtifactError, ValueError) as exc:  # ValueError: a manifest that does not parse
        raise VariantError(f"variant {requested}: artifact failed verification, not loaded: {exc}") from exc
    if manifest.model != spec_name:
        raise VariantError(f"variant {requested} is an artifact of {manifest.model!r}, not of {spec_name!r}")
    return manifest


def _resolve_registry(
    spec_name: str, requested: str, tracking_uri: str, cache: Path | None
) -> ResolvedVariant:
    name, alias, version = parse_models_uri(requested)
    db = sqlite_file(tracking_uri)
    if db is not None and not db.is_file():  # opening it would create an empty store
        raise _NoRegistryEntry(f"tracking store {db} does not exist")

    from mlflow import MlflowClient  # slow import: only when a registry is really there
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise _NoRegistryEntry(f"no registered model {name!r} in {tracking_uri}") from exc
        raise VariantError(f"variant {requested}: registry {tracking_uri} failed: {exc}") from exc
    if alias is not None:
        aliases: dict[str, Any] = dict(registered.aliases or {})
        if alias not in aliases:
            known = ", ".join(sorted(aliases)) or "none"
            raise _NoRegistryEntry(f"registered model {name!r} has no alias {alias!r} (aliases: {known})")
        version = str(aliases[alias])
    assert version is not None
    try:
        model_version = client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise _NoRegistryEntry(f"registered model {name!r} has no version {version}") from exc
        raise VariantError(f"variant {requested}: registry {tracking_uri} failed: {exc}") from exc

    download_uri = client.get_model_version_download_uri(name, version)
    key = hashlib.sha256(f"{model_version.source}|{model_version.run_id}".encode()).hexdigest()[:10]
    target = (cache or registry_cache_dir()) / name / f"v{version}-{key}"
    uri = f"{MODELS_SCHEME}{name}/{version}"
    if target.is_dir():
        manifest = _verified(spec_name, requested, target)  # a modified cache is an error, not a re-download
        how = "cached"
    else:
        manifest = _download(spec_name, requested, download_uri, tracking_uri, target)
        how = "downloaded"
    via = f"{requested} -> " if alias is not None else ""
    return ResolvedVariant(
        requested=requested,
        source="registry",
        artifact_dir=target,
        uri=uri,
        version=version,
        manifest=manifest,
        reason=f"{via}{uri} ({manifest.variant}, {how} to {target})",
    )


def _download(spec_name: str, requested: str, download_uri: str, tracking_uri: str, target: Path) -> Manifest:
    """Download into a temporary sibling, verify, then rename: the cache only holds verified artifacts."""
    from mlflow.artifacts import download_artifacts

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in replica logs
    with scratch_dir(target) as tmp:
        try:
            local = Path(
                download_artifacts(artifact_uri=download_uri, dst_path=str(tmp), tracking_uri=tracking_uri)
            )
        except Exception as exc:  # MLflow raises several kinds (missing files, repository errors)
            raise VariantError(f"variant {requested}: download of {download_uri} failed: {exc}") from exc
        manifest = _verified(spec_name, requested, local)
        if not move_into_place(local, target):  # another replica finished first: use its copy, verified
            manifest = _verified(spec_name, requested, target)
    log.info("downloaded %s (%s) from %s into %s", requested, manifest.variant, download_uri, target)
    return manifest
