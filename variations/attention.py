"""Attention mechanisms: `--attention_variant NAME`.

Every class takes `(config)`; `forward(x, position, cache=None)` maps (B, T, n_embd) to
(B, T, n_embd). `position` is the model's shared positional encoding (variations/position.py);
`cache` is this layer's KVCache during generation. `cost(T)` counts the operations per token at
context length T. Projections come from the linear registry (sites attn_qkv and attn_proj); the
output projection is named `c_proj`, which gives it the scaled residual init (model.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from errors import UserError
from hardware.forward import attach as attach_hardware
from variations import kernels
from variations.act_quant import INSIDE_ATTENTION, ActSites
from variations.cost import DEFAULT, Cost, mac_format
from variations.norm import NORM_EPS  # the epsilon of --qk_norm
from variations.registry import create, get, knob, register

QK_NORM = knob("qk_norm", False, "causal attention: RMS-normalise queries and keys per head, with a learned "
               "per-channel weight, before the scores (QK-norm; Dehghani et al. 2023, OLMo 2)")
WINDOW_SIZE = knob("window_size", None, "causal attention: local window; a query sees itself and the "
                   "window_size - 1 positions before it (default: every earlier position)", value_type=int)
ATTN_LOGIT_SOFTCAP = knob("attn_logit_softcap", None, "causal attention: soft-cap the scores as "
                          "cap * tanh(score / cap) (Gemma 2); uses the explicit path", value_type=float)


class KVCache:
    """Keys and values of one attention layer during generation, preallocated to max_len positions.

    k, v: (B, n_kv_head, max_len, hs); `length` positions are filled.
    """

    def __init__(self, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 device: torch.device | str, dtype: torch.dtype):
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    def _advance(self, n: int) -> int:
        end = self.length + n
        if end > self.k.size(2):
            raise ValueError(f"KV cache holds {self.k.size(2)} positions; cannot append up to {end}")
        return end

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, n_kv_head, T, hs) after the filled part; return all keys/values so far."""
        end = self._advance(k.size(2))
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def truncate(self, n: int) -> None:
        """Keep the first n positions (0 <= n <= length): later appends overwrite the rest. Lets a
        chat roll back to the prefix a new prompt shares with the cached one."""
        if not 0 <= n <= self.length:
            raise ValueError(f"KV cache holds {self.length} positions; cannot truncate to {n}")
        self.length = n

    def skip(self, n: int) -> None:
        """Count n positions as filled without storing anything (a layer that keeps no keys), so
        that `length` still tells the model the absolute position of the next token."""
        self.length = self._advance(n)


def causal_mask(t_q: int, t_k: int, device, window: int | None = None) -> torch.Tensor:
    """(t_q, t_k) bool, True where query i (absolute position p = t_k - t_q + i) may see key j:
    j <= p, and with a window also j > p - window (the last `window` positions, itself included)."""
    q_pos = torch.arange(t_q, device=device).unsqueeze(1) + (t_k - t_q)  # (t_q, 1)
    k_pos = torch.arange(t_k, device=device).unsqueeze(0)  # (1, t_k)
    keep = k_pos <= q_pos
    if window is not None:
        keep &= k_pos > q_pos - window
    return keep


def _split_heads(attn: nn.Module, x: torch.Tensor):
    """x (B, T, C) -> q (B, nh, T, hs), k and v (B, nkv, T, hs) from the fused c_attn projection."""
    B, T, _ = x.shape
    hs, nh, nkv = attn.head_dim, attn.n_head, attn.n_kv_head
    q, k, v = attn.c_attn(x).split([nh * hs, nkv * hs, nkv * hs], dim=2)
    q = q.view(B, T, nh, hs).transpose(1, 2)
    k = k.view(B, T, nkv, hs).transpose(1, 2)
    v = v.view(B, T, nkv, hs).transpose(1, 2)
    return q, k, v


def build_normaliser(module: nn.Module, config) -> None:
    """The attention normaliser and what hangs on it, shared by every attention that scores q.k (causal,
    MLA): module.softmax; its activation sites module.aq (variations/act_quant.py; attn_input is the
    block's, read for cost()) with a one-line refusal of a site the normaliser lacks; module.input_bits;
    module.hardware (--softmax_hw_bits: the forward pass is the hardware unit's integers,
    hardware/forward.py); module.quantised_inside (what forces the step-by-step path)."""
    module.softmax = create("softmax", config.softmax_variant_attn, config)
    module.aq = ActSites(config, ("q", "k", "v", "scores", *module.softmax.SITES, "probs", "attn_output"))
    unsupported = [s for s in ("exp_input", "numerator", "denominator") if config.act_bits(s)
                   and s not in module.softmax.SITES]
    if unsupported:
        raise UserError(f"--act_bits_{unsupported[0]}: the normaliser '{config.softmax_variant_attn}' has no "
                        f"{unsupported[0]} (its sites: {', '.join(module.softmax.SITES) or 'none'}); unset it, or "
                        "give 0 for this layer in a per-layer list")
    module.softmax.sites = {s: module.aq.quant[s] for s in module.aq.active(module.softmax.SITES)}
    module.input_bits = config.act_bits("attn_input")
    module.hardware = attach_hardware(module.softmax, config)
    module.quantised_inside = module.aq.active(INSIDE_ATTENTION) + (["softmax_hw"] if module.hardware else [])


def _qkv_projections(config):
    """q, k, v in one matmul (n_head query heads, n_kv_head key and value heads), and the output."""
    hs = config.head_dim
    c_attn = create("linear", config.linear_for("attn_qkv"), config, config.n_embd,
                    (config.n_head + 2 * config.n_kv_head) * hs, config.bias)
    c_proj = create("linear", config.linear_for("attn_proj"), config, config.n_head * hs, config.n_embd, config.bias)
    return c_attn, c_proj


class HeadRMSNorm(nn.Module):
    """RMSNorm over the channels of each head: x / sqrt(mean(x^2) + eps) * w, w of size head_dim."""

    def __init__(self, head_dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, h, T, hs)
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


class Attention(nn.Module):
    """Base of every attention variant. The class attributes are the capabilities the model and the
    kernel dispatch read (declared, never probed): `use_sdpa` (softmax through
    F.scaled_dot_product_attention) and `fusable` (an elementwise normaliser the fused Triton kernel
    can apply without the score matrix). `uses_softmax_kernel`: the layer runs a registry normaliser
    on its own path, so --softmax_kernel decides how."""

    use_sdpa: bool = False
    fusable: bool = False
    uses_softmax_kernel: bool = False
    quantised_inside: list = []  # activation sites set between q.k and the weighted sum (no fused kernel)
    n_head = n_kv_head = head_dim = 0  # this layer's heads (none: nothing to rotate)

    def forward(self, x: torch.Tensor, position, cache: KVCache | None = None) -> torch.Tensor:
        raise NotImplementedError

    def cost(self, T: int) -> Cost:
        raise NotImplementedError

    def new_cache(self, config, batch_size: int, device, dtype: torch.dtype) -> KVCache:
        """This layer's empty cache for generation (config: the layer's), block_size positions."""
        return KVCache(batch_size, config.n_kv_head, config.block_size, config.head_dim, device, dtype)

    def position_cost(self, position, T: int) -> Cost:
        """The shared position encoding's work inside this layer per token: rotating its n_head query
        and n_kv_head key heads, a score bias."""
        return position.layer_cost(T, (self.n_head + self.n_kv_head, self.head_dim))


@register("attention", "causal", knobs=[QK_NORM, WINDOW_SIZE, ATTN_LOGIT_SOFTCAP, NORM_EPS])
class CausalSelfAttention(Attention):
    """Causal softmax attention (Vaswani et al., 2017) with GQA (Ainslie et al., 2023); optional QK-norm, local window, logit soft-cap.

    Plain softmax runs through F.scaled_dot_product_attention (FlashAttention where available);
    any other normaliser, and --attn_logit_softcap, use the explicit path: scores, soft-cap, position
    bias, mask, normaliser, weighted sum. --qk_norm RMS-normalises q and k per head before the
    rotation (Dehghani et al., 2023; OLMo 2). --window_size W restricts query i to keys
    i - W < j <= i (local attention as in Longformer / Mistral), on both paths and with the KV cache.
    The soft-cap cap * tanh(s / cap) (Gemma 2) applies to q.k / sqrt(hs), before the position bias.
    """

    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        if config.window_size is not None and config.window_size < 1:
            raise UserError(f"--window_size must be at least 1 (or unset for full causal attention), "
                            f"got {config.window_size}")
        if config.attn_logit_softcap is not None and not config.attn_logit_softcap > 0:
            raise UserError(f"--attn_logit_softcap must be positive (or unset for no cap), got {config.attn_logit_softcap}")
        self.window = config.window_size
        self.softcap = config.attn_logit_softcap
        self.c_attn, self.c_proj = _qkv_projections(config)
        self.q_norm = HeadRMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = HeadRMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        build_normaliser(self, config)
        self.use_sdpa = self.softmax.sdpa_compatible and self.softcap is None and not self.quantised_inside
        self.uses_softmax_kernel = not self.use_sdpa
        # --softmax_kernel: Triton kernels for the explicit path; elementwise normalisers without a
        # soft-cap can skip the score matrix altogether (fused attention, variations/triton_attention.py)
        self.kernel = config.softmax_kernel if kernels.has_kernel(self.softmax) else "torch"  # else the module
        self.fusable = self.softmax.elementwise and self.softcap is None and not self.quantised_inside
        self.dropout = config.dropout
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, position, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        hs, nh, nkv = self.head_dim, self.n_head, self.n_kv_head
        q, k, v = _split_heads(self, x)  # (B, nh, T, hs), (B, nkv, T, hs) x 2
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        start = cache.length if cache is not None else 0
        q, k = position.rotate(q, k, start)
        q, k, v = self.aq("q", q), self.aq("k", k), self.aq("v", v)  # per token: the cache holds these
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nkv, start + T, hs)
        t_k = k.size(2)
        bias = position.score_bias(T, t_k, x.device)  # (nh, T, t_k) or None
        windowed = self.window is not None and self.window < t_k  # does the window hide any key?

        if self.use_sdpa:
            mask = None
            if bias is not None or windowed or t_k != T:  # is_causal aligns top-left: only right when t_k == T
                keep = causal_mask(T, t_k, x.device, self.window)
                # the mask folded into the additive bias, or a boolean mask on its own
                mask = keep if bias is None else bias.to(q.dtype).masked_fill(~keep, float("-inf"))
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None,
                dropout_p=self.dropout if self.training else 0.0, enable_gqa=nkv != nh)
        elif (self.fusable and bias is None and not (self.training and self.dropout > 0)
              and kernels.use_triton(self.kernel, x.device)):
            y = kernels.fused_attention(self.softmax, q, k, v, self.window)  # (B, nh, T, hs), no T x T matrix
        else:
            if nkv != nh:  # each kv head serves nh / nkv consecutive query heads
                k = k.repeat_interleave(nh // nkv, dim=1)  # (B, nh, t_k, hs)
                v = v.repeat_interleave(nh // nkv, dim=1)
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, T, t_k)
            if self.softcap is not None:  # in fp32: tanh saturates early in bf16
                scores = (self.softcap * torch.tanh(scores.float() / self.softcap)).to(scores.dtype)
            if bias is not None:
                scores = scores + bias.to(scores.dtype)
            if kernels.use_triton(self.kernel, x.device) and not self.quantised_inside:  # mask built inside
                att = kernels.fused_rows(self.softmax, scores, self.window)
            else:
                keep = causal_mask(T, t_k, x.device, self.window)
                att = self.softmax(self.aq("scores", scores, keep), keep)
                att = self.aq("probs", att, keep)
            y = self.attn_dropout(att) @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hs)
        return self.resid_dropout(self.c_proj(self.aq("attn_output", y)))

    def cost(self, T: int) -> Cost:
        """Per token at context T: projections, n_head rows of scores, the normaliser, the weighted
        sum. A window of W counts min(T, W) keys per query (what a banded kernel computes; the
        explicit path here computes the full row and masks it). The fused SDPA path keeps no score
        matrix for the backward pass. The KV cache: a token appends its key and value (n_kv_head heads)
        and reads the n_keys cached ones it attends to, once for all n_head / n_kv_head query heads
        sharing them (GQA); a window reads only the last W."""
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        n_keys = T if self.window is None else min(T, self.window)
        n = nh * n_keys  # scores per token
        f = {s: self.aq.fmt(s, DEFAULT) for s in ("q", "k", "v", "scores", "probs", "attn_output", "numerator",
                                                    "exp_input", "denominator")}
        # q.k in the formats of k and q, probs @ v in those of v and the weights; the cache holds k and v
        attn = (Cost(macs=n * hs, elementwise=n, act_mem=(0 if self.use_sdpa else 2 * n) + 3 * nh * hs)
                .at(mac_format(f["k"], f["q"]), "macs").at(f["scores"], "elementwise")
                + Cost(macs=n * hs).at(mac_format(f["v"], f["probs"]), "macs")
                + Cost(kv_read=nkv * hs * n_keys, kv_write=nkv * hs).at(f["k"])
                + Cost(kv_read=nkv * hs * n_keys, kv_write=nkv * hs).at(f["v"]))
        if self.q_norm is not None:  # per head vector: square, scale, weight; one row sum and rsqrt
            heads = nh + nkv
            attn = attn + Cost(params=2 * hs, elementwise=3 * hs * heads, reduce=hs * heads, sqrt=heads,
                               div=heads, act_mem=hs * heads)
        if self.softcap is not None:  # divide (as a multiply by 1/cap), tanh, multiply
            attn = attn + Cost(elementwise=2 * n, exp=n, act_mem=n)
        # the normaliser: compares and elementwise work in the scores' format, exponentials in the
        # numerators' (else the exponent input's), row sums and reciprocals in the denominator's
        exp_fmt = f["numerator"] if f["numerator"] != DEFAULT else f["exp_input"]
        norm = (self.softmax.cost(nh, n_keys).at(exp_fmt, "exp", "exp2").at(f["denominator"], "reduce", "div")
                .at(f["scores"], "cmp", "elementwise"))
        in_fmt = f"int{self.input_bits}" if self.input_bits else DEFAULT
        quantisers = self.aq.cost({"q": nh * hs, "k": nkv * hs, "v": nkv * hs, "scores": n, "exp_input": n,
                                    "numerator": n, "denominator": nh, "probs": n, "attn_output": nh * hs})
        return (self.c_attn.cost(T).with_activation(in_fmt) + attn + norm + quantisers
                + self.c_proj.cost(T).with_activation(f["attn_output"]))


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1: positive, so the normaliser phi(q).sum(phi(k)) never vanishes."""
    return F.elu(x) + 1.0


@register("attention", "linear")
class LinearAttention(Attention):
    """Causal linear attention (Katharopoulos et al., 2020): phi(q_i)^T S_i / phi(q_i)^T z_i, S_i = sum_{j<=i} phi(k_j) v_j^T, phi = elu + 1.

    No T x T matrix: S_i (hs x hs) and z_i = sum_{j<=i} phi(k_j) (hs) are running sums, computed
    here with a cumulative sum over positions (memory O(T hs^2) per kv head). Key/value heads are
    shared by groups of query heads (GQA, --n_kv_head). With the KV cache the sums over the cached
    positions are recomputed from the cached keys and values, so cached and uncached runs agree.
    --softmax_variant_attn is not read (there is no softmax). A position encoding with a score bias
    (alibi, fire) cannot enter the running sums; then the weights phi(q_i).phi(k_j) are multiplied
    by exp(bias_ij), the bias acting on the log scale as in softmax attention (ALiBi becomes an
    exponential decay per head, as in RetNet), computed as a masked T x T matrix.
    Math in fp32 (sums of positive terms over T positions); the result is cast back.
    """

    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.c_attn, self.c_proj = _qkv_projections(config)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.aq = ActSites(config, ("q", "k", "v", "attn_output"))  # no scores, weights or normaliser
        inside = [s for s in INSIDE_ATTENTION if config.act_bits(s)]
        if inside:
            raise UserError(f"--act_bits_{inside[0]}: linear attention has no score matrix or normaliser (its "
                            "sites: q, k, v, attn_output); unset it, or give 0 for this layer in a per-layer list")
        self.input_bits = config.act_bits("attn_input")
        # cost() only: whether the position encoding adds a score bias (the quadratic path)
        self.biased = get("position", config.position_variant).has_score_bias

    def forward(self, x: torch.Tensor, position, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = _split_heads(self, x)  # (B, nh, T, hs), (B, nkv, T, hs) x 2
        start = cache.length if cache is not None else 0
        q, k = position.rotate(q, k, start)
        q, k, v = self.aq("q", q), self.aq("k", k), self.aq("v", v)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nkv, start + T, hs)
        bias = position.score_bias(T, k.size(2), x.device)  # (nh, T, t_k) or None
        with torch.autocast(x.device.type, enabled=False):
            fq, fk, fv = elu_feature_map(q.float()), elu_feature_map(k.float()), v.float()
            y = self._running_sums(fq, fk, fv) if bias is None else self._biased(fq, fk, fv, bias.float())
        y = y.to(q.dtype).transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.c_proj(self.aq("attn_output", y)))

    def _running_sums(self, fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """fq (B, nh, T, hs) for the last T of the t_k positions in fk, v (B, nkv, t_k, hs)."""
        B, nh, T, hs = fq.shape
        nkv, p = self.n_kv_head, fk.size(2) - T  # p cached positions precede the queries
        fq = fq.view(B, nkv, nh // nkv, T, hs)  # query heads grouped by the kv head they share
        k_new, v_new = fk[:, :, p:], v[:, :, p:]
        S = torch.einsum("bhtd,bhte->bhtde", k_new, v_new).cumsum(dim=2)  # (B, nkv, T, hs, hs)
        z = k_new.cumsum(dim=2)  # (B, nkv, T, hs)
        if p:  # the sums over the cached prefix
            S = S + torch.einsum("bhtd,bhte->bhde", fk[:, :, :p], v[:, :, :p]).unsqueeze(2)
            z = z + fk[:, :, :p].sum(dim=2, keepdim=True)
        num = torch.einsum("bhgtd,bhtde->bhgte", fq, S)  # (B, nkv, g, T, hs)
        den = torch.einsum("bhgtd,bhtd->bhgt", fq, z).unsqueeze(-1)  # (B, nkv, g, T, 1)
        return (num / den).reshape(B, nh, T, hs)

    def _biased(self, fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The quadratic form with weights phi(q_i).phi(k_j) * exp(bias_ij), j <= i, row-normalised."""
        nh, nkv, T, t_k = self.n_head, self.n_kv_head, fq.size(2), fk.size(2)
        if nkv != nh:
            fk, v = fk.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
        b = bias.masked_fill(~causal_mask(T, t_k, fq.device), float("-inf"))  # (nh, T, t_k)
        b = b - b.amax(dim=-1, keepdim=True)  # the row normalisation cancels a per-row factor: no overflow
        w = (fq @ fk.transpose(-2, -1)) * torch.exp(b)  # (B, nh, T, t_k), 0 where masked
        return (w @ v) / w.sum(dim=-1, keepdim=True)

    def cost(self, T: int) -> Cost:
        """Per token, recurrent form: feature maps of q and k (exp, select, +1), the update
        S += phi(k) v^T (hs^2 multiplies and adds per kv head) and z += phi(k), the reads phi(q)^T S and phi(q)^T z
        (per query head), one division per output channel. Independent of T. With a score bias,
        the quadratic form: two T-long rows of products per head, exp(bias), a row sum."""
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        feats = (nh + nkv) * hs
        phi = Cost(elementwise=feats, exp=feats, cmp=feats, act_mem=feats + nkv * hs)
        if self.biased:  # the cache holds phi(k) and v of every past token, as softmax attention's does
            n = nh * T
            attn = Cost(macs=2 * n * hs, elementwise=2 * n, exp=n, cmp=n, reduce=2 * n, div=nh * hs, act_mem=2 * n,
                        kv_read=2 * nkv * hs * T, kv_write=2 * nkv * hs)
        else:
            # the rank-1 update is elementwise (an outer product has no contraction, and
            # FlopCounterMode counts it as such): hs^2 multiplies and hs^2 adds per kv head.
            # The state S (hs x hs) and z (hs) per kv head is the cache: read and rewritten per token
            state = nkv * (hs * hs + hs)
            attn = Cost(macs=nh * (hs * hs + hs), elementwise=nkv * (2 * hs * hs + hs), div=nh * hs,
                        act_mem=nkv * (hs * hs + hs) + nh * hs, kv_read=state, kv_write=state)
        in_fmt = f"int{self.input_bits}" if self.input_bits else DEFAULT
        quantisers = self.aq.cost({"q": nh * hs, "k": nkv * hs, "v": nkv * hs, "attn_output": nh * hs})
        return (self.c_attn.cost(T).with_activation(in_fmt) + phi + attn + quantisers
                + self.c_proj.cost(T).with_activation(self.aq.fmt("attn_output", DEFAULT)))


@register("attention", "identity")
class NoAttention(Attention):
    """No attention (an ablation): the sub-layer outputs zeros, so each block is its feed-forward part alone.

    No parameters and no cost. The output is `x * 0` rather than a fresh zero tensor so that the
    norm in front of it (pre-norm) gets an exact zero gradient instead of none at all.
    """

    def __init__(self, config):
        super().__init__()

    def forward(self, x: torch.Tensor, position, cache: KVCache | None = None) -> torch.Tensor:
        if cache is not None:
            cache.skip(x.size(1))  # keep the cache's position count, which the model reads
        return x * 0.0

    def cost(self, T: int) -> Cost:
        return Cost()
