"""Whisper on PyTorch (transformers' `WhisperForConditionalGeneration`, CPU): the reference engine.

transformers' `generate` takes one prompt layout for a whole batch, so this engine runs its own
batched decode loop with the KV cache: one encoder call over all windows, then one decode per group
of windows with equally long prompts (positions stay exact without padding), every row with its own
language, task, timestamps and temperature. The logits rules are CTranslate2's defaults (blank
suppression at the first step, the shared suppressed-token list, Whisper's timestamp rules when
timestamps are asked), so greedy decoding gives the CTranslate2 engine's tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from faster_whisper.feature_extractor import FeatureExtractor
from transformers import WhisperForConditionalGeneration
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from infergraph.runtimes.speech.decoding import (
    MAX_LENGTH,
    avg_logprob,
    build_prompt,
    check_options,
    group_by,
    language_tokens,
    load_tokenizer,
    suppressed_tokens,
    to_segments,
    window_features,
)
from infergraph.runtimes.speech.engine import SAMPLE_RATE, WindowInput, WindowOutput

MAX_INITIAL_TIMESTAMP_INDEX = 50  # CTranslate2's default: the first timestamp is at most 1.00 s
NEG_INF = float("-inf")


class TorchWhisperEngine:
    """`SpeechEngine` over a transformers Whisper folder (see `weights.resolve_transformers_dir`)."""

    name = "torch"
    word_timestamps = False  # refused (ValueError; 400 through the API): use the CTranslate2 engine

    def __init__(self, model_dir: Path | str, precision: str = "fp32", threads: int = 1):
        if precision not in ("fp32", "int8"):
            raise ValueError(f"precision {precision!r}: expected 'fp32' or 'int8'")
        self.model_dir = Path(model_dir)
        self.precision = precision
        self.threads = threads
        torch.set_num_threads(threads)
        model = WhisperForConditionalGeneration.from_pretrained(self.model_dir, dtype=torch.float32).eval()
        if precision == "int8":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model = model
        self.multilingual = model.config.vocab_size >= 51865  # Whisper's own test for *.en vocabularies
        self.tokenizer = load_tokenizer(self.model_dir, self.multilingual)
        self.languages = language_tokens(self.tokenizer) if self.multilingual else {}
        self.extractor = FeatureExtractor(feature_size=model.config.num_mel_bins)
        self.suppress = torch.tensor(suppressed_tokens(self.tokenizer))
        self.blank = [*self.tokenizer.encode(" "), self.tokenizer.eot]

    @torch.inference_mode()
    def transcribe(self, windows: Sequence[WindowInput]) -> list[WindowOutput]:
        if not windows:
            return []
        check_options(windows, self.multilingual, self.languages, self.word_timestamps)
        feats = torch.from_numpy(window_features(self.extractor, windows))
        encoded = self.model.model.encoder(feats).last_hidden_state
        languages = self._languages(windows, encoded)
        prompts = [
            build_prompt(self.tokenizer, w.options, lang, self.multilingual)
            for w, lang in zip(windows, languages, strict=True)
        ]
        outputs: list[WindowOutput | None] = [None] * len(windows)
        for idx in group_by([len(p) for p in prompts]).values():
            rows = [windows[i] for i in idx]
            decoded = self._decode(encoded[idx], [prompts[i] for i in idx], rows)
            for i, (tokens, logprob) in zip(idx, decoded, strict=True):
                duration = len(windows[i].audio) / SAMPLE_RATE
                segments = to_segments(
                    self.tokenizer, tokens, duration, logprob, windows[i].options.timestamps
                )
                outputs[i] = WindowOutput(language=languages[i] or "en", segments=segments)
        return [o for o in outputs if o is not None]

    def _languages(self, windows: Sequence[WindowInput], encoded: torch.Tensor) -> list[str | None]:
        """Each window's language: its option, "en" for English-only models, else the most likely
        language token after <|startoftranscript|>."""
        if not self.multilingual:
            return ["en"] * len(windows)
        languages = [w.options.language for w in windows]
        todo = [i for i, lang in enumerate(languages) if lang is None]
        if todo:
            codes, ids = list(self.languages), torch.tensor(list(self.languages.values()))
            sot = torch.full((len(todo), 1), self.tokenizer.sot)
            hidden = self.model.model.decoder(
                input_ids=sot, encoder_hidden_states=encoded[todo]
            ).last_hidden_state
            best = self.model.proj_out(hidden[:, -1])[:, ids].argmax(-1)
            for i, j in zip(todo, best.tolist(), strict=True):
                languages[i] = codes[j]
        return languages

    def _decode(
        self, encoded: torch.Tensor, prompts: list[list[int]], windows: list[WindowInput]
    ) -> list[tuple[list[int], float]]:
        """Batched greedy (or per-row sampled) decoding of equally long prompts, with the KV cache;
        returns each row's generated tokens (without <|endoftext|>) and average log-prob. Finished
        rows leave the batch (cache included), so short windows stop costing decode steps."""
        eot = self.tokenizer.eot
        generated: list[list[int]] = [[] for _ in prompts]
        cumulative = [0.0] * len(prompts)
        active = list(range(len(prompts)))  # original row of each batch row
        temperatures = torch.tensor([w.options.temperature for w in windows])
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        step = torch.tensor(prompts)
        for position in range(MAX_LENGTH - len(prompts[0])):
            out = self.model.model.decoder(
                input_ids=step, encoder_hidden_states=encoded, past_key_values=cache, use_cache=True
            )
            cache = out.past_key_values
            logits = self.model.proj_out(out.last_hidden_state[:, -1]).float()
            rows = [windows[k] for k in active]
            logits = self._apply_rules(logits, [generated[k] for k in active], rows, first=position == 0)
            logprobs = torch.log_softmax(logits, dim=-1)
            chosen = logits.argmax(-1)
            sampled = temperatures > 0
            if sampled.any():
                probs = torch.softmax(logits[sampled] / temperatures[sampled, None], dim=-1)
                chosen[sampled] = torch.multinomial(probs, 1).squeeze(1)
            keep = []
            for row, (k, token) in enumerate(zip(active, chosen.tolist(), strict=True)):
                cumulative[k] += float(logprobs[row, token])
                if token != eot:
                    generated[k].append(token)
                    keep.append(row)
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep)
                cache.batch_select_indices(index)
                encoded, temperatures, chosen = encoded[index], temperatures[index], chosen[index]
                active = [active[row] for row in keep]
            step = chosen[:, None]
        return [(g, avg_logprob(c, len(g))) for g, c in zip(generated, cumulative, strict=True)]

    def _apply_rules(
        self, logits: torch.Tensor, generated: list[list[int]], windows: list[WindowInput], first: bool
    ) -> torch.Tensor:
        """CTranslate2's logits processors: blank suppression at the first step, suppressed tokens,
        and (for windows with timestamps) Whisper's timestamp rules."""
        if first:
            logits[:, self.blank] = NEG_INF
        logits[:, self.suppress] = NEG_INF
        for k, window in enumerate(windows):
            if window.options.timestamps:
                self._timestamp_rules(logits[k], generated[k])
        return logits

    def _timestamp_rules(self, logits: torch.Tensor, tokens: list[int]) -> None:
        """OpenAI Whisper's `ApplyTimestampRules` for one row, in place: timestamps come in pairs,
        never decrease, start the transcript (at most 1 s in), and win when their total probability
        beats every text token."""
        begin, eot = self.tokenizer.timestamp_begin, self.tokenizer.eot
        logits[self.tokenizer.no_timestamps] = NEG_INF
        last_ts = len(tokens) >= 1 and tokens[-1] >= begin
        penultimate_ts = len(tokens) < 2 or tokens[-2] >= begin
        if last_ts:
            if penultimate_ts:
                logits[begin:] = NEG_INF
            else:
                logits[:eot] = NEG_INF
        stamps = [t for t in tokens if t >= begin]
        if stamps:
            floor = stamps[-1] if last_ts and not penultimate_ts else stamps[-1] + 1
            logits[begin:floor] = NEG_INF
        if not tokens:
            logits[:begin] = NEG_INF
            logits[begin + MAX_INITIAL_TIMESTAMP_INDEX + 1 :] = NEG_INF
        logprobs = torch.log_softmax(logits, dim=-1)
        if logprobs[begin:].logsumexp(-1) > logprobs[:begin].max():
            logits[:begin] = NEG_INF
