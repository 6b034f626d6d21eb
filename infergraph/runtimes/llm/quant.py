"""Weight-only quantised linear layers for CPU decoding, where reading the weights is the cost.

A decode step multiplies a few activation rows by every weight, so its time is the time to stream
the weights from memory: fp32 reads 4 bytes per weight, int8 one, int4 (group-wise) ~0.6.
Activations stay in floating point; PyTorch's own CPU kernels do the dequantising matmuls.

int4 uses asymmetric groups of 32 (min/max): the GGUF's Q4_1 blocks are exactly such groups
(q = round((w - min) / d), d = (max - min) / 15), so for SmolLM2 this recovers the shipped 4-bit
weights, the same numbers llama.cpp multiplies by, rather than approximating them.
"""

from __future__ import annotations

import torch

GROUP = 32


class Int8Linear:
    """Per-output-channel symmetric int8 weights."""

    def __init__(self, weight: torch.Tensor) -> None:
        w = weight.float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        self.q = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous()
        self.scale = scale
        self.out_features = w.shape[0]
        self._scales = _ByDtype(scale)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(x, self.q, self._scales[x.dtype])


class Int4Linear:
    """Asymmetric int4 weights in groups of 32 along the input dimension (Q4_1's layout)."""

    def __init__(self, weight: torch.Tensor, group: int = GROUP) -> None:
        w = weight.float()
        n, k = w.shape
        if k % group:
            raise ValueError(f"in_features {k} is not a multiple of the group size {group}")
        g = w.view(n, k // group, group)
        lo, hi = g.amin(dim=-1), g.amax(dim=-1)
        scale = ((hi - lo) / 15).clamp(min=1e-12)
        q = ((g - lo[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.int32).view(n, k)
        zero = lo + 8 * scale  # the kernel computes (q - 8) * scale + zero
        self.packed = torch._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)
        self.scales_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()  # [k/g, n, 2]
        self.group, self.out_features = group, n
        self._scales_zeros = _ByDtype(self.scales_zeros)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch._weight_int4pack_mm_for_cpu(x, self.packed, self.group, self._scales_zeros[x.dtype])


class _ByDtype:
    """A tensor converted once per activation dtype the kernels are called with: converting the
    scales on every call cost ~2 ms of a 12 ms single-stream decode step (profiled)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self._by_dtype = {tensor.dtype: tensor}

    def __getitem__(self, dtype: torch.dtype) -> torch.Tensor:
        converted = self._by_dtype.get(dtype)
        if converted is None:
            converted = self._by_dtype[dtype] = self._by_dtype[next(iter(self._by_dtype))].to(dtype)
        return converted


def quantize(weight: torch.Tensor, precision: str) -> torch.Tensor | Int8Linear | Int4Linear:
    """The weight as stored for `precision` (floating point ones stay tensors)."""
    if precision == "int8":
        return Int8Linear(weight)
    if precision == "int4":
        return Int4Linear(weight)
    return weight
