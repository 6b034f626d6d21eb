"""PyTorch engine for sequence-classification models (cross-encoders): the reference, and the GPU path."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification


class TorchScorer:
    """transformers `AutoModelForSequenceClassification`; returns numpy float32 logits."""

    def __init__(self, model_dir: Path, device: str = "cpu", threads: int | None = None) -> None:
        if threads and device == "cpu":
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model = AutoModelForSequenceClassification.from_pretrained(str(model_dir))
        self.model.to(self.device).eval()
        # DistilBERT and friends take no segment ids; BERT pairs need them.
        self.takes_token_types = "token_type_ids" in inspect.signature(self.model.forward).parameters
        self.labels = int(self.model.config.num_labels)
        self.name = f"torch-float32-{device}"

    @torch.inference_mode()
    def logits(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> np.ndarray:
        feed = {
            "input_ids": torch.from_numpy(input_ids).to(self.device),
            "attention_mask": torch.from_numpy(attention_mask).to(self.device),
        }
        if self.takes_token_types:
            feed["token_type_ids"] = torch.from_numpy(token_type_ids).to(self.device)
        return self.model(**feed).logits.float().cpu().numpy()
