"""What both speech engines share around the network: features, prompts, suppressed tokens, segments.

Keeping these in one place is what makes the CTranslate2 and torch engines agree token for token:
the same log-Mel features (faster-whisper's extractor, every window padded to 30 s), the same
decoder prompt per window, the same suppressed tokens, and the same timestamp-token parsing.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import tokenizers
from faster_whisper.feature_extractor import FeatureExtractor
from faster_whisper.tokenizer import _LANGUAGE_CODES, Tokenizer

from infergraph.runtimes.speech.engine import (
    SAMPLE_RATE,
    WINDOW_S,
    DecodeOptions,
    Segment,
    WindowInput,
    Word,
)

MAX_LENGTH = 448  # decoder positions: prompt + generated tokens
TIME_PRECISION = 0.02  # seconds per timestamp token
N_FRAMES = int(WINDOW_S * SAMPLE_RATE) // 160  # 3000 mel frames per window

K = TypeVar("K", bound=Hashable)


def load_tokenizer(model_dir: Path, multilingual: bool) -> Tokenizer:
    """faster-whisper's wrapper around the folder's `tokenizer.json` (both engine folders have one).

    Its language and task are placeholders: prompts are built per window by `build_prompt`."""
    backend = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    return Tokenizer(backend, multilingual, task="transcribe", language="en")


def language_tokens(tokenizer: Tokenizer) -> dict[str, int]:
    """Language code -> token id, for the languages this vocabulary has (base lacks large-v3's yue)."""
    ids = {code: tokenizer.tokenizer.token_to_id(f"<|{code}|>") for code in _LANGUAGE_CODES}
    return {code: i for code, i in ids.items() if i is not None}


def window_features(extractor: FeatureExtractor, windows: Sequence[WindowInput]) -> np.ndarray:
    """(N, n_mels, 3000) float32: each window zero-padded to 30 s, the way Whisper was trained."""
    n_samples = int(WINDOW_S * SAMPLE_RATE)
    feats = []
    for w in windows:
        audio = np.asarray(w.audio, dtype=np.float32).reshape(-1)[:n_samples]
        audio = np.pad(audio, (0, n_samples - len(audio)))
        feats.append(extractor(audio)[:, :N_FRAMES])
    return np.ascontiguousarray(np.stack(feats), dtype=np.float32)


def check_options(
    windows: Sequence[WindowInput], multilingual: bool, languages: dict[str, int], word_timestamps: bool
) -> None:
    """Refuse what the model (or, for word timestamps, the engine) cannot do before any compute."""
    for i, w in enumerate(windows):
        opts = w.options
        if len(w.audio) > WINDOW_S * SAMPLE_RATE + 1:
            raise ValueError(f"window {i}: {len(w.audio) / SAMPLE_RATE:.2f} s is longer than {WINDOW_S} s")
        if opts.words and not word_timestamps:
            raise ValueError(f"window {i}: this engine has no word timestamps")
        if not multilingual:
            if opts.task == "translate":
                raise ValueError(f"window {i}: this English-only model cannot translate")
            if opts.language not in (None, "en"):
                raise ValueError(f"window {i}: this English-only model cannot transcribe {opts.language!r}")
        elif opts.language is not None and opts.language not in languages:
            raise ValueError(f"window {i}: unknown language {opts.language!r}")


def build_prompt(
    tokenizer: Tokenizer, options: DecodeOptions, language: str | None, multilingual: bool
) -> list[int]:
    """`[<|startofprev|> prompt…] <|startoftranscript|> [<|lang|> <|task|>] [<|notimestamps|>]`.

    The previous-text prompt keeps its last `MAX_LENGTH // 2 - 1` tokens, as faster-whisper does, so
    half of the decoder context is always left for the transcript."""
    prompt: list[int] = []
    if options.prompt.strip():
        previous = tokenizer.encode(" " + options.prompt.strip())
        prompt = [tokenizer.sot_prev, *previous[-(MAX_LENGTH // 2 - 1) :]]
    prompt.append(tokenizer.sot)
    if multilingual:
        assert language is not None
        prompt.append(tokenizer.tokenizer.token_to_id(f"<|{language}|>"))
        prompt.append(tokenizer.translate if options.task == "translate" else tokenizer.transcribe)
    if not options.timestamps:
        prompt.append(tokenizer.no_timestamps)
    return prompt


def suppressed_tokens(tokenizer: Tokenizer) -> list[int]:
    """faster-whisper's default (`suppress_tokens=[-1]`): non-speech symbols and the control tokens."""
    special = [
        tokenizer.transcribe,
        tokenizer.translate,
        tokenizer.sot,
        tokenizer.sot_prev,
        tokenizer.sot_lm,
        tokenizer.no_speech,
    ]
    return sorted({*tokenizer.non_speech_tokens, *(t for t in special if t is not None)})


def group_by(keys: Sequence[K]) -> dict[K, list[int]]:
    """Indices grouped by key, in first-seen order: windows that can share one decoder call."""
    groups: dict[K, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return groups


def prompt_shape(prompt: list[int], sot: int) -> tuple[int, int]:
    """(tokens before <|startoftranscript|>, total length): CTranslate2 batches only equal shapes."""
    return prompt.index(sot), len(prompt)


def avg_logprob(cumulative: float, n_tokens: int) -> float:
    """Per-token log probability the way faster-whisper reports it (the end token counts as one)."""
    return cumulative / (n_tokens + 1)


def to_segments(
    tokenizer: Tokenizer, tokens: list[int], duration: float, logprob: float, timestamps: bool
) -> list[Segment]:
    """The window's segments: split at timestamp-token pairs when asked, else one spanning the audio.

    Timestamps past the window's real audio (the model sometimes ends a segment in the padding) are
    clamped to `duration`, so callers can rely on 0 <= start < end <= duration."""
    text_tokens = [t for t in tokens if t < tokenizer.eot]
    if not timestamps:
        return [Segment(0.0, duration, tokenizer.decode(text_tokens), text_tokens, logprob)]
    segments = []
    for start, end, part in _split_at_timestamps(tokenizer, tokens, duration):
        words = [t for t in part if t < tokenizer.eot]
        if not words or start >= duration:
            continue
        end = min(max(end, start + TIME_PRECISION), duration)
        segments.append(Segment(start, end, tokenizer.decode(words), words, logprob))
    if not segments and text_tokens:  # timestamps asked, none usable: keep the text
        return [Segment(0.0, duration, tokenizer.decode(text_tokens), text_tokens, logprob)]
    return segments


def fit_words(words: Sequence[Word], segment: Segment) -> list[Word]:
    """Words inside their segment, in order and not overlapping: the alignment's heuristics (a long
    first or last word pulled to the segment's edge, punctuation merged) can leave a word a little
    outside its segment or before the previous word's end."""
    fitted: list[Word] = []
    floor = segment.start
    for w in words:
        start = min(max(w.start, floor), segment.end)
        end = min(max(w.end, start), segment.end)
        fitted.append(Word(w.word, start, end, w.probability))
        floor = end
    return fitted


def _split_at_timestamps(
    tokenizer: Tokenizer, tokens: list[int], duration: float
) -> list[tuple[float, float, list[int]]]:
    """faster-whisper's `_split_segments_by_timestamps` for one window: slices between consecutive
    timestamp tokens; an unfinished last slice (no closing timestamp) keeps its text, ending at the
    window end."""
    begin = tokenizer.timestamp_begin

    def time(token: int) -> float:
        return (token - begin) * TIME_PRECISION

    def is_ts(token: int) -> bool:
        return token >= begin

    cuts = [i for i in range(1, len(tokens)) if is_ts(tokens[i]) and is_ts(tokens[i - 1])]
    if not cuts:
        stamps = [t for t in tokens if is_ts(t)]
        start = time(stamps[0]) if stamps and is_ts(tokens[0]) else 0.0
        end = time(stamps[-1]) if len(stamps) > 1 or (stamps and not is_ts(tokens[0])) else duration
        return [(start, end, tokens)]
    out = []
    last = 0
    single_ending = len(tokens) >= 2 and not is_ts(tokens[-2]) and is_ts(tokens[-1])
    for cut in [*cuts, len(tokens)] if single_ending else cuts:
        part = tokens[last:cut]
        out.append((time(part[0]), time(part[-1]), part))
        last = cut
    rest = tokens[last:]
    if any(not is_ts(t) and t < tokenizer.eot for t in rest):  # text after the last closed segment
        out.append((time(rest[0]) if is_ts(rest[0]) else out[-1][1], duration, rest))
    return out
