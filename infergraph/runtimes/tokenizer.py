"""Load a model's fast tokenizer with the `tokenizers` library alone.

transformers (and through it torch) takes many seconds to import; a replica serving an ONNX model
needs neither, so start-up and memory stay small. Folders without a tokenizer.json fall back to
transformers, which converts a slow tokenizer once.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer


def _token_text(value: object) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def load_tokenizer(model_dir: Path) -> tuple[Tokenizer, int]:
    """The tokenizer (no truncation, no padding: the runtime does both) and its pad token id."""
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    if (model_dir / "tokenizer.json").exists():
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir)).backend_tokenizer
    tokenizer.no_truncation()
    tokenizer.no_padding()
    if config.get("split_special_tokens"):
        tokenizer.encode_special_tokens = True
    pad = _token_text(config.get("pad_token"))
    pad_id = tokenizer.token_to_id(pad) if pad else None
    return tokenizer, int(pad_id or 0)
