"""Fixed-point formats and the bit-exact integer models of the generated normaliser units.

A `Unit` is one hardware normaliser: its variant, widths, row length, exponential and constants.
`model(unit, X, keep, params)` computes, in int64 torch arithmetic, exactly the integers the RTL of
hardware/verilog.py computes (tests/hardware check it in simulation); hardware/forward.py runs it
inside training. Every number below is an integer; a format is stated as its binary point:

  input    x: signed, in_bits wide, in_frac fractional bits (value X / 2^in_frac; Q(in_bits - in_frac).in_frac).
           Default in_frac = in_bits // 2: Q4.4 at 8 bits (range [-8, 8), step 1/16), Q8.8 at 16 bits.
  output   y: unsigned, out_bits wide, out_frac fractional bits (value Y / 2^out_frac). Default
           out_frac = out_bits: UQ0.out_bits, weights in [0, 1); larger results saturate to 2^out_bits - 1.
  masked   keep = 0 gives y = 0 and leaves the row state alone (a fully masked row is all zeros).
  rounding every narrowing is a truncation (floor) and every overflow saturates: the cheapest choices.

The exponential (`exp2_fixed`), shared by softmax, consmax, softermax and sigmoidmax: the exponent
goes to base 2 (t = d log2(e), a multiply by a TF + 4-bit constant, skipped for base 2), then t is
split into its integer part q and fraction f (wiring), 2^f is read from a table of 2^L + 1 entries
2^(k / 2^L) with P fractional bits, and the result is shifted by q (a barrel shifter). Two choices:

  shift_lut   the table is indexed by the top L bits of f (t is kept to TF = L fractional bits): no
              multiplier in the unit; exact when the input has at most L fractional bits and base 2.
  lut_interp  t keeps TF = P fractional bits; the top L index the table and the remaining P - L bits
              interpolate linearly between neighbouring entries (one small multiply).

  P = out_bits + 2 (two guard bits); L = 4 + out_bits // 4 by default (64 entries at 8 bits, 256 at 16).

The units (formulas of the variants' docstrings in variations/softmax.py):

  softmax     three passes over a row read from the score memory (op = MAX, SUM, OUT): running max m,
              then s = sum e(x - m), then y = e(x - m) * r with r = floor(2^RB / s), RB = P + out_frac + 2
              (a divider once per row; the exponential is recomputed in the OUT pass: no row buffer).
  softermax   base 2 with an integer running max m = max ceil(x) and the sum rescaled by a shift
              (s >> (m_new - m)) when the max grows (Stevens et al., DAC 2021): one STAT pass, then OUT
              as softmax. Exponential default: shift_lut.
  consmax     exp(x - beta) / gamma = 2^(x log2(e) - c) with c = beta log2(e) + log2(gamma): the two
              learned constants fold into one exponent offset c, a register (signed, TF fractional bits,
              in_bits - in_frac + 7 integer bits) reloaded when they change; t = x log2(e) - c, then the
              exponential as above, its result shifted to out_frac. No max, no sum, no divider, no
              multiply by 1/gamma, no state (as ConSmax's merged constants: Liu et al., 2024).
  relumax     relu(x) * K, K = round(2^CF / divisor): a constant multiply; CF gives the smallest constant
              out_bits + 4 significant bits (CF = out_bits + 4 + ceil(log2 divisor)).
  sigmoidmax  sigmoid(z) * K, z = x + bias (a constant; 0 unless the variant has one), sigmoid(|z|) =
              floor(2^2P / (2^P + e(-|z|))) (a divider per element), 2^P minus that for z < 0.
  polymax     0 for x < x0; (x - x0) * y0 / (-x0) / divisor for x0 <= x < 0; (x^p + y0) / divisor for
              x >= 0 (p an integer); constants quantised to CF (CFA for the slope) fractional bits.

Row length (`row`) sizes the running sum of the normalising units (P + 1 + ceil(log2 row) bits); the
elementwise units do not depend on it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from errors import UserError, unknown_name_message

UNITS = ("softmax", "softermax", "consmax", "relumax", "sigmoidmax", "polymax")
STREAMING = ("softmax", "softermax")  # row-normalising: a clocked unit with passes over the row
EXP_IMPLS = ("lut_interp", "shift_lut")
EXP_DEFAULT = {"softermax": "shift_lut"}  # else lut_interp
USES_EXP = ("softmax", "softermax", "consmax", "sigmoidmax")
MIN_BITS, MAX_BITS = 4, 24
MAX_ROW = 65536
# op codes of the streaming units (softmax: CLEAR, MAX, SUM, OUT; softermax: CLEAR, STAT, -, OUT)
OP_CLEAR, OP_MAX, OP_SUM, OP_OUT = 0, 1, 2, 3
OP_STAT = 1
LOG2E = math.log2(math.e)


@dataclass(frozen=True)
class Unit:
    """One generated normaliser: every parameter that changes its RTL (and so its numerics)."""
    variant: str
    in_bits: int = 8
    out_bits: int = 8
    row: int = 256
    in_frac: int | None = None
    out_frac: int | None = None
    exp: str | None = None  # lut_interp | shift_lut (units with an exponential)
    lut_bits: int | None = None
    consts: dict = field(default_factory=dict, compare=False, hash=False)  # divisor, bias, x0, y0, power

    def __post_init__(self):
        if self.variant not in UNITS:
            raise UserError(unknown_name_message("hardware unit (variant)", self.variant, UNITS))
        for name in ("in_bits", "out_bits"):
            v = getattr(self, name)
            if not (isinstance(v, int) and MIN_BITS <= v <= MAX_BITS):
                raise UserError(f"--{name} must be an integer in [{MIN_BITS}, {MAX_BITS}] (the widths the units are "
                                f"generated and checked for), got {v}")
        if not (isinstance(self.row, int) and 1 <= self.row <= MAX_ROW):
            raise UserError(f"--row must be an integer in [1, {MAX_ROW}], got {self.row}")
        set_ = object.__setattr__
        set_(self, "in_frac", self.in_bits // 2 if self.in_frac is None else self.in_frac)
        set_(self, "out_frac", self.out_bits if self.out_frac is None else self.out_frac)
        if not 0 <= self.in_frac < self.in_bits:
            raise UserError(f"--in_frac must be in [0, {self.in_bits - 1}] (fractional bits of the signed input), "
                            f"got {self.in_frac}")
        if not 0 <= self.out_frac <= self.out_bits + 8:
            raise UserError(f"--out_frac must be in [0, {self.out_bits + 8}], got {self.out_frac}")
        if self.variant in USES_EXP:
            set_(self, "exp", self.exp or EXP_DEFAULT.get(self.variant, "lut_interp"))
            if self.exp not in EXP_IMPLS:
                raise UserError(unknown_name_message("exponential implementation (--exp)", self.exp, EXP_IMPLS))
            set_(self, "lut_bits", self.lut_bits or 4 + self.out_bits // 4)
            if not 1 <= self.lut_bits <= min(12, self.P):
                raise UserError(f"--lut_bits must be in [1, {min(12, self.P)}], got {self.lut_bits}")
        else:
            set_(self, "exp", None)
            set_(self, "lut_bits", None)
        if self.variant == "polymax":
            p = self.consts.get("power", 2.0)
            if p != int(p) or not 1 <= p <= 3:
                raise UserError(f"polymax in hardware needs an integer --polymax_power in 1..3 (x^p by multiplies), got {p}")
            c = constants(self)
            widest = max(2 ** (int(p) * (self.in_bits - 1)) * c["KD"] + c["Y0"],
                         (2 ** (self.in_bits - 1) - c["X0"]) * c["KA"])
            if widest >= 2 ** 62:
                raise UserError(f"polymax x^{int(p)} at {self.in_bits} input bits needs more than 62-bit products; "
                                "use fewer bits or a lower power")

    # derived widths (module docstring)
    @property
    def P(self) -> int:
        return self.out_bits + 2

    @property
    def TF(self) -> int:
        return self.lut_bits if self.exp == "shift_lut" else self.P

    @property
    def CF(self) -> int:
        """Fractional bits of the constant multipliers: out_bits + 4 significant bits for the smallest."""
        return _const_frac(self.out_bits, 1.0 / float(self.consts.get("divisor", 256.0)))

    @property
    def CFA(self) -> int:
        """polymax: fractional bits of the slope y0 / (-x0) / divisor of its linear piece."""
        c = self.consts
        return _const_frac(self.out_bits, float(c.get("y0", 1.0)) / -float(c.get("x0", -100.0)) /
                           float(c.get("divisor", 256.0)))

    @property
    def OW(self) -> int:
        """consmax's offset register: signed, TF fractional bits."""
        return self.in_bits - self.in_frac + 7 + self.TF

    @property
    def RB(self) -> int:
        return self.P + self.out_frac + 2

    @property
    def SW(self) -> int:
        return self.P + 1 + max(1, math.ceil(math.log2(self.row)))

    @property
    def base(self) -> float:
        return 2.0 if self.variant == "softermax" else math.e

    @property
    def name(self) -> str:
        """The Verilog module name: variant and the parameters that change it."""
        parts = [self.variant, f"i{self.in_bits}q{self.in_frac}", f"o{self.out_bits}q{self.out_frac}"]
        if self.variant in STREAMING:
            parts.append(f"r{self.row}")
        if self.exp:
            parts.append(f"{self.exp}{self.lut_bits}")
        return "_".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)


def _const_frac(out_bits: int, smallest: float) -> int:
    """Fractional bits that give a constant multiplier `smallest` out_bits + 4 significant bits."""
    if not smallest > 0:
        return out_bits + 4
    return out_bits + 4 + max(0, math.ceil(-math.log2(smallest)))


# ----------------------------------------------------------------------------------- shared pieces
def lut_table(unit: Unit) -> list[int]:
    """2^(k / 2^L) with P fractional bits, k = 0..2^L (the last entry only for interpolation)."""
    L, P = unit.lut_bits, unit.P
    return [round(2.0 ** (k / 2 ** L) * 2 ** P) for k in range(2 ** L + 1)]


def log2e_const(unit: Unit) -> tuple[int, int]:
    """(C, CB): log2(e) with CB = TF + 4 fractional bits, rounded."""
    cb = unit.TF + 4
    return round(LOG2E * 2 ** cb), cb


def exp_qmax(unit: Unit) -> int:
    """The largest integer part q the exponential passes unsaturated (0 where its input is <= 0)."""
    return unit.out_bits - unit.out_frac if unit.variant == "consmax" else 0


def exp_width(unit: Unit) -> int:
    return unit.P + 1 + exp_qmax(unit)


def to_t(unit: Unit, d: torch.Tensor) -> torch.Tensor:
    """The exponent in base 2 with TF fractional bits, from d with in_frac fractional bits (floor)."""
    if unit.base == 2.0:
        shift = unit.TF - unit.in_frac
        return d << shift if shift >= 0 else d >> -shift
    c, cb = log2e_const(unit)
    return (d * c) >> (unit.in_frac + cb - unit.TF)


def exp2_fixed(unit: Unit, t: torch.Tensor) -> torch.Tensor:
    """2^(t / 2^TF) with P fractional bits, saturated to exp_width bits (module docstring)."""
    tf, L, P = unit.TF, unit.lut_bits, unit.P
    interp = tf - L
    table = torch.tensor(lut_table(unit), dtype=torch.int64, device=t.device)
    q = t >> tf
    f = t & (2 ** tf - 1)
    idx = f >> interp
    v = table[idx]
    if interp:
        lo = f & (2 ** interp - 1)
        v = v + (((table[idx + 1] - v) * lo) >> interp)
    qmax = exp_qmax(unit)
    up = v << q.clamp(0, qmax)
    down = v >> (-q).clamp(0, 63)
    e = torch.where(q >= 0, up, down)
    e = torch.where(q < -(P + 1), torch.zeros_like(e), e)
    return torch.where(q > qmax, torch.full_like(e, 2 ** exp_width(unit) - 1), e)


def saturate(unit: Unit, y: torch.Tensor) -> torch.Tensor:
    return y.clamp(max=2 ** unit.out_bits - 1)


def ceil_int(unit: Unit, x: torch.Tensor) -> torch.Tensor:
    """ceil(x) of an input-format integer: -floor(-X / 2^in_frac)."""
    return -((-x) >> unit.in_frac)


# ----------------------------------------------------------------------------------- the constants
def quantise_params(unit: Unit, beta: float = 0.0, gamma: float = 1.0) -> dict:
    """consmax's offset register c = beta log2(e) + log2(gamma) from the learned floats, rounded to TF
    fractional bits and saturated to OW bits (a gamma <= 0, which hardware cannot take, saturates it up)."""
    hi = 2 ** (unit.OW - 1) - 1
    c = beta * LOG2E + math.log2(gamma) if gamma > 0 else float("inf")
    return {"offset": int(min(hi, max(-hi - 1, round(c * 2 ** unit.TF)))) if math.isfinite(c) else hi}


def shift_frac(v: torch.Tensor, frm: int, to: int) -> torch.Tensor:
    """A non-negative fixed-point value from `frm` to `to` fractional bits (floor)."""
    return v >> (frm - to) if frm >= to else v << (to - frm)


def constants(unit: Unit) -> dict:
    """The integer constants baked into a unit's RTL (relumax, sigmoidmax, polymax)."""
    c = unit.consts
    divisor = float(c.get("divisor", 256.0))
    if unit.variant == "relumax":
        return {"K": round(2 ** unit.CF / divisor)}
    if unit.variant == "sigmoidmax":
        return {"K": round(2 ** unit.CF / divisor), "B": round(float(c.get("bias", 0.0)) * 2 ** unit.in_frac)}
    if unit.variant == "polymax":
        x0, y0, p = float(c.get("x0", -100.0)), float(c.get("y0", 1.0)), int(c.get("power", 2.0))
        return {"X0": round(x0 * 2 ** unit.in_frac), "KA": round(y0 / (-x0) / divisor * 2 ** unit.CFA),
                "KD": round(2 ** unit.CF / divisor), "Y0": round(y0 / divisor * 2 ** (p * unit.in_frac + unit.CF)),
                "p": p}
    return {}


# ----------------------------------------------------------------------------------- the models
def model(unit: Unit, x: torch.Tensor, keep: torch.Tensor | None = None, params: dict | None = None,
          check: bool = True) -> torch.Tensor:
    """The unit's output integers for input integers x (int64, (..., row_len)); keep: bool, same shape.

    Rows are the last axis (normalising units); elementwise units ignore the shape. `params` holds
    consmax's offset register (quantise_params). `check` verifies the inputs fit in_bits (a device sync)."""
    x = x.to(torch.int64)
    keep = torch.ones_like(x, dtype=torch.bool) if keep is None else keep.expand_as(x)
    lo, hi = -2 ** (unit.in_bits - 1), 2 ** (unit.in_bits - 1) - 1
    if check and x.numel() and (int(x.min()) < lo or int(x.max()) > hi):
        raise ValueError(f"inputs outside {unit.in_bits} signed bits")
    if unit.variant in STREAMING and x.size(-1) > unit.row:
        raise UserError(f"rows of {x.size(-1)} keys exceed the unit's row length {unit.row}; generate it with a longer row")
    y = {"softmax": _softmax, "softermax": _softermax, "consmax": _consmax, "relumax": _relumax,
         "sigmoidmax": _sigmoidmax, "polymax": _polymax}[unit.variant](unit, x, keep, params or {})
    return torch.where(keep, y, torch.zeros_like(y))


def _reciprocal_out(unit: Unit, e: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """y = sat((e * floor(2^RB / s)) >> (RB - out_frac)), r = 0 where s = 0."""
    r = torch.where(s > 0, torch.div(2 ** unit.RB, s.clamp(min=1), rounding_mode="floor"), torch.zeros_like(s))
    return saturate(unit, (e * r) >> (unit.RB - unit.out_frac))


def _softmax(unit, x, keep, params):
    m = torch.where(keep, x, torch.full_like(x, -2 ** 62)).amax(dim=-1, keepdim=True)
    m = torch.where(keep.any(dim=-1, keepdim=True), m, torch.zeros_like(m))
    e = exp2_fixed(unit, to_t(unit, x - m))
    s = torch.where(keep, e, torch.zeros_like(e)).sum(dim=-1, keepdim=True)
    return _reciprocal_out(unit, e, s)


def _softermax(unit, x, keep, params):
    shape = x.shape[:-1] + (1,)
    m = torch.zeros(shape, dtype=torch.int64, device=x.device)
    s = torch.zeros_like(m)
    seen = torch.zeros(shape, dtype=torch.bool, device=x.device)
    for j in range(x.size(-1)):  # the online pass, one key per cycle
        xj, kj = x[..., j:j + 1], keep[..., j:j + 1]
        cx = ceil_int(unit, xj)
        mn = torch.where(~seen | (cx > m), cx, m)
        e = exp2_fixed(unit, to_t(unit, xj - (mn << unit.in_frac)))
        shift = (mn - m).clamp(0, 63)
        scaled = torch.where(shift >= unit.SW, torch.zeros_like(s), s >> shift)
        s = torch.where(kj, torch.where(seen, scaled, torch.zeros_like(s)) + e, s)
        m = torch.where(kj, mn, m)
        seen = seen | kj
    e = exp2_fixed(unit, to_t(unit, x - (m << unit.in_frac)))
    return _reciprocal_out(unit, e, s)


def _consmax(unit, x, keep, params):
    offset = params.get("offset", quantise_params(unit)["offset"])
    e = exp2_fixed(unit, to_t(unit, x) - offset)
    return saturate(unit, shift_frac(e, unit.P, unit.out_frac))


def _relumax(unit, x, keep, params):
    k = constants(unit)["K"]
    return saturate(unit, (x.clamp(min=0) * k) >> (unit.in_frac + unit.CF - unit.out_frac))


def _sigmoidmax(unit, x, keep, params):
    c = constants(unit)
    P = unit.P
    z = x + c["B"]
    e = exp2_fixed(unit, to_t(unit, -z.abs()))
    sp = torch.div(2 ** (2 * P), 2 ** P + e, rounding_mode="floor")
    sig = torch.where(z >= 0, sp, 2 ** P - sp)
    return saturate(unit, (sig * c["K"]) >> (P + unit.CF - unit.out_frac))


def _polymax(unit, x, keep, params):
    c = constants(unit)
    neg = ((x - c["X0"]) * c["KA"]) >> (unit.in_frac + unit.CFA - unit.out_frac)
    pos = (x ** c["p"] * c["KD"] + c["Y0"]) >> (c["p"] * unit.in_frac + unit.CF - unit.out_frac)
    y = torch.where(x < c["X0"], torch.zeros_like(x), torch.where(x < 0, neg, pos))
    return saturate(unit, y)


# ----------------------------------------------------------------------------------- float reference
def quantise_input(unit: Unit, x: torch.Tensor) -> torch.Tensor:
    """Scores to input integers: round to nearest, saturate (what the producer of the scores does)."""
    lo, hi = -2 ** (unit.in_bits - 1), 2 ** (unit.in_bits - 1) - 1
    return torch.round(x.double() * 2 ** unit.in_frac).clamp(lo, hi).to(torch.int64)


def dequantise_output(unit: Unit, y: torch.Tensor) -> torch.Tensor:
    return y.double() / 2 ** unit.out_frac
