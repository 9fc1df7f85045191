"""Every counted operation as primitives of the technology tables: adds and multiplies in a number format.

The tables (ppa/tables.py) price an add and a multiply. Everything else the cost model counts is
composed from them here, parametrised by the format's precision p (significand bits of a float,
the width of an integer), so that the normalisers differ for the reasons they differ in silicon:

    mac          one multiply in the operands' formats + one add in the accumulator's format.
                 "W*A" tags (weight * activation) price the multiply as the geometric mean of the
                 two square multipliers, sqrt(E_mult(W) E_mult(A)) (an array multiplier's energy and
                 area grow with the product of its operand widths: exactly W A for the bits^2 rule);
                 a ternary weight makes the multiply a select/negate (priced 0); with a float
                 operand the multiply runs in that float format (the integer side is dequantised).
    accumulate   integer products and reductions add in int32 (int8 x int8 -> int32 as in TPU v1,
                 Jouppi et al., ISCA 2017); float ones in fp32 (what tensor cores and torch's
                 matmuls do for fp16/bf16). accumulate="operand" keeps the operand format instead.
    elementwise  the count does not separate adds from multiplies: priced as half an add and half a
                 multiply (the truth lies between the add-only and multiply-only prices).
    cmp          one add (a comparator is a subtractor's carry chain).
    reduce       one add per element entering a row sum or row max, at the accumulator's width.
    exp          e^x = 2^(x log2 e): one multiply by log2 e, split x into integer i and fraction f
                 (wiring in fixed point), 2^f by a degree-d polynomial in Horner form (d multiplies,
                 d adds), scale by 2^i (one add to the exponent, or a shift): (d+1) mult + (d+1) add.
    exp2         2^x: the same without the multiply by log2 e: d mult + (d+1) add (softermax's point,
                 Stevens et al., "Softermax", DAC 2021).
    div          a reciprocal: a linear seed 1/x ~ 48/17 - 32/17 x on [0.5, 1) (1 mult + 1 add,
                 4.09 correct bits), then n Newton steps y <- y (2 - x y) (2 mult + 1 add each),
                 each doubling the correct bits: n = ceil(log2(p / 4.09)). A division a / b is this
                 reciprocal and one multiply; the cost model counts the multiply as elementwise.
    sqrt         a reciprocal square root: linear seed (1 mult + 1 add, ~4 bits), n Newton steps
                 y <- y (1.5 - 0.5 x y^2) (3 mult + 1 add each), n as for div.

The degree d is the smallest whose Chebyshev interpolant of 2^f on [0, 1) is accurate to 2^-p (a
near-minimax polynomial; computed, not assumed: `poly_degree`). Range reduction and the
Newton-Raphson reciprocal follow J.-M. Muller, "Elementary Functions: Algorithms and
Implementation" (3rd ed., Birkhaeuser, 2016), chapters 2 and 11; the linear reciprocal seed is
Flynn's ("On division by functional iteration", IEEE Trans. Computers, 1970). Lookup-table seeds
and piecewise-linear exponentials are cheaper choices a design may make; they are not modelled.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ppa.tables import Format, Tech, parse_format

SEED_BITS = -math.log2(1 / 17)  # 4.09: the linear seed's worst relative error is 1/17
COMPUTE = ("macs", "elementwise", "exp", "exp2", "div", "sqrt", "cmp", "reduce")
SPECIAL = ("exp", "exp2", "div", "sqrt")  # run on special-function units
VECTOR = ("elementwise", "cmp", "reduce")  # run on vector lanes


@lru_cache(maxsize=None)
def poly_degree(precision: int) -> int:
    """The smallest degree d whose Chebyshev interpolant of 2^f on [0, 1] has max error < 2^-precision."""
    grid = np.linspace(0.0, 1.0, 4001)
    for d in range(1, 16):
        poly = np.polynomial.chebyshev.Chebyshev.interpolate(lambda f: np.exp2(f), d, domain=[0, 1])
        if np.max(np.abs(poly(grid) - np.exp2(grid))) < 2.0 ** -precision:
            return d
    return 16


def newton_steps(precision: int) -> int:
    """Newton-Raphson steps from a 4.09-bit linear seed to `precision` bits (each doubles them)."""
    return max(0, math.ceil(math.log2(precision / SEED_BITS)))


def split_mac(tag: str) -> tuple[str, str]:
    """"int4*int8" -> ("int4", "int8"); "bf16" -> ("bf16", "bf16")."""
    w, _, a = tag.partition("*")
    return w, a or w


def accumulator(fmt: Format, accumulate: str = "wide") -> str:
    """The format sums of `fmt` values are kept in: int32 / fp32, or the operand's own ("operand")."""
    if accumulate == "operand":
        return fmt.name if fmt.kind != "ternary" else "int2"
    return "fp32" if fmt.kind == "float" else "int32"


def mac_operands(tag: str) -> tuple[Format, Format]:
    w, a = split_mac(tag)
    return parse_format(w), parse_format(a)


def product_format(tag: str) -> Format:
    """The format a MAC's product (and so its accumulation) is in: the float operand if any, else the
    wider integer (a ternary weight contributes nothing to the width)."""
    w, a = mac_operands(tag)
    floats = [f for f in (w, a) if f.kind == "float"]
    if floats:
        return max(floats, key=lambda f: f.precision)
    ints = [f for f in (w, a) if f.kind == "int"]
    return max(ints, key=lambda f: f.bits) if ints else w


def compose(op: str, tag: str, accumulate: str = "wide") -> dict[tuple[str, str], float]:
    """{(primitive, format or MAC tag): count} that one `op` in `tag` costs (module docstring)."""
    if op == "macs":
        return {("mult", tag): 1.0, ("add", accumulator(product_format(tag), accumulate)): 1.0}
    fmt = parse_format(tag)
    p, name = fmt.precision, fmt.name
    if op == "elementwise":
        return {("add", name): 0.5, ("mult", name): 0.5}
    if op == "cmp":
        return {("add", name): 1.0}
    if op == "reduce":
        return {("add", accumulator(fmt, accumulate)): 1.0}
    if op in ("exp", "exp2"):
        d = poly_degree(p)
        return {("mult", name): d + (op == "exp"), ("add", name): d + 1}
    if op == "div":
        n = newton_steps(p)
        return {("mult", name): 1 + 2 * n, ("add", name): 1 + n}
    if op == "sqrt":
        n = newton_steps(p)
        return {("mult", name): 1 + 3 * n, ("add", name): 1 + n}
    raise ValueError(f"no composition for {op!r}; compute counts are {', '.join(COMPUTE)}")


def primitive(tech: Tech, prim: str, tag: str, what: str = "energy") -> float:
    """The energy (pJ) or area (um^2) of one add or multiply, MAC tags included (module docstring)."""
    price = tech.energy_pj if what == "energy" else tech.area_um2
    if prim == "mult" and "*" in tag:
        w, a = mac_operands(tag)
        if "ternary" in (w.kind, a.kind):
            return 0.0  # a multiply by -1, 0 or +1 is a select and a negate, folded into the adder
        floats = [f for f in (w, a) if f.kind == "float"]
        if floats:
            return price("mult", max(floats, key=lambda f: f.precision).name)
        return math.sqrt(price("mult", w.name) * price("mult", a.name))
    if prim == "mult" and parse_format(tag).kind == "ternary":
        return 0.0
    return price(prim, tag)


def op_cost(tech: Tech, op: str, tag: str, accumulate: str = "wide", what: str = "energy") -> float:
    """The energy (pJ) or area (um^2) of one `op` in `tag`: the sum over its composition."""
    return sum(n * primitive(tech, prim, t, what) for (prim, t), n in compose(op, tag, accumulate).items())
