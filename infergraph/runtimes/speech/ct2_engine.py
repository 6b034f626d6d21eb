"""Whisper on CTranslate2: the fast CPU engine (int8 or fp32).

One pass = one encoder call over all windows, one `detect_language` call for the multilingual
windows that name no language, and one `generate` call per group of windows that CTranslate2 can
batch: it needs <|startoftranscript|> at the same index and equally long prompts (so a previous-text
prompt or `timestamps` splits a group) and takes one sampling temperature per call. The usual pass
(same options everywhere) is a single `generate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import ctranslate2
import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor

from infergraph.runtimes.speech.decoding import (
    MAX_LENGTH,
    avg_logprob,
    build_prompt,
    check_options,
    group_by,
    language_tokens,
    load_tokenizer,
    prompt_shape,
    suppressed_tokens,
    to_segments,
    window_features,
)
from infergraph.runtimes.speech.engine import SAMPLE_RATE, WindowInput, WindowOutput

COMPUTE_TYPES = {"int8": "int8", "fp32": "float32"}


class CTranslate2Engine:
    """`SpeechEngine` over `ctranslate2.models.Whisper`."""

    name = "ctranslate2"

    def __init__(
        self,
        model_dir: Path | str,
        precision: str = "int8",
        threads: int = 1,
        beam_size: int = 1,
        lanes: int = 1,
    ):
        """`lanes`: passes that may run at once (CTranslate2 `inter_threads`: one model replica each,
        shared weights), for the scheduler's express lane."""
        if precision not in COMPUTE_TYPES:
            raise ValueError(f"precision {precision!r}: expected one of {sorted(COMPUTE_TYPES)}")
        self.model_dir = Path(model_dir)
        self.precision = precision
        self.beam_size = beam_size
        self.model = ctranslate2.models.Whisper(
            str(self.model_dir),
            device="cpu",
            compute_type=COMPUTE_TYPES[precision],
            intra_threads=threads,
            inter_threads=lanes,
        )
        self.multilingual: bool = self.model.is_multilingual
        self.tokenizer = load_tokenizer(self.model_dir, self.multilingual)
        self.languages = language_tokens(self.tokenizer) if self.multilingual else {}
        self.extractor = FeatureExtractor(feature_size=self.model.n_mels)
        self.suppress = suppressed_tokens(self.tokenizer)

    def transcribe(self, windows: Sequence[WindowInput]) -> list[WindowOutput]:
        if not windows:
            return []
        check_options(windows, self.multilingual, self.languages)
        feats = window_features(self.extractor, windows)
        encoded = self.model.encode(ctranslate2.StorageView.from_array(feats))
        languages = self._languages(windows, encoded)
        prompts = [
            build_prompt(self.tokenizer, w.options, lang, self.multilingual)
            for w, lang in zip(windows, languages, strict=True)
        ]
        keys = [
            (prompt_shape(p, self.tokenizer.sot), w.options.temperature)
            for p, w in zip(prompts, windows, strict=True)
        ]
        groups = group_by(keys)
        outputs: list[WindowOutput | None] = [None] * len(windows)
        for (_, temperature), idx in groups.items():
            part = encoded if len(groups) == 1 else _select(encoded, idx)
            results = self.model.generate(
                part,
                [prompts[i] for i in idx],
                max_length=MAX_LENGTH,
                return_scores=True,
                suppress_blank=True,
                suppress_tokens=self.suppress,
                **self._search(temperature),
            )
            for i, result in zip(idx, results, strict=True):
                tokens = list(result.sequences_ids[0])
                # scores[0] is the cumulative log-prob / length (length_penalty 1)
                logprob = avg_logprob(result.scores[0] * max(len(tokens), 1), len(tokens))
                duration = len(windows[i].audio) / SAMPLE_RATE
                segments = to_segments(
                    self.tokenizer, tokens, duration, logprob, windows[i].options.timestamps
                )
                outputs[i] = WindowOutput(language=languages[i] or "en", segments=segments)
        return [o for o in outputs if o is not None]

    def _search(self, temperature: float) -> dict[str, float | int]:
        if temperature > 0:  # sample from the full distribution, as Whisper's fallback does
            return {"beam_size": 1, "sampling_topk": 0, "sampling_temperature": temperature}
        return {"beam_size": self.beam_size}

    def _languages(
        self, windows: Sequence[WindowInput], encoded: ctranslate2.StorageView
    ) -> list[str | None]:
        """Each window's language: its option, "en" for English-only models, else detected."""
        if not self.multilingual:
            return ["en"] * len(windows)
        languages = [w.options.language for w in windows]
        todo = [i for i, lang in enumerate(languages) if lang is None]
        if todo:
            part = encoded if len(todo) == len(windows) else _select(encoded, todo)
            for i, ranked in zip(todo, self.model.detect_language(part), strict=True):
                languages[i] = ranked[0][0].strip("<|>")  # "<|en|>" -> "en"
        return languages


def _select(encoded: ctranslate2.StorageView, idx: list[int]) -> ctranslate2.StorageView:
    """Rows `idx` of the encoder output (on CPU a view of it is read as numpy, then copied)."""
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.asarray(encoded)[idx]))
