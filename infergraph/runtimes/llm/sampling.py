"""Choosing the next token: greedy at temperature 0, else temperature + nucleus (top-p) sampling.

A request with a `seed` samples from its own `torch.Generator`, so the same seed gives the same
tokens whatever else shares the batch (and after a preemption: the generator lives with the request).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self) -> torch.Generator | None:
        """A fresh generator for one request (None: the global RNG)."""
        return None if self.seed is None else torch.Generator().manual_seed(self.seed)


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero all but the smallest set of most likely tokens whose mass reaches `top_p` (at least one)."""
    if top_p >= 1:
        return probs
    sorted_probs, order = probs.sort(descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
    cut = before >= top_p  # a top_p below float32's range compares as 0: the best token stays anyway
    cut[..., 0] = False
    sorted_probs[cut] = 0
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


def choose_tokens(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> list[int]:
    """One next token per row of `logits` [rows, vocab]."""
    out = logits.argmax(-1).tolist()  # greedy rows; sampled ones are overwritten below
    for i, p in enumerate(params):
        if p.greedy:
            continue
        row = logits[i].float().cpu()  # generators are CPU ones
        # Shifted so that the best token is 0, and the temperature kept a float32 > 0: a tiny one then
        # gives the others -inf (probability 0) instead of inf - inf or 0 / 0 (NaN).
        temperature = max(p.temperature, torch.finfo(torch.float32).tiny)
        probs = torch.softmax((row - row.max()) / temperature, dim=-1)
        probs = top_p_filter(probs, p.top_p)
        out[i] = int(torch.multinomial(probs, 1, generator=generators[i]).item())
    return out
