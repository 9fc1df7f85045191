"""The hardware cost of a component: what a hardware designer counts, per token, forward pass.

Every registered component has `cost(...) -> Cost`: the modules of a block (attention, mlp, norm,
position, linear) take the context length T and report per-token figures; an activation reports
for `n` elements, a softmax for `rows` rows of `row_len` scores. Counts:

    params    parameters (exact: equal to the module's sum of numel)
    macs      multiply-accumulates of matrix products (a (m x k) @ (k x n) product is m k n):
              linear layers, attention scores and weighted sums (what FlopCounterMode counts, / 2)
    elementwise  other multiplies and adds (scaling, residual-free elementwise math, norms' affine)
    exp       natural exponentials e^x (also inside sigmoid, tanh, softplus, erf-based GELU: one each)
    exp2      base-2 exponentials 2^x (softermax): no multiply by log2(e) in hardware
    div       divisions and reciprocals by a value computed at run time (a division by a constant or a
              learned scalar is a multiply by its precomputed reciprocal: counted as elementwise)
    sqrt      square roots and reciprocal square roots
    cmp       comparisons, max/min, clamps, ReLU-style selects
    reduce    elements entering a reduction across a row (sum or max over the row)
    act_mem   activation elements kept for the backward pass
    weights   weight elements read to compute one token (defaults to params; an embedding reads one
              row, the tied output head reads the whole table it shares)
    kv_read   cached elements (keys and values, or a recurrent state) read per token at context T
    kv_write  elements appended to (or rewritten in) that cache per token

Each count may carry the number format its operations run in (`Cost.at`, `Cost.formats`): a linear
layer quantised to 4-bit weights tags its MACs "int4*int8" (weight * activation) and its weights
"int4"; an untagged amount runs in the default format the estimator is given (the training dtype
or the target's native format). ppa/estimate.py prices these counts; this file only counts.

Attention scores are counted over the full T x T matrix (what the explicit path and
FlopCounterMode count), not the causal half. Training costs about 3x the forward MACs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

COUNTS = ("params", "macs", "elementwise", "exp", "exp2", "div", "sqrt", "cmp", "reduce", "act_mem", "weights",
          "kv_read", "kv_write")
# counts that are operations or memory accesses, so run in a number format (params and act_mem do not)
PRICED = tuple(c for c in COUNTS if c not in ("params", "act_mem"))
DEFAULT = "default"  # a format placeholder: the estimator's default format


@dataclass
class Cost:
    params: int = 0
    macs: float = 0.0
    elementwise: float = 0.0
    exp: float = 0.0
    exp2: float = 0.0
    div: float = 0.0
    sqrt: float = 0.0
    cmp: float = 0.0
    reduce: float = 0.0
    act_mem: float = 0.0
    weights: float | None = None  # None: every parameter is read (= params)
    kv_read: float = 0.0
    kv_write: float = 0.0
    # count -> {format: amount} for the amounts whose number format is stated; the rest is untagged
    fmt: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.weights is None:
            self.weights = self.params

    def __add__(self, other: "Cost") -> "Cost":
        out = Cost(**{c: getattr(self, c) + getattr(other, c) for c in COUNTS})
        for src in (self.fmt, other.fmt):
            for count, by_fmt in src.items():
                dst = out.fmt.setdefault(count, {})
                for name, amount in by_fmt.items():
                    dst[name] = dst.get(name, 0) + amount
        return out

    def repeat(self, k: float) -> "Cost":
        """k independent copies: parameters and counts both multiply (a fraction k scales, for means)."""
        return Cost(**{c: getattr(self, c) * k for c in COUNTS},
                    fmt={c: {n: a * k for n, a in d.items()} for c, d in self.fmt.items()})

    def at(self, fmt: str, *counts: str, amount: float | None = None) -> "Cost":
        """A copy in which the untagged amounts of `counts` (default: every priced count) run in `fmt`;
        with `amount`, only that much of one count (e.g. a layer's weight matrix but not its bias).
        Amounts already tagged keep their format, so an inner module's tag wins over an outer one."""
        bad = [c for c in counts if c not in PRICED]
        if bad or (amount is not None and len(counts) != 1):
            raise ValueError(f"Cost.at: counts {list(counts)} must be priced counts ({', '.join(PRICED)}), "
                             "exactly one when an amount is given")
        out = Cost(**{c: getattr(self, c) for c in COUNTS},
                   fmt={c: dict(d) for c, d in self.fmt.items()})
        if fmt == DEFAULT:  # the default format is what untagged means already
            return out
        for c in counts or PRICED:
            untagged = self.formats(c).get(None, 0)
            take = untagged if amount is None else amount
            if take > untagged:
                raise ValueError(f"Cost.at: {take} of {c} to tag but only {untagged} untagged")
            if take:
                out.fmt.setdefault(c, {})
                out.fmt[c][fmt] = out.fmt[c].get(fmt, 0) + take
        return out

    def with_activation(self, fmt: str) -> "Cost":
        """A copy whose MACs take their activation operand in `fmt` (a quantised input site): untagged
        MACs become "default*fmt" and "W*default" tags "W*fmt"; MACs with a stated activation keep it."""
        out = self.at(mac_format(DEFAULT, fmt), "macs")  # a copy; untagged MACs tagged
        if fmt != DEFAULT and "macs" in out.fmt:
            renamed: dict = {}
            for tag, amount in out.fmt["macs"].items():
                key = f"{tag.partition('*')[0]}*{fmt}" if tag.endswith(f"*{DEFAULT}") else tag
                renamed[key] = renamed.get(key, 0) + amount
            out.fmt["macs"] = renamed
        return out

    def formats(self, count: str) -> dict:
        """{format: amount} of one count; the key None holds the untagged amount."""
        by_fmt = {k: v for k, v in self.fmt.get(count, {}).items() if v}
        value = getattr(self, count)
        rest = value - sum(by_fmt.values())
        if abs(rest) > 1e-9 * abs(value):  # not float round-off of sums and means
            by_fmt[None] = rest
        return by_fmt

    def counts(self) -> dict:
        """The counts alone: {name: amount} in COUNTS order."""
        return {c: getattr(self, c) for c in COUNTS}

    def to_dict(self) -> dict:
        return asdict(self)


def mac_format(weight: str, activation: str) -> str:
    """The format tag of a MAC: "int4*int8" (weight * activation), or the one name when both agree."""
    return weight if weight == activation else f"{weight}*{activation}"


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
    headers = {"macs": "MACs", "elementwise": "elemwise", "act_mem": "act mem", "kv_read": "kv read",
               "kv_write": "kv write"}
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
