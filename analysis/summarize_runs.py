"""A table of every run under a folder: best val loss, size, speed, status, read from summary.json.

    python analysis/summarize_runs.py out
    python analysis/summarize_runs.py out --filter 'consmax' --sort tokens_per_s --csv runs.csv
    python analysis/summarize_runs.py out --activation_stats   # + each run's last activation statistics

Columns come from each run's summary.json and config.json (named keys, never positions), so older
and newer runs line up. Runs whose summary says "running" were stopped or are still going.
"""
from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

from errors import ArgumentParser, UserError, run_cli
from run_dir import CONFIG, SUMMARY

# summary keys shown, with their headers; model settings that differ between the runs are added after them
COLUMNS = {"run": "run", "status": "status", "best_val_loss": "best val", "best_iter": "at", "iters": "iters",
           "num_params": "params", "tokens_per_s": "tok/s", "mfu": "mfu", "peak_memory_bytes": "peak mem",
           "wall_time_s": "wall s"}


def collect(root: Path, pattern: str | None = None) -> list[dict]:
    """One row per folder below `root` that holds a summary.json."""
    rows = []
    regex = re.compile(pattern) if pattern else None
    for summary_path in sorted(root.rglob(SUMMARY)):
        run_dir = summary_path.parent
        name = str(run_dir.relative_to(root)) if run_dir != root else run_dir.name
        if regex and not regex.search(name):
            continue
        try:
            row = {"run": name, **json.loads(summary_path.read_text())}
            config_path = run_dir / CONFIG
            if config_path.exists():
                model = json.loads(config_path.read_text()).get("model", {})
                row.update({k: v for k, v in model.items() if k not in row})
        except (OSError, ValueError) as e:
            row = {"run": name, "status": f"unreadable ({e.__class__.__name__})"}
        rows.append(row)
    return rows


def sort_rows(rows: list[dict], key: str, descending: bool) -> list[dict]:
    present = [r for r in rows if isinstance(r.get(key), (int, float, str))]
    missing = [r for r in rows if r not in present]
    return sorted(present, key=lambda r: r[key], reverse=descending) + missing


def fmt(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "peak_memory_bytes":
        return f"{value / 2**20:,.0f} MiB"
    if key == "num_params":
        return f"{value / 1e6:.2f}M"
    if key == "mfu":
        return f"{100 * value:.1f}%"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):  # per head
        return " ".join(f"{v:.3g}" for v in value)
    return str(value)


def main(argv: list[str] | None = None) -> list[dict]:
    p = ArgumentParser(prog="analysis/summarize_runs.py", description=__doc__.splitlines()[0])
    p.add_argument("root", nargs="?", default="out", help="folder holding run directories")
    p.add_argument("--filter", help="regular expression on the run name")
    p.add_argument("--sort", default="best_val_loss", help="column to sort by")
    p.add_argument("--descending", action="store_true", help="largest first")
    p.add_argument("--csv", help="also write the table (all columns) to this CSV file")
    p.add_argument("--activation_stats", action="store_true",
                   help="also print each run's last recorded activation statistics (--activation_stats_interval)")
    args = p.parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; pass the folder that holds your run directories (default: out)")
    try:
        rows = sort_rows(collect(root, args.filter), args.sort, args.descending)
    except re.error as e:
        raise UserError(f"--filter '{args.filter}' is not a valid regular expression ({e})") from None

    from rich.console import Console
    from rich.table import Table
    summary_keys = {k for r in rows for k in r if k not in COLUMNS}
    varied = [k for k in dict.fromkeys(k for r in rows for k in r)
              if k not in COLUMNS and len({json.dumps(r.get(k)) for r in rows}) > 1
              and k not in ("final_val_loss", "final_train_loss", "tokens", "iter_time_ms", "stop_reason")]
    columns = {**COLUMNS, **{k: k.replace("_variant", "").replace("softmax_attn", "softmax") for k in varied}}
    table = Table(title=f"{len(rows)} runs in {root}")
    for key, header in columns.items():
        table.add_column(header, justify="right" if key in COLUMNS and key not in ("run", "status") else "left")
    for r in rows:
        table.add_row(*(fmt(k, r.get(k)) for k in columns))
    console = Console()
    if not console.is_terminal:
        console = Console(width=250)  # a pipe or file: do not squeeze the table into 80 columns
    console.print(table)
    if args.activation_stats:
        from analysis.plot_activation_stats import print_final
        for r in rows:
            print_final(root / r["run"] if (root / r["run"]).is_dir() else root, console)
    if args.csv:
        keys = list(dict.fromkeys(list(COLUMNS) + sorted(summary_keys)))
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    return rows


if __name__ == "__main__":
    sys.exit(run_cli(main))
