"""Feed-forward blocks: `--mlp_variant NAME`; hidden width from --mlp_hidden_size or
--mlp_expansion_factor x n_embd.

Every class takes `(config)` and maps (B, T, n_embd) -> (B, T, n_embd); `cost(T)` counts its
operations per token. The projections come from the linear registry (sites mlp_up and mlp_down); the
one back into the residual stream is named `c_proj`, which gives it the scaled residual init.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from variations.act_quant import ActSites
from variations.cost import DEFAULT, Cost
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
        self.aq = ActSites(config, ("mlp_hidden",))  # activation quantisation (variations/act_quant.py)
        self.input_bits = config.act_bits("mlp_input")  # the block's site, read for cost()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.aq("mlp_hidden", self.act(self.c_fc(x)))))

    def cost(self, T: int = 1) -> Cost:
        hidden = self.c_proj.in_features
        return (self.c_fc.cost(T).with_activation(f"int{self.input_bits}" if self.input_bits else DEFAULT)
                + self.act.cost(self.c_fc.out_features) + self.aq.cost({"mlp_hidden": hidden})
                + self.c_proj.cost(T).with_activation(self.aq.fmt("mlp_hidden", DEFAULT)))


class _GLU(nn.Module):
    """Base of the GLU variants (Shazeer, 2020): c_proj(gate_act(x W) * (x V)); subclasses set GATE.

    W and V are fused into one c_fc of width 2 x hidden (gate first, then up), so a GLU block has
    1.5x the parameters of `mlp` at the same hidden width (LLaMA picks hidden = 8/3 n_embd to match;
    set --mlp_hidden_size). The gate activation is fixed by the variant; --activation_variant is not read.
    """

    GATE: str = ""  # activation registry name of the gate

    def __init__(self, config):
        super().__init__()
        self.c_fc = create("linear", config.linear_for("mlp_up"), config, config.n_embd, 2 * config.mlp_hidden_size,
                           config.bias)
        self.c_proj = create("linear", config.linear_for("mlp_down"), config, config.mlp_hidden_size, config.n_embd,
                             config.bias)
        self.act = create("activation", self.GATE, config)  # fixed: this is what names the variant
        self.dropout = nn.Dropout(config.dropout)
        self.aq = ActSites(config, ("mlp_hidden",))  # activation quantisation (variations/act_quant.py)
        self.input_bits = config.act_bits("mlp_input")  # the block's site, read for cost()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.c_fc(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.dropout(self.c_proj(self.aq("mlp_hidden", self.act(gate) * up)))

    def cost(self, T: int = 1) -> Cost:
        hidden = self.c_proj.in_features
        # up-projection (both halves), gate activation, the gate * up multiply (keeps up), down-projection
        return (self.c_fc.cost(T).with_activation(f"int{self.input_bits}" if self.input_bits else DEFAULT)
                + self.act.cost(hidden) + Cost(elementwise=hidden, act_mem=hidden)
                + self.aq.cost({"mlp_hidden": hidden})
                + self.c_proj.cost(T).with_activation(self.aq.fmt("mlp_hidden", DEFAULT)))


@register("mlp", "swiglu")
class SwiGLU(_GLU):
    """SwiGLU (Shazeer, 2020, "GLU Variants Improve Transformer"): c_proj(silu(x W) * (x V)).

    Fused W/V in one c_fc of width 2 x hidden: 1.5x the parameters of `mlp` at the same hidden width.
    """

    GATE = "silu"


@register("mlp", "geglu")
class GEGLU(_GLU):
    """GEGLU (Shazeer, 2020, "GLU Variants Improve Transformer"): c_proj(gelu(x W) * (x V)), exact erf GELU.

    Fused W/V in one c_fc of width 2 x hidden: 1.5x the parameters of `mlp` at the same hidden width.
    """

    GATE = "gelu"


@register("mlp", "reglu")
class ReGLU(_GLU):
    """ReGLU (Shazeer, 2020, "GLU Variants Improve Transformer"): c_proj(relu(x W) * (x V)).

    Fused W/V in one c_fc of width 2 x hidden: 1.5x the parameters of `mlp` at the same hidden width.
    """

    GATE = "relu"


@register("mlp", "identity")
class IdentityMLP(nn.Module):
    """Pass-through: returns its input x; a pre-norm block then adds norm(x) (NOT a removed MLP: see `none`).

    Kept for parity with nanoGPT-derived sandboxes whose `identity` MLP returns its input. What the
    block then computes depends on --norm_placement_mlp: pre gives x + norm(x), post norm(2 x),
    peri x + norm_out(norm(x)). No parameters; cost zero (a wire).
    """

    def __init__(self, config):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def cost(self, T: int = 1) -> Cost:
        return Cost()


@register("mlp", "none")
class NoMLP(nn.Module):
    """No feed-forward: the sub-layer contributes exactly 0 to the residual stream (attention-only blocks).

    Returns `x * 0` rather than a fresh zeros tensor so the block's MLP norm stays on the autograd
    graph: its parameters receive (zero) gradients, as DistributedDataParallel requires of every
    parameter. Pre and post placement then leave the residual unchanged; under peri placement the
    output norm of zeros is its bias (0 unless --bias with layernorm). Cost zero: hardware would
    omit the sub-layer (the block's norm is still counted by the block).
    """

    def __init__(self, config):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0  # (B, T, C) zeros with a gradient path

    def cost(self, T: int = 1) -> Cost:
        return Cost()
