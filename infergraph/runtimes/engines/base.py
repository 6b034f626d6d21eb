"""The one interface every text-encoder engine implements, plus shared pooling.

An engine turns a padded batch of token ids into sentence embeddings. Everything around it
(tokenizing, length bucketing, un-sorting) lives in `runtimes.text_encoder`, so a new variant
(FP16, INT8, pruned) only has to provide `embed`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch


class EncoderEngine(Protocol):
    """Runs the encoder forward pass and pooling for one padded batch."""

    name: str
    dim: int

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Return float32 embeddings of shape (batch, dim), mean-pooled and L2-normalised."""
        ...


def mean_pool_normalize(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean over real tokens, then L2 norm: what sentence-transformers and e5 both use."""
    mask = attention_mask[..., None].astype(hidden.dtype)
    summed = (hidden * mask).sum(axis=1)
    pooled = summed / np.clip(mask.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)


def mean_pool_torch(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """`mean_pool_normalize`'s mean for tensors, not normalised (differentiable, on the device):
    the PyTorch engine and distillation. Needs no torch import here, so this module stays light."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
