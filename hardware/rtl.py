"""Generate, verify and synthesise the attention normalisers as gate-level hardware.

    python -m hardware.rtl synth   --variant consmax --in_bits 8 --out_bits 8 --row 256   # a table + JSON
    python -m hardware.rtl sim     --variant softmax --in_bits 8 --row 16                 # bit-exact check
    python -m hardware.rtl verilog --variant softermax --in_bits 12 --out_bits 10         # print the RTL
    python -m hardware.rtl sweep   --variants softmax consmax --bits 6 8 12 16 --plot area.png
    python -m hardware.rtl docs    # re-synthesise the docs' units, rewrite hardware/synthesised/ and docs/hardware.md

Units exist for softmax, softermax, consmax, relumax, sigmoidmax and polymax (hardware/fixed.py states
every format; hardware/verilog.py writes the RTL; hardware/tools.py runs Icarus Verilog and Yosys).
A unit's constants (divisors, polymax's shape) are the variant's knob defaults, as train.py would
build it; the output binary point fits the variant's range unless --out_frac is given.
"""
from __future__ import annotations

import sys
from pathlib import Path

from errors import ArgumentParser, UserError, run_cli
from hardware import fixed, results, tools
from hardware.build import build_unit
from hardware.fixed import Unit
from io_utils import atomic_write_json

DEFAULT_OUT = Path("out") / "rtl"


def synth_and_save(unit: Unit, out: Path | None) -> dict:
    r = tools.synthesise(unit).to_dict()
    if out is not None:
        atomic_write_json(out / f"{unit.name}.json", r)
    return r


def add_unit_flags(p, many: bool = False):
    if many:
        p.add_argument("--variants", nargs="+", default=list(fixed.UNITS), help="the units to synthesise")
        p.add_argument("--bits", nargs="+", type=int, default=[4, 6, 8, 12, 16],
                       help="input and output width of each point of the sweep")
    else:
        p.add_argument("--variant", required=True, help=f"the normaliser: {', '.join(fixed.UNITS)}")
        p.add_argument("--in_bits", type=int, default=8, help="input width (signed fixed point)")
        p.add_argument("--out_bits", type=int, default=None, help="output width (unsigned); default: --in_bits")
        p.add_argument("--in_frac", type=int, default=None, help="fractional bits of the input; default in_bits // 2")
        p.add_argument("--out_frac", type=int, default=None,
                       help="fractional bits of the output; default: fitted to the variant's range")
    p.add_argument("--row", type=int, default=256, help="row length (keys per row: sizes the running sum)")
    p.add_argument("--exp", choices=fixed.EXP_IMPLS, default=None,
                   help="the exponential: lut_interp (table + linear interpolation) or shift_lut (table + shift)")
    p.add_argument("--lut_bits", type=int, default=None, help="address bits of the 2^f table (default 4 + out_bits // 4)")


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="hardware.rtl", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, helptext in (("synth", "synthesise one unit and print its table"),
                           ("sim", "simulate one unit against its Python model (bit-exact)"),
                           ("verilog", "print one unit's Verilog")):
        s = sub.add_parser(name, help=helptext)
        add_unit_flags(s)
        if name == "synth":
            s.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the JSON result")
        if name == "sim":
            s.add_argument("--random", type=int, default=30, help="random rows (x20 keys for elementwise units)")
            s.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("sweep", help="synthesise variants over bit widths; table, JSON and a plot of area vs bits")
    add_unit_flags(s, many=True)
    s.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the JSON results")
    s.add_argument("--plot", type=Path, default=None, help="PNG of NAND2 equivalents against bit width")
    d = sub.add_parser("docs", help="re-synthesise the documented units; rewrite hardware/synthesised/ and docs/hardware.md")
    d.add_argument("--render_only", action="store_true", help="rewrite docs/hardware.md from the stored results")
    return p


def unit_from_args(a) -> Unit:
    return build_unit(a.variant, a.in_bits, a.out_bits or a.in_bits, a.row, a.in_frac, a.out_frac, a.exp, a.lut_bits)


def plot_sweep(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant in dict.fromkeys(r["unit"]["variant"] for r in rows):
        pts = sorted((r["unit"]["in_bits"], r["nand2_eq"]) for r in rows if r["unit"]["variant"] == variant)
        ax.plot([b for b, _ in pts], [a for _, a in pts], marker="o", label=variant)
    ax.set_xlabel("input and output bits")
    ax.set_ylabel(f"area (NAND2 equivalents, {tools.LIBRARY_NAME.split(' ')[0]})")
    ax.set_yscale("log")
    ax.set_title(f"normaliser units, row {rows[0]['unit']['row']}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    if a.command == "verilog":
        from hardware.verilog import generate
        print(generate(unit_from_args(a)), end="")
    elif a.command == "sim":
        from hardware.vectors import verify
        unit = unit_from_args(a)
        check = verify(unit, a.random, a.seed)
        print(f"{unit.name}: {results.formats(unit)}")
        if not check.ok:
            for what, want, got in check.mismatches:
                print(f"  MISMATCH {what}: model {want}, RTL {got}")
            raise UserError(f"{unit.name}: the RTL differs from the Python model on {len(check.mismatches)}+ outputs")
        print(f"{check.compared} outputs bit-exact (Icarus Verilog vs hardware/fixed.py)")
    elif a.command == "synth":
        unit = unit_from_args(a)
        r = synth_and_save(unit, a.out)
        print(f"{unit.name}: {results.formats(unit)}; cells {tools.LIBRARY_NAME}")
        print(results.table([r]))
        print("operators before mapping: " + ", ".join(f"{k.lstrip('$')} {v}" for k, v in r["operators"].items()))
        print(f"written: {a.out / (unit.name + '.json')}")
    elif a.command == "sweep":
        rows = []
        for variant in a.variants:
            for b in a.bits:
                unit = build_unit(variant, b, b, a.row, exp=a.exp, lut_bits=a.lut_bits)
                rows.append(synth_and_save(unit, a.out))
                print(results.table(rows[-1:]).splitlines()[-1], flush=True)
        print(results.table(rows))
        if a.plot:
            plot_sweep(rows, a.plot)
            print(f"plot: {a.plot}")
    elif a.command == "docs":
        from hardware import docs
        if not a.render_only:
            for variant in results.DOC_VARIANTS:
                for b in results.DOC_BITS:
                    unit = build_unit(variant, b, b, results.DOC_ROW)
                    print(f"synthesising {unit.name}", flush=True)
                    synth_and_save(unit, results.RESULTS_DIR)
        docs.write()
        print(f"wrote {docs.DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
