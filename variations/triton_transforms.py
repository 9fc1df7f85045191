"""The score transforms of the Triton kernels, shared by the row kernels (triton_softmax.py) and the
fused attention (triton_attention.py), so both compute the same formula as the torch modules of
variations/softmax.py. Each normaliser names its transform in `kernel_spec(x)`; the transform id is
a compile-time constant, so every variant gets its own specialised kernel.

    normalising family  score_logit(s, T, p0) -> (z, dz/ds): the weights are softmax(z) over a row
    elementwise family  score_weight(s, T, p0..p3) -> f(s) / divisor, and score_weight_grad -> its
                        derivatives in s and in the learned slots p0 (beta) and p1 (gamma)
"""
from __future__ import annotations

import triton
import triton.language as tl

# name -> compile-time id. Ids below NORMALISING_LIMIT normalise each row (max and sum reductions).
TRANSFORMS = {
    "scaled_softmax": 0,  # softmax(p0 * s): softmax (p0 = 1), strongermax (ln b), softermax (ln 2)
    "sigsoftmax": 1,      # softmax(s + log sigmoid(s))
    "consmax": 2,         # exp(min(s - p0, 80)) / p1
    "saturating_consmax": 3,  # z = s - p0, exp(min(z, p2)) (1 + z - min(z, p2)) / p1
    "polymax": 4,         # 0 | p1 (s - p0) / -p0 | s^p2 + p1, all / p3
    "relumax": 5,         # relu(s) / p3
    "relu2max": 6,        # relu(s)^2 / p3
    "sigmoidmax": 7,      # sigmoid(s + p2) / p3
    "softplusmax": 8,     # softplus(s) / p3 (linear above 20, as F.softplus)
    "squareplus_max": 9,  # (s + sqrt(s^2 + p2)) / 2 / p3
}
NORMALISING_LIMIT = 2
CONSMAX_MAX_EXPONENT = 80.0  # variations.softmax.ConSmax.MAX_EXPONENT


def is_normalising(transform: str) -> bool:
    return TRANSFORMS[transform] < NORMALISING_LIMIT


@triton.jit
def log1p_accurate(u):
    """log(1 + u) for u >= 0, accurate for tiny u (Goldberg's trick: the rounding of 1 + u cancels)."""
    w = 1.0 + u
    return tl.where(w == 1.0, u, tl.log(w) * u / (w - 1.0))


@triton.jit
def sigmoid(s):
    return 1.0 / (1.0 + tl.exp(-s))


@triton.jit
def softplus(s):
    """ln(1 + e^s) = max(s, 0) + ln(1 + e^-|s|); s itself above 20, as F.softplus."""
    sp = tl.maximum(s, 0.0) + log1p_accurate(tl.exp(-tl.abs(s)))
    return tl.where(s > 20.0, s, sp)


@triton.jit
def score_logit(s, T: tl.constexpr, p0):
    """Normalising family: (z, dz/ds), the log-domain score whose softmax is the weight."""
    if T == 0:
        z = s * p0
        dz = tl.full(s.shape, 1.0, tl.float32) * p0
    else:  # sigsoftmax: z = s + log sigmoid(s), dz/ds = 1 + sigmoid(-s)
        z = s + tl.minimum(s, 0.0) - log1p_accurate(tl.exp(-tl.abs(s)))
        dz = 1.0 + sigmoid(-s)
    return z, dz


@triton.jit
def score_weight(s, T: tl.constexpr, p0, p1, p2, p3):
    """Elementwise family: the weight f(s) / divisor."""
    if T == 2:
        y = tl.exp(tl.minimum(s - p0, 80.0)) / p1
    elif T == 3:
        z = s - p0
        zs = tl.minimum(z, p2)
        y = tl.exp(zs) * (1.0 + z - zs) / p1
    elif T == 4:
        pos = tl.maximum(s, 0.0)
        power = tl.where(pos > 0.0, tl.exp(p2 * tl.log(tl.maximum(pos, 1e-30))), 0.0)
        y = tl.where(s < p0, 0.0, tl.where(s < 0.0, p1 * (s - p0) / (-p0), power + p1)) / p3
    elif T == 5:
        y = tl.maximum(s, 0.0) / p3
    elif T == 6:
        r = tl.maximum(s, 0.0)
        y = r * r / p3
    elif T == 7:
        y = sigmoid(s + p2) / p3
    elif T == 8:
        y = softplus(s) / p3
    else:
        r = tl.sqrt(s * s + p2)
        y = tl.where(s >= 0.0, 0.5 * (s + r), 0.5 * p2 / (r - tl.minimum(s, 0.0))) / p3
    return y


@triton.jit
def score_weight_grad(s, T: tl.constexpr, p0, p1, p2, p3):
    """Elementwise family: (y, dy/ds, dy/dp0, dy/dp1); the last two are zero for constant slots."""
    zero = tl.zeros(s.shape, tl.float32)
    if T == 2:
        z = s - p0
        y = tl.exp(tl.minimum(z, 80.0)) / p1
        dy = tl.where(z < 80.0, y, 0.0)  # the clamp stops the gradient, as torch.clamp does
        d0 = -dy
        d1 = -y / p1
    elif T == 3:
        z = s - p0
        zs = tl.minimum(z, p2)
        e = tl.exp(zs) / p1
        y = e * (1.0 + z - zs)
        dy = e  # e^z below the threshold, the tangent's slope e^s above it
        d0 = -dy
        d1 = -y / p1
    elif T == 4:
        pos = tl.maximum(s, 0.0)
        logpos = tl.log(tl.maximum(pos, 1e-30))
        power = tl.where(pos > 0.0, tl.exp(p2 * logpos), 0.0)
        # d/ds s^p = p s^(p-1); at s = 0 it is 1 for p = 1 and 0 for p > 1
        dpower = tl.where(pos > 0.0, p2 * tl.exp((p2 - 1.0) * logpos), tl.where(p2 == 1.0, 1.0, 0.0))
        y = tl.where(s < p0, 0.0, tl.where(s < 0.0, p1 * (s - p0) / (-p0), power + p1)) / p3
        dy = tl.where(s < p0, 0.0, tl.where(s < 0.0, p1 / (-p0) + zero, dpower)) / p3
        d0 = zero
        d1 = zero
    elif T == 5:
        y = tl.maximum(s, 0.0) / p3
        dy = tl.where(s > 0.0, 1.0, 0.0) / p3
        d0 = zero
        d1 = zero
    elif T == 6:
        r = tl.maximum(s, 0.0)
        y = r * r / p3
        dy = 2.0 * r / p3
        d0 = zero
        d1 = zero
    elif T == 7:
        g = sigmoid(s + p2)
        y = g / p3
        dy = g * (1.0 - g) / p3
        d0 = zero
        d1 = zero
    elif T == 8:
        y = softplus(s) / p3
        dy = tl.where(s > 20.0, 1.0, sigmoid(s)) / p3
        d0 = zero
        d1 = zero
    else:
        r = tl.sqrt(s * s + p2)
        y = tl.where(s >= 0.0, 0.5 * (s + r), 0.5 * p2 / (r - tl.minimum(s, 0.0))) / p3
        dy = 0.5 * (1.0 + s / r) / p3
        d0 = zero
        d1 = zero
    return y, dy, d0, d1
