"""Decode attention of the LLM engine's CPU path in bf16 (two batched matmuls instead of SDPA)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from infergraph.runtimes.llm.model import _decode_attention


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_decode_attention_matches_sdpa_with_grouped_heads_and_ragged_contexts(dtype):
    torch.manual_seed(0)
    d, heads, kv_heads, hd, ctx = 5, 9, 3, 64, 40
    q = torch.randn(d, heads, hd)
    k = torch.randn(d, kv_heads, ctx, hd) * torch.arange(1, kv_heads + 1).view(1, -1, 1, 1)  # heads differ
    v = torch.randn(d, kv_heads, ctx, hd)
    lengths = torch.tensor([1, 7, 40, 23, 16])
    mask = (torch.arange(ctx)[None, :] < lengths[:, None])[:, None, None, :]
    want = F.scaled_dot_product_attention(q[:, :, None, :], k, v, attn_mask=mask, enable_gqa=True)[:, :, 0]
    head_major = [t.transpose(0, 1).contiguous().to(dtype) for t in (k, v)]  # the layout the engine gathers
    got = _decode_attention(q.to(dtype), *head_major, mask).float()
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-5
    assert torch.allclose(got, want, atol=tol, rtol=tol)
    # a key past a sequence's length changes nothing
    k2 = k.clone()
    k2[0, :, 5:] = 100.0
    k2_head_major = k2.transpose(0, 1).contiguous().to(dtype)
    again = _decode_attention(q.to(dtype), k2_head_major, head_major[1], mask)
    assert torch.equal(again[0], got.to(dtype)[0])
