"""Evaluation and training data that ships inside packages, read from the installed files (no hub).

- Lee corpus (Lee, Pincombe & Welsh, 2005): 50 short news documents and the mean human similarity
  rating of every pair, in gensim's test data. 1,225 document pairs.
- Debian FAQ: question -> answer passage retrieval, English plus German and French questions aligned
  to the English answers by section id. Fetched once with `apt-get download` + `dpkg-deb -x` (no root
  needed) into the infergraph cache.
- Django translations: English UI strings and their translations, for bitext retrieval.
- Unlabelled text for distillation: gensim's other test corpora (news, newsgroups, movie reviews, a
  Wikipedia dump), never the Lee evaluation documents; plus Django translations for multilingual.
"""

from __future__ import annotations

import bz2
import copyreg
import functools
import gzip
import io
import pickle
import random
import re
import shutil
import subprocess
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from importlib.resources import files
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np

from infergraph.files import move_into_place, scratch_dir
from infergraph.runtimes.catalog import cache_root


class DataUnavailableError(RuntimeError):
    """An evaluation data set cannot be fetched or read here (missing tool, no network, ...)."""


@dataclass(frozen=True)
class RatedPairs:
    """Texts and, for pairs (i, j), a human similarity score."""

    texts: list[str]
    pairs: list[tuple[int, int]]
    scores: np.ndarray


def _gensim_data() -> Any:
    return files("gensim") / "test" / "test_data"


def lee_pairs() -> RatedPairs:
    data = _gensim_data()
    lines = (data / "lee.cor").read_text(encoding="latin-1").splitlines()
    texts = [line.strip() for line in lines if line.strip()]
    ratings = np.loadtxt(str(data / "similarities0-1.txt"))
    if ratings.shape != (len(texts), len(texts)):
        raise ValueError(f"Lee ratings are {ratings.shape}, documents {len(texts)}")
    pairs = [(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts))]
    return RatedPairs(texts, pairs, np.array([ratings[i, j] for i, j in pairs]))


def _words(text: str) -> int:
    return len(text.split())


def _squash(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- Debian FAQ

FAQ_LANGS = ("en", "de", "fr")
_FAQ_PACKAGES = {"en": "debian-faq", "de": "debian-faq-de", "fr": "debian-faq-fr"}
_FETCH_TIMEOUT_S = 300
# TextEncoder refuses inputs over the model's max_length (256 tokens for MiniLM) instead of truncating.
# Cut at 120 words, the longest FAQ passage is 246 MiniLM tokens (252 for e5 with "passage: "); at 128
# words it is 256: the FAQ's commands and paths cost up to ~2 tokens a word.
FAQ_PASSAGE_WORDS = 120


@dataclass(frozen=True)
class QAPairs:
    """Questions and the English passages that answer them: passages[i] answers questions[i]."""

    questions: list[str]
    passages: list[str]
    ids: list[str]  # the FAQ's section anchors, the same in every language


def _run(cmd: list[str], cwd: Path | None = None, hint: str = "") -> None:
    try:
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True, timeout=_FETCH_TIMEOUT_S)
    except subprocess.CalledProcessError as e:
        tail = (e.stderr or e.stdout or "").strip()[-500:]
        raise DataUnavailableError(f"`{' '.join(cmd)}` failed (exit {e.returncode}): {tail}{hint}") from e
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataUnavailableError(f"`{' '.join(cmd)}` did not run: {e}") from e


def fetch_deb(package: str, dest: Path) -> Path:
    """Extract a Debian package's files into `dest` (once), as an unprivileged user can.

    Downloads and unpacks in a temporary sibling folder renamed at the end, so an interrupted fetch
    never leaves a `dest` that looks complete.
    """
    if dest.is_dir():
        return dest
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise DataUnavailableError(f"{package}: `{tool}` is not installed (needs a Debian-like system)")
    with scratch_dir(dest) as tmp:
        _run(["apt-get", "download", package], cwd=tmp, hint=" (no package lists? `apt-get update` first)")
        debs = sorted(tmp.glob(f"{package}_*.deb"))
        if len(debs) != 1:
            raise DataUnavailableError(f"apt-get download {package} left {[d.name for d in debs]}")
        _run(["dpkg-deb", "-x", str(debs[0]), str(tmp / "root")])
        move_into_place(tmp / "root", dest)  # a concurrent fetch that finished first keeps its copy
    return dest


def faq_cache() -> Path:
    return cache_root() / "data" / "debian-faq"


def _faq_html_files(lang: str) -> list[Path]:
    """The FAQ's HTML chapters for one language (plain or gzipped, whichever the package ships)."""
    if lang not in _FAQ_PACKAGES:
        raise ValueError(f"no Debian FAQ for {lang!r}; available: {', '.join(FAQ_LANGS)}")
    package = _FAQ_PACKAGES[lang]
    root = fetch_deb(package, faq_cache() / package)
    found = sorted(root.glob(f"usr/share/doc/debian/FAQ/**/*.{lang}.html")) + sorted(
        root.glob(f"usr/share/doc/debian/FAQ/**/*.{lang}.html.gz")
    )
    if not found:
        raise DataUnavailableError(f"{package} has no *.{lang}.html under usr/share/doc/debian/FAQ")
    return found


def _read_html(path: Path) -> str:
    raw = path.read_bytes()
    return (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8")


@dataclass
class _RawSection:
    level: int
    id: str = ""
    heading: list[str] = field(default_factory=list)
    body: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Section:
    level: int
    id: str
    heading: str  # without its number
    text: str  # the section's own text, not its subsections'


class _FaqParser(HTMLParser):
    """Flat list of DocBook sections: heading level, anchor id, heading text and own body text.

    Navigation bars and tables of contents are skipped; block elements become line breaks.
    """

    _SKIP_CLASSES = {"navheader", "navfooter", "toc"}
    _BLOCKS = {"p", "div", "li", "dt", "dd", "pre", "br", "tr", "td", "th", "table", "blockquote"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[_RawSection] = []
        self._heading: str | None = None
        self._skip_depth = 0  # open <div>s since entering a skipped one

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if self._skip_depth:
            self._skip_depth += tag == "div"
            return
        if tag == "div" and self._SKIP_CLASSES & set((a.get("class") or "").split()):
            self._skip_depth = 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._heading = tag
            self.sections.append(_RawSection(level=int(tag[1])))
        elif tag == "a" and self._heading and a.get("id") and not self.sections[-1].id:
            self.sections[-1].id = a["id"] or ""
        elif tag in self._BLOCKS:
            self._text("\n")

    def handle_endtag(self, tag: str) -> None:
        if self._skip_depth:
            self._skip_depth -= tag == "div"
            return
        if tag == self._heading:
            self._heading = None
        elif tag in self._BLOCKS:
            self._text("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self._text(data)

    def _text(self, data: str) -> None:
        if self.sections:
            section = self.sections[-1]
            (section.heading if self._heading else section.body).append(data)


def _strip_number(heading: str) -> str:
    return re.sub(r"^\d+(\.\d+)*\.?\s+", "", heading)


def _faq_sections(lang: str) -> list[_Section]:
    """Every section below chapter level (h2..h6) in reading order, text whitespace-normalised."""
    sections: list[_Section] = []
    for path in _faq_html_files(lang):
        parser = _FaqParser()
        parser.feed(_read_html(path))
        parser.close()
        for s in parser.sections:
            if s.level >= 2 and s.id:
                heading = _strip_number(_squash("".join(s.heading)))
                sections.append(_Section(s.level, s.id, heading, _squash("".join(s.body))))
    return sections


def _is_question(heading: str) -> bool:
    return heading.rstrip().endswith("?")


def _answers(sections: list[_Section]) -> dict[str, tuple[str, str]]:
    """id -> (question, answer) for question headings; a question's answer also takes in the
    subsections under it that are not questions themselves (e.g. "8.1 What programs ...?" -> dpkg, APT)."""
    out: dict[str, tuple[str, str]] = {}
    for i, s in enumerate(sections):
        if not _is_question(s.heading):
            continue
        parts = [s.text]
        for sub in sections[i + 1 :]:
            if sub.level <= s.level or _is_question(sub.heading):
                break
            parts.append(f"{sub.heading}. {sub.text}")
        out[s.id] = (s.heading, " ".join(p for p in parts if p))
    return out


def _truncate_words(text: str, limit: int | None) -> str:
    words = text.split()
    return text if limit is None or len(words) <= limit else " ".join(words[:limit])


@functools.lru_cache(maxsize=8)
def _faq_pairs(lang: str, max_words: int | None) -> QAPairs:
    english = {
        sid: (q, a) for sid, (q, a) in _answers(_faq_sections("en")).items() if _words(a) >= 10
    }  # headings that only introduce subquestions have no answer of their own
    if lang == "en":
        local = {sid: q for sid, (q, _) in english.items()}
    else:
        local = {s.id: s.heading for s in _faq_sections(lang) if s.heading}
    ids = [sid for sid in english if sid in local]
    return QAPairs(
        questions=[local[sid] for sid in ids],
        passages=[_truncate_words(english[sid][1], max_words) for sid in ids],
        ids=ids,
    )


def debian_faq(lang: str = "en", max_words: int | None = FAQ_PASSAGE_WORDS) -> QAPairs:
    """Debian FAQ questions in `lang` (en, de, fr) against the English answers.

    Questions are section headings without their numbers; the passage is the English section's text
    (plus its non-question subsections), cut to `max_words` so every passage fits a 256-token encoder.
    German and French questions are matched to English sections by anchor id, so all languages share
    the same passages. Raises DataUnavailableError when the packages cannot be fetched.
    """
    data = _faq_pairs(lang, max_words)
    return QAPairs(list(data.questions), list(data.passages), list(data.ids))


# --------------------------------------------------------------------------- Python FAQ

# A second English question -> answer set, from another domain than Debian's: the FAQ of Python's own
# documentation (programming, design, library, ...), as Debian packages it.
PYTHON_DOC_PACKAGE = "python3.11-doc"


class _SphinxSections(HTMLParser):
    """(anchor id, heading, own text) of each `<section>` of a Sphinx page; the heading's pilcrow
    link is dropped, nested sections keep their text to themselves."""

    _BLOCKS = {"p", "div", "li", "dt", "dd", "pre", "br"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.done: list[tuple[str, str, str]] = []
        self._open: list[tuple[str, list[str], list[str]]] = []
        self._in_heading = False
        self._in_pilcrow = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self._open.append((a.get("id") or "", [], []))
        elif re.fullmatch(r"h[1-6]", tag):
            self._in_heading = True
        elif tag == "a" and "headerlink" in (a.get("class") or ""):
            self._in_pilcrow += 1
        elif tag in self._BLOCKS:
            self.handle_data("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "section" and self._open:
            sid, heading, body = self._open.pop()
            self.done.append((sid, _squash("".join(heading)), _squash("".join(body))))
        elif re.fullmatch(r"h[1-6]", tag):
            self._in_heading = False
        elif tag == "a" and self._in_pilcrow:
            self._in_pilcrow -= 1

    def handle_data(self, data: str) -> None:
        if self._open and not self._in_pilcrow:
            _, heading, body = self._open[-1]
            (heading if self._in_heading else body).append(data)


@functools.lru_cache(maxsize=4)
def python_faq(max_words: int | None = FAQ_PASSAGE_WORDS) -> QAPairs:
    """The Python FAQ: each question heading against its own answer (171 pairs in 3.11), cut to
    `max_words` like the Debian FAQ's. Raises DataUnavailableError when the package cannot be fetched."""
    root = fetch_deb(PYTHON_DOC_PACKAGE, cache_root() / "data" / PYTHON_DOC_PACKAGE)
    pages = sorted(root.glob("usr/share/doc/python3*/html/faq/*.html"))
    if not pages:
        raise DataUnavailableError(f"{PYTHON_DOC_PACKAGE} has no html/faq/*.html")
    pairs: dict[str, tuple[str, str]] = {}
    for page in pages:
        parser = _SphinxSections()
        parser.feed(_read_html(page))
        parser.close()
        for sid, heading, text in parser.done:
            if _is_question(heading) and _words(text) >= 10:
                pairs[f"{page.stem}#{sid}"] = (heading, _truncate_words(text, max_words))
    return QAPairs(
        questions=[q for q, _ in pairs.values()], passages=[a for _, a in pairs.values()], ids=list(pairs)
    )


# --------------------------------------------------------------------------- Django translations

BITEXT_LANGS = ("de", "fr", "es", "ru", "zh_Hans", "ar", "ja")
_PLACEHOLDER = re.compile(r"%\(\w+\)[a-z]|%[a-z]|\{\w*\}")


@dataclass(frozen=True)
class Bitext:
    """Translations and their English originals: source[i] translates target[i]."""

    source: list[str]
    target: list[str]


@dataclass
class PoEntry:
    fields: dict[str, str] = field(default_factory=dict)
    fuzzy: bool = False

    def usable(self) -> bool:
        """A translated, reviewed, single-form message (not the header, not a plural)."""
        f = self.fields
        return bool(f.get("msgid") and f.get("msgstr")) and not self.fuzzy and "msgid_plural" not in f


def _po_unquote(line: str) -> str:
    escapes = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}
    return re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), m.group(1)), line.strip()[1:-1])


def read_po(path: Path) -> Iterator[PoEntry]:
    """Entries of a gettext .po file (a small parser: Django's files are regular)."""
    entry, key = PoEntry(), ""
    for line in path.read_text(encoding="utf-8").splitlines() + [""]:
        line = line.strip()
        if not line or line.startswith("#~"):  # blank line ends an entry; #~ is an obsolete one
            if entry.fields:
                yield entry
            entry, key = PoEntry(), ""
        elif line.startswith("#,"):
            entry.fuzzy = entry.fuzzy or "fuzzy" in line
        elif line.startswith("#"):
            continue
        elif line.startswith('"'):
            if key:
                entry.fields[key] += _po_unquote(line)
        else:
            key, _, rest = line.partition(" ")
            entry.fields[key] = _po_unquote(rest)


def _clean_message(text: str) -> str:
    """Placeholders out (they are spelled the same in every language: a free match), spaces fixed."""
    return re.sub(r"\s+([.,:;!?])", r"\1", _squash(_PLACEHOLDER.sub(" ", text)))


def _message_pairs(path: Path) -> Iterator[tuple[str, str]]:
    """(English, translation) for usable entries of 3..24 English words, placeholders removed.

    The upper bound drops the few help paragraphs (CSRF failure page): in Cyrillic they exceed
    MiniLM's 256 tokens, which the runtime refuses rather than truncates.
    """
    for entry in read_po(path):
        if not entry.usable():
            continue
        english, translated = _clean_message(entry.fields["msgid"]), _clean_message(entry.fields["msgstr"])
        if 3 <= len(re.findall(r"\w+", english)) <= 24 and translated and translated != english:
            yield english, translated


def _django_root() -> Path:
    try:
        import django
    except ImportError as e:  # pragma: no cover - django is a project dependency
        raise DataUnavailableError("Django is not installed (`uv add django`)") from e
    return Path(django.__file__).parent


def django_langs() -> list[str]:
    return sorted(
        p.name for p in (_django_root() / "conf" / "locale").iterdir() if (p / "LC_MESSAGES").is_dir()
    )


def _dedupe_pairs(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each English string and each translation once, so the nearest neighbour has one right answer."""
    seen_en: set[str] = set()
    seen_tr: set[str] = set()
    out = []
    for english, translated in pairs:
        if english not in seen_en and translated not in seen_tr:
            seen_en.add(english)
            seen_tr.add(translated)
            out.append((english, translated))
    return out


def django_bitext(lang: str, limit: int | None = None) -> Bitext:
    """Django's core UI strings (`django/conf/locale/<lang>/LC_MESSAGES/django.po`) as parallel text.

    Skips untranslated, fuzzy and plural entries, messages under 3 or over 24 English words and duplicates;
    format placeholders are removed from both sides. In file order, first `limit` pairs.
    """
    path = _django_root() / "conf" / "locale" / lang / "LC_MESSAGES" / "django.po"
    if not path.is_file():
        raise ValueError(f"Django has no translation for {lang!r}; see django_langs()")
    pairs = _dedupe_pairs(_message_pairs(path))[:limit]
    return Bitext(source=[t for _, t in pairs], target=[e for e, _ in pairs])


# --------------------------------------------------------------------------- unlabelled corpora

_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')]))\s+(?=[A-Z\"'(])")


def _sentences(text: str, min_words: int = 4) -> list[str]:
    return [s for s in _SENTENCE_END.split(text) if _words(s) >= min_words]


def _lee_background() -> tuple[list[str], list[str]]:
    """300 news documents (same source as the Lee set, different documents): whole, and by sentence."""
    lines = (_gensim_data() / "lee_background.cor").read_text(encoding="latin-1").splitlines()
    docs = [_squash(line) for line in lines if line.strip()]
    return docs, [s for doc in docs for s in _sentences(doc)]


def _pang_lee() -> list[str]:
    """Movie review sentences; the fastText label prefix dropped."""
    lines = (_gensim_data() / "pang_lee_polarity.cor").read_text(encoding="latin-1").splitlines()
    return [_squash(re.sub(r"^__label__\w+\s*", "", line)) for line in lines if _words(line) > 1]


class _NewsgroupUnpickler(pickle.Unpickler):
    """The file is a pickled scikit-learn Bunch; rebuild it as a dict without importing sklearn or
    running anything else the pickle might name. Its numpy arrays (labels) are ignored."""

    class _Bunch(dict[str, Any]):
        pass

    class _Ignored:
        def __init__(self, *args: Any) -> None:
            pass

        def __setstate__(self, state: Any) -> None:
            pass

    _ALLOWED = {
        ("copy_reg", "_reconstructor"): copyreg._reconstructor,  # type: ignore[attr-defined]
        ("sklearn.datasets.base", "Bunch"): _Bunch,
        ("__builtin__", "dict"): dict,
        ("__builtin__", "object"): object,
        ("numpy.core.multiarray", "_reconstruct"): _Ignored,
        ("numpy", "ndarray"): _Ignored,
        ("numpy", "dtype"): _Ignored,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"mini_newsgroup names {module}.{name}; refusing") from None


def _newsgroup_paragraphs(post: str) -> list[str]:
    """A post's own prose: no headers, quotes, attributions or signature; paragraphs of 5..200 words."""
    _, _, body = post.partition("\n\n")
    body = re.split(r"\n--\s*\n", body)[0]
    keep = [
        line
        for line in body.splitlines()
        if not re.match(r"\s*([>|:]|In article|.*\bwrites:\s*$|.*\bwrote:\s*$)", line)
    ]
    paragraphs = (_squash(p) for p in re.split(r"\n\s*\n", "\n".join(keep)))
    return [p for p in paragraphs if 5 <= _words(p) <= 200]


def _mini_newsgroup() -> list[str]:
    raw = zlib.decompress((_gensim_data() / "mini_newsgroup").read_bytes())
    bunch = _NewsgroupUnpickler(io.BytesIO(raw), encoding="latin-1").load()
    return [p for post in bunch["data"] for p in _newsgroup_paragraphs(post)]


_WIKI_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def _strip_wiki(text: str) -> str:
    """Crude wikitext -> prose: drop templates, tables, refs, files and tags; keep link labels."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", "", text, flags=re.S)
    for _ in range(5):  # nested templates and tables, innermost first
        text = re.sub(r"\{\{[^{}]*\}\}|\{\|[^{}]*?\|\}", "", text, flags=re.S)
    text = re.sub(r"\[\[(?:File|Image|Category|[a-z-]{2,12}):[^\[\]]*(\[\[[^\]]*\]\][^\[\]]*)*\]\]", "", text)
    text = re.sub(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]", r"\1", text)
    text = re.sub(r"\[https?://\S+\s*([^\]]*)\]", r"\1", text)
    text = re.sub(r"<[^>]+>|'{2,}", "", text)
    return text


def _wiki_paragraphs(wikitext: str) -> list[str]:
    """Prose paragraphs of 10..200 words: no headings, lists, tables or leftover markup."""
    out = []
    for para in re.split(r"\n\s*\n|\n(?==)", _strip_wiki(wikitext)):
        lines = [line for line in para.splitlines() if line.strip() and not re.match(r"\s*[=*#:;|!{}]", line)]
        text = _squash(" ".join(lines))
        if 10 <= _words(text) <= 200 and not re.search(r"[{}\[\]|=]", text):
            out.append(text)
    return out


def _enwiki() -> list[str]:
    with bz2.open(str(_gensim_data() / _WIKI_DUMP)) as f:
        root = ElementTree.parse(f).getroot()
    texts = [t.text or "" for t in root.iter() if t.tag.endswith("}text")]
    return [p for text in texts if not text.startswith("#REDIRECT") for p in _wiki_paragraphs(text)]


def _key(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def _without_lee(texts: Iterable[str]) -> list[str]:
    """Drop anything that is, or is inside, a Lee evaluation document; and exact duplicates."""
    lee = " | ".join(_key(t) for t in lee_pairs().texts)
    seen: set[str] = set()
    out = []
    for text in texts:
        key = _key(text)
        if key and key not in seen and key not in lee:
            seen.add(key)
            out.append(text)
    return out


@functools.lru_cache(maxsize=1)
def _english_sources() -> dict[str, tuple[str, ...]]:
    docs, sentences = _lee_background()
    sources = {
        "lee_background_docs": docs,
        "lee_background_sentences": sentences,
        "mini_newsgroup": _mini_newsgroup(),
        "pang_lee_polarity": _pang_lee(),
        "enwiki": _enwiki(),
    }
    return {name: tuple(_without_lee(texts)) for name, texts in sources.items()}


def _shuffled(texts: Iterable[str], limit: int | None, seed: int) -> list[str]:
    out = list(dict.fromkeys(texts))
    random.Random(seed).shuffle(out)
    return out[:limit]


def distillation_corpus(limit: int | None = None, seed: int = 0) -> list[str]:
    """English unlabelled text for distillation, shuffled with `seed`, first `limit` texts.

    Mixed lengths on purpose: whole news documents (100..600 words, as long as the Lee documents the
    student is evaluated on, or longer: the trainer truncates), paragraphs and single sentences.
    Nothing from the Lee evaluation documents (checked, not assumed).
    """
    return _shuffled((t for texts in _english_sources().values() for t in texts), limit, seed)


@functools.lru_cache(maxsize=1)
def _django_messages() -> tuple[str, ...]:
    """Translations from every Django locale and contrib app, except those of evaluated messages.

    Messages that `django_bitext` evaluates (for any of BITEXT_LANGS) are left out in every language,
    so no translation of an evaluated English string is seen in training, not even as unlabelled text.
    """
    evaluated = {e for lang in BITEXT_LANGS for e in django_bitext(lang).target}
    root = _django_root()
    paths = sorted(root.glob("conf/locale/*/LC_MESSAGES/django.po")) + sorted(
        root.glob("contrib/*/locale/*/LC_MESSAGES/django.po")
    )
    out = (t for path in paths for e, t in _message_pairs(path) if e not in evaluated)
    return tuple(dict.fromkeys(out))


def multilingual_corpus(limit: int | None = None, seed: int = 0) -> list[str]:
    """Django's translations in ~100 languages (evaluated messages excluded) plus the English
    distillation corpus, shuffled with `seed`, first `limit` texts."""
    return _shuffled([*_django_messages(), *distillation_corpus()], limit, seed)
