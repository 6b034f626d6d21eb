"""`POST /v1/audio/transcriptions` and `/translations` on the real service, through the official
`openai` client where it can express the request: festival reads known text, Whisper writes it back."""

import re
import threading
import time

import httpx
import jiwer
import numpy as np
import openai
import pytest

from infergraph.testing.speech import encode, silence, synthesize

pytestmark = pytest.mark.integration

TINY, BASE = "whisper-tiny.en", "whisper-base"
SENTENCE = "The weather was cold and windy, so we stayed inside and read our books by the fire."
SHORT = "Please turn off the lights in the kitchen."
KEYS = {"premium": "sk-ig-demo-premium", "standard": "sk-ig-dev", "batch": "sk-ig-demo-batch"}


def wer(reference: str, hypothesis: str) -> float:
    def norm(text: str) -> str:
        return re.sub(r"[^a-z' ]+", " ", text.lower()).strip()

    return jiwer.wer(norm(reference), norm(hypothesis))


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return synthesize(SENTENCE)


@pytest.fixture(scope="module")
def wav(speech) -> bytes:
    return encode(speech, "wav")


@pytest.fixture(scope="module")
def client(service) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service}/v1", api_key=KEYS["standard"], max_retries=0, timeout=120)


def post(service: str, files: dict, data: dict, key: str = KEYS["standard"], path: str = "transcriptions"):
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{service}/v1/audio/{path}", files=files, data=data, headers=headers, timeout=120)


def test_the_openai_client_transcribes_known_speech(client, wav):
    result = client.audio.transcriptions.create(model=TINY, file=("speech.wav", wav, "audio/wav"))
    assert wer(SENTENCE, result.text) <= 0.15, result.text


@pytest.mark.parametrize("fmt", ["flac", "ogg", "mp3"])
def test_compressed_uploads_give_the_same_words(client, speech, fmt):
    data = encode(speech, fmt)
    result = client.audio.transcriptions.create(model=TINY, file=(f"speech.{fmt}", data))
    assert wer(SENTENCE, result.text) <= 0.15, (fmt, result.text)


def test_verbose_json_has_segments_on_the_upload_time_line(client, speech):
    audio = np.concatenate([silence(2.0), speech, silence(1.0), synthesize(SHORT)])
    result = client.audio.transcriptions.create(
        model=TINY, file=("two.wav", encode(audio, "wav")), response_format="verbose_json",
        timestamp_granularities=["segment"],
    )  # fmt: skip
    assert result.language == "english"
    assert result.duration == pytest.approx(len(audio) / 16000, abs=0.05)
    assert result.segments, result
    assert result.segments[0].start >= 1.5  # the leading silence is not speech
    ends = [s.end for s in result.segments]
    assert all(s.start < s.end for s in result.segments) and ends == sorted(ends)
    assert ends[-1] <= result.duration + 0.01
    assert wer(f"{SENTENCE} {SHORT}", result.text) <= 0.2, result.text


def test_verbose_json_with_word_timestamps(client, speech):
    """`word` alone: `words` and no `segments` (as OpenAI answers); `word` and `segment`: both, every
    word inside a segment, all on the upload's time line."""
    audio = np.concatenate([silence(2.0), speech, silence(2.0), synthesize(SHORT)])
    upload = ("two.wav", encode(audio, "wav"))
    duration = len(audio) / 16000
    words_only = client.audio.transcriptions.create(
        model=TINY, file=upload, response_format="verbose_json", timestamp_granularities=["word"]
    )
    assert words_only.segments is None and words_only.words, words_only
    both = client.audio.transcriptions.create(
        model=TINY, file=upload, response_format="verbose_json", timestamp_granularities=["word", "segment"]
    )
    assert both.segments and both.words
    for result in (words_only, both):
        words = result.words or []
        assert " ".join(w.word for w in words) == " ".join(result.text.split())
        assert wer(f"{SENTENCE} {SHORT}", result.text) <= 0.2, result.text
        assert words[0].start >= 1.5  # the leading silence is not speech
        for before, after in zip(words, words[1:], strict=False):
            assert before.start <= before.end <= after.start <= after.end <= duration + 0.01
        please = next(w for w in words if w.word.strip(".,").lower() == "please")
        assert please.start >= 2.0 + len(speech) / 16000 - 0.3, please  # after the pause began
    segments = both.segments or []
    assert all(any(s.start <= w.start <= w.end <= s.end for s in segments) for w in both.words or [])


def test_text_srt_and_vtt_formats(service, wav):
    text = post(service, {"file": ("s.wav", wav)}, {"model": TINY, "response_format": "text"})
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    assert wer(SENTENCE, text.text) <= 0.15
    srt = post(service, {"file": ("s.wav", wav)}, {"model": TINY, "response_format": "srt"}).text
    assert re.match(r"1\n00:00:0\d,\d{3} --> 00:00:\d\d,\d{3}\n\S", srt), srt
    vtt = post(service, {"file": ("s.wav", wav)}, {"model": TINY, "response_format": "vtt"}).text
    assert vtt.startswith("WEBVTT\n\n00:00:0"), vtt


def test_the_multilingual_model_detects_english_and_translates(client, wav):
    result = client.audio.transcriptions.create(
        model=BASE, file=("s.wav", wav), response_format="verbose_json"
    )
    assert result.language == "english" and wer(SENTENCE, result.text) <= 0.2, result.text
    translated = client.audio.translations.create(model=BASE, file=("s.wav", wav))
    assert wer(SENTENCE, translated.text) <= 0.3, translated.text


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    return body["error"]


def test_bad_uploads_are_refused_with_openai_errors_and_nothing_else_is_disturbed(
    service, client, speech, wav
):
    flac = encode(speech, "flac")
    long_silence = encode(silence(1801), "flac")  # over the 1,800 s limit, a few kB
    cases = [
        ({"file": ("a.wav", b"")}, {"model": TINY}, 400, "empty_file"),
        ({"file": ("a.txt", b"not audio at all " * 50)}, {"model": TINY}, 400, "invalid_audio"),
        ({"file": ("a.wav", wav[: len(wav) // 2])}, {"model": TINY}, 400, "truncated_audio"),
        ({"file": ("a.flac", flac[: len(flac) // 2])}, {"model": TINY}, 400, "truncated_audio"),
        ({"file": ("long.flac", long_silence)}, {"model": TINY}, 413, "audio_too_long"),
        ({"file": ("a.wav", wav)}, {"model": TINY, "language": "fr"}, 400, "unsupported_language"),
        ({"file": ("a.wav", wav)}, {"model": TINY, "response_format": "xml"}, 400, "invalid_request"),
        ({"file": ("a.wav", wav)}, {"model": "no-such-model"}, 404, "model_not_found"),
        ({"file": ("a.wav", wav)}, {"model": "all-MiniLM-L6-v2"}, 400, "model_not_supported"),
        ({"prompt": (None, "no file part")}, {"model": TINY}, 400, "invalid_request"),
    ]
    for files, data, status, code in cases:
        r = post(service, files, data)
        assert (r.status_code, error_of(r)["code"]) == (status, code), (data, files.keys(), r.text)
    word = post(service, {"file": ("a.wav", wav)}, {"model": TINY, "timestamp_granularities[]": "word"})
    assert (word.status_code, error_of(word)["code"]) == (400, "invalid_request")  # json: OpenAI refuses too
    assert error_of(word)["param"] == "timestamp_granularities[]"
    assert "verbose_json" in error_of(word)["message"], word.text
    translate = post(service, {"file": ("a.wav", wav)}, {"model": TINY}, path="translations")
    assert (translate.status_code, error_of(translate)["code"]) == (400, "model_not_supported")
    huge = post(service, {"file": ("big.wav", bytes(26 * 1024 * 1024))}, {"model": TINY})
    assert (huge.status_code, error_of(huge)["code"]) == (413, "body_too_large")
    as_json = httpx.post(
        f"{service}/v1/audio/transcriptions", json={"model": TINY, "file": "x"},
        headers={"Authorization": f"Bearer {KEYS['standard']}"},
    )  # fmt: skip
    assert as_json.status_code == 400 and error_of(as_json)["code"] == "invalid_content_type"
    result = client.audio.transcriptions.create(model=TINY, file=("speech.wav", wav))
    assert wer(SENTENCE, result.text) <= 0.15  # the replica lives on


def test_a_premium_clip_is_answered_while_batch_tier_long_audio_is_transcribed(service, speech):
    """A batch-tier upload of several minutes is being transcribed (one long pass of ~20 windows); a
    premium clip sent meanwhile starts at once in the express lane and comes back first, quickly."""
    # ~9 min of speech, ~8 MB: also over gRPC's 4 MiB default between deployments (configs/serve.env)
    long_audio = encode(np.concatenate([speech, silence(0.7)] * 80), "flac")
    clip = encode(synthesize(SHORT), "wav")
    done: dict[str, float] = {}
    started = time.perf_counter()

    def batch() -> None:
        r = post(service, {"file": ("long.flac", long_audio)}, {"model": TINY}, key=KEYS["batch"])
        done["batch" if r.status_code == 200 else r.text] = time.perf_counter() - started

    thread = threading.Thread(target=batch)
    thread.start()
    time.sleep(2.0)  # decoded, cut, and its pass running
    sent = time.perf_counter()
    premium = post(service, {"file": ("clip.wav", clip)}, {"model": TINY}, key=KEYS["premium"])
    premium_s = time.perf_counter() - sent
    thread.join(timeout=300)
    assert premium.status_code == 200 and wer(SHORT, premium.json()["text"]) <= 0.2, premium.text
    assert "batch" in done, done
    assert sent - started + premium_s < done["batch"], (sent - started, premium_s, done)  # overtook it
    assert premium_s < 2.0, premium_s  # did not wait for the batch pass (several seconds)


def test_the_model_cards_say_what_each_speech_model_can_do(service):
    headers = {"Authorization": f"Bearer {KEYS['standard']}"}
    cards = {m: httpx.get(f"{service}/v1/models/{m}", headers=headers).json() for m in (TINY, BASE)}
    assert {c["kind"] for c in cards.values()} == {"speech-to-text"}
    assert (cards[TINY]["multilingual"], cards[BASE]["multilingual"]) == (False, True)
    assert cards[TINY]["max_audio_s"] == 1800 and cards[TINY]["engine"] == "ctranslate2"
    assert cards[TINY]["batching"]["max_windows_per_pass"] >= 1
