"""Uploaded audio -> 16 kHz mono float32, through FFmpeg's decoders (PyAV): WAV, FLAC, OGG/Opus, MP3
and whatever else FFmpeg reads.

`probe` reads only the container's header (milliseconds, also for an hour of audio): the router uses
it to refuse what is not audio, has no audio stream, or is too long, before any decoding, and to meter
the request in audio seconds. `decode` is strict where FFmpeg is lenient: a corrupt or cut-off file
is an error the client hears about (400), not a shorter transcript.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass

import av
import numpy as np

from infergraph.runtimes.speech.engine import SAMPLE_RATE


class AudioError(ValueError):
    """The upload is not audio we can decode (status 400) or is over a limit (413)."""

    def __init__(self, message: str, code: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.code, self.status = message, code, status


@dataclass(frozen=True)
class AudioInfo:
    format: str  # FFmpeg's container name: wav, flac, ogg, mp3, ...
    codec: str
    duration_s: float  # from the header; an estimate for some MP3s
    sample_rate: int
    channels: int


def _open(data: bytes) -> av.container.InputContainer:
    if not data:
        raise AudioError("the uploaded file is empty", "empty_file")
    try:
        return av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except av.FFmpegError:
        raise AudioError("the uploaded file is not audio in a format we can read", "invalid_audio") from None


def probe(data: bytes) -> AudioInfo:
    """What the header says; raises AudioError for anything that is not decodable audio."""
    with _open(data) as container:
        if not container.streams.audio:
            raise AudioError("the uploaded file has no audio stream", "invalid_audio")
        stream = container.streams.audio[0]
        codec = stream.codec_context
        if codec is None or not codec.name:
            raise AudioError("the audio codec is not supported", "unsupported_codec")
        duration = _declared_s(container)
        info = AudioInfo(container.format.name, codec.name, duration, codec.sample_rate or 0, codec.channels)
    if info.format == "wav":
        _check_wav_length(data)
    if info.duration_s <= 0:
        raise AudioError("the uploaded audio has no samples", "empty_audio")
    return info


def _declared_s(container: av.container.InputContainer) -> float:
    stream = container.streams.audio[0]
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def _check_wav_length(data: bytes) -> None:
    """FFmpeg derives a WAV's length from the file size, so a cut-off upload looks whole; the header's
    declared frame count tells."""
    try:
        with wave.open(io.BytesIO(data)) as wav:
            declared = wav.getnframes() * wav.getsampwidth() * wav.getnchannels()
            available = len(data) - 44  # the canonical header; extra chunks only make this larger
    except (wave.Error, EOFError):
        return  # a WAV flavour the stdlib does not read (float, extensible): FFmpeg's word stands
    if 0 < declared < 0xFFFF_FF00 and available < declared - 1024:  # streaming writers leave ~4 GiB
        raise AudioError(
            f"the WAV file is truncated: its header declares {declared} bytes of audio, "
            f"{max(available, 0)} arrived",
            "truncated_audio",
        )


def decode(data: bytes) -> np.ndarray:
    """All of the first audio stream as float32 mono at SAMPLE_RATE; shorter than its header says
    (an MP3 cut off mid-upload) is an error."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    with _open(data) as container:
        if not container.streams.audio:
            raise AudioError("the uploaded file has no audio stream", "invalid_audio")
        declared = _declared_s(container)
        try:
            for frame in container.decode(audio=0):
                frame.pts = None  # the resampler would otherwise insist on continuous timestamps
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
        except av.FFmpegError as exc:
            message = f"the audio could not be decoded ({exc.strerror}): corrupt or truncated"
            raise AudioError(message, "truncated_audio") from None
    if not chunks:
        raise AudioError("the uploaded audio has no samples", "empty_audio")
    audio = np.concatenate(chunks).astype(np.float32) / 32768.0
    decoded = duration_s(audio)
    if declared - decoded > max(0.5, 0.05 * declared):
        message = f"the audio is truncated: its header declares {declared:.1f} s, {decoded:.1f} s decoded"
        raise AudioError(message, "truncated_audio")
    return audio


def duration_s(audio: np.ndarray) -> float:
    return len(audio) / SAMPLE_RATE
