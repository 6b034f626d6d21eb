"""MLflow: one experiment per model, one run per variant, registered versions and the alias.

The store is local by default (SQLite + a folder of artifacts), so `mlflow ui` on this machine
shows every comparison; point `tracking_uri` at a server to share it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from infergraph.optimize.gate import VariantResult
from infergraph.paths import sqlite_file

log = logging.getLogger(__name__)


def connect(tracking_uri: str, artifact_root: Path) -> MlflowClient:
    artifact_root.mkdir(parents=True, exist_ok=True)
    db = sqlite_file(tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def experiment_for(client: MlflowClient, model: str, artifact_root: Path) -> str:
    """The model's experiment, created with its artifacts under `artifact_root/<model>`."""
    return named_experiment(client, f"optimize/{model}", artifact_root / model, {"model": model})


def named_experiment(
    client: MlflowClient, name: str, artifacts: Path, tags: dict[str, str] | None = None
) -> str:
    """The experiment `name`, created with its artifacts under `artifacts` when it does not exist."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    return str(client.create_experiment(name, artifact_location=artifacts.resolve().as_uri(), tags=tags))


def log_variant(result: VariantResult, report: dict[str, Any]) -> str:
    """A nested run for one variant (inside the active pipeline run); returns the run id."""
    parent = mlflow.active_run()
    experiment = parent.info.experiment_id if parent else None  # nested runs do not inherit it
    with mlflow.start_run(run_name=result.label, nested=True, experiment_id=experiment) as run:
        mlflow.set_tags({"variant": result.variant, "precision": result.precision, "target": result.target})
        mlflow.log_params({"variant": result.variant, "precision": result.precision, **result.params})
        mlflow.log_metrics({**result.metrics, "quality_pct_of_fp32": result.quality_pct})
        mlflow.log_dict(report, "evaluation.json")
        if result.notes:
            mlflow.set_tag("mlflow.note.content", result.notes)
        if result.artifact is not None:
            mlflow.log_artifacts(str(result.artifact), artifact_path="model")
        return str(run.info.run_id)


def register(client: MlflowClient, result: VariantResult, run_id: str) -> str:
    """A registry version of the run's `model` folder, tagged with what it is and how it scored."""
    tags = {
        "variant": result.variant,
        "precision": result.precision,
        "target": result.target,
        "quality_pct_of_fp32": f"{result.quality_pct:.2f}",
        "throughput_b32": f"{result.metrics.get('throughput_b32', 0):.1f}",
    }
    return register_version(
        client, result.model, run_id, tags, "variants from `python -m infergraph.optimize`"
    )


def register_version(
    client: MlflowClient, model: str, run_id: str, tags: dict[str, str], description: str
) -> str:
    """A new version of registered model `model` (created with `description` the first time) from the
    run's `model` artifact folder; returns the version number."""
    try:
        client.create_registered_model(model, description=description)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/model"
    return str(client.create_model_version(model, source=source, run_id=run_id, tags=tags).version)


def flat_params(evaluation: dict[str, Any]) -> dict[str, str]:
    """An evaluation's scalar settings as MLflow params (lists stay in its JSON artifact)."""
    return {k: str(v) for k, v in evaluation.items() if not isinstance(v, list)}


def promote(client: MlflowClient, model: str, alias: str, version: str, why: str) -> None:
    client.set_registered_model_alias(model, alias, version)
    client.set_model_version_tag(model, version, f"{alias}_reason", why)
    log.info("models:/%s@%s -> version %s (%s)", model, alias, version, why)


def log_summary(files: list[Path], summary: dict[str, Any]) -> None:
    """The pipeline run's own artifacts: the table and the plot, and the raw rows."""
    for path in files:
        mlflow.log_artifact(str(path))
    mlflow.log_text(json.dumps(summary, indent=2, default=str), "summary.json")


def log_gpu_results(client: MlflowClient, rows: list[dict[str, Any]], artifact_root: Path) -> list[str]:
    """Runs for GPU speed figures (`python -m infergraph.optimize.gpu`), labelled with the device;
    each row is also the run's `model/gpu.json` (what a registered GPU version points at). Returns
    the run ids, in the rows' order."""
    run_ids = []
    for row in rows:
        experiment = experiment_for(client, str(row["model"]), artifact_root)
        name = f"{row.get('variant', 'base')} {row['precision']} on {row['device']}"
        with mlflow.start_run(experiment_id=experiment, run_name=name) as run:
            mlflow.set_tags(
                {"target": "gpu", "device": str(row["device"]), "precision": str(row["precision"])}
            )
            mlflow.log_metrics({k: float(v) for k, v in row.items() if isinstance(v, int | float)})
            mlflow.log_dict(row, "model/gpu.json")
            run_ids.append(run.info.run_id)
    return run_ids
