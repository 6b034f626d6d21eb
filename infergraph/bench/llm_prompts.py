"""The frozen LLM prompt corpus (loadtest/llm_prompts.jsonl), made from text installed offline.

    uv run python -m infergraph.bench.llm_prompts            # rewrites the file (identically)
    uv run python -m infergraph.bench.llm_prompts --check    # exit 1 if the file is not what it makes

Chat prompts of five kinds, so prompt lengths spread from a few words to ~180:

- faq-question   a Debian FAQ question as it is                                 (~3-15 words)
- news-sentence  one Lee background sentence, with an instruction               (~15-50 words)
- news-passage   2-4 consecutive sentences of one Lee background document       (~40-130 words)
- faq-context    a FAQ answer passage (cut to 90 words) and its question        (~40-110 words)
- news-article   a Lee background document cut to 160 words, with an instruction (~100-180 words)

The Debian FAQ comes from `apt-get download debian-faq` (infergraph.optimize.data.debian_faq), the
Lee background corpus (300 news documents, not the Lee evaluation set) from gensim's test data.
Every choice, including each prompt's `max_tokens` (16..128), comes from one seeded `random.Random`,
so the script rewrites the file byte for byte; a different debian-faq or gensim version would not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infergraph.paths import PROJECT_ROOT

CORPUS = PROJECT_ROOT / "loadtest" / "llm_prompts.jsonl"
SEED = 0
SIZE = 300
MAX_TOKENS = (16, 128)  # inclusive range of each prompt's max_tokens
# kind -> share of the corpus (the counts are rounded; the last kind takes the rest)
MIX = {
    "faq-question": 0.30,
    "news-sentence": 0.25,
    "news-passage": 0.20,
    "faq-context": 0.15,
    "news-article": 0.10,
}
CONTEXT_WORDS = 90
ARTICLE_WORDS = 160

SENTENCE_ASKS = (
    "Explain this news sentence in plain words: {text}",
    "What happened here? Answer briefly: {text}",
    "Rewrite this sentence for a ten-year-old: {text}",
    "Who is involved in this, and why does it matter? {text}",
)
PASSAGE_ASKS = (
    "Summarise this news passage in one sentence.\n\n{text}",
    "List the key facts of this passage.\n\n{text}",
    "Write a short headline for this passage.\n\n{text}",
)
ARTICLE_ASKS = (
    "Write a headline and a two-sentence summary of this article.\n\n{text}",
    "What are the three most important points of this article?\n\n{text}",
)
CONTEXT_ASK = "Answer the question using the passage.\n\nPassage: {passage}\n\nQuestion: {question}"


@dataclass(frozen=True)
class Prompt:
    id: str
    kind: str
    messages: list[dict[str, str]]
    max_tokens: int
    words: int  # words of the user message

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]


def _cut(text: str, words: int) -> str:
    parts = text.split()
    return " ".join(parts[:words]) + (" ..." if len(parts) > words else "")


def _sources() -> tuple[list[str], list[str], list[str], list[list[str]]]:
    """FAQ questions, FAQ passages (aligned), Lee background sentences, Lee documents by sentence."""
    from infergraph.optimize.data import _lee_background, _sentences, debian_faq

    faq = debian_faq("en", max_words=None)
    docs, sentences = _lee_background()
    return faq.questions, faq.passages, sentences, [_sentences(d) for d in docs]


def build(size: int = SIZE, seed: int = SEED) -> list[Prompt]:
    """The corpus: `size` prompts in a seeded order (kinds interleaved), each with its max_tokens."""
    questions, passages, sentences, doc_sentences = _sources()
    rng = random.Random(seed)
    counts = {kind: round(share * size) for kind, share in MIX.items()}
    counts["news-article"] = size - sum(v for k, v in counts.items() if k != "news-article")
    made: list[tuple[str, str]] = []

    for i in rng.sample(range(len(questions)), min(counts["faq-question"], len(questions))):
        made.append(("faq-question", questions[i]))
    short = [s for s in sentences if 12 <= len(s.split()) <= 45]
    for s in rng.sample(short, counts["news-sentence"]):
        made.append(("news-sentence", rng.choice(SENTENCE_ASKS).format(text=s)))
    long_docs = [d for d in doc_sentences if len(d) >= 4]
    for doc in rng.sample(long_docs, counts["news-passage"]):
        k = rng.randint(2, 4)
        start = rng.randrange(len(doc) - k + 1)
        text = " ".join(doc[start : start + k])
        made.append(("news-passage", rng.choice(PASSAGE_ASKS).format(text=text)))
    for i in rng.sample(range(len(questions)), counts["faq-context"]):
        text = CONTEXT_ASK.format(passage=_cut(passages[i], CONTEXT_WORDS), question=questions[i])
        made.append(("faq-context", text))
    for doc in rng.sample(doc_sentences, counts["news-article"]):
        text = _cut(" ".join(doc), ARTICLE_WORDS)
        made.append(("news-article", rng.choice(ARTICLE_ASKS).format(text=text)))

    rng.shuffle(made)
    return [
        Prompt(
            id=f"p{n:03d}",
            kind=kind,
            messages=[{"role": "user", "content": text}],
            max_tokens=rng.randint(*MAX_TOKENS),
            words=len(text.split()),
        )
        for n, (kind, text) in enumerate(made)
    ]


def render(prompts: list[Prompt]) -> str:
    """The JSON lines, one prompt a line, keys in a fixed order."""
    lines = [
        json.dumps(
            {
                "id": p.id,
                "kind": p.kind,
                "max_tokens": p.max_tokens,
                "words": p.words,
                "messages": p.messages,
            },
            ensure_ascii=False,
        )
        for p in prompts
    ]
    return "\n".join(lines) + "\n"


def load(path: Path = CORPUS) -> list[Prompt]:
    prompts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row: dict[str, Any] = json.loads(line)
            prompts.append(Prompt(row["id"], row["kind"], row["messages"], row["max_tokens"], row["words"]))
    return prompts


def digest(path: Path = CORPUS) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def describe(prompts: list[Prompt]) -> str:
    words = sorted(p.words for p in prompts)
    tokens = sorted(p.max_tokens for p in prompts)
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(Counter(p.kind for p in prompts).items()))

    def q(xs: list[int], f: float) -> int:
        return xs[min(len(xs) - 1, int(f * len(xs)))]

    return (
        f"{len(prompts)} prompts ({kinds}); words min/p50/p90/max {words[0]}/{q(words, 0.5)}/"
        f"{q(words, 0.9)}/{words[-1]}; max_tokens min/p50/max {tokens[0]}/{q(tokens, 0.5)}/{tokens[-1]}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--out", type=Path, default=CORPUS)
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = ap.parse_args(argv)
    prompts = build()
    text = render(prompts)
    if args.check:
        same = args.out.exists() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if same else 'DIFFERS from what the script makes'}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(text.encode("utf-8"))
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size / 1024:.0f} KB, sha256 {digest(args.out)[:16]}): {describe(prompts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
