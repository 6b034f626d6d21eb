"""A request's audio -> its transcript: decode, cut into windows at silences, run the windows through
the shared `WindowScheduler` with the request's tier and deadline, and stitch the windows' segments
back onto the request's own time line."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from infergraph.runtimes.speech.audio import AudioError, decode, duration_s
from infergraph.runtimes.speech.engine import (
    DecodeOptions,
    Segment,
    SpeechEngine,
    WindowInput,
    WindowOutput,
    Word,
)
from infergraph.runtimes.speech.scheduler import WindowScheduler
from infergraph.runtimes.speech.windows import AudioWindow, speech_windows


@dataclass
class TranscriptSegment(Segment):
    """A window's segment moved onto the upload's time line (start, end and words in seconds from the
    start of the upload, text and words stripped of Whisper's leading spaces), numbered."""

    id: int = field(default=0, kw_only=True)


@dataclass
class Transcript:
    text: str
    language: str
    duration_s: float
    segments: list[TranscriptSegment]

    @property
    def words(self) -> list[Word]:
        """Every segment's words, in order (empty unless words were asked for)."""
        return [w for s in self.segments for w in s.words or []]


@dataclass(frozen=True)
class Prepared:
    """Decoded and cut, ready to queue."""

    duration_s: float
    windows: list[AudioWindow]


class Transcriber:
    def __init__(
        self,
        engine: SpeechEngine,
        max_windows_per_pass: int = 8,
        vad: bool = True,
        express_lane: bool = False,
    ) -> None:
        self.engine, self.vad = engine, vad
        self.scheduler = WindowScheduler(engine, max_windows_per_pass, express_lane)

    def check(self, options: DecodeOptions) -> None:
        """What this model cannot do, as a client error (400) before any work."""
        if options.words and not self.engine.word_timestamps:
            message = f"word timestamps are not available on the {self.engine.name} engine"
            raise AudioError(message, "unsupported_option")
        if self.engine.multilingual:
            return
        if options.task == "translate":
            raise AudioError("this model is English-only and cannot translate", "model_not_supported")
        if options.language not in (None, "en"):
            message = f"this model is English-only; language '{options.language}' is not supported"
            raise AudioError(message, "unsupported_language")

    def prepare(self, data: bytes) -> Prepared:
        """Decode and cut (CPU work outside the engine thread; raises AudioError)."""
        audio = decode(data)
        return Prepared(duration_s(audio), speech_windows(audio, vad=self.vad))

    def submit(
        self, prepared: Prepared, options: DecodeOptions, rank: int = 1, deadline: float = float("inf")
    ) -> Future[tuple[list[WindowOutput], float]]:
        language = options.language or (None if self.engine.multilingual else "en")
        options = replace(options, language=language)
        return self.scheduler.submit(
            [WindowInput(w.audio, options) for w in prepared.windows], rank, deadline
        )

    def stitch(self, prepared: Prepared, outputs: Sequence[WindowOutput], language: str | None) -> Transcript:
        segments: list[TranscriptSegment] = []
        for window, out in zip(prepared.windows, outputs, strict=True):
            for seg in out.segments:
                text = seg.text.strip()
                if not text:
                    continue
                start = round(window.start_s + seg.start, 3)
                end = max(start, round(window.start_s + min(seg.end, window.duration_s), 3))
                words = None
                if seg.words is not None:
                    words = [
                        Word(w.word.strip(), *_within(window.start_s, w, start, end), w.probability)
                        for w in seg.words
                        if w.word.strip()
                    ]
                segments.append(
                    TranscriptSegment(start, end, text, seg.tokens, seg.avg_logprob, words, id=len(segments))
                )
        detected = (
            language
            or _majority([o.language for o in outputs])
            or ("en" if not self.engine.multilingual else "")
        )
        text = " ".join(s.text for s in segments)
        return Transcript(text, detected, prepared.duration_s, segments)

    def close(self) -> None:
        self.scheduler.close()


def _within(offset: float, word: Word, start: float, end: float) -> tuple[float, float]:
    """A word's (start, end) on the upload's time line, rounded as its segment's are and kept inside it."""
    return (
        min(max(round(offset + word.start, 3), start), end),
        min(max(round(offset + word.end, 3), start), end),
    )


def _majority(languages: Sequence[str]) -> str | None:
    return max(set(languages), key=languages.count) if languages else None
