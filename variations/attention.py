"""Attention mechanisms: `--attention_variant NAME`.

Every class takes `(config)`; `forward(x, position, cache=None)` maps (B, T, n_embd) to
(B, T, n_embd). `position` is the model's shared positional encoding (variations/position.py);
`cache` is this layer's KVCache during generation. `cost(T)` counts the operations per token at
context length T. Projections come from the linear registry (sites attn_qkv and attn_proj); the
output projection is named `c_proj`, which gives it the scaled residual init (model.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from variations.cost import Cost
from variations.registry import create, register


class KVCache:
    """Keys and values of one attention layer during generation, preallocated to max_len positions.

    k, v: (B, n_kv_head, max_len, hs); `length` positions are filled.
    """

    def __init__(self, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 device: torch.device | str, dtype: torch.dtype):
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, n_kv_head, T, hs) after the filled part; return all keys/values so far."""
        end = self.length + k.size(2)
        if end > self.k.size(2):
            raise ValueError(f"KV cache holds {self.k.size(2)} positions; cannot append up to {end}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


def causal_mask(t_q: int, t_k: int, device) -> torch.Tensor:
    """(t_q, t_k) bool, True where query i (absolute position t_k - t_q + i) may see key j."""
    offset = t_k - t_q
    q_pos = torch.arange(t_q, device=device).unsqueeze(1) + offset
    return torch.arange(t_k, device=device).unsqueeze(0) <= q_pos


@register("attention", "causal")
class CausalSelfAttention(nn.Module):
    """Causal self-attention with grouped-query heads (--n_kv_head) and a pluggable --softmax_variant_attn.

    Multi-head attention (Vaswani et al., 2017); grouped-query heads (Ainslie et al., 2023).
    Plain softmax runs through F.scaled_dot_product_attention (FlashAttention where available);
    any other normaliser uses the explicit path: scores, causal mask, normaliser, weighted sum.
    """

    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        # q, k, v in one matmul: n_head query heads, n_kv_head key and value heads
        self.c_attn = create("linear", config.linear_for("attn_qkv"), config, config.n_embd,
                             (config.n_head + 2 * config.n_kv_head) * self.head_dim, config.bias)
        self.c_proj = create("linear", config.linear_for("attn_proj"), config, config.n_head * self.head_dim,
                             config.n_embd, config.bias)
        self.softmax = create("softmax", config.softmax_variant_attn, config)
        self.use_sdpa = bool(getattr(self.softmax, "sdpa_compatible", False))
        self.dropout = config.dropout
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, position, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        hs, nh, nkv = self.head_dim, self.n_head, self.n_kv_head
        q, k, v = self.c_attn(x).split([nh * hs, nkv * hs, nkv * hs], dim=2)
        q = q.view(B, T, nh, hs).transpose(1, 2)   # (B, nh, T, hs)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        start = cache.length if cache is not None else 0
        q, k = position.rotate(q, k, start)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nkv, start + T, hs)
        t_k = k.size(2)
        bias = position.score_bias(T, t_k, x.device)  # (nh, T, t_k) or None

        if self.use_sdpa:
            mask = None
            if bias is not None:  # the causal mask folded into the additive bias
                mask = bias.to(q.dtype).masked_fill(~causal_mask(T, t_k, x.device), float("-inf"))
            elif t_k != T:  # is_causal aligns the mask top-left: right only when queries and keys coincide
                mask = causal_mask(T, t_k, x.device)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None,
                dropout_p=self.dropout if self.training else 0.0, enable_gqa=nkv != nh)
        else:
            if nkv != nh:  # each kv head serves nh / nkv consecutive query heads
                k = k.repeat_interleave(nh // nkv, dim=1)  # (B, nh, t_k, hs)
                v = v.repeat_interleave(nh // nkv, dim=1)
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, T, t_k)
            if bias is not None:
                scores = scores + bias
            att = self.softmax(scores, causal_mask(T, t_k, x.device))
            y = self.attn_dropout(att) @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hs)
        return self.resid_dropout(self.c_proj(y))

    def cost(self, T: int) -> Cost:
        """Per token at context T: projections, n_head rows of T scores (full matrix), the normaliser,
        the weighted sum. The fused SDPA path keeps no T x T matrix for the backward pass."""
        nh, hs = self.n_head, self.head_dim
        attn = Cost(macs=2 * nh * T * hs, elementwise=nh * T, act_mem=(0 if self.use_sdpa else 2 * nh * T) + 3 * nh * hs)
        return self.c_attn.cost(T) + attn + self.softmax.cost(nh, T) + self.c_proj.cost(T)
