"""Long audio -> windows of at most 30 s cut at silences (Silero voice activity detection, as
faster-whisper ships it), so that no word is split between two windows and silence costs nothing.

A window is a contiguous stretch of the original audio that holds whole speech chunks; the silence
between windows is dropped, the silence inside one is kept (timestamps then map back by an offset).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps

from infergraph.runtimes.speech.engine import SAMPLE_RATE, WINDOW_S


@dataclass(frozen=True)
class AudioWindow:
    start_s: float  # where the window starts in the request's audio
    audio: np.ndarray  # float32 at SAMPLE_RATE, at most WINDOW_S

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def speech_chunks(audio: np.ndarray, max_chunk_s: float = WINDOW_S - 1.0) -> list[tuple[int, int]]:
    """(start, end) sample ranges that hold speech; a chunk longer than `max_chunk_s` is split at its
    longest pause. Padded by 200 ms each side so that onsets and endings are not clipped."""
    options = VadOptions(min_silence_duration_ms=500, speech_pad_ms=200, max_speech_duration_s=max_chunk_s)
    return [(c["start"], c["end"]) for c in get_speech_timestamps(audio, options, SAMPLE_RATE)]


def speech_windows(audio: np.ndarray, vad: bool = True, window_s: float = WINDOW_S) -> list[AudioWindow]:
    """Windows of at most `window_s` covering the speech of `audio`, in order.

    Audio no longer than one window is one window without running the detector when `vad` is False;
    with `vad`, audio in which nothing is detected gives no windows (an empty transcript, and no
    hallucinated text from silence)."""
    limit = int(window_s * SAMPLE_RATE)
    if not vad:
        return [AudioWindow(i / SAMPLE_RATE, audio[i : i + limit]) for i in range(0, len(audio), limit)]
    windows: list[AudioWindow] = []
    start = end = -1
    for chunk_start, chunk_end in speech_chunks(audio, min(window_s, WINDOW_S) - 1.0):
        if start >= 0 and chunk_end - start <= limit:
            end = chunk_end
            continue
        if start >= 0:
            windows.append(AudioWindow(start / SAMPLE_RATE, audio[start:end]))
        start, end = chunk_start, chunk_end
    if start >= 0:
        windows.append(AudioWindow(start / SAMPLE_RATE, audio[start:end]))
    return windows
