"""Triton kernels for the attention normalisers of variations/softmax.py: fused row kernels.

One forward and one backward kernel serve every variant: the score transform is a compile-time
constant (`TRANSFORMS`, variations/triton_transforms.py), so each variant gets its own specialised kernel. A row of scores is
read once, the causal (and window) mask is computed from the row and column indices inside the
kernel, and the weights are written once; the backward pass reads the saved tensor and the upstream
gradient once each. Math is fp32 whatever the input dtype (fp32, bf16, fp16); results are clamped to
the dtype's largest finite value and cast back, exactly as the torch reference does.

    from variations.triton_softmax import fused_rows
    w = fused_rows(softmax_module, scores, causal=True)   # scores (B, nh, T_q, T_k) on CUDA

The torch modules stay the source of truth; tests/variations/test_triton_softmax.py compares the two on CPU
with TRITON_INTERPRET=1 (set before triton is imported). Each variant describes itself to the
kernels with `kernel_spec(x) -> (transform name, params (G, 4) fp32)`: G = 1, or one row of
parameters per head (consmax_v2), and the four slots hold the variant's scalars (learned ones first:
slot 0 beta, slot 1 gamma), so gradients of learned scalars flow back through `params`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from variations.triton_transforms import (NORMALISING_LIMIT, TRANSFORMS, score_logit, score_weight,
                                          score_weight_grad)

SINGLE_PASS_MAX = 8192  # rows up to this length are held in registers: one read, one write
LOOP_BLOCK = 4096  # longer rows are read in tiles of this many columns (two passes)


# ---------------------------------------------------------------- row kernels

@triton.jit
def _keep(x, rows, cols, n_rows, n_cols, q_len, q_offset, window,
          CAUSAL: tl.constexpr, WINDOWED: tl.constexpr):
    """(BLOCK_R, BLOCK_N) bool: in bounds, not -inf, and (causal) key j visible from the row's query."""
    keep = (rows < n_rows) & (cols < n_cols) & (x != float("-inf"))
    if CAUSAL:
        q_pos = rows % q_len + q_offset  # absolute position of the row's query
        keep = keep & (cols <= q_pos)
        if WINDOWED:
            keep = keep & (cols > q_pos - window)
    return keep


@triton.jit
def _row_params(P, rows, n_rows, q_len, n_groups):
    """The four kernel parameters of each score row (BLOCK_R, 1): row (rows // q_len) % n_groups of
    P (G, 4), i.e. the row's head when there is one parameter row per head, else row 0."""
    g = (rows // q_len) % n_groups
    ok = rows < n_rows
    return (tl.load(P + g * 4 + 0, mask=ok, other=1.0), tl.load(P + g * 4 + 1, mask=ok, other=1.0),
            tl.load(P + g * 4 + 2, mask=ok, other=1.0), tl.load(P + g * 4 + 3, mask=ok, other=1.0))


@triton.jit
def rows_fwd(X, Y, P, n_rows, n_cols, q_len, q_offset, window, n_groups, dmax,
              T: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr,
              BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, SINGLE: tl.constexpr):
    """Y[r, :] = weights of row r of X (n_rows, n_cols), both contiguous. One program: BLOCK_R rows."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]  # (BLOCK_R, 1)
    offs = tl.arange(0, BLOCK_N)[None, :]  # (1, BLOCK_N)
    p0, p1, p2, p3 = _row_params(P, rows, n_rows, q_len, n_groups)
    base = rows.to(tl.int64) * n_cols
    if T < 2:  # normalising: a row max and a row sum
        if SINGLE:
            inb = (rows < n_rows) & (offs < n_cols)
            x = tl.load(X + base + offs, mask=inb, other=float("-inf")).to(tl.float32)
            keep = _keep(x, rows, offs, n_rows, n_cols, q_len, q_offset, window, CAUSAL, WINDOWED)
            z, _ = score_logit(tl.where(keep, x, 0.0), T, p0)
            z = tl.where(keep, z, float("-inf"))
            m = tl.max(z, axis=1)[:, None]
            e = tl.where(keep, tl.exp(z - tl.where(m == float("-inf"), 0.0, m)), 0.0)
            total = tl.sum(e, axis=1)[:, None]
            y = tl.minimum(e / tl.where(total > 0.0, total, 1.0), dmax)
            tl.store(Y + base + offs, y.to(Y.dtype.element_ty), mask=inb)
        else:  # online max and sum over column tiles (Milakov & Gimelshein, 2018), then a second pass
            m = tl.full((BLOCK_R, 1), float("-inf"), tl.float32)
            total = tl.zeros((BLOCK_R, 1), tl.float32)
            for start in range(0, n_cols, BLOCK_N):
                cols = start + offs
                x = tl.load(X + base + cols, mask=(rows < n_rows) & (cols < n_cols), other=float("-inf")).to(tl.float32)
                keep = _keep(x, rows, cols, n_rows, n_cols, q_len, q_offset, window, CAUSAL, WINDOWED)
                z, _ = score_logit(tl.where(keep, x, 0.0), T, p0)
                z = tl.where(keep, z, float("-inf"))
                m_new = tl.maximum(m, tl.max(z, axis=1)[:, None])
                shift = tl.where(m_new == float("-inf"), 0.0, m_new)
                total = total * tl.exp(m - shift) + tl.sum(tl.where(keep, tl.exp(z - shift), 0.0), axis=1)[:, None]
                m = m_new
            shift = tl.where(m == float("-inf"), 0.0, m)
            inv = 1.0 / tl.where(total > 0.0, total, 1.0)
            for start in range(0, n_cols, BLOCK_N):
                cols = start + offs
                inb = (rows < n_rows) & (cols < n_cols)
                x = tl.load(X + base + cols, mask=inb, other=float("-inf")).to(tl.float32)
                keep = _keep(x, rows, cols, n_rows, n_cols, q_len, q_offset, window, CAUSAL, WINDOWED)
                z, _ = score_logit(tl.where(keep, x, 0.0), T, p0)
                y = tl.minimum(tl.where(keep, tl.exp(z - shift), 0.0) * inv, dmax)
                tl.store(Y + base + cols, y.to(Y.dtype.element_ty), mask=inb)
    else:  # elementwise: every weight on its own
        for start in range(0, n_cols, BLOCK_N):
            cols = start + offs
            inb = (rows < n_rows) & (cols < n_cols)
            x = tl.load(X + base + cols, mask=inb, other=float("-inf")).to(tl.float32)
            keep = _keep(x, rows, cols, n_rows, n_cols, q_len, q_offset, window, CAUSAL, WINDOWED)
            y = tl.where(keep, score_weight(tl.where(keep, x, 0.0), T, p0, p1, p2, p3), 0.0)
            tl.store(Y + base + cols, tl.minimum(y, dmax).to(Y.dtype.element_ty), mask=inb)


@triton.jit
def rows_bwd(X, Y, DY, DX, P, DP, n_rows, n_cols, q_len, q_offset, window, n_groups, dmax,
              T: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr,
              BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, SINGLE: tl.constexpr):
    """DX = dL/dX from DY = dL/dY. Normalising: from the saved Y (and X for the transform's slope);
    elementwise: from X, recomputing the weights. DP[r] = row r's dL/dp0, dL/dp1 (summed later)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    offs = tl.arange(0, BLOCK_N)[None, :]
    p0, p1, p2, p3 = _row_params(P, rows, n_rows, q_len, n_groups)
    base = rows.to(tl.int64) * n_cols
    if T < 2:  # dz = y (dy - sum(dy y)), ds = dz dz/ds
        if SINGLE:
            inb = (rows < n_rows) & (offs < n_cols)
            y = tl.load(Y + base + offs, mask=inb, other=0.0).to(tl.float32)
            dy = tl.load(DY + base + offs, mask=inb, other=0.0).to(tl.float32)
            dot = tl.sum(y * dy, axis=1)[:, None]
            x = tl.load(X + base + offs, mask=inb, other=0.0).to(tl.float32)
            keep = _keep(x, rows, offs, n_rows, n_cols, q_len, q_offset, window, CAUSAL, WINDOWED)
            _, dz = score_logit(tl.where(keep, x, 0.0), T, p0)
            dx = tl.where(keep, y * (dy - dot) * dz, 0.0)
            tl.store(DX + base + offs, dx.to(DX.dtype.element_ty), mask=inb)
        else:
            dot = tl.zeros((BLOCK_R, 1), tl.float32)
            for start in range(0, n_cols, BLOCK_N):
                cols = start + offs
                inb = (rows < n_rows) & (cols < n_cols)
                y = tl.load(Y + base + cols, mask=inb, other=0.0).to(tl.float32)
                dy = tl.load(DY + base + cols, mask=inb, other=0.0).to(tl.float32)
                dot += tl.sum(y * dy, axis=1)[:, None]
            for start in range(0, n_cols, BLOCK_N):
                cols = start + offs
                inb = (rows < n_rows) & (cols < n_cols)
                y = tl.load(Y + base + cols, mask=inb, other=0.0).to(tl.float32)
                dy = tl.load(DY + base + cols, mask=inb, other=0.0).to(tl.float32)
                x = tl.load(X + base + cols, mask=inb, other=0.0).to(tl.float32)
                keep = _keep(x, rows, cols, n_rows, n_cols, q_len, q_offset, window, CAUSAL, WINDOWED)
                _, dz = score_logit(tl.where(keep, x, 0.0), T, p0)
                dx = tl.where(keep, y * (dy - dot) * dz, 0.0)
                tl.store(DX + base + cols, dx.to(DX.dtype.element_ty), mask=inb)
    else:
        d0 = tl.zeros((BLOCK_R, 1), tl.float32)
        d1 = tl.zeros((BLOCK_R, 1), tl.float32)
        for start in range(0, n_cols, BLOCK_N):
            cols = start + offs
            inb = (rows < n_rows) & (cols < n_cols)
            x = tl.load(X + base + cols, mask=inb, other=float("-inf")).to(tl.float32)
            dy = tl.load(DY + base + cols, mask=inb, other=0.0).to(tl.float32)
            keep = _keep(x, rows, cols, n_rows, n_cols, q_len, q_offset, window, CAUSAL, WINDOWED)
            y, dyds, dy0, dy1 = score_weight_grad(tl.where(keep, x, 0.0), T, p0, p1, p2, p3)
            live = keep & (y <= dmax)  # a weight clamped to the dtype's maximum passes no gradient
            tl.store(DX + base + cols, tl.where(live, dy * dyds, 0.0).to(DX.dtype.element_ty), mask=inb)
            d0 += tl.sum(tl.where(live, dy * dy0, 0.0), axis=1)[:, None]
            d1 += tl.sum(tl.where(live, dy * dy1, 0.0), axis=1)[:, None]
        tl.store(DP + rows * 2 + 0, d0, mask=rows < n_rows)
        tl.store(DP + rows * 2 + 1, d1, mask=rows < n_rows)


# ---------------------------------------------------------------- autograd wrapper

def launch_shape(n_cols: int) -> tuple[int, int, bool, int]:
    """(BLOCK_R, BLOCK_N, SINGLE, num_warps): whole rows in registers up to SINGLE_PASS_MAX
    columns, several short rows per program so every program moves a few thousand elements."""
    block_n = triton.next_power_of_2(max(n_cols, 16))
    single = block_n <= SINGLE_PASS_MAX
    if not single:
        block_n = LOOP_BLOCK
    block_r = max(1, min(16, 2048 // block_n))
    tile = block_r * block_n
    num_warps = 4 if tile <= 2048 else 8 if tile <= 4096 else 16
    return block_r, block_n, single, num_warps


class _FusedRows(torch.autograd.Function):
    """y = transform(x) row by row; x (n_rows, n_cols) contiguous, params (G, 4) fp32."""

    @staticmethod
    def forward(ctx, x, params, transform, q_len, q_offset, window, causal):
        n_rows, n_cols = x.shape
        y = torch.empty_like(x)
        T = TRANSFORMS[transform]
        dmax = torch.finfo(x.dtype).max
        block_r, block_n, single, warps = launch_shape(n_cols)
        grid = (triton.cdiv(n_rows, block_r),)
        rows_fwd[grid](x, y, params, n_rows, n_cols, q_len, q_offset, window or 0, params.size(0), dmax,
                        T=T, CAUSAL=causal, WINDOWED=causal and window is not None,
                        BLOCK_R=block_r, BLOCK_N=block_n, SINGLE=single, num_warps=warps)
        ctx.save_for_backward(x, y if T < NORMALISING_LIMIT else None, params)
        ctx.settings = (T, q_len, q_offset, window, causal, dmax)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, y, params = ctx.saved_tensors
        T, q_len, q_offset, window, causal, dmax = ctx.settings
        n_rows, n_cols = x.shape
        dy = dy.contiguous()
        dx = torch.empty_like(x)
        dp = torch.zeros(n_rows, 2, device=x.device, dtype=torch.float32)
        block_r, block_n, single, warps = launch_shape(n_cols)
        grid = (triton.cdiv(n_rows, block_r),)
        rows_bwd[grid](x, y if y is not None else x, dy, dx, params, dp, n_rows, n_cols, q_len, q_offset,
                        window or 0, params.size(0), dmax,
                        T=T, CAUSAL=causal, WINDOWED=causal and window is not None,
                        BLOCK_R=block_r, BLOCK_N=block_n, SINGLE=single, num_warps=warps)
        dparams = None
        if ctx.needs_input_grad[1]:
            G = params.size(0)
            per_group = dp.view(-1, G, q_len, 2).sum(dim=(0, 2)) if G > 1 else dp.sum(dim=0, keepdim=True)
            dparams = torch.cat([per_group, per_group.new_zeros(G, 2)], dim=1)  # slots 2, 3 are constants
        return dx, dparams, None, None, None, None, None


def fused_rows(module, scores: torch.Tensor, causal: bool = False, window: int | None = None) -> torch.Tensor:
    """The fused equivalent of `module(scores, mask)`, mask = the causal (window) mask when `causal`.

    scores (..., T_q, T_k) in fp32, bf16 or fp16; with `causal` the query of row i of the last two
    axes sits at absolute position T_k - T_q + i (the KV-cache layout of attention.causal_mask).
    """
    transform, params = module.kernel_spec(scores)
    shape = scores.shape
    q_len = shape[-2] if scores.dim() >= 2 else 1
    x = scores.reshape(-1, shape[-1])
    if not x.is_contiguous():
        x = x.contiguous()
    params = params.to(device=scores.device, dtype=torch.float32).contiguous()
    q_offset = shape[-1] - q_len if causal else 0
    return _FusedRows.apply(x, params, transform, q_len, q_offset, window, causal).view(shape)
