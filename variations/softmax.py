"""Normalisers of attention scores: `--softmax_variant_attn NAME` (and `--softmax_variant_output`).

Every class takes `(config)`; `forward(scores, mask=None)` maps scores (..., T_q, T_k) to weights of
the same shape and dtype. `mask` is a boolean tensor broadcastable to the scores, True where a key
may be attended; masked positions get exactly zero weight, and a fully masked row is all zeros. A
score of -inf counts as masked too (the limit of every formula here), so logits barred with -inf,
as `generation.mask_padding` does, are safe. Work is done in fp32 (fp64 for fp64 input) and cast back;
results are clamped to the largest finite value of a half-precision dtype. `cost(rows, row_len)`
counts the operations for `rows` rows of `row_len` scores (variations/cost.py).

The same modules turn output logits (B, V) into sampling weights (`--softmax_variant_output`,
generation.sample_next), so every variant works on any shape (..., T_k) as well.

Two families:
  normalising  (softmax, strongermax, softermax, sigsoftmax): each row sums to one; they need a
               row max and a row sum (reductions across the keys).
  elementwise  (consmax, consmax_v2, saturating_consmax, polymax, relumax, relu2max, sigmoidmax,
               softplusmax, squareplus_max): each weight is f(score) / constant, no reductions,
               which is what makes them cheap in hardware; rows do not sum to one.

Every class subclasses `Normalizer`, whose class attributes declare what attention may do with it:
`sdpa_compatible` (exactly the standard softmax, so attention may hand the whole computation to
`F.scaled_dot_product_attention`, FlashAttention) and `elementwise` (the family below).

Triton kernels (variations/triton_softmax.py, triton_attention.py; --softmax_kernel) compute the
same functions fused. `kernel_spec(x) -> (transform, params)` tells them which score transform a
variant is and its scalars as a (G, 4) fp32 tensor (learned scalars first, kept differentiable).

Scale of the elementwise family. Without a row sum, the constants alone set attention's strength, and
Adam moves a learned scalar by about the learning rate per step, so the initial scale stays for the whole
run (docs/reproductions.md). Defaults follow each paper with the sequence length L = --block_size (a
constant: weights stay elementwise under the causal mask and KV cache): relumax relu(x) / L (Wortsman et
al., 2023); sigmoidmax sigmoid(x - ln L) (Ramapuram et al., 2024: bias -log n); consmax initial gamma
(L / 2) e^-beta, so an average causal row of L / 2 keys starts summing to about 1, as softmax's (the
paper gives no value). Earlier constants: --relumax_divisor 256, --sigmoidmax_bias 0 --sigmoidmax_divisor
256, --consmax_gamma_init 100 (ReaLLM-Forge's). relu2max, softplusmax, squareplus_max divide by 256.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from errors import UserError
from variations.cost import Cost
from variations.registry import knob, register

CONSMAX_BETA = knob("consmax_beta_init", 2.5, "ConSmax: initial beta (learned offset subtracted before exp)")
CONSMAX_GAMMA = knob("consmax_gamma_init", None, "ConSmax: initial gamma (learned divisor replacing the row sum; > 0); "
                     "default (block_size / 2) e^-beta_init, so an average causal row sums to about 1 at "
                     "initialisation (100 was ReaLLM-Forge's default)", value_type=float)
SATURATION = knob("saturating_consmax_threshold", 11.0,
                  "saturating_consmax: exponent x - beta beyond which exp continues as its tangent line "
                  "(11: e^11 ~ 6e4 is just under the fp16 maximum)")
POLYMAX_X = knob("polymax_x_intercept", -100.0, "polymax: x below which the weight is 0 (must be negative)")
POLYMAX_Y = knob("polymax_y_intercept", 1.0, "polymax: value at x = 0, reached linearly from the x intercept",
                 minimum=0.0)
POLYMAX_POWER = knob("polymax_power", 2.0, "polymax: power p of the x^p piece for x >= 0 (>= 1: finite slope at 0)",
                     minimum=1.0)
POLYMAX_DIVISOR = knob("polymax_divisor", 1000.0, "polymax: constant divisor of the weights (> 0)")
STRONGERMAX_BASE = knob("strongermax_base", 2.0, "strongermax: base b of b^(x - max) / sum (> 1; e gives softmax; 2, the default, gives softermax's function)")
SOFTERMAX_BLOCK = knob("softermax_block_size", 32, "softermax: keys per slice of the online max/sum pass",
                       minimum=1)
RELUMAX_DIVISOR = knob("relumax_divisor", None, "relumax: constant divisor of relu(x) (> 0); default the sequence "
                       "length --block_size, as Wortsman et al. (2023)", value_type=float)
RELU2MAX_DIVISOR = knob("relu2max_divisor", 256.0, "relu2max: constant divisor of relu(x)^2 (> 0)")
SIGMOIDMAX_DIVISOR = knob("sigmoidmax_divisor", 1.0, "sigmoidmax: constant divisor of sigmoid(x + bias) (> 0)")
SIGMOIDMAX_BIAS = knob("sigmoidmax_bias", None, "sigmoidmax: bias added to the scores before the sigmoid; default "
                       "-ln(--block_size), the -log(n) of Ramapuram et al. (2024)", value_type=float)
SOFTPLUSMAX_DIVISOR = knob("softplusmax_divisor", 256.0, "softplusmax: constant divisor of softplus(x) (> 0)")
SQUAREPLUS_DIVISOR = knob("squareplus_max_divisor", 256.0, "squareplus_max: constant divisor of squareplus(x) (> 0)")
SQUAREPLUS_B = knob("squareplus_max_b", 4 * math.log(2) ** 2,
                    "squareplus_max: b of (x + sqrt(x^2 + b)) / 2 (> 0; 4 ln(2)^2 matches softplus at 0)")


# ---------------------------------------------------------------- shared helpers

def _positive(config, name: str) -> float:
    """config.<name> as a float, or a UserError naming the flag when it is not > 0."""
    value = float(getattr(config, name))
    if not value > 0:
        raise UserError(f"--{name} must be positive, got {value}")
    return value


def consmax_gamma_init(config) -> float:
    """--consmax_gamma_init, or by default (block_size / 2) e^-beta_init (module docstring)."""
    if config.consmax_gamma_init is None:
        return config.block_size / 2 * math.exp(-float(config.consmax_beta_init))
    return _positive(config, "consmax_gamma_init")


def prepare_scores(x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, keep): s = the scores in fp32 (fp64 for fp64 input) with 0 at dropped positions, so no
    formula sees -inf or produces NaN there (not even in gradients); keep = mask & (x != -inf)."""
    keep = ~torch.isneginf(x)
    if mask is not None:
        keep = keep & mask
    s = x.to(torch.promote_types(x.dtype, torch.float32)).masked_fill(~keep, 0.0)
    return s, keep


def finish_weights(y: torch.Tensor, keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Exact zeros at dropped positions; clamp to the dtype's finite range; cast back."""
    y = y.masked_fill(~keep, 0.0)
    if torch.finfo(dtype).max < torch.finfo(y.dtype).max:  # fp16 tops out at 65504
        y = y.clamp(max=torch.finfo(dtype).max)
    return y.to(dtype)


def _masked_softmax(z: torch.Tensor, keep: torch.Tensor, quant=None, exp=torch.exp) -> torch.Tensor:
    """exp(z - max) / sum over the kept positions of the last axis; rows with none kept are 0.

    With `quant` (a normaliser's Normalizer.q, some of its sites set), the steps run one by one and
    the exponent input z - max, the numerators and the row sum pass their activation sites;
    `exp` is the exponential of the base (torch.exp2 for softermax)."""
    empty = ~keep.any(dim=-1, keepdim=True)
    big = torch.finfo(z.dtype).max  # scaled huge scores may round to +-inf: keep them finite
    z = z.clamp(-big, big).masked_fill(~keep, float("-inf")).masked_fill(empty, 0.0)  # no all -inf row: no NaN
    if quant is None:
        return torch.softmax(z, dim=-1)  # finish_weights zeroes the dropped positions and the empty rows
    shift = z.detach().amax(dim=-1, keepdim=True)  # a constant shift of the formula (finite: no empty row)
    e = exp(quant("exp_input", (z - shift).masked_fill(~keep, 0.0), keep)).masked_fill(~keep, 0.0)
    e = quant("numerator", e, keep)
    total = quant("denominator", e.sum(dim=-1, keepdim=True))
    return e / torch.where(total > 0, total, 1.0)


@functools.lru_cache(maxsize=256)
def _constant_spec(slots: tuple[float, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor([list(slots) + [0.0] * (4 - len(slots))], dtype=torch.float32, device=device)


def _spec(x: torch.Tensor, *slots: float) -> torch.Tensor:
    """Constant kernel parameters on x's device: one (1, 4) row, unused slots 0. Cached, so a training
    step does not copy them to the GPU once per layer."""
    return _constant_spec(tuple(float(v) for v in slots), x.device)


def _learned_spec(beta: torch.Tensor, gamma: torch.Tensor, slot2: float = 0.0) -> torch.Tensor:
    """(G, 4) kernel parameters from learned beta and gamma of shape () or (G,): gradients flow back."""
    beta, gamma = beta.float().reshape(-1), gamma.float().reshape(-1)
    return torch.stack([beta, gamma, torch.full_like(beta, slot2), torch.zeros_like(beta)], dim=1)


def _normalising_cost(rows: int, row_len: int, extra_elementwise: int = 0, extra_exp: int = 0,
                      extra_div: int = 0) -> Cost:
    """A max-subtracted softmax over rows of row_len elements: row max, subtract, exp, row sum, then
    one reciprocal of the sum per row and a multiply per element (what hardware does for "/ sum")."""
    n = rows * row_len
    return Cost(elementwise=2 * n + extra_elementwise, exp=n + extra_exp, div=rows + extra_div, cmp=n,
                reduce=2 * n, act_mem=n)


# ---------------------------------------------------------------- the base: declared capabilities

class Normalizer(nn.Module):
    """Base of every normaliser. Its class attributes are the capabilities attention and the kernels
    read (declared here, never probed): `sdpa_compatible` (exactly the standard softmax, so attention
    may call F.scaled_dot_product_attention) and `elementwise` (each weight is f(score) / constant:
    no row max or sum, so the fused attention kernel applies)."""

    sdpa_compatible: bool = False
    elementwise: bool = False
    SITES: tuple = ()  # activation sites inside this normaliser (variations/act_quant.NORMALISER_SITES)
    sites: dict = {}  # site -> its SiteQuant, set by the attention that owns them (the set ones only)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def q(self, site: str, t: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """t through activation site `site` when it is set, else t itself."""
        quant = self.sites.get(site)
        return t if quant is None else quant(t, keep)

    @property
    def quant(self):
        """self.q when a site inside is set (the step-by-step path), else None."""
        return self.q if self.sites else None

    def kernel_spec(self, x: torch.Tensor) -> tuple[str, torch.Tensor]:
        """(Triton score transform, its (G, 4) fp32 scalars): variations/triton_softmax.py."""
        raise NotImplementedError

    def cost(self, rows: int, row_len: int) -> Cost:
        raise NotImplementedError


# ---------------------------------------------------------------- normalising: rows sum to one

@register("softmax", "softmax")
class Softmax(Normalizer):
    """Softmax: exp(x - max) / sum(exp(x - max)) over the keys (Bridle, 1990; Vaswani et al., 2017)."""

    sdpa_compatible = True
    elementwise = False
    SITES = ("exp_input", "numerator", "denominator")

    def __init__(self, config):
        super().__init__()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        s, keep = prepare_scores(x, mask)
        return finish_weights(_masked_softmax(s, keep, self.quant), keep, x.dtype)

    def kernel_spec(self, x):
        return "scaled_softmax", _spec(x, 1.0)

    def cost(self, rows: int, row_len: int) -> Cost:
        return _normalising_cost(rows, row_len)


@register("softmax", "strongermax", knobs=[STRONGERMAX_BASE])
class Strongermax(Normalizer):
    """Strongermax (ReaLLM-Forge): b^(x - max) / sum(b^(x - max)), a softmax with base b = --strongermax_base.

    b^x = e^(x ln b), so this is softmax(x ln b): a base above e sharpens the weights (a lower
    temperature), a base between 1 and e flattens them. At its default b = 2 it computes exactly the
    same function as softermax (the base-2 softmax; softermax only computes it online, in slices),
    so the two train identically: choose another --strongermax_base to study the base itself.
    """

    SITES = ("exp_input", "numerator", "denominator")

    def __init__(self, config):
        super().__init__()
        self.base = float(config.strongermax_base)
        if not self.base > 1:
            raise UserError(f"--strongermax_base must be greater than 1 (2 or e are usual), got {self.base}")

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        s, keep = prepare_scores(x, mask)
        return finish_weights(_masked_softmax(s * math.log(self.base), keep, self.quant), keep, x.dtype)

    def kernel_spec(self, x):
        return "scaled_softmax", _spec(x, math.log(self.base))

    def cost(self, rows: int, row_len: int) -> Cost:
        n = rows * row_len
        return _normalising_cost(rows, row_len, extra_elementwise=n)  # the scaling by ln b


@register("softmax", "softermax", knobs=[SOFTERMAX_BLOCK])
class Softermax(Normalizer):
    """Softermax (Stevens et al., 2021): base-2 softmax 2^(x - max) / sum with an online max over key slices.

    The keys are read in slices of --softermax_block_size. Each slice raises 2 to (x - running max),
    and the running sum is rescaled by 2^(old max - new max) whenever the max grows, so the row is
    read once for the max and the sum together. A second step brings each slice's numerators to the
    final max and divides by the sum. The result equals the base-2 softmax 2^x / sum(2^x) exactly
    up to rounding. The max is a constant shift of the formula, so it is detached: gradients are
    those of the base-2 softmax.
    """

    SITES = ("exp_input", "numerator", "denominator")

    def __init__(self, config):
        super().__init__()
        self.block = int(config.softermax_block_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        s, keep = prepare_scores(x, mask)
        if self.sites:  # quantised inside: the same function, 2^(x - max) / sum, step by step at the final max
            return finish_weights(_masked_softmax(s, keep, self.q, exp=torch.exp2), keep, x.dtype)
        z = s.masked_fill(~keep, float("-inf"))              # (..., T_k); dropped keys give 2^-inf = 0
        running_max = z.new_full((*z.shape[:-1], 1), float("-inf"))  # (..., 1), no key seen yet
        total = z.new_zeros((*z.shape[:-1], 1))               # running sum of 2^(x - running_max)
        numerators, slice_max = [], []
        for start in range(0, z.size(-1), self.block):
            part = z[..., start:start + self.block]
            new_max = torch.maximum(running_max, part.detach().amax(dim=-1, keepdim=True))
            shift = torch.where(torch.isfinite(new_max), new_max, 0.0)  # rows with no key kept so far
            e = torch.exp2(part - shift)
            # 2^(-inf - shift) = 0 drops the sum of a row that had no kept key before this slice
            total = total * torch.exp2(running_max - shift) + e.sum(dim=-1, keepdim=True)
            numerators.append(e)
            slice_max.append(shift)
            running_max = new_max
        final = slice_max[-1]
        # bring each slice to the final max; the clamp only matters for slices of a row with nothing
        # kept yet (their numerators are 0), where shift - final could be huge
        y = torch.cat([e * torch.exp2((m - final).clamp(max=0.0)) for e, m in zip(numerators, slice_max)], dim=-1)
        y = y / torch.where(total > 0, total, 1.0)            # a fully masked row stays 0
        return finish_weights(y, keep, x.dtype)

    def kernel_spec(self, x):
        # the kernel reads a row once (or tiles it with the same online max/sum rescaling)
        return "scaled_softmax", _spec(x, math.log(2.0))

    def cost(self, rows: int, row_len: int) -> Cost:
        n = rows * row_len
        slices = rows * math.ceil(row_len / self.block)
        # per element: running-max compare, subtract, 2^x, sum, final correction multiply, multiply by
        # 1/sum; per slice and row: max of max, 2^(old - new) and multiply for the sum, 2^(slice - final);
        # one reciprocal per row. Every exponential is base 2 (no multiply by log2 e: the variant's point)
        return Cost(elementwise=3 * n + 2 * slices, exp2=n + 2 * slices, div=rows, cmp=n + slices, reduce=2 * n,
                    act_mem=n)


@register("softmax", "sigsoftmax")
class SigSoftmax(Normalizer):
    """Sigsoftmax (Kanai et al., 2018): exp(x) * sigmoid(x) / sum(exp(x) * sigmoid(x)) over the keys.

    Computed in log space as softmax(x + log sigmoid(x)), which is stable for any x (large negative
    scores do not make exp(x) and sigmoid(x) underflow separately before their product).
    """

    SITES = ("exp_input", "numerator", "denominator")

    def __init__(self, config):
        super().__init__()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        s, keep = prepare_scores(x, mask)
        return finish_weights(_masked_softmax(s + F.logsigmoid(s), keep, self.quant), keep, x.dtype)

    def kernel_spec(self, x):
        return "sigsoftmax", _spec(x)

    def cost(self, rows: int, row_len: int) -> Cost:
        n = rows * row_len
        # plus sigmoid(x) = 1 / (1 + exp(-x)) and the product: one exp, one divide, two elementwise
        return _normalising_cost(rows, row_len, extra_elementwise=2 * n, extra_exp=n, extra_div=n)


# ---------------------------------------------------------------- elementwise: exp over learned constants

@register("softmax", "consmax", knobs=[CONSMAX_BETA, CONSMAX_GAMMA])
class ConSmax(Normalizer):
    """ConSmax (Liu et al., 2024): exp(x - beta) / gamma with learnable scalars beta and gamma.

    No max and no row sum: every weight is computed on its own, which is what makes it cheap in
    hardware. The exponent is clamped at 80 so that exp never overflows fp32, and the result is
    clamped to the largest finite value of the input dtype (fp16 tops out at 65504).
    """

    elementwise = True  # weights need no row max or sum (fused attention applies)
    SITES = ("exp_input", "numerator")  # no row sum
    MAX_EXPONENT = 80.0  # exp(88.7) overflows fp32; stay clear of it

    def __init__(self, config):
        super().__init__()
        self.beta = nn.Parameter(torch.tensor(float(config.consmax_beta_init)))
        self.gamma = nn.Parameter(torch.tensor(consmax_gamma_init(config)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        s, keep = prepare_scores(x, mask)
        z = self.q("exp_input", torch.clamp(s - self.beta, max=self.MAX_EXPONENT), keep)
        y = self.q("numerator", torch.exp(z), keep) / self.gamma
        return finish_weights(y, keep, x.dtype)

    def kernel_spec(self, x):
        return "consmax", _learned_spec(self.beta, self.gamma)

    def cost(self, rows: int, row_len: int) -> Cost:
        n = rows * row_len
        # subtract beta, exp, multiply by 1/gamma (a learned constant: its reciprocal is computed once,
        # not per element): no max, no row sum, no division
        return Cost(params=2, elementwise=2 * n, exp=n, act_mem=n)


@register("softmax", "consmax_v2", knobs=[CONSMAX_BETA, CONSMAX_GAMMA])
class ConSmaxV2(Normalizer):
    """ConSmax per head (ReaLLM-Forge consmax_v2, after Liu et al., 2024): exp(x - beta_h) / gamma_h, learned per head.

    beta and gamma have shape (n_head,) and broadcast over attention scores (B, n_head, T_q, T_k):
    the head axis is the third from last. Scores without a head axis of n_head entries there (the
    output logits (B, V) of --softmax_variant_output, or any other shape) use the mean over the
    heads of beta and of gamma, which at initialisation is plain consmax.
    """

    elementwise = True  # weights need no row max or sum (fused attention applies)
    SITES = ("exp_input", "numerator")  # no row sum
    MAX_EXPONENT = ConSmax.MAX_EXPONENT

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.beta = nn.Parameter(torch.full((config.n_head,), float(config.consmax_beta_init)))
        self.gamma = nn.Parameter(torch.full((config.n_head,), consmax_gamma_init(config)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        s, keep = prepare_scores(x, mask)
        if x.dim() >= 3 and x.size(-3) == self.n_head:
            beta, gamma = self.beta.view(-1, 1, 1), self.gamma.view(-1, 1, 1)  # (n_head, 1, 1)
        else:
            beta, gamma = self.beta.mean(), self.gamma.mean()
        z = self.q("exp_input", torch.clamp(s - beta, max=self.MAX_EXPONENT), keep)
        y = self.q("numerator", torch.exp(z), keep) / gamma
        return finish_weights(y, keep, x.dtype)

    def kernel_spec(self, x):
        if x.dim() >= 3 and x.size(-3) == self.n_head:  # one parameter row per head
            return "consmax", _learned_spec(self.beta, self.gamma)
        return "consmax", _learned_spec(self.beta.mean(), self.gamma.mean())

    def cost(self, rows: int, row_len: int) -> Cost:
        n = rows * row_len
        return Cost(params=2 * self.n_head, elementwise=2 * n, exp=n, act_mem=n)  # as consmax, per head


@register("softmax", "saturating_consmax", knobs=[CONSMAX_BETA, CONSMAX_GAMMA, SATURATION])
class SaturatingConSmax(Normalizer):
    """Saturating ConSmax (ReaLLM-Forge): exp(z) / gamma, z = x - beta; for z > s the tangent e^s (1 + z - s) / gamma.

    s = --saturating_consmax_threshold. Below s this is consmax; above it the exponential is
    replaced by its tangent line at s, so the weight grows linearly instead of overflowing (e^11 is
    just under the fp16 maximum) while value and slope stay continuous and the gradient never
    vanishes, unlike a clamp. (ReaLLM-Forge's version switches to a constant above the threshold;
    this is the linear continuation its flag help describes.) beta and gamma are learned scalars.
    """

    elementwise = True  # weights need no row max or sum (fused attention applies)
    SITES = ("exp_input", "numerator")  # no row sum

    def __init__(self, config):
        super().__init__()
        self.beta = nn.Parameter(torch.tensor(float(config.consmax_beta_init)))
        self.gamma = nn.Parameter(torch.tensor(consmax_gamma_init(config)))
        self.threshold = float(config.saturating_consmax_threshold)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        s, keep = prepare_scores(x, mask)
        z = s - self.beta
        z_sat = self.q("exp_input", z.clamp(max=self.threshold), keep)
        # z <= s: exp(z) * 1;  z > s: exp(s) * (1 + z - s)
        y = self.q("numerator", torch.exp(z_sat) * (1.0 + (z - z_sat)), keep) / self.gamma
        return finish_weights(y, keep, x.dtype)

    def kernel_spec(self, x):
        return "saturating_consmax", _learned_spec(self.beta, self.gamma, self.threshold)

    def cost(self, rows: int, row_len: int) -> Cost:
        n = rows * row_len
        # subtract beta, compare with s (select), exp, the tangent's add and multiply, times 1/gamma
        return Cost(params=2, elementwise=4 * n, exp=n, cmp=n, act_mem=n)


# ---------------------------------------------------------------- elementwise: f(x) / constant divisor

@register("softmax", "polymax", knobs=[POLYMAX_X, POLYMAX_Y, POLYMAX_POWER, POLYMAX_DIVISOR])
class Polymax(Normalizer):
    """Polymax (ReaLLM-Forge): 0 for x < x0, y0 (x - x0) / (-x0) for x0 <= x < 0, x^p + y0 for x >= 0; all / divisor.

    x0 = --polymax_x_intercept (< 0), y0 = --polymax_y_intercept, p = --polymax_power,
    divisor = --polymax_divisor. A polynomial replaces the exponential: flat zero far left, a
    straight line rising to y0 at 0, then x^p. Continuous everywhere; the defaults (x0 = -100,
    y0 = 1, p = 2, divisor 1000) are ReaLLM-Forge's.
    """

    elementwise = True  # weights need no row max or sum (fused attention applies)

    def __init__(self, config):
        super().__init__()
        self.x0 = float(config.polymax_x_intercept)
        if not self.x0 < 0:
            raise UserError(f"--polymax_x_intercept must be negative (where the weight starts rising), got {self.x0}")
        self.y0 = float(config.polymax_y_intercept)
        self.power = float(config.polymax_power)
        self.divisor = _positive(config, "polymax_divisor")

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        s, keep = prepare_scores(x, mask)
        linear = self.y0 * (s - self.x0) / (-self.x0)
        poly = s.clamp(min=0.0) ** self.power + self.y0  # clamp: no x^p of negative x in the unused branch
        y = torch.where(s < self.x0, 0.0, torch.where(s < 0, linear, poly)) / self.divisor
        return finish_weights(y, keep, x.dtype)

    def kernel_spec(self, x):
        return "polymax", _spec(x, self.x0, self.y0, self.power, self.divisor)

    def cost(self, rows: int, row_len: int) -> Cost:
        n = rows * row_len
        if self.power == int(self.power):  # x^p by p - 1 multiplies
            power = Cost(elementwise=(int(self.power) - 1) * n)
        else:  # x^p = exp(p ln x): ln and exp counted as exponentials, one multiply
            power = Cost(elementwise=n, exp=2 * n)
        # two compares (select the piece), the line's subtract and multiply, + y0, times 1/divisor
        return power + Cost(elementwise=4 * n, cmp=2 * n, act_mem=n)


class _ActivationOverDivisor(Normalizer):
    """Shared body of the f(x) / divisor normalisers; a subclass sets DIVISOR and activation()."""

    elementwise = True  # weights need no row max or sum (fused attention applies)
    DIVISOR: str  # the knob name of the divisor
    b = 0.0  # a shape constant the kernel's transform reads (squareplus_max sets its own)

    def __init__(self, config):
        super().__init__()
        if getattr(config, self.DIVISOR) is None:  # relumax: the sequence length (module docstring)
            self.divisor = float(config.block_size)
        else:
            self.divisor = _positive(config, self.DIVISOR)

    def activation(self, s: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def activation_cost(self, n: int) -> Cost:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        s, keep = prepare_scores(x, mask)
        return finish_weights(self.activation(s) / self.divisor, keep, x.dtype)

    def kernel_spec(self, x):
        # the kernel transform of the same name as the variant; slot 2 holds a shape constant
        return self.registry_name, _spec(x, 0.0, 0.0, self.b, self.divisor)

    def cost(self, rows: int, row_len: int) -> Cost:
        n = rows * row_len
        # + the division by the constant divisor: a multiply by its reciprocal, computed once
        return self.activation_cost(n) + Cost(elementwise=n, act_mem=n)


@register("softmax", "relumax", knobs=[RELUMAX_DIVISOR])
class ReLUMax(_ActivationOverDivisor):
    """ReLUMax: relu(x) / L, ReLU attention weights (Wortsman et al., 2023; ReaLLM-Forge).

    L = --relumax_divisor, by default the sequence length --block_size, as the paper divides by L."""

    DIVISOR = "relumax_divisor"

    def activation(self, s):
        return F.relu(s)

    def activation_cost(self, n):
        return Cost(cmp=n)


@register("softmax", "relu2max", knobs=[RELU2MAX_DIVISOR])
class ReLU2Max(_ActivationOverDivisor):
    """ReLU2Max: relu(x)^2 / --relu2max_divisor, squared-ReLU attention weights (Hua et al., 2022; ReaLLM-Forge)."""

    DIVISOR = "relu2max_divisor"

    def activation(self, s):
        return F.relu(s).square()

    def activation_cost(self, n):
        return Cost(elementwise=n, cmp=n)


@register("softmax", "sigmoidmax", knobs=[SIGMOIDMAX_DIVISOR, SIGMOIDMAX_BIAS])
class SigmoidMax(_ActivationOverDivisor):
    """SigmoidMax: sigmoid(x + b) / d, sigmoid attention (Ramapuram et al., 2024; ReaLLM-Forge).

    b = --sigmoidmax_bias, by default -ln(--block_size): the paper's b = -log(n), which starts each weight
    near 1 / (n + 1), so a row of n keys sums to under 1. d = --sigmoidmax_divisor, default 1."""

    DIVISOR = "sigmoidmax_divisor"

    def __init__(self, config):
        super().__init__(config)
        bias = config.sigmoidmax_bias
        self.b = self.bias = -math.log(config.block_size) if bias is None else float(bias)  # kernel slot 2

    def activation(self, s):
        return torch.sigmoid(s + self.b)

    def activation_cost(self, n):
        # + b (when set), then 1 / (1 + exp(-x))
        return Cost(elementwise=(2 if self.b else 1) * n, exp=n, div=n)


@register("softmax", "softplusmax", knobs=[SOFTPLUSMAX_DIVISOR])
class SoftplusMax(_ActivationOverDivisor):
    """SoftplusMax: softplus(x) / --softplusmax_divisor, softplus = ln(1 + e^x) (Dugas et al., 2001; ReaLLM-Forge)."""

    DIVISOR = "softplusmax_divisor"

    def activation(self, s):
        return F.softplus(s)  # linear above x = 20, so no overflow

    def activation_cost(self, n):
        return Cost(elementwise=n, exp=n)  # ln(1 + e^x), counted as one exponential


@register("softmax", "squareplus_max", knobs=[SQUAREPLUS_DIVISOR, SQUAREPLUS_B])
class SquareplusMax(_ActivationOverDivisor):
    """SquareplusMax: squareplus(x) / divisor, squareplus(x) = (x + sqrt(x^2 + b)) / 2 (Barron, 2021, "Squareplus")."""

    DIVISOR = "squareplus_max_divisor"

    def __init__(self, config):
        super().__init__(config)
        self.b = _positive(config, "squareplus_max_b")  # b = 0 is relu with a 0/0 slope at 0

    def activation(self, s):
        r = torch.sqrt(s * s + self.b)
        # x < 0: the same value as b / (2 (r - x)), which does not cancel to 0 (or inf - inf) for large |x|
        neg = s.clamp(max=0.0)
        return torch.where(s >= 0, 0.5 * (s + r), 0.5 * self.b / (r - neg))

    def activation_cost(self, n):
        # the formula: x^2, + b, + x; the halving folds into the divisor
        return Cost(elementwise=3 * n, sqrt=n)
