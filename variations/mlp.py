"""Feed-forward blocks: `--mlp_variant NAME`; hidden width from --mlp_hidden_size or
--mlp_expansion_factor x n_embd.

Every class takes `(config)` and maps (B, T, n_embd) -> (B, T, n_embd); `cost(T)` counts its
operations per token. The projections come from the linear registry (sites mlp_up and mlp_down); the
one back into the residual stream is named `c_proj`, which gives it the scaled residual init.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from variations.cost import Cost
from variations.registry import create, register


@register("mlp", "mlp")
class MLP(nn.Module):
    """Two-layer MLP: c_proj(act(c_fc(x))), the activation from --activation_variant (GPT-2)."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = create("linear", config.linear_for("mlp_up"), config, config.n_embd, config.mlp_hidden_size, config.bias)
        self.act = create("activation", config.activation_variant, config)
        self.c_proj = create("linear", config.linear_for("mlp_down"), config, config.mlp_hidden_size, config.n_embd,
                             config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))

    def cost(self, T: int = 1) -> Cost:
        return self.c_fc.cost(T) + self.act.cost(self.c_fc.out_features) + self.c_proj.cost(T)


@register("mlp", "swiglu")
class SwiGLU(nn.Module):
    """SwiGLU (Shazeer, 2020, "GLU Variants Improve Transformer"): c_proj(silu(x W) * (x V)).

    W and V are fused into one c_fc of width 2 x hidden, so this block has 1.5x the parameters of
    `mlp` at the same hidden width (LLaMA picks hidden = 8/3 n_embd to match; set --mlp_hidden_size).
    """

    def __init__(self, config):
        super().__init__()
        self.c_fc = create("linear", config.linear_for("mlp_up"), config, config.n_embd, 2 * config.mlp_hidden_size,
                           config.bias)
        self.c_proj = create("linear", config.linear_for("mlp_down"), config, config.mlp_hidden_size, config.n_embd,
                             config.bias)
        self.act = create("activation", "silu", config)  # fixed: this is what makes it SwiGLU
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.c_fc(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.dropout(self.c_proj(self.act(gate) * up))

    def cost(self, T: int = 1) -> Cost:
        hidden = self.c_proj.in_features
        return (self.c_fc.cost(T) + self.act.cost(hidden) + Cost(elementwise=hidden, act_mem=hidden)
                + self.c_proj.cost(T))
