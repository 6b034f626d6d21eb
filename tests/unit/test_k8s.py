"""The KubeRay manifests under `k8s/`, offline: what `kubectl apply -k` would send, checked without a cluster.

- drift: the generated parts of `k8s/` (serveConfigV2, catalog, development keys, container environment)
  are what `python -m infergraph.deploy.kuberay` makes from `configs/` now;
- every manifest of every overlay, as `kubectl kustomize` renders it, validates: the RayService
  against KubeRay's CRD schema (copied under `k8s/crds/`, with unknown fields refused as kubectl's strict
  field validation does), core kinds against Kubernetes' own JSON schemas (kubernetes-validate, strict).
  The Prometheus Operator's CRDs are not available offline, so PodMonitor and ServiceMonitor are checked
  structurally (apiVersion, kind, selector, endpoints) and by what they must match in the other manifests;
- the serveConfigV2 parses with Ray Serve's own schema and infergraph's `AppArgs`, its models are in the
  mounted catalog, and the paths and URIs it names are where the manifests put them.
"""

from __future__ import annotations

import base64
import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from infergraph.deploy import kuberay
from infergraph.deployments.app import AppArgs, with_dependencies
from infergraph.deployments.tenants import TenantsConfig
from infergraph.paths import PROJECT_ROOT
from infergraph.runtimes.catalog import Catalog
from infergraph.testing import kube

OVERLAYS = ["base", "overlays/cpu", "overlays/gpu", "overlays/postgres"]
CORE_KINDS = {"Namespace", "Deployment", "Service", "PersistentVolumeClaim", "Secret", "ConfigMap"}
CORE_KINDS |= {"ResourceQuota"}
MONITOR_KINDS = {"PodMonitor", "ServiceMonitor"}
_rendered: dict[str, list[dict[str, Any]]] = {}


def rendered(overlay: str) -> list[dict[str, Any]]:
    if overlay not in _rendered:
        _rendered[overlay] = kube.render(f"k8s/{overlay}")
    return _rendered[overlay]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def ray_templates(rayservice: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Pod template per Ray group: 'head' and each worker group's name."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = {"head": cluster["headGroupSpec"]["template"]}
    groups.update({g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]})
    return groups


def serve_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in secret.get("data", {}).items()}


def mount_of(template: dict[str, Any], volume_of: dict[str, str], directory: str) -> dict[str, Any]:
    """The volume mounted at `directory` in the template's first container, checked to be `volume_of`
    (e.g. {"configMap": "infergraph-catalog"})."""
    spec = template["spec"]
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == directory]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    (source, name), *_ = volume_of.items()
    assert source in volume, f"{directory} is not a {source}"
    assert volume[source].get("name", volume[source].get("secretName")) == name
    return volume


# -- drift ------------------------------------------------------------------------------------------------


def test_generated_parts_of_k8s_match_the_configs():
    stale = kuberay.drift()
    assert not stale, f"{stale} differ from configs/: run `uv run python -m infergraph.deploy.kuberay`"


@pytest.fixture()
def checkout_copy(tmp_path: Path) -> Path:
    """configs/ and k8s/ of this checkout in a scratch folder, to change a config and look for drift."""
    for folder in ("configs", "k8s"):
        shutil.copytree(PROJECT_ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("crds"))
    return tmp_path


def test_a_changed_serve_yaml_is_drift_until_regenerated(checkout_copy: Path):
    assert kuberay.drift(checkout_copy) == []
    serve = checkout_copy / "configs/serve.yaml"
    serve.write_text(serve.read_text().replace("max_ongoing_requests: 512", "max_ongoing_requests: 500"))
    assert kuberay.drift(checkout_copy) == ["k8s/base/generated/serve-config.yaml"]
    assert kuberay.main(["--check", "--root", str(checkout_copy)]) == 1
    assert kuberay.main(["--root", str(checkout_copy)]) == 0  # regenerate
    assert kuberay.main(["--check", "--root", str(checkout_copy)]) == 0
    patch = yaml.safe_load((checkout_copy / "k8s/base/generated/serve-config.yaml").read_text())
    assert "max_ongoing_requests: 500" in patch["spec"]["serveConfigV2"]


@pytest.mark.parametrize(
    "config, before, after, generated",
    [
        (
            "configs/serve-gpu.yaml",
            "num_gpus: 1",
            "num_gpus: 2",
            "k8s/overlays/gpu/generated/serve-config.yaml",
        ),
        ("configs/models.yaml", "max_context: 2048", "max_context: 1024", "k8s/base/generated/models.yaml"),
        ("configs/tenants.yaml", "queue_limit: 8}", "queue_limit: 9}", "k8s/base/generated/tenants.yaml"),
        ("configs/serve.env", "OPTIMIZED=1", "OPTIMIZED=0", "k8s/base/generated/serve.env"),
    ],
)
def test_every_generated_file_follows_its_config(
    checkout_copy: Path, config: str, before: str, after: str, generated: str
):
    path = checkout_copy / config
    assert before in path.read_text()
    path.write_text(path.read_text().replace(before, after))
    assert kuberay.drift(checkout_copy) == [generated]


def test_the_cluster_changes_only_what_a_cluster_needs():
    config = yaml.safe_load((PROJECT_ROOT / "configs/serve.yaml").read_text())
    cluster = kuberay.cluster_serve_config(config)
    assert cluster["http_options"]["host"] == "0.0.0.0"
    args = cluster["applications"][0]["args"]
    assert (args["catalog"], args["tenants"]) == (kuberay.CATALOG_PATH, kuberay.TENANTS_PATH)
    assert args["registry"]["tracking_uri"] == kuberay.TRACKING_URI
    # everything else is serve.yaml's
    for changed in (cluster, config):
        changed["http_options"].pop("host")
        for key in ("catalog", "tenants"):
            changed["applications"][0]["args"].pop(key)
        changed["applications"][0]["args"]["registry"].pop("tracking_uri")
    assert cluster == config


# -- schemas ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_manifest_validates(overlay: str):
    docs = rendered(overlay)
    assert {d["kind"] for d in docs} >= CORE_KINDS - {"PersistentVolumeClaim"} | MONITOR_KINDS | {
        "RayService"
    }
    for doc in docs:
        what = f"{overlay}: {doc['kind']} {doc['metadata']['name']}"
        assert doc["metadata"].get("namespace", "infergraph") == "infergraph", what
        if doc["apiVersion"].startswith("ray.io/"):
            kube.validate_crd(doc)
        elif doc["kind"] in CORE_KINDS:
            kube.validate_core(doc)
        elif doc["kind"] in MONITOR_KINDS:
            check_monitor(doc)
        else:
            pytest.fail(f"{what}: no schema checks this kind")


def check_monitor(doc: dict[str, Any]) -> None:
    """PodMonitor / ServiceMonitor, structurally (their CRDs are not available offline)."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    spec = doc["spec"]
    assert set(spec) <= {"selector", "podMetricsEndpoints", "endpoints", "namespaceSelector", "jobLabel"}
    assert spec["selector"]["matchLabels"] and all(
        isinstance(v, str) for v in spec["selector"]["matchLabels"].values()
    )
    endpoints = spec["podMetricsEndpoints" if doc["kind"] == "PodMonitor" else "endpoints"]
    assert endpoints
    for endpoint in endpoints:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "authorization", "scheme"}
        assert isinstance(endpoint["port"], str)


def test_the_validators_refuse_mistakes():
    """A typo or a wrong type in any kind fails: the checks above can fail."""
    docs = rendered("overlays/cpu")
    rayservice = copy.deepcopy(one(docs, "RayService"))
    rayservice["spec"]["rayClusterConfig"]["enableInTreeAutoscalin"] = True
    with pytest.raises(jsonschema.ValidationError, match="enableInTreeAutoscalin"):
        kube.validate_crd(rayservice)
    rayservice = copy.deepcopy(one(docs, "RayService"))
    rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "6"
    with pytest.raises(jsonschema.ValidationError):
        kube.validate_crd(rayservice)
    deployment = copy.deepcopy(one(docs, "Deployment", "mlflow"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(jsonschema.ValidationError, match="readinesProbe"):
        kube.validate_core(deployment)
    quota = copy.deepcopy(one(docs, "ResourceQuota"))
    quota["spec"]["hard"] = ["cpu"]
    with pytest.raises(jsonschema.ValidationError):
        kube.validate_core(quota)
    monitor = copy.deepcopy(one(docs, "ServiceMonitor"))
    monitor["spec"]["endpoint"] = monitor["spec"].pop("endpoints")
    with pytest.raises((AssertionError, KeyError)):
        check_monitor(monitor)


# -- the Serve application --------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_config_parses_and_its_files_are_mounted(overlay: str):
    from ray.serve.schema import ServeDeploySchema

    docs = rendered(overlay)
    config = serve_config(docs)
    ServeDeploySchema.model_validate(config)  # Ray Serve's own schema: what `serve deploy` accepts
    source = "configs/serve-gpu.yaml" if overlay == "overlays/gpu" else "configs/serve.yaml"
    shipped = yaml.safe_load((PROJECT_ROOT / source).read_text())
    assert config == kuberay.cluster_serve_config(shipped)
    catalog = Catalog.model_validate(
        yaml.safe_load(one(docs, "ConfigMap", "infergraph-catalog")["data"]["models.yaml"])
    )
    secret = secret_data(one(docs, "Secret", "infergraph-api-keys"))
    for app in config["applications"]:
        args = AppArgs.model_validate(app["args"])  # a typo in args fails here (extra="forbid")
        assert with_dependencies(catalog, args.models)  # every model is in the mounted catalog
        TenantsConfig.model_validate(yaml.safe_load(secret[Path(args.tenants).name]))
        for template in ray_templates(one(docs, "RayService")).values():
            mount_of(template, {"configMap": "infergraph-catalog"}, str(Path(args.catalog).parent))
            volume = mount_of(template, {"secret": "infergraph-api-keys"}, str(Path(args.tenants).parent))
            assert [item["path"] for item in volume["secret"]["items"]] == [Path(args.tenants).name]
        # the registry is the MLflow Service
        host, port = args.registry.tracking_uri.removeprefix("http://").split(":")
        service = one(docs, "Service", host)
        assert int(port) in [p["port"] for p in service["spec"]["ports"]]


def test_app_args_refuse_a_typo():
    config = serve_config(rendered("overlays/cpu"))
    args = dict(config["applications"][0]["args"], tenant="/etc/infergraph/tenants/tenants.yaml")
    with pytest.raises(ValueError, match="tenant"):
        AppArgs.model_validate(args)


# -- the cluster ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_cluster_shape(overlay: str):
    docs = rendered(overlay)
    rayservice = one(docs, "RayService")
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True and cluster["autoscalerOptions"]["resources"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == ({"cpu"} if overlay in ("overlays/cpu", "overlays/postgres") else {"cpu", "gpu"})
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    if "gpu" in groups:
        spec = groups["gpu"]["template"]["spec"]
        resources = spec["containers"][0]["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
        assert spec["nodeSelector"]
    env = one(docs, "ConfigMap", "infergraph-serve-env")["data"]
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    for line in (PROJECT_ROOT / "configs/serve.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split("=", 1)
            if key == "RAY_SERVE_HAPROXY_BINARY_PATH":  # the image's wrapper, not the checkout's
                assert env[key] == "/usr/local/bin/infergraph-haproxy"
                assert env["INFERGRAPH_HAPROXY_LOCAL_PORTS"] == "0"  # the PodMonitor scrapes the exporter
            else:
                assert env[key] == value
    for name, template in ray_templates(rayservice).items():
        (container,) = template["spec"]["containers"]
        assert {"configMapRef": {"name": "infergraph-serve-env"}} in container["envFrom"], name
        if overlay != "base":
            assert container["image"].endswith("-gpu" if overlay == "overlays/gpu" else "-cpu"), name
    for kind, template in [("Ray " + n, t) for n, t in ray_templates(rayservice).items()] + [
        ("Deployment " + d["metadata"]["name"], d["spec"]["template"])
        for d in docs
        if d["kind"] == "Deployment"
    ]:
        for container in template["spec"]["containers"]:  # a ResourceQuota needs both on every container
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{kind}: {bound}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_monitors_find_their_targets(overlay: str):
    docs = rendered(overlay)
    templates = ray_templates(one(docs, "RayService"))
    pod_monitor = one(docs, "PodMonitor")
    ports = set()
    for template in templates.values():  # every Ray pod is scraped
        assert (
            pod_monitor["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        )
        ports |= {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
    assert {e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]} <= ports

    service_monitor = one(docs, "ServiceMonitor")
    router = one(docs, "Service", "infergraph-router")
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= router["metadata"]["labels"].items()
    head = templates["head"]
    head_labels = {**head["metadata"]["labels"], "ray.io/node-type": "head"}  # KubeRay's own label
    assert router["spec"]["selector"].items() <= head_labels.items()
    (endpoint,) = service_monitor["spec"]["endpoints"]
    (port,) = [p for p in router["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert port["targetPort"] in {p["name"] for p in head["spec"]["containers"][0]["ports"]}
    assert endpoint["path"] == "/metrics"
    credentials = endpoint["authorization"]["credentials"]
    secret = secret_data(one(docs, "Secret", credentials["name"]))
    assert secret[credentials["key"]]  # the admin key, as a bearer token


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_server(overlay: str):
    docs = rendered(overlay)
    deployment = one(docs, "Deployment", "mlflow")
    service = one(docs, "Service", "mlflow")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert "--serve-artifacts" in container["args"]  # replicas download artifacts through the server
    if overlay == "overlays/postgres":
        assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
        (source,) = container["envFrom"]
        store = secret_data(one(docs, "Secret", source["secretRef"]["name"]))
        assert store["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql")
        assert store["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    else:
        claim = deployment["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
        one(docs, "PersistentVolumeClaim", claim)
        assert "--backend-store-uri=sqlite:////mlflow/mlflow.db" in container["args"]


def test_a_user_overlay_replaces_the_development_keys(tmp_path: Path):
    """The walkthrough's recipe (docs/kubernetes.md, "API keys") puts real keys in the Secret."""
    (tmp_path / "tenants.yaml").write_text("admin_key_sha256: " + "0" * 64 + "\ntenants: []\n")
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(PROJECT_ROOT / "k8s/overlays/cpu", tmp_path)],
                "secretGenerator": [
                    {
                        "name": "infergraph-api-keys",
                        "behavior": "replace",
                        "files": ["tenants.yaml"],
                        "literals": ["admin-key=sk-real"],
                        "options": {"disableNameSuffixHash": True},
                    }
                ],
            }
        )
    )
    try:
        docs = kube.render(tmp_path)
    except subprocess.CalledProcessError as exc:
        pytest.fail(exc.stderr)
    secret = secret_data(one(docs, "Secret", "infergraph-api-keys"))
    assert secret == {"tenants.yaml": (tmp_path / "tenants.yaml").read_text(), "admin-key": "sk-real"}
