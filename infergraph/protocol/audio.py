"""OpenAI `POST /v1/audio/transcriptions` and `/v1/audio/translations`: the multipart form, the work
that crosses the handle, and the five response formats (json, text, verbose_json, srt, vtt)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator

from infergraph.protocol.common import Outcome

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
Granularity = Literal["segment", "word"]
MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


class UploadedFile(BaseModel):
    """The multipart `file` part."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    filename: str = "audio"
    content_type: str | None = None
    data: bytes = Field(repr=False)


class TranscriptionRequest(BaseModel):
    """The form fields, as strings from multipart (numbers parse leniently, as OpenAI's do)."""

    model_config = ConfigDict(extra="forbid")
    file: UploadedFile
    model: str
    language: str | None = Field(None, description="ISO-639-1, e.g. 'en'; omitted: detected")
    prompt: str | None = Field(None, max_length=2000)
    response_format: ResponseFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    timestamp_granularities: list[Granularity] = Field(
        default_factory=lambda: list[Granularity](["segment"]), alias="timestamp_granularities[]"
    )
    _duration_s: float = PrivateAttr(0.0)  # from the file's header, set by the endpoint's check

    @field_validator("language")
    @classmethod
    def _language(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not (2 <= len(value) <= 3 and value.isalpha()):
            raise ValueError("language must be an ISO-639-1 code such as 'en'")
        return value.lower()

    @field_validator("timestamp_granularities")
    @classmethod
    def _granularities(cls, value: list[Granularity], info: ValidationInfo) -> list[Granularity]:
        """Word timestamps come only in verbose_json, as OpenAI's (which refuses them otherwise)."""
        if "word" in value and info.data.get("response_format", "json") != "verbose_json":
            raise ValueError("word timestamps need response_format 'verbose_json'")
        return value

    def work(self, task: Literal["transcribe", "translate"], duration_s: float) -> TranscribeWork:
        timestamps = self.response_format in ("verbose_json", "srt", "vtt")
        words = "word" in self.timestamp_granularities
        return TranscribeWork(
            self.file.data,
            duration_s,
            task,
            self.language,
            self.prompt or "",
            self.temperature,
            timestamps,
            words,
        )


@dataclass(frozen=True)
class TranscribeWork:
    audio: bytes  # the upload as sent: decoded in the replica
    duration_s: float  # from the file's header (router-side probe)
    task: Literal["transcribe", "translate"] = "transcribe"
    language: str | None = None
    prompt: str = ""
    temperature: float = 0.0
    timestamps: bool = False
    words: bool = False  # word timestamps (verbose_json with the `word` granularity)

    @property
    def units(self) -> int:
        """Audio seconds, rounded up: what the admission queue meters and deadlines are judged by."""
        return max(1, math.ceil(self.duration_s))


@dataclass
class Segment:
    id: int
    start: float
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)
    avg_logprob: float = 0.0


@dataclass
class Word:
    word: str
    start: float  # seconds on the upload's time line, inside the word's segment
    end: float


@dataclass
class TranscriptionResult(Outcome):
    text: str = ""
    language: str = ""
    duration_s: float = 0.0
    segments: list[Segment] = field(default_factory=list)
    words: list[Word] | None = None  # when word timestamps were asked for


def transcription_payload(req: TranscriptionRequest, result: TranscriptionResult, task: str) -> bytes:
    fmt = req.response_format
    if fmt == "text":
        return (result.text + "\n").encode()
    if fmt == "srt":
        return _subtitles(result.segments, srt=True).encode()
    if fmt == "vtt":
        return ("WEBVTT\n\n" + _subtitles(result.segments, srt=False)).encode()
    usage = {"type": "duration", "seconds": math.ceil(result.duration_s)}
    if fmt == "json":
        return orjson.dumps({"text": result.text, "usage": usage})
    segments = [
        {
            "id": s.id,
            "seek": 0,
            "start": s.start,
            "end": s.end,
            "text": s.text,
            "tokens": s.tokens,
            "temperature": req.temperature,
            "avg_logprob": s.avg_logprob,
            "compression_ratio": 0.0,
            "no_speech_prob": 0.0,
        }
        for s in result.segments
    ]
    body: dict[str, object] = {
        "task": task,
        "language": _language_name(result.language),
        "duration": round(result.duration_s, 3),
        "text": result.text,
    }
    if "word" in req.timestamp_granularities:  # OpenAI answers what was asked: words, segments or both
        body["words"] = [{"word": w.word, "start": w.start, "end": w.end} for w in result.words or []]
    if "segment" in req.timestamp_granularities:
        body["segments"] = segments
    body["usage"] = usage
    return orjson.dumps(body)


def _subtitles(segments: list[Segment], srt: bool) -> str:
    cues = []
    for n, s in enumerate(segments, 1):
        timing = f"{_clock(s.start, srt)} --> {_clock(s.end, srt)}"
        cues.append(f"{n}\n{timing}\n{s.text}\n" if srt else f"{timing}\n{s.text}\n")
    return "\n".join(cues)


def _clock(seconds: float, srt: bool) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{',' if srt else '.'}{ms:03d}"


_LANGUAGES = {
    "en": "english", "de": "german", "fr": "french", "es": "spanish", "it": "italian", "nl": "dutch",
    "pt": "portuguese", "ru": "russian", "zh": "chinese", "ja": "japanese", "ko": "korean", "pl": "polish",
    "sv": "swedish", "tr": "turkish", "uk": "ukrainian", "ar": "arabic", "hi": "hindi", "cs": "czech",
}  # fmt: skip


def _language_name(code: str) -> str:
    """OpenAI's verbose_json names the language ("english"); codes it does not list stay codes."""
    return _LANGUAGES.get(code, code)
