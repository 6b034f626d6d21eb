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


@pytest.fixture(scope="session")
def minilm_onnx(catalog):
    from runtimes.loader import load_text_encoder

    return load_text_encoder(catalog.get("all-MiniLM-L6-v2"), engine="onnx", threads=2)


@pytest.fixture(scope="session")
def minilm_torch(catalog):
    from runtimes.loader import load_text_encoder

    return load_text_encoder(catalog.get("all-MiniLM-L6-v2"), engine="torch", threads=2)


@pytest.fixture(scope="session")
def e5_onnx(catalog):
    from runtimes.loader import load_text_encoder

    return load_text_encoder(catalog.get("multilingual-e5-small"), engine="onnx", threads=2)


@pytest.fixture(scope="session")
def e5_torch(catalog):
    from runtimes.loader import load_text_encoder

    return load_text_encoder(catalog.get("multilingual-e5-small"), engine="torch", threads=2)
