"""Shared fixtures: the catalog and loaded runtimes on the real offline weights."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def catalog():
    from runtimes.catalog import load_catalog

    return load_catalog(ROOT / "configs" / "models.yaml")


def _encoder(catalog, model: str, engine: str):
    from runtimes.loader import load_text_encoder

    return load_text_encoder(catalog.get(model), engine=engine, threads=2)


@pytest.fixture(scope="session")
def minilm_onnx(catalog):
    return _encoder(catalog, "all-MiniLM-L6-v2", "onnx")


@pytest.fixture(scope="session")
def minilm_torch(catalog):
    return _encoder(catalog, "all-MiniLM-L6-v2", "torch")


@pytest.fixture(scope="session")
def e5_onnx(catalog):
    return _encoder(catalog, "multilingual-e5-small", "onnx")


@pytest.fixture(scope="session")
def e5_torch(catalog):
    return _encoder(catalog, "multilingual-e5-small", "torch")
