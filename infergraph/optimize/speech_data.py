"""The speech variants' word-error-rate set: English sentences read by a synthetic voice, offline.

- Text: sentences of gensim's Lee background corpus (300 Australian news articles, installed with
  gensim, so no network), 5-30 words, without digits (Festival reads "1990" aloud one way, Whisper
  writes it another), without acronyms or symbols Festival spells out, starting with a capital and
  ending with . ! or ?. The order is fixed (sorted by the SHA-1 of the sentence: a spread over all
  articles), so `count` sentences are always the same ones and a smaller set is a prefix of a larger.
- Audio: Debian's Festival, `text2wave` with the CMU SLT Arctic HTS voice (a female US voice), in a
  process pool of 2, decoded to 16 kHz float32 mono with `faster_whisper.decode_audio` (what the
  server decodes uploads with). Every clip is one Whisper window (<= 30 s).
- Noise: white Gaussian noise at each SNR in dB, drawn when asked for (seeded per clip and SNR, so it
  is the same every run) rather than stored: signal power is the mean square of the whole clip,
  Festival's short leading and trailing silences included.

Cached under `cache_root()/speech-eval/<settings hash>/`: manifest.json (settings, texts, where each
clip starts in clean.npy) and clean.npy (every clip, concatenated); rebuilt only when the settings
that shape the audio (count, word limits, voice, the source text, FORMAT) change.

WER (`wer`): jiwer's corpus-level word error rate (total edits / reference words) after `normalise`
on both sides: lowercase; integers written as digits become English cardinal words ("1,990" ->
"one thousand nine hundred ninety", "%" -> "percent"), which only ever applies to the transcripts
since the sentences have no digits; hyphens and dashes become spaces; apostrophes are dropped
("don't" -> "dont"); every other punctuation mark is stripped; whitespace collapsed. British vs US
spellings ("organisation" / "organization") are not mapped: they add the same errors to every
variant, so they move the baseline, not the comparison.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from importlib.resources import files
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from infergraph.debian import ensure_command
from infergraph.files import atomic_write_text, move_into_place, scratch_dir
from infergraph.runtimes.sources import cache_root
from infergraph.runtimes.speech.audio import decode
from infergraph.runtimes.speech.engine import SAMPLE_RATE, WINDOW_S

VOICE = "voice_cmu_us_slt_arctic_hts"
PACKAGES = ("festival", "festvox-us-slt-hts")
INSTALL_HINT = "apt-get install " + " ".join(PACKAGES)
DEFAULT_COUNT = 300
DEFAULT_SNRS = (20.0, 10.0, 5.0)
MIN_WORDS, MAX_WORDS = 5, 30
WORKERS = 2
FORMAT = 1  # bump when the build changes in a way the settings do not show
SOURCE_NAME = "gensim lee_background.cor"

# Written abbreviations Festival expands ("Mr" -> "mister") while Whisper writes them short, or the reverse.
_ABBREVIATIONS = {
    "mr",
    "mrs",
    "ms",
    "dr",
    "st",
    "jr",
    "sr",
    "co",
    "ltd",
    "inc",
    "pty",
    "vs",
    "etc",
    "gen",
    "sen",
    "lt",
    "sgt",
    "prof",
    "rev",
    "mt",
    "ft",
    "no",
}
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"']))\s+(?=[\"']?[A-Z])")
_ALLOWED = re.compile(r"[A-Za-z ,.;:!?'\"-]+")


class FestivalMissingError(RuntimeError):
    """`text2wave` is not installed: the set cannot be synthesised here."""


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """Texts and their clean audio; noisy copies on demand (`noisy`)."""

    texts: list[str]
    clean: list[np.ndarray]  # float32, 16 kHz, one Whisper window each
    snrs: tuple[float, ...]
    seed: int
    path: Path  # the cache folder it was read from

    @property
    def audio_s(self) -> float:
        return sum(len(a) for a in self.clean) / SAMPLE_RATE

    def noisy(self, snr_db: float) -> list[np.ndarray]:
        """Every clip with white Gaussian noise at `snr_db`, the same noise on every call."""
        return [add_noise(a, snr_db, noise_rng(self.seed, snr_db, i)) for i, a in enumerate(self.clean)]

    def conditions(self) -> dict[str, list[np.ndarray]]:
        """`clean` and `snr<dB>` for every SNR, in that order: the names metrics are logged under."""
        return {"clean": self.clean} | {condition_name(s): self.noisy(s) for s in self.snrs}


def condition_name(snr_db: float) -> str:
    """`snr20` for 20 dB, `snr2.5` for 2.5 dB."""
    return f"snr{snr_db:g}"


# --------------------------------------------------------------------------- text


@functools.cache
def source_text() -> str:
    path = files("gensim") / "test" / "test_data" / "lee_background.cor"
    return path.read_text(encoding="latin-1")


def split_sentences(text: str) -> list[str]:
    """Sentences of running prose: a break after . ! ? (and a closing quote) before a capital."""
    out: list[str] = []
    for line in text.splitlines():
        out += [" ".join(s.split()) for s in _SENTENCE_END.split(line.strip()) if s.strip()]
    return out


def speakable(sentence: str, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> bool:
    """A sentence Festival reads as written and Whisper can write back as written: letters and plain
    punctuation only (no digits, symbols or parentheses), no acronyms (spelt out letter by letter) or
    short abbreviations, a capital first and . ! ? last (not cut by the splitter), 5-30 words."""
    words = sentence.split()
    if not (min_words <= len(words) <= max_words) or not _ALLOWED.fullmatch(sentence):
        return False
    if not sentence[0].isupper() or not sentence.rstrip("\"'").endswith((".", "!", "?")):
        return False
    bare = [w.strip(",.;:!?'\"-") for w in words]
    if any(len(w) >= 2 and w.isupper() for w in bare):
        return False
    return not any(w.lower() in _ABBREVIATIONS for w in bare) and sentence.count('"') % 2 == 0


def select_sentences(count: int, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> list[str]:
    """The first `count` speakable sentences in a fixed order (SHA-1 of the text): deterministic, and
    spread over all the articles rather than the first few."""
    ordered = _ordered_sentences(min_words, max_words)
    if len(ordered) < count:
        raise ValueError(f"{SOURCE_NAME} has {len(ordered)} usable sentences, fewer than {count}")
    return list(ordered[:count])


@functools.cache
def _ordered_sentences(min_words: int, max_words: int) -> tuple[str, ...]:
    unique = {s for s in split_sentences(source_text()) if speakable(s, min_words, max_words)}
    return tuple(sorted(unique, key=lambda s: hashlib.sha1(s.encode()).hexdigest()))


# --------------------------------------------------------------------------- WER

_ONES = [
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    *("eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"),
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))


def number_words(n: int) -> str:
    """English cardinal words, no "and": 1990 -> "one thousand nine hundred ninety"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for scale, name in _SCALES:
        if n >= scale:
            rest = n % scale
            return f"{number_words(n // scale)} {name}" + (f" {number_words(rest)}" if rest else "")
    raise AssertionError(n)


def normalise(text: str) -> str:
    """What both sides of the WER go through (the rule is in the module docstring)."""
    text = text.lower().replace("%", " percent ")
    text = re.sub(r"\d{1,3}(?:,\d{3})+|\d+", lambda m: f" {number_words(int(m[0].replace(',', '')))} ", text)
    text = re.sub(r"[-\u2010-\u2015]", " ", text)
    text = re.sub(r"['\u2018\u2019]", "", text)
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus-level WER of normalised texts (an empty transcript counts every word as deleted)."""
    import jiwer

    refs = [normalise(r) for r in references]
    hyps = [normalise(h) for h in hypotheses]
    if not all(refs):
        raise ValueError("a reference is empty after normalisation")
    return float(jiwer.wer(refs, hyps))


# --------------------------------------------------------------------------- audio


def noise_rng(seed: int, snr_db: float, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, round(snr_db * 1000) % 2**32, index])


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """`audio` plus white Gaussian noise whose power is the clip's mean power / 10^(snr_db / 10)."""
    power = float(np.mean(audio.astype(np.float64) ** 2))
    sigma = np.sqrt(power / 10 ** (snr_db / 10))
    return (audio + rng.normal(0.0, sigma, audio.shape)).astype(np.float32)


def measured_snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    noise = noisy.astype(np.float64) - clean
    return float(10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2)))


def text2wave() -> str:
    """Festival's `text2wave`, installing Debian's packages first where we may (root with apt-get), so
    that the test command sets up a fresh machine by itself."""
    path = ensure_command("text2wave", PACKAGES)
    if path is None:
        raise FestivalMissingError(f"Festival's `text2wave` is not installed: `{INSTALL_HINT}`")
    return path


def synthesise_wav(text: str, voice: str = VOICE) -> bytes:
    """`text` read by Festival, as the WAV file it writes (16-bit, the voice's own sample rate)."""
    with tempfile.TemporaryDirectory(prefix="speech-eval-") as tmp:
        txt, wav = Path(tmp) / "in.txt", Path(tmp) / "out.wav"
        txt.write_text(text + "\n", encoding="utf-8")
        cmd = [text2wave(), "-eval", f"({voice})", str(txt), "-o", str(wav)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or not wav.exists():
            hint = f" (is the voice installed? `{INSTALL_HINT}`)"
            raise RuntimeError(f"text2wave failed on {text!r}: {done.stderr.strip()[-300:]}{hint}")
        return wav.read_bytes()


def synthesise(text: str, voice: str = VOICE) -> np.ndarray:
    """`text` read by Festival, as 16 kHz float32 mono (runs in a pool worker)."""
    return decode(synthesise_wav(text, voice))


def _synthesise_all(texts: Sequence[str], voice: str, console: Console | None) -> list[np.ndarray]:
    audio: list[np.ndarray | None] = [None] * len(texts)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with (
        ProcessPoolExecutor(max_workers=WORKERS) as pool,
        Progress(*columns, console=console or Console(stderr=True)) as progress,
    ):
        task = progress.add_task(f"speech eval set: Festival, {len(texts)} sentences", total=len(texts))
        futures = {pool.submit(synthesise, t, voice): i for i, t in enumerate(texts)}
        for future in as_completed(futures):
            audio[futures[future]] = future.result()
            progress.advance(task)
    return [a for a in audio if a is not None]


# --------------------------------------------------------------------------- the cached set


def _settings(count: int, min_words: int, max_words: int, voice: str) -> dict[str, object]:
    """What shapes the cached audio: a change of any of these is a rebuild."""
    source = hashlib.sha256(source_text().encode("utf-8")).hexdigest()[:16]
    return {
        "format": FORMAT,
        "count": count,
        "min_words": min_words,
        "max_words": max_words,
        "voice": voice,
        "source": SOURCE_NAME,
        "source_sha256": source,
    }


def build_eval_set(
    count: int = DEFAULT_COUNT,
    snrs: Sequence[float] = DEFAULT_SNRS,
    seed: int = 0,
    cache: Path | None = None,
    voice: str = VOICE,
    min_words: int = MIN_WORDS,
    max_words: int = MAX_WORDS,
    console: Console | None = None,
) -> EvalSet:
    """The set for these settings: read from `cache` (default `cache_root()/speech-eval`) when it
    was built before, else synthesised once and stored there."""
    settings = _settings(count, min_words, max_words, voice)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    folder = (cache or cache_root() / "speech-eval") / f"lee-{count}-{key}"
    if not (folder / "manifest.json").exists():
        _build(folder, settings, select_sentences(count, min_words, max_words), voice, console)
    return _load(folder, settings, tuple(float(s) for s in snrs), seed)


def _build(
    folder: Path, settings: dict[str, object], texts: list[str], voice: str, console: Console | None
) -> None:
    text2wave()  # fail before starting a pool
    clips = _synthesise_all(texts, voice, console)
    too_long = [t for t, a in zip(texts, clips, strict=True) if len(a) > WINDOW_S * SAMPLE_RATE]
    if too_long:
        raise ValueError(f"clips over one {WINDOW_S:.0f} s window: {too_long[:3]}")
    offsets = np.cumsum([0] + [len(a) for a in clips]).tolist()
    manifest = {
        "settings": settings,
        "sample_rate": SAMPLE_RATE,
        "texts": texts,
        "offsets": offsets,
        "audio_s": offsets[-1] / SAMPLE_RATE,
    }
    with scratch_dir(folder) as tmp:
        np.save(tmp / "clean.npy", np.concatenate(clips).astype(np.float32))
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1) + "\n")
        move_into_place(tmp, folder)  # a concurrent build that finished first keeps its copy


def _load(folder: Path, settings: dict[str, object], snrs: tuple[float, ...], seed: int) -> EvalSet:
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest["settings"] != settings:
        raise ValueError(f"{folder} was built with other settings: {manifest['settings']}")
    audio = np.load(folder / "clean.npy")
    offsets = manifest["offsets"]
    clean = [audio[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    return EvalSet(list(manifest["texts"]), clean, snrs, seed, folder)


def long_clip(eval_set: EvalSet, seconds: float = WINDOW_S) -> tuple[np.ndarray, str]:
    """Clean clips back to back, as many as fit in `seconds` (one window): the speed clip, and what
    it says."""
    limit = int(seconds * SAMPLE_RATE)
    parts: list[np.ndarray] = []
    texts: list[str] = []
    for text, audio in zip(eval_set.texts, eval_set.clean, strict=True):
        if sum(len(p) for p in parts) + len(audio) <= limit:
            parts.append(audio)
            texts.append(text)
    if not parts:
        raise ValueError(f"no clip fits in {seconds} s")
    return np.concatenate(parts), " ".join(texts)
