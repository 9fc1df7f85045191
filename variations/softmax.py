"""Normalisers of attention scores: `--softmax_variant_attn NAME`.

Every class takes `(config)`; `forward(scores, mask=None)` maps scores (..., T_q, T_k) to weights of
the same shape and dtype. `mask` is a boolean tensor broadcastable to the scores, True where a key
may be attended; masked positions get exactly zero weight, and a fully masked row is all zeros.
Work is done in fp32 and cast back, so bf16/fp16 scores are safe. `cost(rows, row_len)` counts the
operations for `rows` rows of `row_len` scores (variations/cost.py).

A class whose `sdpa_compatible` is True computes exactly the standard softmax, so attention may
hand the whole computation to `F.scaled_dot_product_attention` (FlashAttention) instead.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from variations.cost import Cost
from variations.registry import knob, register

CONSMAX_BETA = knob("consmax_beta_init", 2.5, "ConSmax: initial beta (learned offset subtracted before exp)")
CONSMAX_GAMMA = knob("consmax_gamma_init", 100.0, "ConSmax: initial gamma (learned divisor replacing the row sum)")


@register("softmax", "softmax")
class Softmax(nn.Module):
    """Softmax: exp(x - max) / sum(exp(x - max)) over the keys."""

    sdpa_compatible = True

    def __init__(self, config):
        super().__init__()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        s = x.float()
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        y = torch.softmax(s, dim=-1)
        if mask is not None:
            y = y.masked_fill(~mask, 0.0)  # a fully masked row is NaN after softmax: make it 0
        return y.to(x.dtype)

    def cost(self, rows: int, row_len: int) -> Cost:
        n = rows * row_len
        # row max, subtract, exp, row sum, divide
        return Cost(elementwise=n, exp=n, div=n, cmp=n, reduce=2 * n, act_mem=n)


@register("softmax", "consmax", knobs=[CONSMAX_BETA, CONSMAX_GAMMA])
class ConSmax(nn.Module):
    """ConSmax (Liu et al., 2024): exp(x - beta) / gamma with learnable scalars beta and gamma.

    No max and no row sum: every weight is computed on its own, which is what makes it cheap in
    hardware. The exponent is clamped at 80 so that exp never overflows fp32, and the result is
    clamped to the largest finite value of the input dtype (fp16 tops out at 65504).
    """

    sdpa_compatible = False
    MAX_EXPONENT = 80.0  # exp(88.7) overflows fp32; stay clear of it

    def __init__(self, config):
        super().__init__()
        self.beta = nn.Parameter(torch.tensor(float(config.consmax_beta_init)))
        self.gamma = nn.Parameter(torch.tensor(float(config.consmax_gamma_init)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        e = torch.exp(torch.clamp(x.float() - self.beta, max=self.MAX_EXPONENT))
        if mask is not None:
            e = e.masked_fill(~mask, 0.0)
        y = e / self.gamma
        if x.dtype != torch.float32:
            y = y.clamp(max=torch.finfo(x.dtype).max)
        return y.to(x.dtype)

    def cost(self, rows: int, row_len: int) -> Cost:
        n = rows * row_len
        # subtract beta, exp, divide by gamma: no max, no row sum
        return Cost(params=2, elementwise=n, exp=n, div=n, act_mem=n)
