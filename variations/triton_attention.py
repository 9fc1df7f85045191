"""Fused causal attention for the elementwise normalisers, in Triton: memory linear in T.

consmax, consmax_v2, saturating_consmax, polymax, relumax, relu2max, sigmoidmax, softplusmax and
squareplus_max weight each score on its own, w_ij = f(q_i . k_j / sqrt(hs)) / constant, with no row
max and no row sum. So the output o_i = sum_{j <= i} w_ij v_j can be accumulated tile by tile, like
FlashAttention but without the running rescaling, and the T x T matrix is never stored: the
backward pass recomputes the scores per tile (Dao et al., 2022, "FlashAttention", section 3.1).

    from variations.triton_attention import fused_attention
    y = fused_attention(softmax_module, q, k, v)   # q (B, nh, T_q, hs), k and v (B, nkv, T_k, hs)

Causal (the query of row i sits at absolute position T_k - T_q + i, as with the KV cache), optional
local window, multi-head and grouped-query (query head h reads kv head h // (nh / nkv)), fp32 / bf16
/ fp16 inputs with fp32 accumulation. The score transforms are the jit functions of
triton_softmax.py (`score_weight`, `score_weight_grad`), so both kernels compute the same formula as the torch
reference in variations/softmax.py, which tests/variations/test_triton_attention.py checks with TRITON_INTERPRET=1.

Backward: one kernel per key tile accumulates dK and dV over the query tiles (and over the query
heads sharing a kv head), and the partial sums of dL/dbeta, dL/dgamma per query head; a second
kernel per query tile accumulates dQ. No atomics, so results are deterministic.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from variations.triton_transforms import TRANSFORMS, is_normalising, score_weight, score_weight_grad


@triton.jit
def _params(P, h, n_param_rows):
    row = P + (h % n_param_rows) * 4
    return tl.load(row), tl.load(row + 1), tl.load(row + 2), tl.load(row + 3)


@triton.jit
def _visible(offs_m, offs_n, t_q, t_k, window, WINDOWED: tl.constexpr):
    """(BLOCK_M, BLOCK_N) bool: query row m (position m + t_k - t_q) may see key n."""
    q_pos = offs_m[:, None] + (t_k - t_q)
    keep = (offs_m[:, None] < t_q) & (offs_n[None, :] < t_k) & (offs_n[None, :] <= q_pos)
    if WINDOWED:
        keep = keep & (offs_n[None, :] > q_pos - window)
    return keep


@triton.jit
def _key_range(pid_m, t_q, t_k, window, WINDOWED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """[lo, hi): the keys any query of query tile pid_m can see (causal upper bound, window lower
    bound, lo rounded down to a key tile)."""
    hi = tl.minimum(t_k, pid_m * BLOCK_M + BLOCK_M + (t_k - t_q))
    lo = 0
    if WINDOWED:
        lo = tl.maximum(0, pid_m * BLOCK_M + (t_k - t_q) - window + 1) // BLOCK_N * BLOCK_N
    return lo, hi


@triton.jit
def attn_fwd(Q, K, V, O, P, scale, dmax,
              sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
              n_head, group, t_q, t_k, head_dim, window, n_param_rows,
              T: tl.constexpr, WINDOWED: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // n_head, bh % n_head
    kvh = h // group
    p0, p1, p2, p3 = _params(P, h, n_param_rows)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :],
                mask=(offs_m[:, None] < t_q) & d_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K + b * skb + kvh * skh
    v_base = V + b * svb + kvh * svh
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    lo, hi = _key_range(pid_m, t_q, t_k, window, WINDOWED, BLOCK_M, BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < t_k
        kt = tl.load(k_base + offs_n[None, :] * skt + offs_d[:, None], mask=n_ok[None, :] & d_ok[:, None],
                     other=0.0)  # (BLOCK_D, BLOCK_N)
        if UPCAST:
            kt = kt.to(tl.float32)
        s = tl.dot(q, kt, input_precision=PRECISION) * scale  # (BLOCK_M, BLOCK_N) fp32
        keep = _visible(offs_m, offs_n, t_q, t_k, window, WINDOWED)
        w = tl.where(keep, tl.minimum(score_weight(tl.where(keep, s, 0.0), T, p0, p1, p2, p3), dmax), 0.0)
        v = tl.load(v_base + offs_n[:, None] * svt + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :],
                    other=0.0)  # (BLOCK_N, BLOCK_D)
        if UPCAST:
            v = v.to(tl.float32)
        acc += tl.dot(w.to(v.dtype), v, input_precision=PRECISION)
    tl.store(O + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :], acc.to(O.dtype.element_ty),
             mask=(offs_m[:, None] < t_q) & d_ok[None, :])


@triton.jit
def attn_bwd_dkdv(Q, K, V, DO, DK, DV, P, DP, scale, dmax,
                   sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdob, sdoh, sdot,
                   n_head, group, t_q, t_k, head_dim, window, n_param_rows, n_kv_head,
                   T: tl.constexpr, WINDOWED: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dK, dV of one key tile of one kv head (DK, DV contiguous (B, nkv, T_k, hs)); DP[b, h, tile]
    gets the tile's share of dL/dp0 and dL/dp1 for each query head h of the group."""
    pid_n, bkv = tl.program_id(0), tl.program_id(1)
    b, kvh = bkv // n_kv_head, bkv % n_kv_head
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    n_ok = offs_n < t_k
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(K + b * skb + kvh * skh + offs_n[:, None] * skt + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + b * svb + kvh * svh + offs_n[:, None] * svt + offs_d[None, :], mask=kv_mask, other=0.0)
    if UPCAST:
        k, v = k.to(tl.float32), v.to(tl.float32)
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    # queries that can see a key of this tile: from the first causal one to the window's end
    lo = tl.maximum(0, pid_n * BLOCK_N - (t_k - t_q)) // BLOCK_M * BLOCK_M
    hi = t_q
    if WINDOWED:
        hi = tl.minimum(t_q, pid_n * BLOCK_N + BLOCK_N + window - 1 - (t_k - t_q))
    for h in range(kvh * group, kvh * group + group):
        p0, p1, p2, p3 = _params(P, h, n_param_rows)
        d0 = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        d1 = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for start in range(lo, hi, BLOCK_M):
            offs_m = start + tl.arange(0, BLOCK_M)
            m_mask = (offs_m[:, None] < t_q) & d_ok[None, :]
            q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :], mask=m_mask, other=0.0)
            do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdot + offs_d[None, :], mask=m_mask,
                         other=0.0)
            if UPCAST:
                q, do = q.to(tl.float32), do.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # (BLOCK_M, BLOCK_N)
            keep = _visible(offs_m, offs_n, t_q, t_k, window, WINDOWED)
            y, dyds, dy0, dy1 = score_weight_grad(tl.where(keep, s, 0.0), T, p0, p1, p2, p3)
            live = keep & (y <= dmax)
            w = tl.where(keep, tl.minimum(y, dmax), 0.0)
            dv += tl.dot(tl.trans(w.to(do.dtype)), do, input_precision=PRECISION)
            dw = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # dL/dw (BLOCK_M, BLOCK_N)
            ds = tl.where(live, dw * dyds, 0.0)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
            d0 += tl.where(live, dw * dy0, 0.0)
            d1 += tl.where(live, dw * dy1, 0.0)
        slot = DP + ((b * n_head + h) * tl.num_programs(0) + pid_n) * 2
        tl.store(slot, tl.sum(tl.sum(d0, axis=1), axis=0))
        tl.store(slot + 1, tl.sum(tl.sum(d1, axis=1), axis=0))
    out = b * (n_kv_head * t_k * head_dim) + kvh * (t_k * head_dim) + offs_n[:, None] * head_dim + offs_d[None, :]
    tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def attn_bwd_dq(Q, K, V, DO, DQ, P, scale, dmax,
                 sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdob, sdoh, sdot,
                 n_head, group, t_q, t_k, head_dim, window, n_param_rows,
                 T: tl.constexpr, WINDOWED: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dQ of one query tile of one head (DQ contiguous (B, nh, T_q, hs))."""
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // n_head, bh % n_head
    kvh = h // group
    p0, p1, p2, p3 = _params(P, h, n_param_rows)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    m_mask = (offs_m[:, None] < t_q) & d_ok[None, :]
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :], mask=m_mask, other=0.0)
    do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdot + offs_d[None, :], mask=m_mask, other=0.0)
    if UPCAST:
        q, do = q.to(tl.float32), do.to(tl.float32)
    k_base = K + b * skb + kvh * skh
    v_base = V + b * svb + kvh * svh
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    lo, hi = _key_range(pid_m, t_q, t_k, window, WINDOWED, BLOCK_M, BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n[:, None] < t_k) & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * skt + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * svt + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k, v = k.to(tl.float32), v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        keep = _visible(offs_m, offs_n, t_q, t_k, window, WINDOWED)
        y, dyds, _, _ = score_weight_grad(tl.where(keep, s, 0.0), T, p0, p1, p2, p3)
        dw = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = tl.where(keep & (y <= dmax), dw * dyds, 0.0)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    tl.store(DQ + b * (n_head * t_q * head_dim) + h * (t_q * head_dim) + offs_m[:, None] * head_dim + offs_d[None, :],
             (dq * scale).to(DQ.dtype.element_ty), mask=m_mask)


def _settings(q: torch.Tensor, k: torch.Tensor, block: int | None) -> dict:
    head_dim = q.size(-1)
    if block is None:  # 64 x 64 tiles on a GPU; small tiles in the CPU interpreter exercise the tiling
        block = 64 if q.is_cuda else 16
    precision = "tf32" if q.is_cuda and torch.backends.cuda.matmul.allow_tf32 else "ieee"
    # Triton's CPU interpreter multiplies bf16 tiles wrongly (numpy has no bf16): upcast there only
    upcast = q.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return dict(BLOCK_M=block, BLOCK_N=block, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
                PRECISION=precision, UPCAST=upcast, num_warps=4 if block <= 64 and head_dim <= 64 else 8)


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    if t.stride(-1) != 1:
        raise ValueError("fused attention needs the head dimension contiguous")
    return t.stride(0), t.stride(1), t.stride(2)


class _FusedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, params, transform, scale, window, block):
        B, nh, t_q, hs = q.shape
        nkv, t_k = k.size(1), k.size(2)
        kw = _settings(q, k, block)
        o = torch.empty(B, t_q, nh, hs, device=q.device, dtype=q.dtype)  # the layout c_proj reads
        out = o.transpose(1, 2)  # (B, nh, T_q, hs) view
        dmax = torch.finfo(q.dtype).max
        T, windowed = TRANSFORMS[transform], window is not None
        grid = (triton.cdiv(t_q, kw["BLOCK_M"]), B * nh)
        attn_fwd[grid](q, k, v, out, params, scale, dmax, *_strides(q), *_strides(k), *_strides(v), *_strides(out),
                        nh, nh // nkv, t_q, t_k, hs, window or 0, params.size(0), T=T, WINDOWED=windowed, **kw)
        ctx.save_for_backward(q, k, v, params)
        ctx.settings = (transform, scale, window, block)
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, params = ctx.saved_tensors
        transform, scale, window, block = ctx.settings
        B, nh, t_q, hs = q.shape
        nkv, t_k = k.size(1), k.size(2)
        if do.stride(-1) != 1:
            do = do.contiguous()
        kw = _settings(q, k, block)
        dmax = torch.finfo(q.dtype).max
        T, windowed = TRANSFORMS[transform], window is not None
        dq = torch.empty(B, nh, t_q, hs, device=q.device, dtype=q.dtype)
        dk = torch.empty(B, nkv, t_k, hs, device=q.device, dtype=k.dtype)
        dv = torch.empty(B, nkv, t_k, hs, device=q.device, dtype=v.dtype)
        n_tiles = triton.cdiv(t_k, kw["BLOCK_N"])
        dp = torch.zeros(B, nh, n_tiles, 2, device=q.device, dtype=torch.float32)
        common = (scale, dmax, *_strides(q), *_strides(k), *_strides(v), *_strides(do))
        attn_bwd_dkdv[(n_tiles, B * nkv)](q, k, v, do, dk, dv, params, dp, *common, nh, nh // nkv, t_q, t_k, hs,
                                           window or 0, params.size(0), nkv, T=T, WINDOWED=windowed, **kw)
        attn_bwd_dq[(triton.cdiv(t_q, kw["BLOCK_M"]), B * nh)](q, k, v, do, dq, params, *common, nh, nh // nkv,
                                                               t_q, t_k, hs, window or 0, params.size(0),
                                                               T=T, WINDOWED=windowed, **kw)
        dparams = None
        if ctx.needs_input_grad[3]:
            per_head = dp.sum(dim=(0, 2))  # (nh, 2)
            G = params.size(0)
            per_row = per_head if G == nh else per_head.sum(dim=0, keepdim=True)
            dparams = torch.cat([per_row, per_row.new_zeros(G, 2)], dim=1)
        return dq, dk, dv, dparams, None, None, None, None


def fused_attention(module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None,
                    block: int | None = None) -> torch.Tensor:
    """Causal attention weighted by the elementwise normaliser `module`; returns (B, nh, T_q, hs).

    q (B, nh, T_q, hs), k and v (B, nkv, T_k, hs), T_k >= T_q (the last T_q positions are the
    queries), nh a multiple of nkv. Scores are q . k / sqrt(hs).
    """
    transform, params = module.kernel_spec(q)  # q has the head axis third from last: per-head parameters
    if is_normalising(transform):
        raise ValueError(f"fused attention needs an elementwise normaliser; {transform} normalises rows "
                         "(use SDPA or the fused row kernel)")
    nh, nkv = q.size(1), k.size(1)
    if nh % nkv or k.shape != v.shape or k.size(2) < q.size(2):
        raise ValueError(f"fused attention: bad shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    params = params.to(device=q.device, dtype=torch.float32).contiguous()
    return _FusedAttention.apply(q, k, v, params, transform, 1.0 / math.sqrt(q.size(-1)), window, block)
