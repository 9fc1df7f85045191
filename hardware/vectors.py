"""Test vectors for the generated units, and the bit-exact check of the RTL against the Python model.

    verify(unit, rows=40, seed=0) -> Check(outputs compared, mismatches)

Streaming units (softmax, softermax) get whole rows, scheduled as the passes their RTL expects;
elementwise units get single keys. Edge cases first, then random ones:

  rows   all equal (at the minimum, zero and the maximum input), one large value among small ones,
         fully masked, a single kept key, every key at the maximum (the widest sum), at the minimum,
         alternating extremes, rows of every length from 1 to the unit's row (short rows), then random
         rows with random masks.
  keys   every input value when in_bits <= 10 (else the extremes, zero, +-1 LSB and random values), each
         kept and masked; consmax also the offset register at its extremes (saturation both ways).
"""
from __future__ import annotations

import copy

from dataclasses import dataclass

import torch

from hardware import fixed
from hardware.fixed import Unit


def edge_rows(unit: Unit, n_random: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(x (R, row) int64, keep (R, row) bool, the length of each row): edge cases, then random rows."""
    g = torch.Generator().manual_seed(seed)
    lo, hi, n = -2 ** (unit.in_bits - 1), 2 ** (unit.in_bits - 1) - 1, unit.row
    rows, keeps, lengths = [], [], []

    def add(x, keep=None, length=n):
        x = torch.as_tensor(x, dtype=torch.int64).expand(n).clone()
        keep = torch.ones(n, dtype=torch.bool) if keep is None else torch.as_tensor(keep, dtype=torch.bool).expand(n).clone()
        rows.append(x)
        keeps.append(keep)
        lengths.append(length)

    for v in (lo, 0, hi, 1, -1):
        add(v)  # all equal
    big = torch.full((n,), lo)
    big[n // 2] = hi
    add(big)  # one large value
    small = torch.randint(lo // 8, hi // 8 + 1, (n,), generator=g)
    small[0] = hi
    add(small)
    add(torch.randint(lo, hi + 1, (n,), generator=g), torch.zeros(n))  # fully masked
    one = torch.zeros(n, dtype=torch.bool)
    one[-1] = True
    add(torch.randint(lo, hi + 1, (n,), generator=g), one)  # a single kept key (weight 1: saturates)
    add(torch.tensor([lo, hi] * n)[:n])  # alternating extremes
    for length in sorted({1, 2, 3, max(1, n // 2), max(1, n - 1)}):
        add(torch.randint(lo, hi + 1, (n,), generator=g), length=length)  # short rows
    for _ in range(n_random):
        x = torch.randint(lo, hi + 1, (n,), generator=g)
        if torch.rand((), generator=g) < 0.5:  # narrow spreads too: many similar scores
            x = (x // 16).clamp(lo, hi)
        add(x, torch.rand(n, generator=g) < 0.8)
    return torch.stack(rows), torch.stack(keeps), lengths


def edge_keys(unit: Unit, n_random: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(x, keep, params) for elementwise units: every (or the extreme) input values, kept and masked."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = -2 ** (unit.in_bits - 1), 2 ** (unit.in_bits - 1) - 1
    if unit.in_bits <= 10:
        base = torch.arange(lo, hi + 1)
    else:
        base = torch.cat([torch.tensor([lo, lo + 1, -1, 0, 1, hi - 1, hi]), torch.randint(lo, hi + 1, (512,), generator=g)])
    x = torch.cat([base, torch.randint(lo, hi + 1, (n_random,), generator=g), base[::7]])
    keep = torch.ones_like(x, dtype=torch.bool)
    keep[-len(base[::7]):] = False  # masked keys
    params = {}
    if unit.variant == "consmax":
        omax = 2 ** (unit.OW - 1) - 1
        span = 2 ** (unit.in_bits - unit.in_frac + 2 + unit.TF)  # offsets where outputs are neither 0 nor saturated
        offset = torch.randint(-span, span, x.shape, generator=g)
        k = len(base)
        offset[:k // 4] = -omax - 1  # the exponential saturates
        offset[k // 4:k // 2] = omax  # everything underflows to 0
        offset[k // 2:3 * k // 4] = fixed.quantise_params(unit, 2.5, 100.0)["offset"]  # ReaLLM-Forge's init (beta 2.5, gamma 100)
        params = {"offset": offset}
    return x, keep, params


def schedule(unit: Unit, x: torch.Tensor, keep: torch.Tensor, lengths: list[int]) -> tuple[list[dict], list[tuple]]:
    """Cycles for the streaming units: per row clear, its passes; and (cycle, row, key) of each output."""
    passes = (fixed.OP_MAX, fixed.OP_SUM) if unit.variant == "softmax" else (fixed.OP_STAT,)
    cycles, outputs = [], []
    for r, n in enumerate(lengths):
        cycles.append({"op": fixed.OP_CLEAR})
        for op in passes:
            cycles += [{"op": op, "keep": int(keep[r, j]), "x": int(x[r, j])} for j in range(n)]
        for j in range(n):
            outputs.append((len(cycles), r, j))
            cycles.append({"op": fixed.OP_OUT, "keep": int(keep[r, j]), "x": int(x[r, j])})
    return cycles, outputs


@dataclass
class Check:
    unit: str
    compared: int
    mismatches: list  # (what, expected, simulated), the first few

    @property
    def ok(self) -> bool:
        return not self.mismatches


def verify(unit: Unit, n_random: int = 30, seed: int = 0) -> Check:
    """Simulate the RTL on edge-case and random vectors; compare every output with fixed.model."""
    from hardware.tools import simulate
    bad = []
    if unit.variant in fixed.STREAMING:
        x, keep, lengths = edge_rows(unit, n_random, seed)
        expected = [fixed.model(unit, x[r:r + 1, :n], keep[r:r + 1, :n])[0] for r, n in enumerate(lengths)]
        cycles, outputs = schedule(unit, x, keep, lengths)
        y = simulate(unit, cycles)
        for cycle, r, j in outputs:
            if y[cycle] != int(expected[r][j]):
                bad.append((f"row {r} key {j}: x={x[r, :lengths[r]].tolist()} keep={keep[r, :lengths[r]].int().tolist()}",
                            int(expected[r][j]), y[cycle]))
        compared = len(outputs)
    else:
        x, keep, params = edge_keys(unit, 20 * n_random, seed)
        expected = fixed.model(unit, x, keep, params)
        cycles = [{"keep": int(keep[i]), "x": int(x[i]), **{k: int(v[i]) for k, v in params.items()}}
                  for i in range(len(x))]
        y = simulate(unit, cycles)
        for i, c in enumerate(cycles):
            if y[i] != int(expected[i]):
                bad.append((str(c), int(expected[i]), y[i]))
        compared = len(cycles)
    return Check(unit=unit.name, compared=compared, mismatches=bad[:10])


def error_lsb(unit: Unit, normaliser, n_random: int = 30, seed: int = 0) -> float:
    """The largest |model - float variant| over the edge-case and random vectors, in output LSBs.

    The float variant (a built normaliser) runs on the same input values (X / 2^in_frac) and its
    output is saturated to the unit's output range, so the figure is the unit's own error, not the
    input rounding or the output range. consmax's float beta and gamma are the normaliser's; sigmoidmax's
    float bias is the unit's (rounded to the input's step, as the unit adds it to the input)."""
    top = 2 ** unit.out_bits - 1
    if unit.variant in fixed.STREAMING:
        x, keep, lengths = edge_rows(unit, n_random, seed)
        for r, n in enumerate(lengths):
            keep[r, n:] = False
        params = {}
    else:
        x, keep, _ = edge_keys(unit, 20 * n_random, seed)
        x, keep = x.view(1, -1), keep.view(1, -1)
        params = {}
        if unit.variant == "consmax":
            params = fixed.quantise_params(unit, float(normaliser.beta.detach()), float(normaliser.gamma.detach()))
        if unit.variant == "sigmoidmax":  # the bias as the unit adds it: in the input's format (rounded)
            normaliser = copy.copy(normaliser)
            normaliser.b = normaliser.bias = fixed.constants(unit)["B"] / 2 ** unit.in_frac
    y = fixed.model(unit, x, keep, params).double()
    with torch.no_grad():
        ref = normaliser(x.double() / 2 ** unit.in_frac, keep).double() * 2 ** unit.out_frac
    ref = ref.clamp(max=top)
    return float((y - ref).abs().max())
