"""PyTorch engine: the reference path, and the one that uses a GPU when there is one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel

from infergraph.runtimes.engines.base import mean_pool_torch


class TorchEngine:
    """transformers `AutoModel` + mean pooling on the device, returns numpy float32."""

    def __init__(
        self,
        model_dir: Path,
        device: str = "cpu",
        dtype: str = "float32",
        threads: int | None = None,
        dynamic_int8: bool = False,
    ) -> None:
        if threads and device == "cpu":
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        self.model = AutoModel.from_pretrained(str(model_dir), dtype=self.dtype, attn_implementation="sdpa")
        self.model.to(self.device).eval()
        if dynamic_int8:  # PyTorch dynamic INT8: Linear weights int8, activations quantised per call
            quantize = torch.ao.quantization.quantize_dynamic
            self.model = quantize(self.model, {torch.nn.Linear}, dtype=torch.qint8)
        self.dim = int(self.model.config.hidden_size)
        self.name = f"torch-{'int8' if dynamic_int8 else dtype}-{device}"

    @torch.inference_mode()
    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        ids = torch.from_numpy(input_ids).to(self.device)
        mask = torch.from_numpy(attention_mask).to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = torch.nn.functional.normalize(mean_pool_torch(hidden, mask).float(), dim=-1)
        return pooled.cpu().numpy()
