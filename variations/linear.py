"""Linear layers for the projections of attention and MLP: `--linear_variant NAME`, or per site
`--linear_variant_attn_qkv / _attn_proj / _mlp_up / _mlp_down NAME`.

Every class takes `(config, in_features, out_features, bias)`, subclasses nn.Linear (so weight init
and weight decay treat it as a matrix) and maps (..., in_features) -> (..., out_features).

Quantised layers keep full-precision ("latent") weights, which the optimiser trains, and round the
weights and/or the input activations on the way into the matmul ("fake quantisation"). The rounding
has zero gradient almost everywhere, so the backward pass treats it as the identity: the
straight-through estimator (STE; Bengio et al., 2013), x + (q(x) - x).detach(). Quantisation is done
in fp32 whatever the input dtype (also under autocast), so the rounding grid, and therefore the
result, does not depend on the precision the model runs in; only the matmul runs in low precision.

Cost conventions for the quantisers (per token, n = in_features, m = out_features; variations/cost.py
and the activation conventions in variations/activation.py):
    weights       quantised once per weight update (offline at deployment): nothing per token
    scale         absmax: abs and max compare (cmp 2n) over n elements (reduce n); affine min and max
                  (cmp 2n, reduce 2n); one reciprocal per token-wise scale (div 1), none when the
                  scale is per tensor (amortised over the tokens)
    quantise      multiply by the reciprocal scale (elementwise n; affine adds the zero point: 2n),
                  round (cmp n) and a two-sided clamp (cmp 2n)
    dequantise    the matmul runs on the integer grid and its m outputs are rescaled (elementwise m;
                  2m when a per-channel weight scale meets a per-token activation scale); a zero
                  point costs m for its correction term (affine weights also need sum(x): reduce n)
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from errors import UserError
from variations.cost import DEFAULT, Cost, mac_format
from variations.registry import knob, register

EPS = 1e-8  # floor of every quantisation range: an all-zero row or tensor quantises to exactly 0
MIN_BITS, MAX_BITS = 2, 16

BITLINEAR_ACT_BITS = knob("bitlinear_act_bits", 8, "bitlinear: bits of the per-token absmax activation "
                          "quantisation (BitNet b1.58: 8); 0 = full-precision activations", value_type=int)
QUANT_WEIGHT_BITS = knob("quant_weight_bits", 8, "quantized: bits of the weights (2..16)")
QUANT_ACT_BITS = knob("quant_act_bits", 8, "quantized: bits of the input activations (2..16); "
                      "0 = full-precision activations")
QUANT_SCHEME = knob("quant_scheme", "symmetric", "quantized: symmetric (x = q s, absmax scale) or affine "
                    "(x = (q - z) s, min/max range with a zero point)", choices=("symmetric", "affine"))
QUANT_GRANULARITY = knob("quant_granularity", "per_channel", "quantized: per_tensor (one scale for the weight "
                         "matrix and one for the activation tensor) or per_channel (one per output channel "
                         "and one per token)", choices=("per_tensor", "per_channel"))


# ---------------------------------------------------------------- quantisers (fp32 in, fp32 out)

def check_bits(flag: str, value, allow_off: bool) -> int:
    """A bit width from a knob: an int in MIN_BITS..MAX_BITS, or 0/None (= off) where allowed."""
    if allow_off and (value is None or value == 0):
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not MIN_BITS <= value <= MAX_BITS:
        off = " or 0 (off)" if allow_off else ""
        raise UserError(f"--{flag} must be an integer from {MIN_BITS} to {MAX_BITS}{off}, got {value!r}")
    return value


def _reduce(x: torch.Tensor, fn: Callable, per_row: bool) -> torch.Tensor:
    """fn (amax or amin) over the last dim keeping it (per_row), else over the whole tensor."""
    return fn(x, dim=-1, keepdim=True) if per_row else fn(x)


def fake_quant(x: torch.Tensor, bits: int, scheme: str, per_row: bool) -> torch.Tensor:
    """Round fp32 `x` to a grid of 2^bits levels and return the dequantised values (same shape).

    symmetric: s = absmax / (2^(b-1) - 1), q = clamp(round(x / s), -2^(b-1), 2^(b-1) - 1), x_q = q s
    affine:    s = (hi - lo) / (2^b - 1) with lo = min(x, 0), hi = max(x, 0) (zero stays exact),
               z = round(-lo / s), q = clamp(round(x / s) + z, 0, 2^b - 1), x_q = (q - z) s
    The range is taken per row (last dim: a weight's output channel, an activation's token) or over
    the whole tensor.
    """
    if scheme == "symmetric":
        qmax = 2 ** (bits - 1) - 1
        scale = _reduce(x.abs(), torch.amax, per_row).clamp(min=EPS) / qmax
        return torch.clamp(torch.round(x / scale), -qmax - 1, qmax) * scale
    lo = _reduce(x, torch.amin, per_row).clamp(max=0.0)
    hi = _reduce(x, torch.amax, per_row).clamp(min=0.0)
    scale = (hi - lo).clamp(min=EPS) / (2 ** bits - 1)
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(x / scale) + zero, 0, 2 ** bits - 1)
    return (q - zero) * scale


def ternary_absmean(w: torch.Tensor) -> torch.Tensor:
    """BitNet b1.58 weights: s = mean(abs(W)), W_q = clamp(round(W / s), -1, 1) s (one scale per tensor)."""
    scale = w.abs().mean().clamp(min=EPS)
    return torch.clamp(torch.round(w / scale), -1, 1) * scale


def ste(x: torch.Tensor, quantise: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Forward quantise(x), backward the identity: x + (quantise(x) - x).detach(), in fp32."""
    x = x.float()
    return x + (quantise(x.detach()) - x.detach())


def act_quant_cost(n: int, scheme: str, per_token: bool) -> Cost:
    """Quantising n activations of one token (module docstring): range, scale, multiply, round, clamp."""
    affine = scheme == "affine"
    # cmp: abs + max compare (or min + max compare), then round and a two-sided clamp
    return Cost(cmp=2 * n + 3 * n, reduce=(2 if affine else 1) * n, elementwise=(2 if affine else 1) * n,
                div=1 if per_token else 0)


# ---------------------------------------------------------------- layers

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


@register("linear", "bitlinear", knobs=[BITLINEAR_ACT_BITS])
class BitLinear(Linear):
    """BitNet b1.58 (Ma et al., 2024, "The Era of 1-bit LLMs"): ternary weights clamp(round(W / s), -1, 1) s with s = mean(abs(W)), 8-bit absmax activations per token.

    Weights are ternary {-1, 0, +1} times one per-tensor absmean scale s; the input activations are
    quantised per token to --bitlinear_act_bits bits with an absmax scale (Q8 in the paper; 0 = off).
    Both roundings pass gradients straight through to the latent full-precision weights and the
    input, which is what training updates. The paper's implementation also normalises x (SubLN)
    before quantising; here the block's own norm precedes attn_qkv and mlp_up, and nothing is added.

    Cost: parameters are the latent weights (what is trained and stored in checkpoints; deployed
    weights need log2(3) = 1.58 bits each). MACs are counted as for a dense matrix, but every
    multiply is by -1, 0 or +1: in hardware an add, a subtract or a skip, with one rescale per output.
    """

    def __init__(self, config, in_features: int, out_features: int, bias: bool = False):
        super().__init__(config, in_features, out_features, bias=bias)
        self.act_bits = check_bits("bitlinear_act_bits", config.bitlinear_act_bits, allow_off=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = ste(self.weight, ternary_absmean)  # (out, in), fp32
        if self.act_bits:  # per token: the range is over the last dim of (..., in)
            x_q = ste(x, lambda t: fake_quant(t, self.act_bits, "symmetric", per_row=True)).to(x.dtype)
        else:
            x_q = x
        return F.linear(x_q, w.to(self.weight.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weights=ternary, act_bits={self.act_bits or 'off'}"

    def cost(self, T: int = 1) -> Cost:
        c = super().cost(T)
        c.elementwise += self.out_features  # rescale the m outputs by s_x s_w (one combined scale)
        if self.act_bits:
            c = c + act_quant_cost(self.in_features, "symmetric", per_token=True)
        # ternary weights times act_bits activations (or the default format when those are not quantised)
        act = f"int{self.act_bits}" if self.act_bits else DEFAULT
        return (c.at(mac_format("ternary", act), "macs")
                .at("ternary", "weights", amount=self.in_features * self.out_features))


@register("linear", "quantized", knobs=[QUANT_WEIGHT_BITS, QUANT_ACT_BITS, QUANT_SCHEME, QUANT_GRANULARITY])
class QuantizedLinear(Linear):
    """Fake-quantised linear (Jacob et al., 2018): y = Q_a(x) Q_w(W)^T on N-bit symmetric or affine grids, straight-through gradients.

    Q_w rounds the weights to --quant_weight_bits, Q_a the input activations to --quant_act_bits
    (0: activations stay in full precision), both with --quant_scheme symmetric (absmax scale) or
    affine (min/max range and a zero point; `fake_quant`). --quant_granularity per_channel gives
    each output channel (weight row) and each token its own scale; per_tensor one scale for the
    weight matrix and one for the whole activation tensor. Scales are computed on the fly.

    Per-tensor activation scales are taken over the whole (batch, time) tensor, so a token's output
    depends, through that one scale, on the other tokens of the batch, future positions included:
    the model is not strictly causal and cached generation can differ from uncached. Per-token
    scales (per_channel, the default) have no such coupling.
    """

    def __init__(self, config, in_features: int, out_features: int, bias: bool = False):
        super().__init__(config, in_features, out_features, bias=bias)
        self.weight_bits = check_bits("quant_weight_bits", config.quant_weight_bits, allow_off=False)
        self.act_bits = check_bits("quant_act_bits", config.quant_act_bits, allow_off=True)
        self.scheme = config.quant_scheme
        self.per_channel = config.quant_granularity == "per_channel"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = ste(self.weight, lambda t: fake_quant(t, self.weight_bits, self.scheme, self.per_channel))  # (out, in)
        x_q = x
        if self.act_bits:
            x_q = ste(x, lambda t: fake_quant(t, self.act_bits, self.scheme, self.per_channel)).to(x.dtype)
        return F.linear(x_q, w.to(self.weight.dtype), self.bias)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, weight_bits={self.weight_bits}, act_bits={self.act_bits or 'off'}, "
                f"scheme={self.scheme}, granularity={'per_channel' if self.per_channel else 'per_tensor'}")

    def cost(self, T: int = 1) -> Cost:
        n, m = self.in_features, self.out_features
        c = super().cost(T)
        # dequantise the m outputs: a per-channel weight scale times a per-token activation scale is
        # two multiplies per output; otherwise the two scales combine into one beforehand
        c.elementwise += 2 * m if (self.per_channel and self.act_bits) else m
        if self.scheme == "affine":  # zero-point correction terms (module docstring)
            c = c + Cost(elementwise=m, reduce=n)  # weights: z_w[j] * sum(x)
            if self.act_bits:
                c.elementwise += m  # activations: z_x * column sums of W_q (precomputed)
        if self.act_bits:
            c = c + act_quant_cost(n, self.scheme, per_token=self.per_channel)
        # integer weights times integer activations, or times the default format (dequantised weights)
        act = f"int{self.act_bits}" if self.act_bits else DEFAULT
        return (c.at(mac_format(f"int{self.weight_bits}", act), "macs")
                .at(f"int{self.weight_bits}", "weights", amount=n * m))
