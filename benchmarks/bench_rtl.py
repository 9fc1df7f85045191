"""Synthesis and simulation time of each generated normaliser unit, so RTL sweeps can be planned.

For each unit (--variants, default every unit hardware/ generates) and width (--bits, in = out), the
Verilog is generated, simulated against the Python model on the standard vectors (hardware/vectors.py)
and synthesised with Yosys + ABC to the osu018 cells (hardware/tools.py). Reported per unit: generate
ms, simulate s and the outputs compared, synthesise s, and the synthesis figures (cells, NAND2
equivalents, delay) so a time can be read against the design's size.

    python benchmarks/bench_rtl.py                                         # every unit at 8 and 16 bits, row 256
    python benchmarks/bench_rtl.py --variants softmax consmax --bits 8 12 16 --row 256
    python benchmarks/bench_rtl.py --quick                                 # two small units, seconds

Output: a table, and JSON at --json (default benchmarks/results/bench_rtl.json) with the environment
(tool versions, CPU, date, command). Synthesis runs single-threaded (Yosys and ABC are); run it
under `nice` on a shared machine, and expect the times to scale with the load.
"""
from __future__ import annotations

import datetime as dt
import platform
import shlex
import sys
import time
from pathlib import Path

from benchmarks.bench_train import cpu_model
from errors import ArgumentParser, run_cli
from hardware import fixed, tools
from hardware.build import build_unit
from hardware.vectors import verify
from io_utils import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="benchmarks/bench_rtl.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=list(fixed.UNITS), help="units to time")
    p.add_argument("--bits", nargs="+", type=int, default=[8, 16], help="input = output widths")
    p.add_argument("--row", type=int, default=256, help="row length of the streaming units")
    p.add_argument("--sim_row", type=int, default=16, help="row length the simulation uses (vectors scale with it)")
    p.add_argument("--quick", action="store_true", help="relumax and consmax at 6 bits: a smoke test")
    p.add_argument("--json", type=Path, default=None, help="output JSON (default benchmarks/results/bench_rtl.json)")
    return p


def measure(variant: str, bits: int, row: int, sim_row: int) -> dict:
    unit = build_unit(variant, bits, bits, row)
    t0 = time.perf_counter()
    from hardware.verilog import generate
    generate(unit)
    gen_ms = (time.perf_counter() - t0) * 1e3
    sim_unit = build_unit(variant, bits, bits, sim_row)
    t0 = time.perf_counter()
    check = verify(sim_unit)
    sim_s = time.perf_counter() - t0
    s = tools.synthesise(unit)
    return {"variant": variant, "bits": bits, "module": unit.name, "generate_ms": gen_ms, "simulate_s": sim_s,
            "simulated_outputs": check.compared, "bit_exact": check.ok, "synthesise_s": s.seconds, "cells": s.cells,
            "nand2_eq": s.nand2_eq, "delay_ps": s.delay_ps}


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    tools.require(("yosys", "yosys-abc", "iverilog", "vvp"))
    if args.quick:
        args.variants, args.bits, args.row, args.sim_row = ["relumax", "consmax"], [6], 16, 8
    rows = []
    print(f"{'module':42s} {'gen ms':>7s} {'sim s':>6s} {'outputs':>7s} {'synth s':>7s} {'cells':>6s} {'NAND2 eq':>9s}")
    for variant in args.variants:
        for b in args.bits:
            r = measure(variant, b, args.row, args.sim_row)
            rows.append(r)
            print(f"{r['module']:42s} {r['generate_ms']:7.1f} {r['simulate_s']:6.2f} {r['simulated_outputs']:7d} "
                  f"{r['synthesise_s']:7.1f} {r['cells']:6d} {r['nand2_eq']:9.0f}", flush=True)
    env = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "python": platform.python_version(),
           "cpu_model": cpu_model(), "yosys": tools.yosys_version(), "library": tools.LIBRARY_NAME,
           "command": shlex.join(["python", "benchmarks/bench_rtl.py", *(argv if argv is not None else sys.argv[1:])])}
    result = {"environment": env, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "rows": rows}
    atomic_write_json(args.json or ROOT / "benchmarks" / "results" / "bench_rtl.json", result)
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
