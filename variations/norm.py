"""Normalisation layers: `--norm_variant NAME` (every block's two norms and the final norm).

Every class takes `(config)` and normalises the last dimension (n_embd) of a (B, T, C) tensor.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from variations.cost import Cost
from variations.registry import knob, register

NORM_EPS = knob("norm_eps", 1e-5, "epsilon added to the variance / mean square of the norms", minimum=0.0)


@register("norm", "layernorm", knobs=[NORM_EPS])
class LayerNorm(nn.Module):
    """LayerNorm (Ba et al., 2016): (x - mean) / sqrt(var + eps) * w (+ b when --bias)."""

    def __init__(self, config):
        super().__init__()
        self.eps = config.norm_eps
        self.weight = nn.Parameter(torch.ones(config.n_embd))
        self.bias = nn.Parameter(torch.zeros(config.n_embd)) if config.bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)

    def cost(self, T: int = 1) -> Cost:
        C = self.weight.numel()
        b = self.bias is not None
        # mean and variance (two row sums), subtract, square, one rsqrt, scale, weight (+ bias)
        return Cost(params=C * (2 if b else 1), elementwise=C * (4 + b), sqrt=1, div=2, reduce=2 * C, act_mem=C)


@register("norm", "rmsnorm", knobs=[NORM_EPS])
class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich, 2019): x / sqrt(mean(x^2) + eps) * w; no centring, no bias."""

    def __init__(self, config):
        super().__init__()
        self.eps = config.norm_eps
        self.weight = nn.Parameter(torch.ones(config.n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)

    def cost(self, T: int = 1) -> Cost:
        C = self.weight.numel()
        # mean square (one row sum), one rsqrt, scale, weight
        return Cost(params=C, elementwise=3 * C, sqrt=1, div=1, reduce=C, act_mem=C)
