"""Speech with known text for the tests and benchmarks: Debian's festival (`us-slt` voice) reads it
(optimize/speech_data.py, which builds the WER set the same way), PyAV encodes it to the formats
clients upload (WAV, FLAC, OGG/Opus, MP3)."""

from __future__ import annotations

import io

import av
import numpy as np

from infergraph.optimize.speech_data import synthesise, synthesise_wav

FORMATS = {"wav": "pcm_s16le", "flac": "flac", "ogg": "libopus", "mp3": "libmp3lame"}
synthesize, synthesize_wav = synthesise, synthesise_wav  # festival reads known text


def encode(audio: np.ndarray, fmt: str, rate: int = 16_000) -> bytes:
    """float32 mono at `rate` -> a file in `fmt` (wav, flac, ogg (Opus), mp3)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as container:
        stream: av.AudioStream = container.add_stream(  # type: ignore[assignment]
            FORMATS[fmt], rate=48_000 if fmt == "ogg" else rate, layout="mono"
        )
        frame = av.AudioFrame.from_ndarray(
            (np.clip(audio, -1, 1) * 32767).astype(np.int16)[None, :], format="s16", layout="mono"
        )
        frame.sample_rate = rate
        codec = stream.codec_context
        resampler = av.AudioResampler(format=codec.format, layout="mono", rate=codec.sample_rate)
        for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
            container.mux(stream.encode(resampled))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 16_000), dtype=np.float32)
