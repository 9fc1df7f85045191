"""Activation statistics over training, per layer, from a run's activation_stats.jsonl.

    python train.py --preset cpu --activation_stats_interval 50 --out_dir out/stats
    python -m analysis.plot_activation_stats out/stats --out stats.png
    python -m analysis.plot_activation_stats out/stats --site residual attn_scores --stat absmax kurtosis --out r.png
    python -m analysis.plot_activation_stats out/stats --final          # the last recorded values, a table

One panel per site (rows) and statistic (columns), one line per layer against the optimiser step; the
final norm's input is its own line ('final'). The statistics and the file's schema are described in
activation_stats.py; --final prints the last recorded step's values (as analysis/summarize_runs.py
--activation_stats and analysis/inspect_ckpts.py --activation_stats do). The PNG is written atomically.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

from activation_stats import SITES, STATS, final_rows, read_rows
from errors import ArgumentParser, UserError, run_cli, unknown_name_message
from io_utils import atomic_write_bytes
from run_dir import ACTIVATION_STATS


def layer_label(row: dict) -> str:
    return "final" if row["layer"] is None else f"layer {row['layer']}"


def series(rows: list[dict], site: str, stat: str) -> dict[str, tuple[list[int], list[float | None]]]:
    """{line label: (steps, values)} of one site and statistic; modules of one layer and site (ln_1 and
    ln_2 for norm_input) are combined by their largest value (their mean for rms)."""
    by_line: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        if r["site"] == site and r.get(stat) is not None:
            by_line.setdefault(layer_label(r), {}).setdefault(r["iter"], []).append(r[stat])
    combine = (lambda v: sum(v) / len(v)) if stat == "rms" else max
    return {label: (sorted(points), [combine(points[it]) for it in sorted(points)]) for label, points in by_line.items()}


def final_table(rows: list[dict]):
    """A rich table of the records of one step: site, layer, module and the four statistics."""
    from rich.table import Table
    table = Table()
    for col in ("layer", "site", "module", *STATS):
        table.add_column(col, justify="right" if col in STATS or col == "layer" else "left")
    for r in rows:
        table.add_row("final" if r["layer"] is None else str(r["layer"]), r["site"], r["module"],
                      *("-" if r[s] is None else f"{r[s]:.4g}" for s in STATS))
    return table


def print_final(run_dir: Path, console=None) -> list[dict]:
    """Print a run's last recorded activation statistics (nothing when it recorded none); returns them."""
    rows = final_rows(run_dir)
    if rows:
        from rich.console import Console
        console = console or Console(width=160)
        r0 = rows[0]
        console.print(f"{run_dir}: activation statistics at step {r0['iter']} (range {r0['range_min']:g} .. "
                      f"{r0['range_max']:g})", soft_wrap=True, highlight=False)
        console.print(final_table(rows))
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = ArgumentParser(prog="analysis/plot_activation_stats.py", description=__doc__.splitlines()[0])
    p.add_argument("run", metavar="RUN", help="run directory trained with --activation_stats_interval")
    p.add_argument("--out", metavar="FIG.png", help="PNG file to write")
    p.add_argument("--site", nargs="+", help=f"sites to draw (default: all recorded): {', '.join(SITES)}")
    p.add_argument("--stat", nargs="+", default=list(STATS), help=f"statistics to draw: {', '.join(STATS)}")
    p.add_argument("--log_y", action="store_true", help="logarithmic y axes")
    p.add_argument("--final", action="store_true", help="print the last recorded step's values")
    args = p.parse_args(argv)
    run = Path(args.run)
    rows = read_rows(run)
    if not rows:
        raise UserError(f"{run} has no {ACTIVATION_STATS}; train with --activation_stats_interval N to record it")
    for stat in args.stat:
        if stat not in STATS:
            raise UserError("--stat: " + unknown_name_message("statistic", stat, STATS))
    recorded = [s for s in SITES if any(r["site"] == s for r in rows)]
    for site in args.site or ():
        if site not in recorded:
            raise UserError("--site: " + unknown_name_message("recorded site", site, recorded))
    sites = args.site or recorded
    if not args.out and not args.final:
        raise UserError("give --out FIG.png to draw the statistics, or --final to print the last values")
    if args.final:
        print_final(run)
    panels = {(site, stat): series(rows, site, stat) for site in sites for stat in args.stat}
    if args.out:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(len(sites), len(args.stat), figsize=(3.6 * len(args.stat), 2.4 * len(sites)),
                                 squeeze=False, constrained_layout=True)
        for i, site in enumerate(sites):
            for j, stat in enumerate(args.stat):
                ax = axes[i][j]
                for label, (xs, ys) in panels[(site, stat)].items():
                    ax.plot(xs, ys, label=label, linewidth=1.2)
                if stat == "absmax":
                    ax.axhline(rows[0]["range_max"], color="grey", linestyle=":", linewidth=1)  # the format's edge
                if args.log_y and stat != "frac_outside":
                    ax.set_yscale("log")
                ax.set_title(f"{site}: {stat}", fontsize=9)
                ax.grid(alpha=0.3)
                ax.tick_params(labelsize=7)
                if i == len(sites) - 1:
                    ax.set_xlabel("step", fontsize=8)
        axes[0][0].legend(fontsize=7)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        atomic_write_bytes(Path(args.out), buf.getvalue())
        print(f"wrote {args.out}: {len(sites)} sites x {len(args.stat)} statistics, "
              f"{len({r['iter'] for r in rows})} recorded steps")
    return {"panels": panels, "sites": sites}


if __name__ == "__main__":
    sys.exit(run_cli(main))
