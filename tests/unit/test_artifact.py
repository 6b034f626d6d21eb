"""Artifacts are verified before they are loaded: a changed or missing file is never served."""

import pytest

from infergraph.runtimes.artifact import (
    ArtifactError,
    Manifest,
    cached_folder,
    checksums_hold,
    verify_artifact,
    write_artifact,
)


def make(tmp_path):
    (tmp_path / "src").mkdir()
    weights = tmp_path / "src" / "model.onnx"
    weights.write_bytes(b"\x08\x01" * 1000)
    tok = tmp_path / "src" / "tokenizer.json"
    tok.write_text('{"version": "1.0"}')
    manifest = Manifest(model="m", variant="onnx-int8", format="onnx", precision="int8", weights="model.onnx")
    return write_artifact(tmp_path / "art", manifest, {"model.onnx": weights, "tokenizer.json": tok})


def test_a_written_artifact_verifies_and_lists_its_checksums(tmp_path):
    art = make(tmp_path)
    manifest = verify_artifact(art)
    assert manifest.variant == "onnx-int8"
    assert set(manifest.files) == {"model.onnx", "tokenizer.json"}
    assert all(len(h) == 64 for h in manifest.files.values())


def test_one_changed_byte_fails_verification(tmp_path):
    art = make(tmp_path)
    data = bytearray((art / "model.onnx").read_bytes())
    data[10] ^= 1
    (art / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model.onnx has SHA-256"):
        verify_artifact(art)


def test_a_missing_file_or_manifest_fails_verification(tmp_path):
    art = make(tmp_path)
    (art / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="tokenizer.json is missing"):
        verify_artifact(art)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        verify_artifact(tmp_path / "src")


# --- cache folders (converted weights, ONNX exports): checked on every reuse ---------------------


def _builder(calls: list[int], payload: bytes = b"weights"):
    def build(tmp):
        calls.append(1)
        (tmp / "model.bin").write_bytes(payload)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "tokenizer.json").write_text("{}")

    return build


def test_a_cache_folder_is_built_once_and_reused_while_its_checksums_hold(tmp_path):
    calls: list[int] = []
    out = tmp_path / "converted"
    assert cached_folder(out, _builder(calls), {"source": "a"}) == out
    cached_folder(out, _builder(calls), {"source": "a"})
    assert len(calls) == 1 and (out / "sub" / "tokenizer.json").is_file()


def test_a_tampered_or_truncated_cache_folder_is_rebuilt_not_loaded(tmp_path):
    calls: list[int] = []
    out = tmp_path / "converted"
    cached_folder(out, _builder(calls), {"source": "a"})
    (out / "model.bin").write_bytes(b"evil")  # same size would not matter: the hash differs
    cached_folder(out, _builder(calls), {"source": "a"})
    assert len(calls) == 2 and (out / "model.bin").read_bytes() == b"weights"
    (out / "sub" / "tokenizer.json").unlink()
    cached_folder(out, _builder(calls), {"source": "a"})
    assert len(calls) == 3 and (out / "sub" / "tokenizer.json").is_file()


def test_a_cache_folder_from_another_source_is_rebuilt(tmp_path):
    calls: list[int] = []
    out = tmp_path / "converted"
    cached_folder(out, _builder(calls), {"versions": {"wheel": "1.0"}})
    assert checksums_hold(out, {"versions": {"wheel": "1.0"}})
    assert not checksums_hold(out, {"versions": {"wheel": "1.1"}})
    cached_folder(out, _builder(calls), {"versions": {"wheel": "1.1"}})
    assert len(calls) == 2
