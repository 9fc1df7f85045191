"""Positional encodings: `--position_variant NAME`.

One instance per model, shared by all layers. Every class takes `(config)` and has three hooks,
each a no-op unless the variant needs it:
  embed(x, start)             x: token embeddings (B, T, C) at absolute positions start..start+T-1
  rotate(q, k, start)         q: (B, n_head, T, hs), k: (B, n_kv_head, T, hs), before attention scores
  score_bias(t_q, t_k, dev)   additive bias (n_head, t_q, t_k) on the attention scores, or None; the
                              queries sit at absolute positions t_k - t_q .. t_k - 1 and the keys at
                              0 .. t_k - 1 (t_q < t_k with the KV cache)
Classes that return a bias set `has_score_bias = True`. Costs (variations/cost.py): `cost(T)` once
per token at the embedding (and all parameters), `layer_cost(T)` per token in every attention layer.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from errors import UserError
from variations.cost import Cost
from variations.registry import knob, register

ROPE_THETA = knob("rope_theta", 10000.0, "RoPE base frequency", minimum=1.0)
ROPE_FRACTION = knob("rope_fraction", 1.0, "RoPE: fraction of each head's channels rotated (the first "
                     "round(fraction * hs / 2) * 2; the rest pass unrotated), in (0, 1]")
FIRE_HIDDEN = knob("fire_hidden", 32, "FIRE: hidden width of the MLP from normalised distance to one bias per head",
                   minimum=1)
FIRE_C_INIT = knob("fire_c_init", 0.1, "FIRE: initial (learned) c of psi(x) = log(c x + 1); positive")
FIRE_THRESHOLD_INIT = knob("fire_threshold_init", 512.0, "FIRE: initial (learned) threshold L of the "
                           "normaliser psi(max(L, i))", minimum=0.0)


class PositionEncoding(nn.Module):
    """Base class: no positional information."""

    has_score_bias = False

    def __init__(self, config):
        super().__init__()
        self.block_size = config.block_size
        self.head_dim = config.head_dim

    def embed(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        return x

    def rotate(self, q: torch.Tensor, k: torch.Tensor, start: int = 0):
        return q, k

    def score_bias(self, t_q: int, t_k: int, device) -> torch.Tensor | None:
        return None

    def cost(self, T: int) -> Cost:
        return Cost(params=sum(p.numel() for p in self.parameters()))

    def layer_cost(self, T: int, heads: tuple[int, int] | None = None) -> Cost:
        """Per token in one attention layer; `heads`: (query and key heads rotated, head size) of that
        layer when it differs from the model-wide config (per-layer shapes, MLA)."""
        return Cost()

    def rotate_part(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """x (B, h, T, rotary_channels(layer config)): a separate rotary part whose every channel turns
        (MLA's decoupled query and key parts, variations/mla.py); the identity unless RoPE."""
        return x

    @classmethod
    def rotary_channels(cls, config) -> int:
        """Channels per head that `rotate` turns (0: none); attention that keeps a separate rotary
        part (MLA's decoupled key, variations/mla.py) sizes it by this."""
        return 0


def relative_distance(t_q: int, t_k: int, device) -> torch.Tensor:
    """(t_q, t_k) float: i - j for queries at absolute positions t_k - t_q + i and keys j."""
    q_pos = torch.arange(t_k - t_q, t_k, device=device, dtype=torch.float32)
    return q_pos.unsqueeze(1) - torch.arange(t_k, device=device, dtype=torch.float32).unsqueeze(0)


@register("position", "none")
class NoPosition(PositionEncoding):
    """No positional encoding (NoPE; Kazemnejad et al., 2023): order comes from the causal mask alone."""


@register("position", "learned")
class LearnedPosition(PositionEncoding):
    """Learned absolute position embeddings added to the token embeddings (GPT-2)."""

    def __init__(self, config):
        super().__init__(config)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)

    def embed(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        pos = torch.arange(start, start + x.size(1), device=x.device)  # (T,)
        return x + self.wpe(pos)  # (B, T, C) + (T, C)

    def cost(self, T: int) -> Cost:
        # one add per channel; a token reads one row of the table
        return Cost(params=self.wpe.weight.numel(), weights=self.wpe.embedding_dim, elementwise=self.wpe.embedding_dim)


@register("position", "sinusoidal")
class SinusoidalPosition(PositionEncoding):
    """Fixed sinusoidal position table added to the embeddings (Vaswani et al., 2017): PE[p, 2i] = sin(p / 10000^(2i/C)), PE[p, 2i+1] = cos(.).

    No parameters; the table is recomputed from the config (not stored in checkpoints).
    """

    def __init__(self, config):
        super().__init__(config)
        C = config.n_embd
        pos = torch.arange(config.block_size, dtype=torch.float64).unsqueeze(1)  # (block, 1)
        inv_freq = 10000.0 ** (-torch.arange(0, C, 2, dtype=torch.float64) / C)  # (ceil(C/2),)
        pe = torch.zeros(config.block_size, C, dtype=torch.float64)
        pe[:, 0::2] = torch.sin(pos * inv_freq)
        pe[:, 1::2] = torch.cos(pos * inv_freq)[:, :C // 2]  # an odd C has one sine more than cosines
        self.register_buffer("pe", pe.float(), persistent=False)

    def embed(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        return x + self.pe[start:start + x.size(1)].to(x.dtype)  # (B, T, C) + (T, C)

    def cost(self, T: int) -> Cost:
        return Cost(elementwise=self.pe.size(1))  # one add per channel


@register("position", "rope", knobs=[ROPE_THETA, ROPE_FRACTION])
class RotaryPosition(PositionEncoding):
    """Rotary position embedding (RoFormer, Su et al., 2021), half-split pairing, base --rope_theta, --rope_fraction of the channels.

    Of each head's first r = round(rope_fraction * hs / 2) * 2 channels, channel i of the first half
    and channel i of the second half (i < r/2) form a pair rotated by angle pos * theta^(-2i/r), so
    q.k depends on the distance between positions only; channels r.. pass unrotated (partial
    rotary as GPT-NeoX's rotary_pct: the frequencies span the rotated channels).
    """

    def __init__(self, config):
        super().__init__(config)
        hs, fraction = config.head_dim, config.rope_fraction
        if not 0.0 < fraction <= 1.0:
            raise UserError(f"--rope_fraction must be in (0, 1], got {fraction}")
        self.n_rot = round(fraction * hs / 2) * 2  # rotated channels per head (even)
        if self.n_rot == 0:
            raise UserError(f"--rope_fraction {fraction} rotates no channel of a head of size {hs}; "
                            f"use at least {2 / hs:.3g}")
        self.fraction, self.theta = fraction, config.rope_theta
        self.n_rotated = (config.n_head + config.n_kv_head) * self.n_rot  # q and k channels per token
        cos, sin = self._table(self.n_rot, config.block_size)
        # not saved in checkpoints: recomputed from the config
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        # layers of other head sizes (--n_head_layerlist) rotate their own share of channels
        layer_rot = {self.rotary_channels(config.for_layer(i)) for i in range(config.n_layer)}
        if 0 in layer_rot:
            raise UserError(f"--rope_fraction {fraction} rotates no channel of the smallest heads of "
                            "--n_head_layerlist; use fewer heads there or a larger fraction")
        for n in layer_rot - {self.n_rot}:
            cos, sin = self._table(n, config.block_size)
            self.register_buffer(f"cos_{n}", cos, persistent=False)
            self.register_buffer(f"sin_{n}", sin, persistent=False)

    def _table(self, n_rot: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (length, n_rot / 2) of the angles pos * theta^(-2i / n_rot)."""
        inv_freq = self.theta ** (-torch.arange(0, n_rot, 2, dtype=torch.float64) / n_rot)
        angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)  # (block, r/2)
        return angles.cos().float(), angles.sin().float()

    def _angles(self, n_rot: int, start: int, T: int):
        if n_rot == self.n_rot:
            return self.cos[start:start + T], self.sin[start:start + T]
        return getattr(self, f"cos_{n_rot}")[start:start + T], getattr(self, f"sin_{n_rot}")[start:start + T]

    def _rotate_pairs(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        n_rot = 2 * cos.size(-1)
        x_rot, x_pass = x[..., :n_rot], x[..., n_rot:]
        x1, x2 = x_rot.float().chunk(2, dim=-1)  # (B, h, T, r/2) each
        rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)
        return torch.cat((rotated, x_pass), dim=-1) if x_pass.size(-1) else rotated

    def rotate(self, q: torch.Tensor, k: torch.Tensor, start: int = 0):
        T, hs = q.size(2), q.size(-1)
        cos, sin = self._angles(self.n_rot if hs == self.head_dim else round(self.fraction * hs / 2) * 2, start, T)
        return self._rotate_pairs(q, cos, sin), self._rotate_pairs(k, cos, sin)

    def rotate_part(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        cos, sin = self._angles(x.size(-1), start, x.size(2))  # every channel of x: the frequencies span them
        return self._rotate_pairs(x, cos, sin)

    def layer_cost(self, T: int, heads: tuple[int, int] | None = None) -> Cost:
        if heads is not None:
            n, hs = heads
            return Cost(elementwise=3 * n * round(self.fraction * hs / 2) * 2)
        return Cost(elementwise=3 * self.n_rotated)  # per rotated channel: two multiplies and an add

    @classmethod
    def rotary_channels(cls, config) -> int:
        return round(config.rope_fraction * config.head_dim / 2) * 2


def alibi_slopes(n_head: int) -> list[float]:
    """ALiBi's head slopes: for a power of two n, 2^(-8/n), 2^(-16/n), ..., 2^(-8); otherwise those
    of the power of two c below n, then every other slope of 2c (Press et al., 2022, their code)."""
    def geometric(n):
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]
    c = 2 ** int(math.floor(math.log2(n_head)))
    return geometric(c) + geometric(2 * c)[0::2][:n_head - c]


@register("position", "alibi")
class ALiBiPosition(PositionEncoding):
    """ALiBi (Press et al., 2022): attention score bias -m_h * (i - j), geometric head slopes m_h = 2^(-8h/n_head); no parameters.

    The bias grows linearly with the distance from query i back to key j; future keys are masked.
    """

    has_score_bias = True

    def __init__(self, config):
        super().__init__(config)
        self.n_head = config.n_head
        self.register_buffer("slopes", torch.tensor(alibi_slopes(config.n_head)), persistent=False)

    def score_bias(self, t_q: int, t_k: int, device) -> torch.Tensor:
        dist = relative_distance(t_q, t_k, device)  # (t_q, t_k)
        return -self.slopes.to(device).view(-1, 1, 1) * dist  # (n_head, t_q, t_k)

    def layer_cost(self, T: int, heads: tuple[int, int] | None = None) -> Cost:
        n = self.n_head * T  # scores per token: slope x distance, add to the score
        return Cost(elementwise=2 * n)


@register("position", "fire", knobs=[FIRE_HIDDEN, FIRE_C_INIT, FIRE_THRESHOLD_INIT])
class FIREPosition(PositionEncoding):
    """FIRE (Li et al., 2023, "Functional Interpolation for Relative Positions"): score bias f_theta(psi(i - j) / psi(max(L, i))), psi(x) = log(c x + 1).

    f_theta is an MLP 1 -> --fire_hidden (ReLU) -> n_head; c and the threshold L are learned (L
    through a multiplier of --fire_threshold_init, as in the paper's code, so that it moves at the
    optimiser's step size). psi uses |c x|, which keeps the log finite whatever sign c takes.
    Each attention layer evaluates the MLP over its (t_q, t_k) distances: t_k per query.
    """

    has_score_bias = True
    EPS = 1e-6  # keeps the normaliser positive at i = 0 when L is 0

    def __init__(self, config):
        super().__init__(config)
        if not config.fire_c_init > 0:
            raise UserError(f"--fire_c_init must be positive, got {config.fire_c_init}")
        self.n_head, self.hidden = config.n_head, config.fire_hidden
        self.mlp = nn.Sequential(nn.Linear(1, self.hidden), nn.ReLU(), nn.Linear(self.hidden, config.n_head))
        self.c = nn.Parameter(torch.tensor(float(config.fire_c_init)))
        self.threshold_init = float(config.fire_threshold_init)
        self.threshold_scale = nn.Parameter(torch.tensor(1.0))

    def psi(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.abs(self.c * x) + 1.0)

    def normalized_distance(self, t_q: int, t_k: int, device) -> torch.Tensor:
        """(t_q, t_k): psi(i - j) / psi(max(L, i)) at absolute query positions i."""
        q_pos = torch.arange(t_k - t_q, t_k, device=device, dtype=torch.float32).unsqueeze(1)  # (t_q, 1)
        threshold = torch.abs(self.threshold_scale * self.threshold_init)
        return self.psi(relative_distance(t_q, t_k, device)) / (self.psi(torch.maximum(q_pos, threshold)) + self.EPS)

    def score_bias(self, t_q: int, t_k: int, device) -> torch.Tensor:
        u = self.normalized_distance(t_q, t_k, device)  # (t_q, t_k)
        return self.mlp(u.unsqueeze(-1)).permute(2, 0, 1)  # (t_q, t_k, n_head) -> (n_head, t_q, t_k)

    def layer_cost(self, T: int, heads: tuple[int, int] | None = None) -> Cost:
        """Per token: T distances, each through psi (multiply, add, log), the division, the MLP
        (h + h n_head MACs, biases, ReLU); one normaliser per query; the bias adds to the scores."""
        h, nh = self.hidden, self.n_head
        per_pair = Cost(macs=h + h * nh, elementwise=2 + h + nh + nh, exp=1, div=1, cmp=h, act_mem=1 + h + nh)
        normaliser = Cost(elementwise=3, exp=1, cmp=1)  # |scale x L|, max(L, i), c x + 1, log
        return per_pair.repeat(T) + normaliser
