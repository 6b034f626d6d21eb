"""`python -m infergraph.deploy.warm [serve.yaml ...]`: fill the cache (`INFERGRAPH_CACHE`) with what the
first start of those configs' models would convert or export, so an image starts without it.

Per model (and the models it calls): a text encoder is resolved and exported as its replica loads it
(ONNX under `<cache>/onnx/`); an LLM's GGUF is converted; a speech model is converted for its catalog
engine; a cross-encoder re-ranker is resolved and exported. Registry variants (`models:/...`) are not
baked: replicas download them from MLflow when one is promoted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from infergraph.paths import project_path

log = logging.getLogger("infergraph.warm")
APP_IMPORT_PATH = "infergraph.deployments.app:build_app"


def served(config: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(catalog, engine, models) of each infergraph application in a serve config."""
    out = []
    for app in config.get("applications", []):
        if app.get("import_path") == APP_IMPORT_PATH:
            args = app.get("args") or {}
            out.append(
                (args.get("catalog", "configs/models.yaml"), args.get("engine", "onnx"), args["models"])
            )
    return out


def warm_model(spec: Any, engine: str) -> str:
    """Convert or export what `spec`'s replica would at its first start; returns what was done."""
    from infergraph.runtimes.catalog import CrossEncoderScorer, EncoderSpec, RerankerSpec
    from infergraph.runtimes.llm.spec import LLMSpec
    from infergraph.runtimes.speech.spec import SpeechSpec

    if isinstance(spec, EncoderSpec):
        from infergraph.runtimes.loader import load_text_encoder

        load_text_encoder(spec, engine=engine)  # type: ignore[arg-type]
        return f"text encoder on {engine}"
    if isinstance(spec, LLMSpec):
        from infergraph.runtimes.llm.weights import resolve_llm_dir

        return f"LLM weights in {resolve_llm_dir(spec.source)}"
    if isinstance(spec, SpeechSpec):
        from infergraph.runtimes.speech.weights import resolve_ct2_dir, resolve_transformers_dir

        resolve = resolve_transformers_dir if spec.engine == "torch" else resolve_ct2_dir
        return f"{spec.engine} weights in {resolve(spec.source)}"
    if isinstance(spec, RerankerSpec) and isinstance(spec.scorer, CrossEncoderScorer):
        from infergraph.runtimes.cross_encoder import load_cross_encoder

        load_cross_encoder(spec.scorer, spec.max_length, spec.max_query_tokens)
        return f"cross-encoder on {spec.scorer.engine}"
    return "nothing to convert"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infergraph.deploy.warm", description=__doc__)
    ap.add_argument("configs", nargs="*", default=["configs/serve.yaml"], help="serve configs")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from infergraph.deployments.app import with_dependencies
    from infergraph.runtimes.catalog import load_catalog

    done: set[tuple[str, str]] = set()
    for path in args.configs:
        for catalog_path, engine, models in served(yaml.safe_load(Path(project_path(path)).read_text())):
            catalog = load_catalog(project_path(catalog_path))
            for name in with_dependencies(catalog, models):
                if (name, engine) not in done:
                    done.add((name, engine))
                    log.info("%s: %s", name, warm_model(catalog.get(name), engine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
