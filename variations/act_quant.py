"""Activation quantisation at the datapath sites: `--act_bits_<site> BITS` (one width, or one per layer).

Each site below is a point where a tensor crosses the datapath; when its bit width is set, the tensor
is fake-quantised there (rounded to the integer grid and returned dequantised) in the forward pass.
Unset sites (or 0 in a per-layer list) create no module: the model is then exactly today's.

    grid        symmetric: s = r / (2^(b-1) - 1), q = clamp(round(x / s), -2^(b-1), 2^(b-1) - 1), x_q = q s
                with r the absolute maximum of the range; affine: lo = min(x, 0), hi = max(x, 0) (zero
                stays exact), s = (hi - lo) / (2^b - 1), z = round(-lo / s), q = clamp(round(x / s) + z,
                0, 2^b - 1), x_q = (q - z) s  (--act_quant_scheme)
    rounding    torch.round: to nearest, ties to even (IEEE 754's default), applied to x / s
    range       --act_quant_granularity per_token (default): one range per token (query position),
                over that token's entries at the site: all heads and channels, and for scores and
                weights only the keys it may attend (masked keys are excluded). Dynamic, from the token
                itself, so no statistic looks at another token: causal, and the KV cache gives the
                same results as recomputation.
                per_tensor: one static range per site and layer. Training keeps an exponential moving
                average of the batches' ranges (momentum EMA_MOMENTUM; the first step starts it from
                its own batch; the range of batch n comes from batches before it and from batch n
                itself, but never from another sequence's future); evaluation uses the stored range;
                analysis/ptq.py sets it by calibration. Values outside it clip to the grid's ends.
    gradient    straight-through (Bengio et al., 2013): the identity inside the range, 0 where clipped
    precision   computed in fp32 whatever the input dtype, cast back afterwards

The range of each per_tensor site is a buffer (`lo`, `hi`), saved in checkpoints. Calibration
(`calibrating = True`): the site passes tensors through unchanged and widens its range to the
minimum and maximum it sees (the max-calibration of Jacob et al., 2018); `finish_calibration` then
freezes it.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from errors import UserError
from variations.cost import Cost

# site -> where it is (one source of truth: gpt_conf.py makes one --act_bits_<site> field of each)
SITES = {
    "attn_input": "the attention's input (after the block's norm)",
    "q": "queries, after QK-norm and rotation (what multiplies the keys)",
    "k": "keys, after QK-norm and rotation (as cached)",
    "v": "values (as cached)",
    "scores": "attention scores entering the normaliser (after scaling, soft-cap and position bias)",
    "exp_input": "the normaliser's exponent input (x - max for softmax-like variants, x - beta for ConSmax)",
    "numerator": "the normaliser's exponentials (softmax-like and ConSmax variants)",
    "denominator": "the normaliser's row sum (softmax-like variants)",
    "probs": "the normaliser's output, the attention weights",
    "attn_output": "the weighted sum of values: the input of the attention's output projection",
    "mlp_input": "the MLP's input (after the block's norm)",
    "mlp_hidden": "the MLP's hidden activation after the activation function: the down-projection's input",
    "residual": "the residual stream after each sub-layer's addition",
}
NORMALISER_SITES = ("exp_input", "numerator", "denominator")  # inside the normaliser (Normalizer.SITES)
INSIDE_ATTENTION = ("scores", *NORMALISER_SITES, "probs")  # between q.k and the weighted sum: no fused kernel
SCHEMES = ("symmetric", "affine")
GRANULARITIES = ("per_token", "per_tensor")
MIN_BITS, MAX_BITS = 2, 16
EMA_MOMENTUM = 0.01
EPS = 1e-8  # floor of every range: an all-zero token quantises to exactly 0


def check_site_bits(name: str, value) -> list[int]:
    """--act_bits_<site>: one width or one per layer (cycled), each MIN_BITS..MAX_BITS or 0 (full precision)."""
    values = value.split() if isinstance(value, str) else value if isinstance(value, list) else [value]
    out = []
    for v in values:
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool) or not (v == 0 or MIN_BITS <= v <= MAX_BITS):
            raise UserError(f"--{name} must be bit widths from {MIN_BITS} to {MAX_BITS} (0: full precision), "
                            f"one for every layer or one per layer (cycled), got {value!r}")
        out.append(v)
    if not out:
        raise UserError(f"--{name} must give at least one bit width, got {value!r}")
    return out


def fmt_of(bits: int) -> str:
    """The number-format tag the cost model prices a site at (variations/cost.py): int<bits>."""
    return f"int{bits}"


def token_dims(x: torch.Tensor) -> tuple[int, ...]:
    """The dims one token's entries span: (B, T, C) -> (2,); (B, H, T, X) -> (1, 3)."""
    if x.dim() == 3:
        return (2,)
    if x.dim() == 4:
        return (1, 3)
    raise ValueError(f"activation quantisation expects (B, T, C) or (B, H, T, X) tensors, got {tuple(x.shape)}")


def quantise(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int, scheme: str) -> torch.Tensor:
    """x (fp32) rounded to the b-bit grid of the range [lo, hi] (broadcastable), dequantised."""
    if scheme == "symmetric":
        qmax = 2 ** (bits - 1) - 1
        scale = torch.maximum(lo.abs(), hi.abs()).clamp(min=EPS) / qmax
        return torch.clamp(torch.round(x / scale), -qmax - 1, qmax) * scale
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    scale = (hi - lo).clamp(min=EPS) / (2 ** bits - 1)
    zero = torch.round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zero, 0, 2 ** bits - 1) - zero) * scale


class SiteQuant(nn.Module):
    """One site in one layer: fake-quantises what passes through it (module docstring)."""

    def __init__(self, site: str, bits: int, scheme: str = "symmetric", granularity: str = "per_token"):
        super().__init__()
        self.site, self.bits, self.scheme, self.granularity = site, bits, scheme, granularity
        self.calibrating = False
        if granularity == "per_tensor":  # the static range; "seen" is 0 until a batch has set it
            self.register_buffer("lo", torch.zeros(()))
            self.register_buffer("hi", torch.zeros(()))
            self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def extra_repr(self) -> str:
        return f"{self.site}, bits={self.bits}, {self.scheme}, {self.granularity}"

    def _range(self, x: torch.Tensor, keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo, hi) of x over each token (per_token) or the whole tensor, the kept entries only."""
        if keep is not None:  # masked entries count as 0, which no range excludes anyway (lo <= 0 <= hi)
            x = x.masked_fill(~keep, 0.0)
        if self.granularity == "per_tensor":
            return x.amin(), x.amax()
        dims = token_dims(x)
        return x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)

    @torch.no_grad()
    def _observe(self, lo: torch.Tensor, hi: torch.Tensor, ema: bool):
        """Start the range from the first batch, then a moving average (training) or the widest range
        seen (calibration); branch-free on `seen`, so a training step does not wait for the device."""
        if ema:
            w = torch.where(self.seen, EMA_MOMENTUM, 1.0)
            self.lo.lerp_(lo, w), self.hi.lerp_(hi, w)
        else:
            self.lo.copy_(torch.where(self.seen, torch.minimum(self.lo, lo), lo))
            self.hi.copy_(torch.where(self.seen, torch.maximum(self.hi, hi), hi))
        self.seen.fill_(True)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """x, fake-quantised; `keep` (broadcastable bool) marks the entries that count for the range."""
        x32 = x.float()
        lo, hi = self._range(x32.detach(), keep)
        if self.granularity == "per_tensor":
            if self.calibrating:
                self._observe(lo, hi, ema=False)
                return x
            if self.training:
                self._observe(lo, hi, ema=True)
            elif not bool(self.seen):
                raise UserError(f"activation site '{self.site}' (per_tensor) has no range yet: train with it or "
                                "calibrate it (analysis/ptq.py) before evaluating")
            lo, hi = self.lo, self.hi
            if self.scheme == "symmetric":
                r = torch.maximum(lo.abs(), hi.abs())
                lo, hi = -r, r
            # straight-through inside the static range, zero gradient where it clips
            inside = x32.clamp(torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi)))
        else:
            inside = x32  # a token's own range holds all of it: nothing clips
        q = quantise(inside.detach(), lo, hi, self.bits, self.scheme)
        return (inside + (q - inside).detach()).to(x.dtype)


class ActSites(nn.Module):
    """The set sites of one module (a block, an attention, an MLP) for one layer's config.

    `self(site, x, keep=None)` quantises at `site` when it is set and returns x itself otherwise."""

    def __init__(self, config, sites: tuple[str, ...]):
        super().__init__()
        self.quant = nn.ModuleDict({s: SiteQuant(s, b, config.act_quant_scheme, config.act_quant_granularity)
                                    for s in sites if (b := config.act_bits(s))})

    def forward(self, site: str, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        q = self.quant[site] if site in self.quant else None
        return x if q is None else q(x, keep)

    def active(self, sites=None) -> list[str]:
        """The set sites (of `sites`, default all), in SITES order."""
        return [s for s in SITES if s in self.quant and (sites is None or s in sites)]

    def fmt(self, site: str, default: str) -> str:
        """The cost model's format tag of a site: int<bits> when set, else `default`."""
        return fmt_of(self.quant[site].bits) if site in self.quant else default

    def cost(self, elements: dict) -> Cost:
        """The quantisers' own operations per token; `elements`: site -> elements per token there."""
        out = Cost()
        for site, q in self.quant.items():
            out = out + quant_cost(elements[site], q.scheme, q.granularity)
        return out


def site_modules(model: nn.Module) -> dict[str, SiteQuant]:
    """Every SiteQuant of a model by its module name (transformer.h.0.attn.act.quant.scores, ...)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SiteQuant)}


def start_calibration(model: nn.Module) -> list[SiteQuant]:
    """Put every per_tensor site into calibration (ranges reset; tensors pass through unchanged)."""
    sites = [m for m in site_modules(model).values() if m.granularity == "per_tensor"]
    for m in sites:
        m.calibrating = True
        m.seen.fill_(False)
    return sites


def finish_calibration(model: nn.Module) -> None:
    """Freeze the calibrated ranges; the sites quantise again. A site that saw no tensor is an error."""
    for name, m in site_modules(model).items():
        if m.calibrating:
            m.calibrating = False
            if not bool(m.seen):
                raise UserError(f"calibration never reached site {name}; calibrate with at least one batch")


def quant_cost(n: float, scheme: str, granularity: str) -> Cost:
    """Quantising n elements of one token: a per-token range (abs and compare, a row max or min and max,
    one reciprocal) then multiply by 1/s (+ the zero point), round and a two-sided clamp. A static
    per-tensor range needs no reduction per token."""
    affine = scheme == "affine"
    quantise_ops = Cost(elementwise=(2 if affine else 1) * n, cmp=3 * n)
    if granularity == "per_tensor":
        return quantise_ops
    return quantise_ops + Cost(cmp=2 * n, reduce=(2 if affine else 1) * n, div=1)
