"""Multi-head latent attention (DeepSeek-V2): `--attention_variant mla`.

An attention variant like those in variations/attention.py (same constructor, forward and cost), kept
in its own file because attention.py is near the length limit. Keys and values are projected from a
low-rank latent c_kv that is all the KV cache keeps, plus one shared rotary key part.

    python train.py --preset cpu --attention_variant mla --position_variant rope --rope_fraction 0.5 --mla_kv_rank 32
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from variations import kernels
from variations.attention import Attention, KVCache, build_normaliser, causal_mask
from variations.cost import DEFAULT, Cost, mac_format
from variations.norm import NORM_EPS
from variations.registry import create, get, knob, register

MLA_KV_RANK = knob("mla_kv_rank", None, "mla: width d_c of the compressed key/value latent, what the KV cache "
                   "holds per token (with the RoPE key part); default 4 x head_dim (DeepSeek-V2: d_c = 4 d_h)",
                   value_type=int, minimum=1)
MLA_Q_RANK = knob("mla_q_rank", None, "mla: width d_c' of the compressed query latent; default: none, a full-rank "
                  "query projection (as DeepSeek-V2-Lite)", value_type=int, minimum=1)


class LatentCache(KVCache):
    """The KV cache of an MLA layer: per position the latent c_kv (d_c) and the rotated key part
    k_rope (d_r, shared by all heads): d_c + d_r elements per token instead of 2 n_kv_head head_dim.

    Stored in KVCache's two slots (so append, truncate and skip are KVCache's): k holds the latent
    (B, 1, max_len, d_c), v the rotary key part (B, 1, max_len, d_r)."""

    def __init__(self, batch_size: int, max_len: int, latent_dim: int, rope_dim: int,
                 device: torch.device | str, dtype: torch.dtype):
        self.k = torch.zeros((batch_size, 1, max_len, latent_dim), device=device, dtype=dtype)
        self.v = torch.zeros((batch_size, 1, max_len, rope_dim), device=device, dtype=dtype)
        self.length = 0

    def nbytes(self) -> int:
        """Bytes the cache holds (all max_len positions)."""
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


def _rms_weight(n: int) -> nn.Parameter:
    return nn.Parameter(torch.ones(n))


@register("attention", "mla", knobs=[MLA_KV_RANK, MLA_Q_RANK, NORM_EPS])
class MultiHeadLatentAttention(Attention):
    """Multi-head latent attention (DeepSeek-V2, DeepSeek-AI 2024): k, v = W_UK c, W_UV c from a cached latent c = RMSNorm(W_DKV x) of width d_c; decoupled RoPE key part.

    Per token: the latent c_kv = RMSNorm(W_DKV x) (d_c = --mla_kv_rank) and, when the position
    encoding is RoPE, a rotary key part k_R = RoPE(W_KR x) of d_r channels shared by all heads (the
    "decoupled" key; d_r = the channels --rope_fraction rotates in a head, DeepSeek-V2: d_h / 2).
    Head h uses k_h = [W_UK,h c_kv ; k_R] and v_h = W_UV,h c_kv; its query is [q_h ; RoPE(q_R,h)]
    from x (or from a compressed query latent RMSNorm(W_DQ x) of width --mla_q_rank), and the scores
    are q.k / sqrt(d_h + d_r). Every head has its own keys and values, so --n_kv_head is not read.
    Other position encodings need no decoupled part (d_r = 0): ALiBi and FIRE add their score bias,
    learned and sinusoidal tables are added to the embeddings. The KV cache (LatentCache) stores
    c_kv and k_R only: d_c + d_r elements per token; the cached path re-expands the cached latents
    through W_UK and W_UV each step, which equals the uncached result (DeepSeek-V2 absorbs W_UK into
    the query and W_UV into the output instead; the cache and its traffic are the same). Plain
    softmax goes through F.scaled_dot_product_attention; any other normaliser through the explicit
    path (Triton row kernels under --softmax_kernel; the fused attention kernel needs equal q/k and
    v widths, so it is not used).
    """

    def __init__(self, config):
        super().__init__()
        nh, hs = config.n_head, config.head_dim
        self.n_head, self.head_dim = nh, hs
        self.kv_rank = config.mla_kv_rank or 4 * hs
        self.q_rank = config.mla_q_rank
        self.rope_dim = get("position", config.position_variant).rotary_channels(config)
        self.eps = config.norm_eps
        qk = hs + self.rope_dim
        site = config.linear_for("attn_qkv")
        if self.q_rank:
            self.q_down = create("linear", site, config, config.n_embd, self.q_rank, config.bias)
            self.q_norm = _rms_weight(self.q_rank)
            self.q_up = create("linear", site, config, self.q_rank, nh * qk, config.bias)
        else:
            self.q_proj = create("linear", site, config, config.n_embd, nh * qk, config.bias)
        self.kv_down = create("linear", site, config, config.n_embd, self.kv_rank + self.rope_dim, config.bias)
        self.kv_norm = _rms_weight(self.kv_rank)
        self.kv_up = create("linear", site, config, self.kv_rank, 2 * nh * hs, config.bias)  # k_nope and v per head
        self.c_proj = create("linear", config.linear_for("attn_proj"), config, nh * hs, config.n_embd, config.bias)
        build_normaliser(self, config)  # softmax, its activation sites, --softmax_hw_bits
        self.use_sdpa = self.softmax.sdpa_compatible and not self.quantised_inside
        self.uses_softmax_kernel = not self.use_sdpa
        self.kernel = config.softmax_kernel if kernels.has_kernel(self.softmax) else "torch"  # else the module
        self.dropout = config.dropout
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def new_cache(self, config, batch_size: int, device, dtype: torch.dtype) -> LatentCache:
        return LatentCache(batch_size, config.block_size, self.kv_rank, self.rope_dim, device, dtype)

    def forward(self, x: torch.Tensor, position, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        nh, hs, dr = self.n_head, self.head_dim, self.rope_dim
        if self.q_rank:
            q = self.q_up(F.rms_norm(self.q_down(x), (self.q_rank,), self.q_norm, self.eps))
        else:
            q = self.q_proj(x)
        q = q.view(B, T, nh, hs + dr).transpose(1, 2)  # (B, nh, T, hs + dr)
        q_nope, q_rope = q.split([hs, dr], dim=-1)
        latent, k_rope = self.kv_down(x).split([self.kv_rank, dr], dim=-1)
        latent = F.rms_norm(latent, (self.kv_rank,), self.kv_norm, self.eps).unsqueeze(1)  # (B, 1, T, d_c)
        k_rope = k_rope.unsqueeze(1)  # (B, 1, T, d_r): one rotary key part for all heads
        start = cache.length if cache is not None else 0
        q_rope, k_rope = position.rotate_part(q_rope, start), position.rotate_part(k_rope, start)  # unless RoPE: x
        if cache is not None:
            latent, k_rope = cache.append(latent, k_rope)  # (B, 1, start + T, d_c), (B, 1, start + T, d_r)
        t_k = latent.size(2)
        kv = self.kv_up(latent.squeeze(1)).view(B, t_k, nh, 2 * hs).transpose(1, 2)  # (B, nh, t_k, 2 hs)
        k_nope, v = kv.split(hs, dim=-1)
        k = torch.cat((k_nope, k_rope.expand(B, nh, t_k, dr)), dim=-1)  # (B, nh, t_k, hs + dr)
        q = torch.cat((q_nope, q_rope), dim=-1)
        q, k, v = self.aq("q", q), self.aq("k", k), self.aq("v", v)
        bias = position.score_bias(T, t_k, x.device)  # (nh, T, t_k) or None
        if self.use_sdpa:
            mask = None
            if bias is not None or t_k != T:
                keep = causal_mask(T, t_k, x.device)
                mask = keep if bias is None else bias.to(q.dtype).masked_fill(~keep, float("-inf"))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                               dropout_p=self.dropout if self.training else 0.0)
        else:
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs + dr))  # (B, nh, T, t_k)
            if bias is not None:
                scores = scores + bias.to(scores.dtype)
            if kernels.use_triton(self.kernel, x.device) and not self.quantised_inside:
                att = kernels.fused_rows(self.softmax, scores, None)
            else:
                keep = causal_mask(T, t_k, x.device)
                att = self.aq("probs", self.softmax(self.aq("scores", scores, keep), keep), keep)
            y = self.attn_dropout(att) @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hs)
        return self.resid_dropout(self.c_proj(self.aq("attn_output", y)))

    def position_cost(self, position, T: int) -> Cost:
        """The rotation touches n_head query parts and one shared key part of d_r channels."""
        if self.rope_dim:
            return Cost(elementwise=3 * (self.n_head + 1) * self.rope_dim)
        return position.layer_cost(T, (0, 0))  # a score bias, if any

    def cost(self, T: int) -> Cost:
        """Per token at context T, as the forward pass computes it: the query and latent projections,
        two RMSNorms (square, scale, weight; one row sum and rsqrt each), the up-projection of the
        token's latent to n_head keys and values, n_head rows of T scores of width hs + d_r, the
        normaliser, the weighted sum, the output projection. The KV cache: a token appends its
        latent and rotary key part (d_c + d_r) and reads those of the T positions it attends to."""
        nh, hs, dr, dc = self.n_head, self.head_dim, self.rope_dim, self.kv_rank
        n = nh * T
        f = {s: self.aq.fmt(s, DEFAULT) for s in ("q", "k", "v", "scores", "probs", "attn_output", "numerator",
                                                    "exp_input", "denominator")}
        in_fmt = f"int{self.input_bits}" if self.input_bits else DEFAULT
        rms = (lambda c: Cost(params=c, elementwise=3 * c, sqrt=1, div=1, reduce=c, act_mem=c))  # noqa: E731
        if self.q_rank:
            proj = self.q_down.cost(T).with_activation(in_fmt) + rms(self.q_rank) + self.q_up.cost(T)
        else:
            proj = self.q_proj.cost(T).with_activation(in_fmt)
        proj = proj + self.kv_down.cost(T).with_activation(in_fmt) + rms(dc) + self.kv_up.cost(T)
        attn = (Cost(macs=n * (hs + dr), elementwise=n, act_mem=(0 if self.use_sdpa else 2 * n) + nh * (3 * hs + dr))
                .at(mac_format(f["k"], f["q"]), "macs").at(f["scores"], "elementwise")
                + Cost(macs=n * hs).at(mac_format(f["v"], f["probs"]), "macs")
                + Cost(kv_read=(dc + dr) * T, kv_write=dc + dr))
        exp_fmt = f["numerator"] if f["numerator"] != DEFAULT else f["exp_input"]
        norm = (self.softmax.cost(nh, T).at(exp_fmt, "exp", "exp2").at(f["denominator"], "reduce", "div")
                .at(f["scores"], "cmp", "elementwise"))
        quantisers = self.aq.cost({"q": nh * (hs + dr), "k": nh * (hs + dr), "v": nh * hs, "scores": n,
                                   "exp_input": n, "numerator": n, "denominator": nh, "probs": n,
                                   "attn_output": nh * hs})
        return proj + attn + norm + quantisers + self.c_proj.cost(T).with_activation(f["attn_output"])
