"""The hardware cost of a component: what a hardware designer counts, per token, forward pass.

Every registered component has `cost(...) -> Cost`: the modules of a block (attention, mlp, norm,
position, linear) take the context length T and report per-token figures; an activation reports
for `n` elements, a softmax for `rows` rows of `row_len` scores. Counts:

    params    parameters (exact: equal to the module's sum of numel)
    macs      multiply-accumulates of matrix products (a (m x k) @ (k x n) product is m k n):
              linear layers, attention scores and weighted sums (what FlopCounterMode counts, / 2)
    elementwise  other multiplies and adds (scaling, residual-free elementwise math, norms' affine)
    exp       exponentials (also inside sigmoid, tanh, softplus, erf-based GELU: one each)
    div       divisions and reciprocals
    sqrt      square roots and reciprocal square roots
    cmp       comparisons, max/min, clamps, ReLU-style selects
    reduce    elements entering a reduction across a row (sum or max over the row)
    act_mem   activation elements kept for the backward pass

Attention scores are counted over the full T x T matrix (what the explicit path and
FlopCounterMode count), not the causal half. Training costs about 3x the forward MACs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

COUNTS = ("params", "macs", "elementwise", "exp", "div", "sqrt", "cmp", "reduce", "act_mem")


@dataclass
class Cost:
    params: int = 0
    macs: float = 0.0
    elementwise: float = 0.0
    exp: float = 0.0
    div: float = 0.0
    sqrt: float = 0.0
    cmp: float = 0.0
    reduce: float = 0.0
    act_mem: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def repeat(self, k: int) -> "Cost":
        """k independent copies: parameters and counts both multiply."""
        return Cost(**{f.name: getattr(self, f.name) * k for f in fields(self)})

    def to_dict(self) -> dict:
        return asdict(self)


def total(costs) -> Cost:
    out = Cost()
    for c in costs:
        out = out + c
    return out


def group_by_component(rows: dict[str, Cost]) -> dict[str, Cost]:
    """Sum `layer.<i>.<part>` rows over the layers: {'embedding', 'attention', 'mlp', ...}."""
    out: dict[str, Cost] = {}
    for name, c in rows.items():
        key = name.split(".", 2)[2] if name.startswith("layer.") else name
        out[key] = out.get(key, Cost()) + c
    return out


def per_token_summary(rows: dict[str, Cost]) -> dict[str, float]:
    """Flat keys for summary.json: macs_per_token, exp_per_token, ... and cost_params."""
    t = total(rows.values())
    out = {f"{name}_per_token": getattr(t, name) for name in COUNTS if name != "params"}
    out["cost_params"] = t.params
    return out


def cost_table(rows: dict[str, Cost], title: str):
    """A rich Table: one row per component and a total row (training ~ 3x the forward MACs)."""
    from rich.table import Table
    table = Table(title=title)
    table.add_column("component")
    headers = {"macs": "MACs", "elementwise": "elemwise", "act_mem": "act mem"}
    for name in COUNTS:
        table.add_column(headers.get(name, name), justify="right")

    def fmt(v: float) -> str:
        if v == 0:
            return "-"
        for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(v) >= div:
                return f"{v / div:.2f}{unit}"
        return f"{v:.0f}" if float(v).is_integer() else f"{v:.2f}"

    for name, c in rows.items():
        table.add_row(name, *(fmt(getattr(c, k)) for k in COUNTS))
    table.add_section()
    t = total(rows.values())
    table.add_row("total", *(fmt(getattr(t, k)) for k in COUNTS), style="bold")
    return table
