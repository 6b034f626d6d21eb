"""Build the speech engine a catalog entry asks for (overridable per deployment or test)."""

from __future__ import annotations

import logging
from pathlib import Path

from infergraph.runtimes.speech.engine import SpeechEngine
from infergraph.runtimes.speech.spec import SpeechSpec
from infergraph.runtimes.speech.weights import resolve_ct2_dir, resolve_transformers_dir
from infergraph.runtimes.threads import engine_threads

log = logging.getLogger(__name__)


def load_speech_engine(
    spec: SpeechSpec,
    engine: str | None = None,
    precision: str | None = None,
    threads: int | None = None,
    cache: Path | None = None,
) -> SpeechEngine:
    """The engine for `spec`, converting its weights once (into `cache`) where the engine needs it.

    The torch engine decodes greedily; a `beam_size` above 1 applies to CTranslate2 only."""
    engine = engine or spec.engine
    precision = precision or spec.precision
    n_threads = engine_threads(threads)
    if engine == "ctranslate2":
        from infergraph.runtimes.speech.ct2_engine import CTranslate2Engine

        ct2_dir = resolve_ct2_dir(spec.source, cache)
        lanes = 2 if spec.express_lane else 1
        return CTranslate2Engine(
            ct2_dir, precision=precision, threads=n_threads, beam_size=spec.beam_size, lanes=lanes
        )
    if engine == "torch":
        from infergraph.runtimes.speech.torch_engine import TorchWhisperEngine

        if spec.beam_size > 1:
            log.warning(
                "%s: the torch engine decodes greedily; beam_size %d ignored", spec.name, spec.beam_size
            )
        return TorchWhisperEngine(
            resolve_transformers_dir(spec.source, cache), precision=precision, threads=n_threads
        )
    raise ValueError(f"unknown speech engine {engine!r}: expected 'ctranslate2' or 'torch'")
