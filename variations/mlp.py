"""Feed-forward blocks: `--mlp_variant NAME`; hidden width from --mlp_hidden_size or
--mlp_expansion_factor x n_embd.

Every class takes `(config)` and maps (B, T, n_embd) -> (B, T, n_embd); `cost(T)` counts its
operations per token. The projections come from the linear registry (sites mlp_up and mlp_down); the
one back into the residual stream is named `c_proj`, which gives it the scaled residual init.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from errors import UserError
from variations.act_quant import ActSites
from variations.cost import DEFAULT, Cost
from variations.registry import create, get, knob, names, normalize, register


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


# ---------------------------------------------------------------- mixture of experts

MOE_N_EXPERTS = knob("moe_n_experts", 8, "moe: number of experts", minimum=1)
MOE_TOP_K = knob("moe_top_k", 2, "moe: experts each token is sent to (at most moe_n_experts)", minimum=1)
MOE_ROUTER = knob("moe_router", "softmax", "moe: softmax (the top-k of softmax(x W_g), weights not renormalised: "
                  "Switch / GShard) or noisy_top_k (Shazeer et al. 2017: softmax over the top-k of x W_g + "
                  "N(0, 1) softplus(x W_noise), noise in training only)", choices=("softmax", "noisy_top_k"))
MOE_EXPERT_VARIANT = knob("moe_expert_variant", "mlp", "moe: the feed-forward block of each expert, an "
                          "--mlp_variant name (mlp reads --activation_variant; swiglu, geglu, reglu), hidden "
                          "width --mlp_hidden_size each")
MOE_AUX_LOSS_WEIGHT = knob("moe_aux_loss_weight", 0.01, "moe: weight of the load-balancing loss n_experts * "
                           "sum_i f_i P_i added to the training loss (Switch Transformer: 0.01)", minimum=0.0)
MOE_CAPACITY_FACTOR = knob("moe_capacity_factor", None, "moe: in training, each expert takes at most "
                           "ceil(factor * tokens * top_k / n_experts) of a batch's assignments (first choices "
                           "first, then in token order); the rest are dropped and counted; default: no limit",
                           value_type=float)
NOT_EXPERTS = ("moe", "none", "identity")  # no parameters to route to, or a recursion


@register("mlp", "moe", knobs=[MOE_N_EXPERTS, MOE_TOP_K, MOE_ROUTER, MOE_EXPERT_VARIANT, MOE_AUX_LOSS_WEIGHT,
                               MOE_CAPACITY_FACTOR])
class MixtureOfExperts(nn.Module):
    """Mixture of experts (Shazeer et al., 2017; Switch, Fedus et al., 2022): y = sum over the top-k experts e of g_e(x) FFN_e(x).

    A router x W_g (n_embd x n_experts, no bias) scores the experts per token; the token goes to the
    k best (--moe_top_k) with weights g: with --moe_router softmax the k largest of softmax(x W_g)
    (GShard / Switch; not renormalised, so with k = 1 the router still learns from the LM loss), with
    noisy_top_k softmax over the k largest of H = x W_g + N(0, 1) softplus(x W_noise) (Shazeer et
    al., 2017; the noise only in training). Each expert is a registered MLP (--moe_expert_variant)
    of hidden width --mlp_hidden_size. Load balancing (Switch Transformer, eq. 4): aux = n_experts *
    sum_i f_i P_i, f_i the fraction of the batch's k-assignments that went to expert i and P_i the
    mean of softmax(x W_g)_i; 1 when balanced. The model adds --moe_aux_loss_weight x aux to the
    training loss (not to evaluation losses) and train.py logs it as moe_aux_loss. Capacity
    (--moe_capacity_factor, training only, as Switch: evaluation and generation are dropless, so they
    stay causal and cache-exact): an expert takes at most ceil(factor N k / n_experts) of the N
    tokens' assignments, first choices before second choices, then in token order; dropped
    assignments contribute 0 and are counted (moe_dropped_tokens in the log). Cost: `params` counts
    every expert, `weights` what one token reads (router and k experts): the active parameters.
    """

    adds_loss = True  # model.py adds aux_loss_weight * aux_loss to the training loss

    def __init__(self, config):
        super().__init__()
        self.n_experts, self.top_k = config.moe_n_experts, config.moe_top_k
        if self.top_k > self.n_experts:
            raise UserError(f"--moe_top_k {self.top_k} exceeds --moe_n_experts {self.n_experts}; pick k <= n_experts")
        expert = config.moe_expert_variant
        get("mlp", expert)  # an unknown name: the registry's error with the closest names
        if normalize(expert) in NOT_EXPERTS:
            raise UserError(f"--moe_expert_variant {expert} cannot be an expert (it has no weights to route to, "
                            f"or is moe itself); use one of: {', '.join(n for n in names('mlp') if n not in NOT_EXPERTS)}")
        factor = config.moe_capacity_factor
        if factor is not None and not factor > 0:
            raise UserError(f"--moe_capacity_factor must be positive (or unset for no limit), got {factor}")
        self.capacity_factor, self.aux_loss_weight = factor, config.moe_aux_loss_weight
        self.noisy = config.moe_router == "noisy_top_k"
        self.router = nn.Linear(config.n_embd, self.n_experts, bias=False)
        self.noise = nn.Linear(config.n_embd, self.n_experts, bias=False) if self.noisy else None
        self.experts = nn.ModuleList([create("mlp", expert, config) for _ in range(self.n_experts)])
        # the last forward's statistics (detached except aux_loss): read by model.py and train.py
        self.aux_loss = torch.zeros(())
        self.dropped = torch.zeros((), dtype=torch.long)
        self.assignments = 0
        self.last_load = torch.zeros(self.n_experts)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, C) -> (expert ids (N, k), weights (N, k), router probabilities softmax(x W_g) (N, E))."""
        logits = self.router(x).float()  # (N, E)
        probs = logits.softmax(dim=-1)
        if not self.noisy:
            weights, ids = probs.topk(self.top_k, dim=-1)
            return ids, weights, probs
        h = logits
        if self.training:
            h = logits + torch.randn_like(logits) * F.softplus(self.noise(x).float())
        top, ids = h.topk(self.top_k, dim=-1)
        return ids, top.softmax(dim=-1), probs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        xf = x.reshape(-1, shape[-1])  # (N, C)
        N, E, k = xf.size(0), self.n_experts, self.top_k
        ids, weights, probs = self.route(xf)
        # assignments slot-major (every token's first choice, then every second choice, ...)
        expert_of = ids.t().reshape(-1)  # (k N,)
        token_of = torch.arange(N, device=x.device).repeat(k)
        weight_of = weights.t().reshape(-1)
        one_hot = F.one_hot(expert_of, E)  # (k N, E)
        load = one_hot.sum(dim=0)  # (E,) assignments per expert
        self.aux_loss = E * ((load.float() / (k * N)) * probs.mean(dim=0)).sum()
        keep = torch.ones_like(expert_of, dtype=torch.bool)
        if self.training and self.capacity_factor is not None:
            capacity = math.ceil(self.capacity_factor * N * k / E)
            rank = (one_hot.cumsum(dim=0) * one_hot).sum(dim=1) - 1  # place of each assignment in its expert's queue
            keep = rank < capacity
        self.dropped = (~keep).sum().detach()
        self.assignments, self.last_load = k * N, load.detach()
        out = None
        for e, expert in enumerate(self.experts):  # every expert runs (on no tokens, too): each weight gets a gradient
            sel = (expert_of == e) & keep
            tokens = token_of[sel]
            y = expert(xf[tokens].unsqueeze(0)).squeeze(0)  # (n_e, C), in the experts' (autocast) dtype
            out = xf.new_zeros(xf.shape, dtype=y.dtype) if out is None else out
            out = out.index_add(0, tokens, y * weight_of[sel].unsqueeze(-1).to(y.dtype))
        return out.view(shape)

    def cost(self, T: int = 1) -> Cost:
        """Per token: the router (x W_g: n_embd x n_experts MACs), softmax over the experts (E
        exponentials, a row max and sum, E divisions), top-k selection (k passes of E compares), k
        experts, and the weighted combination (k multiply-adds per channel). `params` all experts,
        router and noise weights; `weights` those one token reads at inference (router and k experts)."""
        E, k, C = self.n_experts, self.top_k, self.router.in_features
        expert = self.experts[0].cost(T)
        route = Cost(params=C * E, macs=C * E, exp=E, reduce=2 * E, cmp=E + k * E, div=E, act_mem=C + E)
        noise = Cost(params=C * E, weights=0) if self.noisy else Cost()
        active = expert.repeat(k)
        active.params = expert.params * E
        return route + noise + active + Cost(elementwise=2 * k * C, act_mem=k * C)
