"""Speech with known text for the tests and benchmarks: Debian's festival (`us-slt` voice) reads it,
PyAV encodes it to the formats clients upload (WAV, FLAC, OGG/Opus, MP3)."""

from __future__ import annotations

import functools
import io
import os
import shutil
import subprocess
import tempfile

import av
import numpy as np

from infergraph.runtimes.speech.audio import decode

VOICE = "voice_cmu_us_slt_arctic_hts"
PACKAGES = ("festival", "festvox-us-slt-hts")
FORMATS = {"wav": "pcm_s16le", "flac": "flac", "ogg": "libopus", "mp3": "libmp3lame"}


@functools.cache
def ensure_festival() -> str:
    """The path of `text2wave`, installing Debian's festival first where we may (root with apt-get:
    the test command sets up a fresh machine by itself)."""
    found = shutil.which("text2wave")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "-q", *PACKAGES], check=True, env=env, capture_output=True
        )
        found = shutil.which("text2wave")
    if not found:
        raise RuntimeError(
            f"festival is needed for speech with known text: apt-get install {' '.join(PACKAGES)}"
        )
    return found


def synthesize_wav(text: str) -> bytes:
    """`text` read aloud by festival's us-slt voice, as WAV bytes (16-bit, the voice's own rate)."""
    with tempfile.TemporaryDirectory() as tmp:
        source, target = os.path.join(tmp, "in.txt"), os.path.join(tmp, "out.wav")
        with open(source, "w") as f:
            f.write(text)
        subprocess.run(
            [ensure_festival(), "-eval", f"({VOICE})", source, "-o", target], check=True, capture_output=True
        )
        with open(target, "rb") as f:
            return f.read()


def synthesize(text: str) -> np.ndarray:
    """`text` read aloud, as float32 mono at 16 kHz."""
    return decode(synthesize_wav(text))


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
