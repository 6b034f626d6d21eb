"""Uploads -> 16 kHz audio, windows at silences, and the response formats: what a client of
`/v1/audio/transcriptions` relies on before any model runs."""

import numpy as np
import pytest

from infergraph.protocol.audio import (
    Segment,
    TranscriptionRequest,
    TranscriptionResult,
    Word,
    transcription_payload,
)
from infergraph.runtimes.speech.audio import AudioError, decode, probe
from infergraph.runtimes.speech.windows import speech_windows
from infergraph.testing.speech import encode, silence, synthesize, synthesize_wav

SENTENCE = "The library opens at nine in the morning and closes late in the evening."


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return synthesize(SENTENCE)


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_every_upload_format_decodes_to_the_same_16khz_audio(speech, fmt):
    data = encode(speech, fmt)
    info = probe(data)
    audio = decode(data)
    assert info.duration_s == pytest.approx(len(speech) / 16000, abs=0.1)
    assert abs(len(audio) - len(speech)) < 0.1 * 16000
    n = min(len(audio), len(speech)) - 4000
    lag = int(np.argmax(np.correlate(audio[2000 : 2000 + 4000], speech[:8000], mode="valid")))
    aligned = speech[lag : lag + n - 2000]
    assert np.corrcoef(audio[2000 : 2000 + len(aligned)], aligned)[0, 1] > 0.95


def test_festival_wav_at_its_own_rate_is_resampled():
    wav = synthesize_wav("Hello there.")
    assert probe(wav).sample_rate != 16000  # the voice speaks at its own rate
    assert abs(len(decode(wav)) / 16000 - probe(wav).duration_s) < 0.05


def _with_format_tag(wav: bytes, tag: int) -> bytes:
    """The WAV with another codec id in its header (bytes 20-21): one FFmpeg has no decoder for."""
    return wav[:20] + tag.to_bytes(2, "little") + wav[22:]


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda s: b"", "empty_file"),
        (lambda s: b"this is plain text, not audio at all " * 20, "invalid_audio"),
        (lambda s: encode(s, "wav")[: len(encode(s, "wav")) // 2], "truncated_audio"),
        (lambda s: _with_format_tag(encode(s, "wav"), 0x9999), "unsupported_codec"),
    ],
    ids=["zero-length", "not-audio", "truncated-wav", "unknown-codec"],
)
def test_bad_uploads_are_client_errors_at_the_header(speech, make, code):
    with pytest.raises(AudioError) as err:
        probe(make(speech))
    assert (err.value.status, err.value.code) == (400, code)


@pytest.mark.parametrize("fmt", ["flac", "mp3"])
def test_a_cut_off_compressed_upload_is_refused_not_transcribed_short(speech, fmt):
    data = encode(speech, fmt)
    with pytest.raises(AudioError) as err:
        decode(data[: len(data) // 2])
    assert err.value.code == "truncated_audio"


def test_windows_cut_at_silences_and_keep_the_time_line(speech):
    gap = silence(3.0)
    audio = np.concatenate([gap, *([speech, silence(1.0)] * 8), gap])  # ~50 s of talk and pauses
    windows = speech_windows(audio)
    assert len(windows) >= 2
    assert all(w.duration_s <= 30.0 for w in windows)
    assert windows[0].start_s == pytest.approx(3.0, abs=0.5)  # leading silence skipped
    for a, b in zip(windows, windows[1:], strict=False):
        assert b.start_s >= a.start_s + a.duration_s  # no overlap, order kept
    # every window starts and ends in a pause: no word is cut between two windows
    for w in windows:
        start = int(w.start_s * 16000)
        np.testing.assert_array_equal(w.audio, audio[start : start + len(w.audio)])
    assert sum(w.duration_s for w in windows) < len(audio) / 16000 - 4  # silence costs nothing


def test_silence_gives_no_windows():
    assert speech_windows(silence(10.0)) == []


def _request(fmt: str, **kw) -> TranscriptionRequest:
    return TranscriptionRequest.model_validate(
        {"file": {"data": b"x"}, "model": "whisper-tiny.en", "response_format": fmt, **kw}
    )


RESULT = TranscriptionResult(
    text="Hello there. General Kenobi.",
    language="en",
    duration_s=3.5,
    segments=[Segment(0, 0.0, 1.25, "Hello there."), Segment(1, 1.5, 3461.789, "General Kenobi.")],
)


def test_response_formats():
    assert transcription_payload(_request("text"), RESULT, "transcribe") == b"Hello there. General Kenobi.\n"
    srt = transcription_payload(_request("srt"), RESULT, "transcribe").decode()
    assert srt.startswith("1\n00:00:00,000 --> 00:00:01,250\nHello there.\n\n2\n")
    assert "00:00:01,500 --> 00:57:41,789\nGeneral Kenobi." in srt
    vtt = transcription_payload(_request("vtt"), RESULT, "transcribe").decode()
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.250\nHello there.\n")
    import orjson

    plain = orjson.loads(transcription_payload(_request("json"), RESULT, "transcribe"))
    assert plain == {"text": "Hello there. General Kenobi.", "usage": {"type": "duration", "seconds": 4}}
    verbose = orjson.loads(transcription_payload(_request("verbose_json"), RESULT, "translate"))
    assert verbose["task"] == "translate" and verbose["language"] == "english"
    assert [s["end"] for s in verbose["segments"]] == [1.25, 3461.789]


def test_form_fields_parse_as_openai_sends_them():
    granularities = {"timestamp_granularities[]": ["segment"]}
    req = _request("verbose_json", temperature="0.2", language="EN", **granularities)
    assert req.temperature == 0.2 and req.language == "en"
    for bad in ({"temperature": "hot"}, {"language": "english!"}, {"response_format": "xml"}, {"speed": "1"}):
        with pytest.raises(ValueError):
            TranscriptionRequest.model_validate({"file": {"data": b"x"}, "model": "m", **bad})


def test_word_timestamps_are_asked_for_as_openai_does():
    """`word` needs verbose_json; the answer has `words`, and `segments` only if `segment` is asked too."""
    import orjson

    for fmt in ("json", "text", "srt", "vtt"):
        with pytest.raises(ValueError, match="verbose_json"):
            _request(fmt, **{"timestamp_granularities[]": ["word"]})
    words = [Word("Hello", 0.0, 0.4), Word("there.", 0.4, 1.25), Word("General", 1.5, 2.0)]
    result = TranscriptionResult(
        text="Hello there. General", language="en", duration_s=2.5, segments=RESULT.segments, words=words
    )
    only_words = _request("verbose_json", **{"timestamp_granularities[]": ["word"]})
    assert only_words.work("transcribe", 2.5).words
    body = orjson.loads(transcription_payload(only_words, result, "transcribe"))
    assert "segments" not in body
    assert body["words"] == [
        {"word": "Hello", "start": 0.0, "end": 0.4},
        {"word": "there.", "start": 0.4, "end": 1.25},
        {"word": "General", "start": 1.5, "end": 2.0},
    ]
    both = _request("verbose_json", **{"timestamp_granularities[]": ["word", "segment"]})
    body = orjson.loads(transcription_payload(both, result, "transcribe"))
    assert len(body["words"]) == 3 and [s["end"] for s in body["segments"]] == [1.25, 3461.789]
    segments_only = _request("verbose_json")  # the default granularity: segment
    assert not segments_only.work("transcribe", 2.5).words
    body = orjson.loads(transcription_payload(segments_only, RESULT, "transcribe"))
    assert "words" not in body and len(body["segments"]) == 2


def test_an_engine_without_word_timestamps_refuses_them_before_any_work():
    from infergraph.runtimes.speech.engine import DecodeOptions
    from infergraph.runtimes.speech.transcriber import Transcriber

    class NoWords:
        name, precision, multilingual, word_timestamps = "torch", "fp32", False, False

        def transcribe(self, windows):
            raise AssertionError("no window should reach the engine")

    transcriber = Transcriber(NoWords())
    try:
        transcriber.check(DecodeOptions(timestamps=True))
        with pytest.raises(AudioError) as refused:
            transcriber.check(DecodeOptions(timestamps=True, words=True))
    finally:
        transcriber.close()
    assert refused.value.code == "unsupported_option" and "word timestamps" in refused.value.message
