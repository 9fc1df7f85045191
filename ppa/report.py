"""Tables of a PPA estimate (ppa/estimate.py) for the terminal: energy, latency and area by component."""
from __future__ import annotations

from ppa.estimate import PHASES, Estimate


PREFIXES = (("", 1.0), ("m", 1e-3), ("u", 1e-6), ("n", 1e-9), ("p", 1e-12), ("f", 1e-15))
UNITS = {"pJ": ("J", 1e-12), "us": ("s", 1e-6)}


def si(value: float | None, unit: str) -> str:
    """si(1234567, "pJ") -> '1.23 uJ': the largest SI prefix that keeps the figure at least 1."""
    if value is None:
        return "-"
    base, factor = UNITS[unit]
    x = value * factor
    if x == 0:
        return "0"
    for prefix, f in PREFIXES:
        if abs(x) >= f:
            return f"{x / f:.3g} {prefix}{base}"
    return f"{x / PREFIXES[-1][1]:.3g} {PREFIXES[-1][0]}{base}"


def ppa_tables(est: Estimate) -> list:
    """One rich Table per phase (per component: energy per token, compute and memory, latency per step
    of the phase, what bounds it), one for the area (accelerators), and the estimate's notes."""
    from rich.table import Table
    tables = []
    for phase in PHASES:
        n = est.tokens[phase]
        t = Table(title=f"{phase}: energy per token, latency per step of {n} token(s) — {est.target.name}, "
                        f"{est.tech.name}, default format {est.fmt}, context {est.context}, batch {est.batch}")
        for col in ("component", "energy", "compute", "memory", "DRAM bytes", "latency", "bound"):
            t.add_column(col, justify="left" if col in ("component", "bound") else "right")
        for name, p in est.grouped(phase).items():
            t.add_row(name, si(p.energy_pj, "pJ"), si(p.compute_pj, "pJ"), si(p.memory_pj, "pJ"),
                      f"{p.dram_bytes:,.0f}", si(p.latency_s * 1e6, "us"), p.bound)
        t.add_section()
        tot = est.total(phase)
        t.add_row("total", si(tot.energy_pj, "pJ"), si(tot.compute_pj, "pJ"), si(tot.memory_pj, "pJ"),
                  f"{tot.dram_bytes:,.0f}", si(tot.latency_s * 1e6, "us"), "", style="bold")
        tables.append(t)
    if est.area:
        t = Table(title=f"datapath area on {est.target.name} ({est.tech.name})")
        t.add_column("part")
        t.add_column("mm^2", justify="right")
        for part, mm2 in est.area.items():
            if part not in ("total", "weights_sram"):
                t.add_row(part, f"{mm2:.4f}")
        t.add_section()
        t.add_row("total", f"{est.area['total']:.4f}", style="bold")
        t.add_row("SRAM for every weight on chip", f"{est.area['weights_sram']:.4f}")
        tables.append(t)
    notes = Table(title="assumptions of this estimate (ppa/estimate.py explains the model)", show_header=False)
    notes.add_column("note")
    for note in est.notes:
        notes.add_row(note)
    tables.append(notes)
    return tables
