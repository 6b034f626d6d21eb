"""Which variant a deployment serves: the base model, a verified registry download, or a clear error.

A real SQLite MLflow store per test, holding a real artifact (MiniLM's FP32 ONNX export + tokenizer).
"""

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infergraph.deployments.variants import VariantError, resolve_variant
from infergraph.paths import absolute_tracking_uri
from infergraph.protocol.common import Job
from infergraph.protocol.embeddings import EmbedWork
from infergraph.runtimes.artifact import Manifest, verify_artifact, write_artifact

MINILM = "all-MiniLM-L6-v2"
DEFAULT = f"models:/{MINILM}@production"
ROOT = Path(__file__).resolve().parents[2]


def tracking(store: Path) -> str:
    return f"sqlite:///{store / 'mlflow.db'}"


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An empty SQLite MLflow store, created once (its schema migrations take seconds)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template-store")
    MlflowClient(tracking_uri=tracking(path), registry_uri=tracking(path)).search_registered_models()
    return path / "mlflow.db"


@pytest.fixture
def store(tmp_path, empty_store) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    shutil.copyfile(empty_store, path / "mlflow.db")
    return path


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_no_store_serves_base_fast_and_creates_nothing(tmp_path):
    db = tmp_path / "mlflow.db"
    code = (
        "import sys; from infergraph.deployments.variants import resolve_variant as r; "
        f"v = r({MINILM!r}, {DEFAULT!r}, 'sqlite:///{db}', None, allow_base_fallback=True); "
        "print(v.source, '|', v.reason); assert 'mlflow' not in sys.modules, 'mlflow imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("base |")
    assert f"no registry entry {DEFAULT}" in out.stdout and "serving the base model" in out.stdout
    assert not db.exists(), "resolving must not create a tracking store"
    with pytest.raises(VariantError, match="does not exist"):  # asked for explicitly: no silent base
        resolve_variant(MINILM, DEFAULT, f"sqlite:///{db}", tmp_path / "cache")


def test_empty_registry_serves_base_with_a_reason(store, cache):
    got = resolve_variant(MINILM, DEFAULT, tracking(store), cache, allow_base_fallback=True)
    assert got.source == "base" and got.artifact_dir is None and got.manifest is None and got.uri is None
    assert got.variant == "base" and got.precision == "fp32"
    assert got.reason.startswith(f"no registry entry {DEFAULT}") and "no registered model" in got.reason
    assert got.reason.endswith("serving the base model")
    with pytest.raises(VariantError, match=f"no registered model '{MINILM}'"):
        resolve_variant(MINILM, DEFAULT, tracking(store), cache)


def test_alias_resolves_to_a_verified_download_kept_for_next_time(
    store, cache, minilm_artifact, register_artifact, minilm_onnx, monkeypatch
):
    version = register_artifact(store, minilm_artifact, MINILM)
    got = resolve_variant(MINILM, DEFAULT, tracking(store), cache, allow_base_fallback=True)
    assert got.source == "registry" and got.requested == DEFAULT
    assert got.uri == f"models:/{MINILM}/{version}" and got.version == version
    assert got.manifest is not None and got.variant == "onnx-fp32-test" and got.precision == "fp32"
    assert got.artifact_dir is not None and got.artifact_dir.parent == cache / MINILM
    assert got.artifact_dir.name.startswith(f"v{version}-")
    assert verify_artifact(got.artifact_dir) == got.manifest
    assert "downloaded" in got.reason
    assert [p.name for p in (cache / MINILM).iterdir()] == [got.artifact_dir.name], "temp folders left behind"

    # The downloaded artifact is the model: same vectors as the base ONNX encoder.
    from infergraph.runtimes.catalog import load_catalog
    from infergraph.runtimes.loader import load_artifact_encoder

    spec = load_catalog(ROOT / "configs" / "models.yaml").get(MINILM)
    encoder, manifest = load_artifact_encoder(spec, got.artifact_dir, threads=2)
    texts = ["A man is playing a guitar.", "The cat sits on the mat."]
    assert manifest.variant == "onnx-fp32-test"
    assert (encoder.encode(texts) * minilm_onnx.encode(texts)).sum(axis=1).min() > 0.9999

    # Second time (by alias or by version): the verified copy, no download.
    import mlflow.artifacts

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", no_download)
    mtime = (got.artifact_dir / "model.onnx").stat().st_mtime_ns
    for requested in (DEFAULT, f"models:/{MINILM}/{version}"):
        again = resolve_variant(MINILM, requested, tracking(store), cache)
        assert again.artifact_dir == got.artifact_dir and again.uri == got.uri and "cached" in again.reason
    assert (got.artifact_dir / "model.onnx").stat().st_mtime_ns == mtime


def test_tampered_download_is_refused_not_replaced_by_base(store, cache, minilm_artifact, register_artifact):
    register_artifact(store, minilm_artifact, MINILM)
    first = resolve_variant(MINILM, DEFAULT, tracking(store), cache, allow_base_fallback=True)
    assert first.artifact_dir is not None
    flip_one_byte(first.artifact_dir / "model.onnx")
    for fallback in (True, False):  # a failed checksum is never "no registry entry"
        with pytest.raises(VariantError, match=r"failed verification, not loaded: .*model.onnx has SHA-256"):
            resolve_variant(MINILM, DEFAULT, tracking(store), cache, allow_base_fallback=fallback)


def test_tampered_registry_copy_never_reaches_the_cache(store, cache, minilm_artifact, register_artifact):
    version = register_artifact(store, minilm_artifact, MINILM)
    (stored,) = store.glob("artifacts/*/artifacts/model/model.onnx")
    flip_one_byte(stored)
    with pytest.raises(VariantError, match="model.onnx has SHA-256"):
        resolve_variant(MINILM, f"models:/{MINILM}/{version}", tracking(store), cache)
    assert list((cache / MINILM).iterdir()) == [], "an unverified download was kept"


def test_unknown_registry_entries_are_clear_errors(store, cache, minilm_artifact, register_artifact):
    version = register_artifact(store, minilm_artifact, MINILM)
    uri = tracking(store)
    with pytest.raises(VariantError, match=f"'{MINILM}' has no alias 'staging' \\(aliases: production\\)"):
        resolve_variant(MINILM, f"models:/{MINILM}@staging", uri, cache)
    with pytest.raises(VariantError, match=f"has no version {int(version) + 8}"):
        resolve_variant(MINILM, f"models:/{MINILM}/{int(version) + 8}", uri, cache)
    with pytest.raises(VariantError, match="no registered model 'nope'"):
        resolve_variant(MINILM, "models:/nope@production", uri, cache)
    with pytest.raises(VariantError, match="is not a registry variant"):
        resolve_variant(MINILM, f"models:/{MINILM}", uri, cache)
    # A registered artifact of another model is refused even when the registry names it so.
    version_of_e5 = register_artifact(store, minilm_artifact, "multilingual-e5-small")
    with pytest.raises(VariantError, match=f"is an artifact of '{MINILM}', not of 'multilingual-e5-small'"):
        resolve_variant("multilingual-e5-small", f"models:/multilingual-e5-small/{version_of_e5}", uri, cache)


def test_base_and_local_artifact_folders(tmp_path, minilm_artifact):
    base = resolve_variant(MINILM, "base", "sqlite:///nowhere.db", tmp_path)
    assert base.source == "base" and base.artifact_dir is None and base.variant == "base"
    local = resolve_variant(MINILM, str(minilm_artifact), "", tmp_path)
    assert local.source == "path" and local.artifact_dir == minilm_artifact and local.uri is None
    assert local.variant == "onnx-fp32-test"
    with pytest.raises(VariantError, match="is not a folder"):
        resolve_variant(MINILM, str(tmp_path / "missing"), "", tmp_path)
    broken = write_artifact(
        tmp_path / "broken",
        Manifest(model=MINILM, variant="x", format="onnx", precision="int8", weights="model.onnx"),
        {"model.onnx": minilm_artifact / "vocab.txt"},
    )
    (broken / "model.onnx").write_bytes(b"not what the manifest says")
    with pytest.raises(VariantError, match="failed verification"):
        resolve_variant(MINILM, str(broken), "", tmp_path)


def test_relative_paths_mean_the_checkout_even_from_rays_packaged_copy(tmp_path, monkeypatch):
    import infergraph.paths as paths

    monkeypatch.delenv("INFERGRAPH_ROOT", raising=False)
    assert paths.launch_root() == ROOT  # run from the checkout itself
    copy = tmp_path / "session/runtime_resources/working_dir_files/_ray_pkg_0123"
    shutil.copytree(ROOT / "infergraph", copy / "infergraph")
    shutil.copyfile(ROOT / "pyproject.toml", copy / "pyproject.toml")
    monkeypatch.setattr(paths, "PROJECT_ROOT", copy)
    # A replica under Ray's uv hook: uv and its shell run in the copy, the raylet where `serve run` ran.
    monkeypatch.setattr(paths, "_launch_dirs", lambda: iter([copy, copy, ROOT, Path("/")]))
    assert paths.launch_root() == ROOT
    assert absolute_tracking_uri("sqlite:///mlflow/mlflow.db") == f"sqlite:///{ROOT}/mlflow/mlflow.db"
    monkeypatch.setattr(paths, "_launch_dirs", lambda: iter([copy, tmp_path]))  # started elsewhere
    assert paths.launch_root() == copy  # the store then reads as missing, with this path in the reason
    monkeypatch.setenv("INFERGRAPH_ROOT", str(tmp_path / "elsewhere"))
    assert paths.launch_root() == tmp_path / "elsewhere"


def test_relative_sqlite_store_is_the_projects():
    assert (
        absolute_tracking_uri("sqlite:///mlflow/mlflow.db", Path("/srv/ig"))
        == "sqlite:////srv/ig/mlflow/mlflow.db"
    )
    assert absolute_tracking_uri("sqlite:////abs/m.db", Path("/srv/ig")) == "sqlite:////abs/m.db"
    assert absolute_tracking_uri("http://mlflow:5000", Path("/srv/ig")) == "http://mlflow:5000"


# --- the deployment (its class, without Ray): what it serves, and live switches -----------------


def make_deployment(
    tracking_uri: str, cache: Path, default_variant: str = DEFAULT, alias_refresh_s: float = 0.0
):
    from infergraph.deployments.encoder import TextEncoderDeployment
    from infergraph.runtimes.catalog import load_catalog

    spec = load_catalog(ROOT / "configs" / "models.yaml").get(MINILM)
    cls = TextEncoderDeployment.func_or_class  # type: ignore[attr-defined]
    return cls(spec.model_dump(), "onnx", 2, tracking_uri, default_variant, str(cache), alias_refresh_s)


def test_deployment_without_registry_serves_base_and_says_why(tmp_path):
    dep = make_deployment(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "cache")
    card = dep.info()
    assert card["variant"] == "base" and card["variant_source"] == "base" and card["variant_uri"] is None
    assert card["variant_reason"].startswith(f"no registry entry {DEFAULT}") and card["variant_error"] is None
    assert card["engine"] == dep.encoder.engine.name and card["precision"] == "fp32"
    assert "variant" not in card["batching"]
    assert not (tmp_path / "mlflow.db").exists()


def test_deployment_switches_variant_live_without_dropping_requests(
    store, cache, minilm_artifact, register_artifact
):
    version = register_artifact(store, minilm_artifact, MINILM)
    dep = make_deployment(tracking(store), cache)
    card = dep.info()
    assert card["variant"] == "onnx-fp32-test" and card["variant_uri"] == f"models:/{MINILM}/{version}"
    assert card["variant_source"] == "registry" and card["variant_requested"] == DEFAULT
    texts = ["A man is playing a guitar.", "The cat sits on the mat."]

    async def scenario():
        registry_encoder = dep.encoder
        await dep.reconfigure({"max_batch_sentences": 8})  # batching only: nothing reloads
        assert dep.encoder is registry_encoder and dep.info()["batching"]["max_batch_sentences"] == 8
        switch = asyncio.create_task(dep.reconfigure({"max_batch_sentences": 8, "variant": "base"}))
        during = []
        while not switch.done():  # the old encoder keeps answering while the new one loads
            during.append(await dep.embed(job(texts)))
        await switch
        assert dep.encoder is not registry_encoder
        return during, await dep.embed(job(texts))

    during, after = asyncio.run(scenario())
    assert len(during) >= 3 and all(r.error is None and r.embeddings.shape == (2, 384) for r in during)
    assert after.error is None and (after.embeddings * during[0].embeddings).sum(axis=1).min() > 0.9999
    card = dep.info()
    assert card["variant"] == "base" and card["variant_source"] == "base" and card["variant_uri"] is None
    assert card["stats"]["variant_switches"] == 1 and card["variant_error"] is None


def job(texts: list[str]) -> Job[EmbedWork]:
    return Job(EmbedWork(texts))


def test_deployment_keeps_serving_when_a_new_variant_fails(
    store, cache, tmp_path, minilm_artifact, register_artifact, monkeypatch
):
    register_artifact(store, minilm_artifact, MINILM)
    dep = make_deployment(tracking(store), cache)
    serving = dep.encoder
    tampered = tmp_path / "tampered"
    shutil.copytree(minilm_artifact, tampered)
    flip_one_byte(tampered / "model.onnx")

    import infergraph.runtimes.loader

    loaded = []
    monkeypatch.setattr(infergraph.runtimes.loader, "load_artifact_encoder", lambda *a, **k: loaded.append(a))

    async def reconfigure(variant):
        await dep.reconfigure({"variant": variant})
        return dep.info(), await dep.embed(job(["still answered"]))

    async def scenario():
        for variant, reason in [
            (f"models:/{MINILM}@staging", "has no alias 'staging'"),
            (str(tampered), "model.onnx has SHA-256"),
        ]:
            card, answer = await reconfigure(variant)
            assert card["variant_error"] is not None and reason in card["variant_error"], card[
                "variant_error"
            ]
            assert f"still serving '{DEFAULT}'" in card["variant_error"]
            assert card["variant"] == "onnx-fp32-test" and card["variant_source"] == "registry"
            assert dep.encoder is serving and answer.error is None
        return await reconfigure(None)  # back to the default, which is what serves: error cleared

    card, _ = asyncio.run(scenario())
    assert loaded == [], "a variant that failed its checks was loaded"
    assert (
        card["variant_error"] is None and dep.encoder is serving and "variant_switches" not in card["stats"]
    )


def test_deployment_follows_a_moved_alias_while_serving(store, cache, minilm_artifact, register_artifact):
    """The pipeline moves `production` to a new version: the running replica switches to it by itself."""
    from mlflow import MlflowClient

    first = register_artifact(store, minilm_artifact, MINILM)
    second = register_artifact(store, minilm_artifact, MINILM, alias=None)
    dep = make_deployment(tracking(store), cache, alias_refresh_s=0.2)
    assert dep.info()["variant_uri"] == f"models:/{MINILM}/{first}"

    async def scenario():
        answers = [await dep.embed(job(["before the move"]))]  # the first request starts the check
        client = MlflowClient(tracking_uri=tracking(store), registry_uri=tracking(store))
        client.set_registered_model_alias(MINILM, "production", second)
        for _ in range(600):
            if dep.resolved.version == second:
                break
            answers.append(await dep.embed(job(["while the alias moves"])))
            await asyncio.sleep(0.05)
        await asyncio.sleep(1)  # more checks: an unmoved alias loads nothing again
        return answers

    answers = asyncio.run(scenario())
    assert all(a.error is None for a in answers)
    card = dep.info()
    assert card["variant_uri"] == f"models:/{MINILM}/{second}" and card["variant_requested"] == DEFAULT
    assert card["stats"]["variant_switches"] == 1 and card["variant_error"] is None


def test_deployment_does_not_start_on_a_bad_explicit_variant(store, cache, monkeypatch):

    import infergraph.deployments.encoder

    monkeypatch.setattr(
        infergraph.deployments.encoder, "_initial_user_config", lambda: {"variant": "models:/nope@production"}
    )
    with pytest.raises(VariantError, match="no registered model 'nope'"):
        make_deployment(tracking(store), cache)
