"""The trajectory of a greedy efficiency search: objective against cost for every adopted step, with
every evaluated candidate as a faint point (coloured by step), read from the search's YAML log.

    python analysis/plot_search.py hp_search_logs/grow_cpu.yaml --out search.png
    python analysis/plot_search.py hp_search_logs/grow_cpu.yaml --out search.png --logx

The path starts at the measured baseline and follows each adopted candidate (labelled with its
change); a baseline measured again after an iteration-budget raise is joined by a dashed line.
The adopted path is also printed as a table.
"""
from __future__ import annotations

import sys
from pathlib import Path


from errors import ArgumentParser, UserError, run_cli
from optimization_and_search.greedy_rule import trajectory
from optimization_and_search.results import read_yaml_file


def load_log(path: str) -> dict:
    log = read_yaml_file(path, "search log")  # damage: a one-line error saying where
    if not isinstance(log, dict) or not isinstance(log.get("steps"), list):
        raise UserError(f"{path} is not a hyperparam_search log (no 'steps'); "
                        "exploration logs are plotted by analysis/plot_sweep.py")
    return log


def plot(log: dict, out: Path, logx: bool = False, title: str | None = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    search = log.get("search") or {}
    objective, cost = search.get("objective", "objective"), search.get("cost", "cost")
    cost_key = search.get("cost_key", cost)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    cmap = plt.get_cmap("viridis")
    n = max(1, len(log["steps"]))
    for i, step in enumerate(log["steps"]):
        pts = [(c["cost"], c["objective"]) for c in step.get("candidates", [])
               if c.get("status") == "completed" and c.get("objective") is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, s=22, alpha=0.3, color=cmap(i / max(1, n - 1) if n > 1 else 0.0),
                       label=f"step {step['index']} candidates")
    path = trajectory(log)
    if path:
        for a, b in zip(path, path[1:]):
            ax.plot([a["cost"], b["cost"]], [a["objective"], b["objective"]], color="crimson",
                    linestyle="--" if b["measured"] else "-", linewidth=1.8, zorder=3)
        ax.scatter([p["cost"] for p in path], [p["objective"] for p in path], color="crimson", s=40, zorder=4,
                   label="adopted path")
        for p in path:
            ax.annotate(p["label"], (p["cost"], p["objective"]), textcoords="offset points", xytext=(5, 5),
                        fontsize=8, color="crimson")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(f"{cost} ({cost_key})" if cost_key != cost else cost)
    ax.set_ylabel(f"{objective} (lower is better)")
    stop = log.get("stop_reason")
    ax.set_title(title or f"greedy search {log.get('name', '')}" + (f" (stopped: {stop})" if stop else " (running)"))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> Path:
    p = ArgumentParser(prog="plot_search.py", allow_abbrev=False,
                       description="Plot a greedy search's trajectory (objective vs cost per adopted step).")
    p.add_argument("log", help="the search's YAML log (hp_search_logs/<name>.yaml)")
    p.add_argument("--out", help="PNG to write (default: the log's path with .png)")
    p.add_argument("--logx", action="store_true", help="logarithmic cost axis")
    p.add_argument("--title", help="plot title")
    args = p.parse_args(argv)
    log = load_log(args.log)
    out = Path(args.out) if args.out else Path(args.log).with_suffix(".png")
    plot(log, out, args.logx, args.title)

    from rich.console import Console
    from rich.table import Table
    search = log.get("search") or {}
    table = Table(title=f"search {log.get('name', '')}: adopted path ({log.get('stop_reason') or 'running'})")
    for col in ("step", "change", search.get("objective", "objective"), search.get("cost", "cost")):
        table.add_column(col, justify="left" if col == "change" else "right")
    for pt in trajectory(log):
        table.add_row(str(pt["step"]), pt["label"], f"{pt['objective']:.4f}", f"{pt['cost']:.6g}")
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)
    console.print(f"wrote {out}", highlight=False)
    return out


if __name__ == "__main__":
    sys.exit(run_cli(main))
