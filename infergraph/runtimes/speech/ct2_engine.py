"""Whisper on CTranslate2: the fast CPU engine (int8 or fp32).

One pass = one encoder call over all windows, one `detect_language` call for the multilingual
windows that name no language, and one `generate` call per group of windows that CTranslate2 can
batch: it needs <|startoftranscript|> at the same index and equally long prompts (so a previous-text
prompt or `timestamps` splits a group) and takes one sampling temperature per call. The usual pass
(same options everywhere) is a single `generate`.

Windows that ask for words (`DecodeOptions.words`) are then aligned on the same encoder output with
faster-whisper's own word-timestamp code (`Whisper.align`: cross-attention of the alignment heads,
dynamic time warping); the other windows of the pass pay nothing for it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ctranslate2
import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import WhisperModel

from infergraph.runtimes.speech.decoding import (
    MAX_LENGTH,
    N_FRAMES,
    avg_logprob,
    build_prompt,
    check_options,
    fit_words,
    group_by,
    language_tokens,
    load_tokenizer,
    prompt_shape,
    suppressed_tokens,
    to_segments,
    window_features,
)
from infergraph.runtimes.speech.engine import SAMPLE_RATE, WindowInput, WindowOutput, Word

COMPUTE_TYPES = {"int8": "int8", "fp32": "float32"}
HOP_LENGTH = 160  # samples per feature frame (100 frames a second; the encoder halves them)
_TRANSCRIBE = inspect.signature(WhisperModel.transcribe).parameters
PREPEND_PUNCTUATIONS: str = _TRANSCRIBE["prepend_punctuations"].default  # faster-whisper's defaults
APPEND_PUNCTUATIONS: str = _TRANSCRIBE["append_punctuations"].default


class _WordAligner(WhisperModel):
    """faster-whisper's `add_word_timestamps` (and the `find_alignment` it calls: `Whisper.align`,
    then words from `Tokenizer.split_to_word_tokens`, `merge_punctuations`, its long-word heuristics)
    on the model the engine already loaded: only the attributes those two methods read are set."""

    def __init__(self, model: ctranslate2.models.Whisper) -> None:  # loads nothing, unlike WhisperModel
        self.model = model
        self.frames_per_second = SAMPLE_RATE // HOP_LENGTH
        self.tokens_per_second = SAMPLE_RATE // (2 * HOP_LENGTH)


class CTranslate2Engine:
    """`SpeechEngine` over `ctranslate2.models.Whisper`."""

    name = "ctranslate2"
    word_timestamps = True

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
        self.aligner = _WordAligner(self.model)
        self._word_tokenizers: dict[tuple[str, str], Tokenizer] = {}

    def transcribe(self, windows: Sequence[WindowInput]) -> list[WindowOutput]:
        if not windows:
            return []
        check_options(windows, self.multilingual, self.languages, self.word_timestamps)
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
        done = [o for o in outputs if o is not None]
        for i, window in enumerate(windows):
            if window.options.words:
                self._add_words(window, done[i], encoded if len(windows) == 1 else _select(encoded, [i]))
        return done

    def _add_words(self, window: WindowInput, output: WindowOutput, encoded: ctranslate2.StorageView) -> None:
        """Each segment's words, on the window's time line, from the window's encoder output.

        One window per call: faster-whisper carries the last word's time from one segment to the next
        (its "first word after a pause" heuristic), so windows of other requests must not share it."""
        if not any(s.tokens for s in output.segments):
            for segment in output.segments:
                segment.words = []
            return
        parts: list[dict[str, Any]] = [
            {"seek": 0, "start": s.start, "end": s.end, "tokens": s.tokens} for s in output.segments
        ]
        frames = min(N_FRAMES, math.ceil(len(window.audio) / HOP_LENGTH))
        tokenizer = self._word_tokenizer(output.language, window.options.task)
        self.aligner.add_word_timestamps(
            [parts], tokenizer, encoded, frames, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS, 0.0
        )
        for segment, part in zip(output.segments, parts, strict=True):
            words = [
                Word(w["word"], float(w["start"]), float(w["end"]), float(w["probability"]))
                for w in part.get("words", [])
            ]
            segment.words = fit_words(words, segment)

    def _word_tokenizer(self, language: str, task: str) -> Tokenizer:
        """The alignment starts from `<|startoftranscript|> <|lang|> <|task|>` and splits words the
        window's language's way (by character for Chinese, Japanese, Thai, ...)."""
        if not self.multilingual:
            return self.tokenizer
        key = (language, task)
        if key not in self._word_tokenizers:
            self._word_tokenizers[key] = Tokenizer(self.tokenizer.tokenizer, True, task, language)
        return self._word_tokenizers[key]

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
