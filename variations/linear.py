"""Linear layers for the projections of attention and MLP: `--linear_variant NAME`, or per site
`--linear_variant_attn_qkv / _attn_proj / _mlp_up / _mlp_down NAME`.

Every class takes `(config, in_features, out_features, bias)`, subclasses nn.Linear (so weight init
and weight decay treat it as a matrix) and maps (..., in_features) -> (..., out_features).
"""
from __future__ import annotations

import torch.nn as nn

from variations.cost import Cost
from variations.registry import register


@register("linear", "linear")
class Linear(nn.Linear):
    """Dense linear layer y = x W^T (+ b), full precision."""

    def __init__(self, config, in_features: int, out_features: int, bias: bool = False):
        super().__init__(in_features, out_features, bias=bias)

    def cost(self, T: int = 1) -> Cost:
        n_in, n_out = self.in_features, self.out_features
        has_bias = self.bias is not None
        return Cost(params=n_in * n_out + (n_out if has_bias else 0), macs=n_in * n_out,
                    elementwise=n_out if has_bias else 0, act_mem=n_in)
