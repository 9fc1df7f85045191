"""The open EDA tools behind hardware/: Icarus Verilog (simulation) and Yosys + ABC (synthesis).

    simulate(unit, words) -> the output integer of every cycle (iverilog + vvp)
    synthesise(unit)      -> a Synthesis: cells, area, NAND2 equivalents, delay, logic depth, breakdown

The tools come from the system's package manager (Debian/Ubuntu: `apt-get install yosys iverilog
qflow-tech-osu018`; scripts/setup_env.sh runs it as root). A missing tool is a one-line UserError
that names the package.

Cell library: OSU's 0.18 um standard cells (`osu018_stdcells.lib`, Oklahoma State University, for
TSMC 0.18 um SCMOS rules, 1.8 V, typical corner), as Debian's qflow-tech-osu018 ships it: a Liberty
file with areas and table-lookup timing, so ABC maps to real cells and reports a real delay. Area
is reported in the library's units (um^2) and in NAND2 equivalents (area / the NAND2X1 cell's area),
the node-independent figure to compare with other designs. No newer open library (sky130, gf180)
is installable from the package registries without a download step of its own, so 180 nm it is.

Synthesis flow (deterministic: same Verilog, same netlist): read, `proc; flatten; opt; wreduce`
then a word-level census (`stat`: $mul, $div, $lt, $dff, ... the breakdown by operator), then
`synth -flatten`, `dfflibmap` and `abc -liberty` with the script strash; dch; map; topo; stime;
print_stats. Delay is ABC's `stime` critical path (ps, no wire load); logic depth is ABC's `lev`
(cell levels on the longest combinational path); area and cells are Yosys's `stat -liberty`.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from errors import UserError
from hardware import verilog
from hardware.fixed import Unit

LIBERTY = Path("/usr/share/qflow/tech/osu018/osu018_stdcells.lib")
LIBRARY_NAME = "osu018 (OSU 0.18 um standard cells, 1.8 V, typical)"
NAND2_CELL = "NAND2X1"
INSTALL = "apt-get install -y yosys iverilog qflow-tech-osu018"
TOOLS = {"yosys": "yosys", "yosys-abc": "yosys", "iverilog": "iverilog", "vvp": "iverilog"}
ABC_SCRIPT = "+strash;dch;map;topo;stime,-p;print_stats"


def missing_tools(names=("yosys", "yosys-abc", "iverilog", "vvp")) -> list[str]:
    """The tools (and the cell library, as 'osu018') not found on this machine."""
    out = [n for n in names if shutil.which(n) is None]
    if any(n.startswith("yosys") for n in names) and not LIBERTY.is_file():
        out.append("osu018")
    return out


def require(names) -> None:
    """A one-line UserError naming what is missing and the command that installs it."""
    missing = missing_tools(names)
    if missing:
        packages = sorted({TOOLS.get(n, "qflow-tech-osu018") for n in missing})
        raise UserError(f"{', '.join(missing)} not found (the RTL commands need Yosys, Icarus Verilog and the osu018 "
                        f"cell library); install them: sudo apt-get install -y {' '.join(packages)} "
                        "(or run scripts/setup_env.sh as root)")


def _run(cmd: list[str], cwd: Path, what: str, timeout: float) -> str:
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"{what} took longer than {timeout:.0f} s; try a smaller unit (fewer bits or a shorter row)") from None
    if p.returncode:
        tail = (p.stdout + p.stderr).strip().splitlines()[-5:]
        raise RuntimeError(f"{what} failed (exit {p.returncode}): " + " | ".join(tail))
    return p.stdout


# ----------------------------------------------------------------------------------- simulation
def pack(unit: Unit, vectors: list[dict]) -> list[int]:
    """Each cycle's ports (a dict) as one word, fields as verilog.vector_fields orders them."""
    words = []
    for v in vectors:
        word = 0
        for port, width in verilog.vector_fields(unit):
            word = (word << width) | (int(v.get(port, 0)) & (2 ** width - 1))
        words.append(word)
    return words


def simulate(unit: Unit, vectors: list[dict], timeout: float = 300) -> list[int]:
    """Run the generated RTL on `vectors` (one dict of port values per cycle) in Icarus Verilog; y per cycle."""
    require(("iverilog", "vvp"))
    words = pack(unit, vectors)
    width = sum(w for _, w in verilog.vector_fields(unit))
    with tempfile.TemporaryDirectory(prefix="ppa_rtl_") as tmp:
        d = Path(tmp)
        (d / "unit.v").write_text(verilog.generate(unit))
        (d / "tb.v").write_text(verilog.testbench(unit, len(words), "vectors.hex", "out.hex"))
        (d / "vectors.hex").write_text("".join(f"{w:0{(width + 3) // 4}x}\n" for w in words))
        _run(["iverilog", "-g2005", "-Wall", "-o", "sim", "tb.v", "unit.v"], d, "iverilog", timeout)
        _run(["vvp", "-n", "sim"], d, "vvp", timeout)
        lines = (d / "out.hex").read_text().split()
    if len(lines) != len(words):
        raise RuntimeError(f"the simulation wrote {len(lines)} outputs for {len(words)} vectors")
    bad = [i for i, s in enumerate(lines) if not re.fullmatch(r"[0-9a-fA-F]+", s)]
    if bad:
        raise RuntimeError(f"undefined outputs (x/z) at cycles {bad[:10]}: {[lines[i] for i in bad[:10]]}")
    return [int(s, 16) for s in lines]


# ----------------------------------------------------------------------------------- synthesis
@dataclass
class Synthesis:
    unit: dict
    module: str
    library: str
    cells: int
    area_um2: float
    nand2_eq: float
    delay_ps: float
    logic_depth: int
    flip_flops: int
    cells_by_type: dict  # mapped library cells
    operators: dict  # the word-level census before mapping ($mul, $div, $lt, $dff, ...)
    verilog_sha256: str
    seconds: float
    tool: str

    def to_dict(self) -> dict:
        return asdict(self)


def nand2_area() -> float:
    text = LIBERTY.read_text()
    m = re.search(r"cell\s*\(\s*" + NAND2_CELL + r"\s*\)\s*\{\s*area\s*:\s*([0-9.]+)", text)
    if not m:
        raise RuntimeError(f"no {NAND2_CELL} area in {LIBERTY}")
    return float(m.group(1))


def yosys_version() -> str:
    return subprocess.run(["yosys", "-V"], capture_output=True, text=True).stdout.strip()


def synthesise(unit: Unit, timeout: float = 1800) -> Synthesis:
    """Synthesise the unit's RTL to the osu018 cells (module docstring)."""
    import hashlib
    require(("yosys", "yosys-abc"))
    text = verilog.generate(unit)
    lib = str(LIBERTY)
    script = "; ".join([
        "read_verilog unit.v", f"hierarchy -top {unit.name}", "proc", "flatten", "opt -purge", "wreduce", "opt_clean",
        "tee -q -o words.json stat -json", f"synth -top {unit.name} -flatten", f"dfflibmap -liberty {lib}",
        f"abc -liberty {lib} -script {ABC_SCRIPT}", "opt_clean", f"tee -q -o cells.json stat -json -liberty {lib}", f"stat -liberty {lib}"])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ppa_synth_") as tmp:
        d = Path(tmp)
        (d / "unit.v").write_text(text)
        log = _run(["yosys", "-p", script], d, "yosys", timeout)
        words = json.loads((d / "words.json").read_text())["modules"]
        cells = json.loads((d / "cells.json").read_text())["modules"]
    seconds = time.perf_counter() - start
    words = next(iter(words.values()))["num_cells_by_type"]
    mapped = next(iter(cells.values()))
    by_type = mapped["num_cells_by_type"]
    area = float(mapped.get("area", 0.0))
    if not area:  # older stat -json: the area is only printed
        m = re.findall(r"Chip area for module .*?: ([0-9.]+)", log)
        area = float(m[-1]) if m else 0.0
    delays = re.findall(r"Delay =\s*([0-9.]+) ps", log)
    levels = re.findall(r"lev =\s*(\d+)", log)
    return Synthesis(unit=unit.to_dict(), module=unit.name, library=LIBRARY_NAME, cells=int(mapped["num_cells"]),
                     area_um2=area, nand2_eq=area / nand2_area(), delay_ps=float(delays[-1]) if delays else 0.0,
                     logic_depth=int(levels[-1]) if levels else 0,
                     flip_flops=sum(n for c, n in by_type.items() if c.startswith("DFF")),
                     cells_by_type=dict(sorted(by_type.items())), operators=dict(sorted(words.items())),
                     verilog_sha256=hashlib.sha256(text.encode()).hexdigest(), seconds=seconds,
                     tool=yosys_version())
