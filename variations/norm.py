"""Normalisation layers: `--norm_variant NAME` (every block's two norms and the final norm).

Every class takes `(config)` and normalises the last dimension (n_embd) of a (B, T, C) tensor.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from errors import UserError
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


PRMSNORM_FRACTION = knob("prmsnorm_fraction", 0.0625, "pRMSNorm: fraction p of the channels (the first "
                         "ceil(p n_embd)) whose mean square estimates the RMS, in (0, 1]")
HYPERSPHERENORM_LEARN_RADIUS = knob("hyperspherenorm_learn_radius", True, "HypersphereNorm: learn the radius "
                                    "(else it stays at --hyperspherenorm_radius_init)")
HYPERSPHERENORM_RADIUS_INIT = knob("hyperspherenorm_radius_init", None, "HypersphereNorm: initial radius; "
                                   "default sqrt(n_embd) (the norm of an RMS-normalised vector)", value_type=float)


@register("norm", "prmsnorm", knobs=[NORM_EPS, PRMSNORM_FRACTION])
class PartialRMSNorm(nn.Module):
    """Partial RMSNorm (Zhang & Sennrich, 2019): x / sqrt(mean(x[:k]^2) + eps) * w, the RMS from the first k = ceil(p C) channels.

    p is --prmsnorm_fraction (the paper's 6.25% default); p = 1 is RMSNorm.
    """

    def __init__(self, config):
        super().__init__()
        p = config.prmsnorm_fraction
        if not 0.0 < p <= 1.0:
            raise UserError(f"--prmsnorm_fraction must be in (0, 1], got {p}")
        self.eps = config.norm_eps
        self.k = math.ceil(p * config.n_embd)  # channels in the RMS estimate
        self.weight = nn.Parameter(torch.ones(config.n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        ms = xf[..., :self.k].pow(2).mean(dim=-1, keepdim=True)  # (B, T, 1)
        return (xf * torch.rsqrt(ms + self.eps)).to(x.dtype) * self.weight

    def cost(self, T: int = 1) -> Cost:
        C, k = self.weight.numel(), self.k
        # square the k channels, their row sum, one rsqrt, scale, weight
        return Cost(params=C, elementwise=k + 2 * C, sqrt=1, div=1, reduce=k, act_mem=C)


@register("norm", "hyperspherenorm", knobs=[NORM_EPS, HYPERSPHERENORM_LEARN_RADIUS, HYPERSPHERENORM_RADIUS_INIT])
class HypersphereNorm(nn.Module):
    """Hypersphere norm: x / sqrt(sum(x^2) + eps) * r, a projection onto the sphere of radius r (learned scalar, init sqrt(C)), as in nGPT (Loshchilov et al., 2024).

    With r = sqrt(C) fixed it equals RMSNorm without the per-channel weight. The radius is a single
    learned scalar unless --hyperspherenorm_learn_radius is off.
    """

    def __init__(self, config):
        super().__init__()
        r = config.hyperspherenorm_radius_init
        r = math.sqrt(config.n_embd) if r is None else float(r)
        if not r > 0:
            raise UserError(f"--hyperspherenorm_radius_init must be positive, got {r}")
        self.eps = config.norm_eps
        self.n_embd = config.n_embd
        self.radius = nn.Parameter(torch.tensor(r)) if config.hyperspherenorm_learn_radius else r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        scale = self.radius * torch.rsqrt(xf.pow(2).sum(dim=-1, keepdim=True) + self.eps)  # (B, T, 1)
        return (xf * scale).to(x.dtype)

    def cost(self, T: int = 1) -> Cost:
        C = self.n_embd
        learned = isinstance(self.radius, nn.Parameter)
        # square, row sum, one rsqrt times the radius, scale
        return Cost(params=int(learned), elementwise=2 * C + 1, sqrt=1, div=1, reduce=C, act_mem=C)


DYT_ALPHA_INIT = knob("dyt_alpha_init", 0.5, "DyT: initial value of the learned scalar alpha (the paper's 0.5; it "
                      "suggests smaller values for wider and deeper language models)")


@register("norm", "dyt", knobs=[DYT_ALPHA_INIT])
class DyT(nn.Module):
    """DyT, Dynamic Tanh (Zhu et al., 2025, "Transformers without Normalization"): gamma * tanh(alpha x) + beta, alpha a learned scalar.

    An elementwise stand-in for LayerNorm/RMSNorm without any row reduction (no mean, variance or
    square root): alpha is one learned scalar per norm (init --dyt_alpha_init), gamma (init 1) and
    beta (init 0) learned per channel, beta always present as in the paper. tanh is computed in fp32.
    Usable wherever a norm is: --norm_variant (pre, post and peri placement), --norm_variant_final,
    and per layer in --norm_variant_layerlist.
    """

    def __init__(self, config):
        super().__init__()
        alpha = config.dyt_alpha_init
        if not (alpha > 0 and math.isfinite(alpha)):
            raise UserError(f"--dyt_alpha_init must be a positive number, got {alpha}")
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.weight = nn.Parameter(torch.ones(config.n_embd))
        self.bias = nn.Parameter(torch.zeros(config.n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(self.alpha * x.float()) * self.weight + self.bias).to(x.dtype)

    def cost(self, T: int = 1) -> Cost:
        C = self.weight.numel()
        # alpha x, tanh (one exponential, the convention of variations/cost.py), gamma times it, plus beta
        return Cost(params=2 * C + 1, elementwise=3 * C, exp=C, act_mem=C)


@register("norm", "identity")
class IdentityNorm(nn.Module):
    """No normalisation (an ablation): returns x unchanged; no parameters, no cost."""

    def __init__(self, config):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def cost(self, T: int = 1) -> Cost:
        return Cost()
