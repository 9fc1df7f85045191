"""The stored synthesis results (hardware/synthesised/*.json) and what reads them (docs, ppa/).

    python -m hardware.rtl docs      # re-synthesise DOC_UNITS, rewrite the JSON here and docs/hardware.md

Each JSON is a tools.Synthesis (module, unit parameters, cells, area, NAND2 equivalents, delay, logic
depth, the word-level operator census, the SHA-256 of the Verilog it came from). `lookup(variant,
bits)` gives the stored result of a variant's unit at `bits` in and out (row DOC_ROW), for the PPA
estimate's special-function units (ppa/estimate.py); `stale()` lists stored results whose Verilog
the generator no longer writes (the test of docs/hardware.md fails on them).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hardware import verilog
from hardware.fixed import Unit

RESULTS_DIR = Path(__file__).resolve().parent / "synthesised"
DOC_VARIANTS = ("softmax", "consmax", "softermax", "relumax")
DOC_BITS = (8, 16)
DOC_ROW = 256
LIBRARY_NODE_NM = 180.0  # osu018: the node synthesised areas and delays are at
COLUMNS = (("module", "module"), ("cells", "cells"), ("flip_flops", "FFs"), ("area_um2", "area um^2"),
           ("nand2_eq", "NAND2 eq"), ("delay_ps", "delay ns"), ("logic_depth", "depth"), ("seconds", "synth s"))


def path_for(module: str) -> Path:
    return RESULTS_DIR / f"{module}.json"


def stored() -> list[dict]:
    """Every stored result, sorted by module name."""
    if not RESULTS_DIR.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(RESULTS_DIR.glob("*.json"))]


def unit_of(result: dict) -> Unit:
    u = dict(result["unit"])
    return Unit(**u)


def stale() -> list[str]:
    """Stored results whose Verilog hash differs from what the generator writes now."""
    out = []
    for r in stored():
        text = verilog.generate(unit_of(r))
        if hashlib.sha256(text.encode()).hexdigest() != r["verilog_sha256"]:
            out.append(r["module"])
    return out


def lookup(variant: str, bits: int) -> dict | None:
    """The stored result of `variant`'s unit with `bits` in and out at row DOC_ROW, or None."""
    for r in stored():
        u = r["unit"]
        if u["variant"] == variant and u["in_bits"] == bits and u["out_bits"] == bits and u["row"] == DOC_ROW:
            return r
    return None


def _cell(key: str, r: dict) -> str:
    v = r[key]
    if key == "delay_ps":
        return f"{v / 1000:.2f}"
    if isinstance(v, float):
        return f"{v:,.0f}" if key != "seconds" else f"{v:.1f}"
    return str(v)


def table(rows: list[dict]) -> str:
    """A plain-text table of synthesis results."""
    cells = [[h for _, h in COLUMNS]] + [[_cell(k, r) for k, _ in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def formats(unit: Unit) -> str:
    exp = f", exp {unit.exp} ({2 ** unit.lut_bits}-entry table)" if unit.exp else ""
    return (f"in Q{unit.in_bits - unit.in_frac}.{unit.in_frac} (signed {unit.in_bits} bits), out "
            f"UQ{unit.out_bits - unit.out_frac}.{unit.out_frac} (unsigned {unit.out_bits} bits), row {unit.row}{exp}")
