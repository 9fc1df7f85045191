"""Activation functions (used inside the `mlp` feed-forward block): `--activation_variant NAME`.

Every class takes `(config)` and maps a tensor to a tensor of the same shape; `cost(n)` counts the
operations for n elements (variations/cost.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from variations.cost import Cost
from variations.registry import register


@register("activation", "gelu")
class GELU(nn.Module):
    """GELU, exact erf form: x * Phi(x) (Hendrycks & Gimpel, 2016)."""

    def __init__(self, config):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)

    def cost(self, n: int) -> Cost:
        return Cost(elementwise=3 * n, exp=n, act_mem=n)  # 0.5 x (1 + erf(x / sqrt 2)): erf counted as one exp


@register("activation", "relu")
class ReLU(nn.Module):
    """ReLU: max(x, 0)."""

    def __init__(self, config):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)

    def cost(self, n: int) -> Cost:
        return Cost(cmp=n, act_mem=n)


@register("activation", "silu")
class SiLU(nn.Module):
    """SiLU / swish: x * sigmoid(x) (Elfwing et al., 2017; Ramachandran et al., 2017)."""

    def __init__(self, config):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)

    def cost(self, n: int) -> Cost:
        return Cost(elementwise=n, exp=n, div=n, act_mem=n)  # x / (1 + exp(-x))


@register("activation", "squared_relu")
class SquaredReLU(nn.Module):
    """Squared ReLU: max(x, 0)^2 (Primer, So et al., 2021)."""

    def __init__(self, config):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()

    def cost(self, n: int) -> Cost:
        return Cost(elementwise=n, cmp=n, act_mem=n)
