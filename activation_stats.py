"""Activation statistics of a training run, for choosing fixed-point formats:
`--activation_stats_interval N` (train.py) records them every N optimiser steps on the training batch,
`--activation_stats_range BITS:POINT` names the fixed-point format whose overflow is counted.

    python train.py --preset cpu --activation_stats_interval 100 --activation_stats_range 8:4
    python -m analysis.plot_activation_stats out/shakespeare_char --site residual --stat absmax
    python -m analysis.summarize_runs out/shakespeare_char   # the last recorded values, per site

The format BITS:POINT is signed two's complement with BITS bits of which POINT are fractional: it holds
-2^(BITS-1) / 2^POINT .. (2^(BITS-1) - 1) / 2^POINT in steps of 2^-POINT (8:4 holds -8 .. 7.9375).

What is recorded, per layer (forward hooks; the values each module sees before any quantiser):
    norm_input    the input of every normaliser (ln_1, ln_2, peri-LN's output norms, the final norm)
    attn_input    the attention's input, mlp_input the feed-forward block's (the norms' outputs)
    q, k, v       the attention's queries (after QK-norm and rotation), keys and values
    attn_scores   the attention scores q.k / sqrt(hs) (soft-capped, with the position bias), and
    attn_probs    the attention normaliser's output; both over the causally visible entries only and
                  computed from the layer's input beside the forward pass (its fused SDPA path keeps no
                  score matrix), from unquantised q and k; attention without scores (linear) has neither
    attn_output   the heads' weighted sum, before the output projection
    mlp_hidden    the feed-forward block's hidden activation (after its activation or gate)
    residual      the residual stream leaving each block
The statistics are those of the step's first micro-batch (a gradient-checkpointed block's recomputation
is not counted twice), on rank 0. The training step itself is unchanged: the hooks only read, and with
the interval unset (the default) no hook is registered at all (`attach` is never called).

RUN/activation_stats.jsonl holds one JSON object per line, one line per site and recorded step:
    iter          optimiser steps taken before this forward pass (0 = the initial weights)
    layer         block index, null for the final norm
    site          one of SITES below
    module        the module's name in the model (model.named_modules())
    numel         the number of values summarised
    absmax        max |x|
    rms           sqrt(mean(x^2))
    kurtosis      mean((x - mean)^4) / var^2 (Pearson's, 3 for a Gaussian; null when var is 0)
    frac_outside  share of the values outside the format's range [range_min, range_max]
    range_min, range_max   that range (from --activation_stats_range)
A resumed run drops the records of the steps after its checkpoint, so no step appears twice.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
import torch.nn as nn

from errors import UserError
from model import Block
from run_dir import ACTIVATION_STATS as STATS_FILE
from variations.act_quant import ActSites
from variations.attention import CausalSelfAttention, causal_mask

SITES = ("norm_input", "attn_input", "q", "k", "v", "attn_scores", "attn_probs", "attn_output", "mlp_input",
         "mlp_hidden", "residual")
STATS = ("absmax", "rms", "kurtosis", "frac_outside")
_ACT_SITES = {"attn_input", "mlp_input", "q", "k", "v", "attn_output", "mlp_hidden"}  # read at the ActSites calls
_LAYER = re.compile(r"^transformer\.h\.(\d+)\.")


def parse_range(text: str) -> tuple[int, int]:
    """'8:4' -> (8, 4): bits and fractional bits of a signed fixed-point format; a one-line UserError else."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(text))
    if not m or not 2 <= int(m.group(1)) <= 64 or int(m.group(2)) > 64:
        raise UserError(f"--activation_stats_range must be BITS:POINT (signed fixed point, BITS in 2..64 of which "
                        f"POINT in 0..64 are fractional, e.g. 8:4 for -8 .. 7.9375), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def fixed_point_range(bits: int, point: int) -> tuple[float, float]:
    """The smallest and largest value of the signed format: -2^(bits-1) / 2^point, (2^(bits-1) - 1) / 2^point."""
    return -(2.0 ** (bits - 1)) / 2.0 ** point, (2.0 ** (bits - 1) - 1) / 2.0 ** point


def tensor_stats(x: torch.Tensor, lo: float, hi: float, keep: torch.Tensor | None = None) -> dict:
    """absmax, rms, kurtosis, frac_outside and numel of x (the entries where `keep`, broadcast, is True)."""
    x = x.detach().float()
    if keep is not None:
        x = x[keep.expand_as(x)]
    x = x.flatten()
    mean = x.mean()
    centred = x - mean
    var = centred.square().mean()
    values = torch.stack([x.abs().max(), x.square().mean().sqrt(), centred.pow(4).mean(), var,
                          ((x < lo) | (x > hi)).float().mean()]).tolist()  # one device sync per site
    absmax, rms, m4, var, outside = values
    return {"numel": x.numel(), "absmax": absmax, "rms": rms,
            "kurtosis": m4 / var ** 2 if var > 0 and math.isfinite(m4 / var ** 2) else None, "frac_outside": outside}


def attention_scores(attn: CausalSelfAttention, x: torch.Tensor, position) -> tuple[torch.Tensor, torch.Tensor,
                                                                                      torch.Tensor]:
    """(scores, probs, keep) of causal attention layer `attn` for its input x (B, T, C), computed as its
    explicit path does (scores (B, nh, T, T), its normaliser, keep (T, T) the visible entries), without
    the quantisers of q, k and the normaliser (whose per-tensor ranges would otherwise move)."""
    B, T, _ = x.shape
    hs, nh, nkv = attn.head_dim, attn.n_head, attn.n_kv_head
    q, k, _ = attn.c_attn(x).split([nh * hs, nkv * hs, nkv * hs], dim=2)
    q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
    k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = position.rotate(q, k, 0)
    if nkv != nh:
        k = k.repeat_interleave(nh // nkv, dim=1)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, T, T)
    if attn.softcap is not None:
        scores = (attn.softcap * torch.tanh(scores.float() / attn.softcap)).to(scores.dtype)
    bias = position.score_bias(T, T, x.device)
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    keep = causal_mask(T, T, x.device, attn.window)
    quantisers, attn.softmax.sites = attn.softmax.sites, {}
    try:
        probs = attn.softmax(scores, keep)
    finally:
        attn.softmax.sites = quantisers
    return scores, probs, keep


class ActivationStats:
    """Forward hooks that record the statistics of one forward pass.

        stats = ActivationStats(model, (8, 4))
        stats.attach(); model(x, y); rows = stats.detach(iter_num)   # list of STATS_FILE records

    Hooks exist only between attach and detach; only a site's first value per attach is kept."""

    def __init__(self, model: nn.Module, fmt: tuple[int, int]):
        self.model = model
        self.lo, self.hi = fixed_point_range(*fmt)
        self.handles: list = []
        self.rows: dict[tuple[str, str], dict] = {}

    def _record(self, module_name: str, site: str, x: torch.Tensor, keep: torch.Tensor | None = None):
        key = (module_name, site)
        if key in self.rows:  # a second micro-batch, or a checkpointed block recomputed in the backward pass
            return
        m = _LAYER.match(module_name + ".")
        with torch.no_grad():
            self.rows[key] = {"layer": int(m.group(1)) if m else None, "site": site, "module": module_name,
                              **tensor_stats(x, self.lo, self.hi, keep)}

    def attach(self) -> None:
        if self.handles:
            raise RuntimeError("activation statistics are already attached")
        self.rows = {}
        for name, module in self.model.named_modules():
            hooks = []
            if getattr(type(module), "registry_kind", None) == "norm":
                hooks.append(module.register_forward_pre_hook(
                    lambda mod, args, name=name: self._record(name, "norm_input", args[0])))
            elif isinstance(module, ActSites):
                parent = name.rsplit(".", 1)[0]
                hooks.append(module.register_forward_pre_hook(
                    lambda mod, args, parent=parent: self._record(parent, args[0], args[1])
                    if args[0] in _ACT_SITES else None))
            elif isinstance(module, CausalSelfAttention):
                hooks.append(module.register_forward_hook(self._attention_hook(name)))
            elif isinstance(module, Block):
                hooks.append(module.register_forward_hook(
                    lambda mod, args, out, name=name: self._record(name, "residual", out)))
            self.handles += hooks

    def _attention_hook(self, name: str):
        def hook(module, args, out):
            x, position = args[0], args[1]
            if (name, "attn_scores") in self.rows:
                return
            with torch.no_grad():
                scores, probs, keep = attention_scores(module, x, position)
            self._record(name, "attn_scores", scores, keep)
            self._record(name, "attn_probs", probs, keep)
        return hook

    def detach(self, iter_num: int) -> list[dict]:
        """Remove the hooks; the records of the forward pass since attach, in model order."""
        for h in self.handles:
            h.remove()
        self.handles = []
        rows, self.rows = list(self.rows.values()), {}
        order = {s: i for i, s in enumerate(SITES)}
        rows.sort(key=lambda r: (r["layer"] if r["layer"] is not None else math.inf, order[r["site"]], r["module"]))
        return [{"iter": iter_num, **r, "range_min": self.lo, "range_max": self.hi} for r in rows]


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append records to RUN/activation_stats.jsonl (whole lines; a resume drops any after its checkpoint)."""
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))


def read_rows(run_dir: str | Path) -> list[dict]:
    """The records of a run's activation_stats.jsonl ([] when it has none); a torn last line is skipped."""
    path = Path(run_dir) / STATS_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def final_rows(run_dir: str | Path) -> list[dict]:
    """The records of the last recorded step of a run ([] when it recorded none)."""
    rows = read_rows(run_dir)
    last = max((r["iter"] for r in rows), default=None)
    return [r for r in rows if r["iter"] == last]
