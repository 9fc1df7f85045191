"""Positional encodings: `--position_variant NAME`.

One instance per model, shared by all layers. Every class takes `(config)` and has three hooks,
each a no-op unless the variant needs it:
  embed(x, start)             x: token embeddings (B, T, C) at absolute positions start..start+T-1
  rotate(q, k, start)         q: (B, n_head, T, hs), k: (B, n_kv_head, T, hs), before attention scores
  score_bias(t_q, t_k, dev)   additive bias (n_head, t_q, t_k) on the attention scores, or None
Costs (variations/cost.py): `cost(T)` once per token at the embedding, `layer_cost(T)` per token in
every attention layer.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from variations.cost import Cost
from variations.registry import knob, register

ROPE_THETA = knob("rope_theta", 10000.0, "RoPE base frequency", minimum=1.0)


class PositionEncoding(nn.Module):
    """Base class: no positional information."""

    def __init__(self, config):
        super().__init__()
        self.block_size = config.block_size

    def embed(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        return x

    def rotate(self, q: torch.Tensor, k: torch.Tensor, start: int = 0):
        return q, k

    def score_bias(self, t_q: int, t_k: int, device) -> torch.Tensor | None:
        return None

    def cost(self, T: int) -> Cost:
        return Cost(params=sum(p.numel() for p in self.parameters(recurse=False)))

    def layer_cost(self, T: int) -> Cost:
        return Cost()


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
        return Cost(params=self.wpe.weight.numel(), elementwise=self.wpe.embedding_dim)  # one add per channel


@register("position", "rope", knobs=[ROPE_THETA])
class RotaryPosition(PositionEncoding):
    """Rotary position embedding (RoFormer, Su et al., 2021), half-split pairing, base --rope_theta.

    Channel i of the first half and channel i of the second half of each head form a pair rotated by
    angle pos * theta^(-2i/hs), so q.k depends on the distance between positions only.
    """

    def __init__(self, config):
        super().__init__(config)
        self.n_rotated = (config.n_head + config.n_kv_head) * config.head_dim  # q and k channels per token
        hs = config.head_dim
        inv_freq = config.rope_theta ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)  # (hs/2,)
        angles = torch.outer(torch.arange(config.block_size, dtype=torch.float64), inv_freq)  # (block, hs/2)
        # not saved in checkpoints: recomputed from the config
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def _rotate_pairs(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float().chunk(2, dim=-1)  # (B, h, T, hs/2) each
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)

    def rotate(self, q: torch.Tensor, k: torch.Tensor, start: int = 0):
        T = q.size(2)
        cos, sin = self.cos[start:start + T], self.sin[start:start + T]  # (T, hs/2)
        return self._rotate_pairs(q, cos, sin), self._rotate_pairs(k, cos, sin)

    def layer_cost(self, T: int) -> Cost:
        return Cost(elementwise=3 * self.n_rotated)  # per channel: two multiplies and an add
