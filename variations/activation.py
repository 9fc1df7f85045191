"""Activation functions (used inside the `mlp` feed-forward block): `--activation_variant NAME`.

Every class takes `(config)` and maps a tensor to a tensor of the same shape.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from variations.registry import register


@register("activation", "gelu")
class GELU(nn.Module):
    """GELU, exact erf form: x * Phi(x) (Hendrycks & Gimpel, 2016)."""

    def __init__(self, config):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)


@register("activation", "relu")
class ReLU(nn.Module):
    """ReLU: max(x, 0)."""

    def __init__(self, config):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


@register("activation", "silu")
class SiLU(nn.Module):
    """SiLU / swish: x * sigmoid(x) (Elfwing et al., 2017; Ramachandran et al., 2017)."""

    def __init__(self, config):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


@register("activation", "squared_relu")
class SquaredReLU(nn.Module):
    """Squared ReLU: max(x, 0)^2 (Primer, So et al., 2021)."""

    def __init__(self, config):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()
