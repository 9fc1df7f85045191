"""Normalisation layers: `--norm_variant NAME` (every block's two norms and the final norm).

Every class takes `(config)` and normalises the last dimension (n_embd) of a (B, T, C) tensor.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from variations.registry import register


@register("norm", "layernorm")
class LayerNorm(nn.Module):
    """LayerNorm (Ba et al., 2016): (x - mean) / sqrt(var + eps) * w (+ b when --bias)."""

    def __init__(self, config):
        super().__init__()
        self.eps = config.norm_eps
        self.weight = nn.Parameter(torch.ones(config.n_embd))
        self.bias = nn.Parameter(torch.zeros(config.n_embd)) if config.bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


@register("norm", "rmsnorm")
class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich, 2019): x / sqrt(mean(x^2) + eps) * w; no centring, no bias."""

    def __init__(self, config):
        super().__init__()
        self.eps = config.norm_eps
        self.weight = nn.Parameter(torch.ones(config.n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
