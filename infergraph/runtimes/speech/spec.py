"""The catalog entry of a `speech-to-text` model: where its Whisper weights come from and how it runs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from infergraph.runtimes.sources import ModelName, Source

SpeechEngineName = Literal["ctranslate2", "torch"]
SpeechPrecision = Literal["fp32", "int8"]


class SpeechSpec(BaseModel):
    """A Whisper model served on `POST /v1/audio/transcriptions` (and `/translations` if multilingual).

    `source` is a CTranslate2 folder (model.bin + config + tokenizer; the offline packages ship
    these), a transformers Whisper folder, or a hub id; each engine converts what it needs once."""

    model_config = ConfigDict(extra="forbid")
    name: ModelName
    kind: Literal["speech-to-text"]
    source: Source
    description: str = ""
    engine: SpeechEngineName = "ctranslate2"
    precision: SpeechPrecision = Field("int8", description="int8: CTranslate2 int8 / torch dynamic int8")
    max_audio_s: float = Field(1800.0, gt=0, description="longer uploads are refused (413)")
    max_windows_per_pass: int = Field(
        32, ge=1, description="30 s windows decoded together in one pass (bench/speech.py)"
    )
    beam_size: int = Field(1, ge=1, description="1: greedy (what the speed figures use)")
    express_lane: bool = Field(
        True, description="a second engine thread for premium windows: they start beside a running bulk pass"
    )
