"""What every speech engine offers: one batched pass over windows of audio (each at most 30 s).

The windows of one pass may come from different requests, each with its own options; the engine
decodes them together (one encoder pass, one batched decode) and returns one `WindowOutput` each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

SAMPLE_RATE = 16_000
WINDOW_S = 30.0  # Whisper's context: every window is padded to this


@dataclass(frozen=True)
class DecodeOptions:
    language: str | None = None  # None: detected per window (multilingual models), "en" for *.en models
    task: Literal["transcribe", "translate"] = "transcribe"
    prompt: str = ""  # text to condition on (spelling of names, style)
    temperature: float = 0.0  # 0: greedy / beam search
    timestamps: bool = False  # segment timestamps inside the window (verbose_json, srt, vtt)
    words: bool = False  # word timestamps (`word` granularity): engines with `word_timestamps` only


@dataclass(frozen=True)
class WindowInput:
    audio: np.ndarray  # float32 mono at SAMPLE_RATE, at most WINDOW_S long
    options: DecodeOptions = DecodeOptions()


@dataclass
class Word:
    word: str  # as Whisper wrote it: its leading space, punctuation merged in (" fox.")
    start: float  # seconds, on the same time line as its segment, inside it
    end: float
    probability: float = 0.0


@dataclass
class Segment:
    start: float  # seconds from the start of the window
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)
    avg_logprob: float = 0.0
    words: list[Word] | None = None  # only when the window asked for words


@dataclass
class WindowOutput:
    language: str
    segments: list[Segment]  # one segment spanning the window when timestamps were not asked for


class SpeechEngine(Protocol):
    name: str  # "ctranslate2" / "torch"
    precision: str  # "fp32" / "int8"
    multilingual: bool  # False for *.en models: they neither detect language nor translate
    word_timestamps: bool  # whether it can align words (`DecodeOptions.words`)

    def transcribe(self, windows: Sequence[WindowInput]) -> list[WindowOutput]:
        """One batched pass; output i belongs to window i."""
        ...
