"""Piecewise-linear normalisers: attention normalisers (`--softmax_variant_attn`) whose exponential is
a piecewise-linear interpolation, what cheap normaliser hardware implements with a small table of
node values and one multiply-add per element.

A section of the softmax kind kept in its own file (variations/softmax.py is near the length
limit); the classes follow softmax.py's conventions (Normalizer, masks, fp32 math, kernel_spec).

    python train.py --preset cpu --softmax_variant_attn pwl_consmax --pwl_segments 8 --pwl_exp_min -8

The approximation p of e^z (`pwl_exp`): N = --pwl_segments equal segments over [a, b] =
[--pwl_exp_min, --pwl_exp_max], nodes x_i = a + i h (h = (b - a) / N) holding e^(x_i) exactly, linear
between them; above b the last segment continues (a line: no overflow, a non-zero gradient); below a
p = 0 (the exponent underflows). Error bound: e^z is convex, so on the segment [x_i, x_i + h] the chord
lies above it by at most max_t (e^(x_i) (1 + c t) - e^(x_i + t)) = e^(x_i) (1 - c + c ln c) with
c = (e^h - 1) / h (at t = ln c), which is below e^(x_i + h) h^2 / 8. Over [a, b] the error is
therefore at most e^b h^2 / 8 (exactly e^(b - h) (1 - c + c ln c), in the last segment); below a it
is e^z < e^a. With a = -8, b = 0 and N = 16 segments (h = 0.5): 0.0313 inside (0.0245 exactly),
e^-8 = 3.4e-4 below; tests/variations/test_softmax_pwl.py checks both against `pwl_error_bound`.
"""
from __future__ import annotations

import math

import torch

from errors import UserError
from variations.cost import Cost
from variations.registry import knob, register
from variations.softmax import (CONSMAX_BETA, CONSMAX_GAMMA, Normalizer, consmax_gamma_init, finish_weights,
                                prepare_scores)

PWL_SEGMENTS = knob("pwl_segments", 16, "pwl_softmax, pwl_consmax: linear segments of the exponential's "
                    "approximation over [--pwl_exp_min, --pwl_exp_max]", minimum=1)
PWL_EXP_MIN = knob("pwl_exp_min", -8.0, "pwl_softmax, pwl_consmax: lower end of the approximated exponent range "
                   "(negative); below it e^z is taken as 0")
PWL_EXP_MAX = knob("pwl_exp_max", 0.0, "pwl_softmax, pwl_consmax: upper end of the approximated exponent range; "
                   "above it the last segment continues as a line")


def check_range(config) -> tuple[float, float, int]:
    """(a, b, N) from the knobs, or a one-line UserError naming the flag."""
    a, b, n = float(config.pwl_exp_min), float(config.pwl_exp_max), int(config.pwl_segments)
    if not a < 0:
        raise UserError(f"--pwl_exp_min must be negative (e^z below it is taken as 0), got {a}")
    if not b > a:
        raise UserError(f"--pwl_exp_max must be greater than --pwl_exp_min {a}, got {b}")
    return a, b, n


def pwl_nodes(a: float, b: float, n: int) -> torch.Tensor:
    """The n + 1 node values e^(a + i h), computed in fp64: the hardware's table."""
    return torch.exp(torch.linspace(a, b, n + 1, dtype=torch.float64))


def pwl_exp(z: torch.Tensor, a: float, b: float, nodes: torch.Tensor) -> torch.Tensor:
    """p(z): the chord of e^z between the two nodes around z (the last segment's line above b), 0 below a."""
    n = nodes.numel() - 1
    h = (b - a) / n
    u = (z - a) / h  # position in segments
    i = u.detach().floor().clamp(0, n - 1)  # the segment (a table index; no gradient)
    lo, hi = nodes.to(z.dtype)[i.long()], nodes.to(z.dtype)[i.long() + 1]
    return torch.where(u < 0, 0.0, lo + (hi - lo) * (u - i))


def pwl_error_bound(a: float, b: float, n: int) -> float:
    """The largest |p(z) - e^z| for z in [a, b]: in the last segment, e^(b - h) (1 - c + c ln c), c = (e^h - 1) / h."""
    h = (b - a) / n
    c = math.expm1(h) / h
    return math.exp(b - h) * (1 - c + c * math.log(c))


def _pwl_cost(n: int) -> Cost:
    """p(z) per element: (z - a) / h (a subtract and a multiply), the floor and the two range
    compares, one multiply-add between the two table values (no exponential)."""
    return Cost(elementwise=4 * n, cmp=3 * n)


@register("softmax", "pwl_softmax", knobs=[PWL_SEGMENTS, PWL_EXP_MIN, PWL_EXP_MAX])
class PiecewiseLinearSoftmax(Normalizer):
    """Piecewise-linear softmax: p(x - max) / sum(p(x - max)), p the N-segment linear interpolation of e^z on [a, b] (0 below a).

    A softmax whose exponential is a table of --pwl_segments + 1 node values e^(a + i h) and one
    multiply-add per element (the linear-interpolation exp of low-cost softmax hardware; e.g. the
    piecewise-linear units surveyed by Stevens et al., 2021 and used in integer softmax designs).
    The row max is subtracted first, so z <= 0 and the row's largest score weighs p(0) > 0: every row
    with a kept key sums to one. Error of p: the module docstring's bound (at most e^b h^2 / 8 on
    [a, b]). No Triton kernel: the fused kernels exponentiate in their online-softmax loop, so
    --softmax_kernel runs this module (kernels.describe says so in the run log).
    """

    SITES = ("exp_input", "numerator", "denominator")
    triton_kernel = False  # read by kernels.has_kernel

    def __init__(self, config):
        super().__init__()
        self.a, self.b, self.n = check_range(config)
        self.register_buffer("nodes", pwl_nodes(self.a, self.b, self.n), persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        s, keep = prepare_scores(x, mask)
        # the row max is part of the function (p(z - m) is not shift-invariant, unlike e^z): not detached
        shift = s.masked_fill(~keep, float("-inf")).amax(dim=-1, keepdim=True)
        shift = torch.where(torch.isfinite(shift), shift, 0.0)  # a row with nothing kept
        z = self.q("exp_input", (s - shift).masked_fill(~keep, 0.0), keep)
        e = self.q("numerator", pwl_exp(z, self.a, self.b, self.nodes).masked_fill(~keep, 0.0), keep)
        total = self.q("denominator", e.sum(dim=-1, keepdim=True))
        return finish_weights(e / torch.where(total > 0, total, 1.0), keep, x.dtype)

    def cost(self, rows: int, row_len: int) -> Cost:
        n = rows * row_len
        # row max, subtract it, p, row sum, one reciprocal per row and a multiply per element
        return _pwl_cost(n) + Cost(elementwise=2 * n, cmp=n, reduce=2 * n, div=rows, act_mem=n)


@register("softmax", "pwl_consmax", knobs=[CONSMAX_BETA, CONSMAX_GAMMA, PWL_SEGMENTS, PWL_EXP_MIN, PWL_EXP_MAX])
class PiecewiseLinearConSmax(Normalizer):
    """Piecewise-linear ConSmax: p(x - beta) / gamma, ConSmax (Liu et al., 2024) with e^z replaced by its N-segment linear interpolation p on [a, b].

    beta and gamma are learned scalars (--consmax_beta_init, --consmax_gamma_init) as in consmax;
    no row max or sum, so every weight is a table lookup, one multiply-add and one multiply. Above
    --pwl_exp_max the last segment continues as a line (as saturating_consmax's tangent, no overflow
    and a non-zero gradient), below --pwl_exp_min the weight is 0. Triton: the row kernels and the
    fused attention (transform pwl_consmax in variations/triton_transforms.py).
    """

    elementwise = True  # weights need no row max or sum (fused attention applies)
    SITES = ("exp_input", "numerator")

    def __init__(self, config):
        super().__init__()
        self.a, self.b, self.n = check_range(config)
        self.beta = torch.nn.Parameter(torch.tensor(float(config.consmax_beta_init)))
        self.gamma = torch.nn.Parameter(torch.tensor(consmax_gamma_init(config)))
        self.register_buffer("nodes", pwl_nodes(self.a, self.b, self.n), persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        s, keep = prepare_scores(x, mask)
        z = self.q("exp_input", s - self.beta, keep)
        y = self.q("numerator", pwl_exp(z, self.a, self.b, self.nodes), keep) / self.gamma
        return finish_weights(y, keep, x.dtype)

    def kernel_spec(self, x):
        # slots: p0 = beta + a (so u = (s - p0) / h), p1 = gamma e^-a (the table's factor e^a folded into
        # the divisor, so the kernel's nodes are e^(i h)), p2 = h, p3 = N; gradients reach beta and gamma
        h = (self.b - self.a) / self.n
        beta, gamma = self.beta.float().reshape(1), self.gamma.float().reshape(1)
        return "pwl_consmax", torch.stack([beta + self.a, gamma * math.exp(-self.a), torch.full_like(beta, h),
                                           torch.full_like(beta, float(self.n))], dim=1)

    def cost(self, rows: int, row_len: int) -> Cost:
        n = rows * row_len
        # subtract beta, p, multiply by 1/gamma (a learned constant: one reciprocal, not per element)
        return _pwl_cost(n) + Cost(params=2, elementwise=2 * n, act_mem=n)
