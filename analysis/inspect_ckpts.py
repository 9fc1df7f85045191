"""A table of the runs (checkpoints) under a folder: best val loss, iteration, size, differing settings.

    python analysis/inspect_ckpts.py out
    python analysis/inspect_ckpts.py out/sweep --filter 'consmax' --sort n_layer --desc --csv runs.csv
    python analysis/inspect_ckpts.py out --watch 30                # refresh every 30 s while runs train
    python analysis/inspect_ckpts.py out --from_ckpt --json runs.json
    python analysis/inspect_ckpts.py out/stats --activation_stats  # + the last activation statistics

A run is a folder below DIR (DIR itself included) holding summary.json or a checkpoint (ckpt_last.pt,
ckpt_best.pt). Its numbers come from summary.json and its settings from config.json, which are small and
quick to read; the checkpoint (ckpt_last.pt, else ckpt_best.pt, loaded with weights_only=True) is read
only when one of them is missing or unreadable, or for every run with --from_ckpt. The settings shown
are the keys of config.json (model and train sections) whose values differ between the listed runs;
out_dir and overwrite are left out, and init_from resume counts as scratch (a resumed run is the same
run as an uninterrupted one). --csv and --json write the rows shown, atomically.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
import time
from pathlib import Path


from analysis.summarize_runs import fmt, sort_rows
from errors import ArgumentParser, UserError, run_cli, unknown_name_message
from io_utils import atomic_write_bytes, atomic_write_json, load_checkpoint
from run_dir import CKPT_BEST, CKPT_LAST, CONFIG, SUMMARY, RunDir

CHECKPOINTS = (CKPT_LAST, CKPT_BEST)  # last first: it holds the latest iteration and best loss
RUN_MARKERS = (SUMMARY, *CHECKPOINTS)
# columns every row has, with their headers; the settings that differ between the runs follow them
COLUMNS = {"run": "run", "status": "status", "best_val_loss": "best val", "best_iter": "at", "iter": "iter",
           "num_params": "params", "source": "read from"}
NOT_SETTINGS = ("out_dir", "overwrite")  # where a run is, and whether it replaced an older one there


# ---------------------------------------------------------------------------------------- finding runs
def compile_filter(pattern: str | None, flag: str = "--filter") -> re.Pattern | None:
    try:
        return re.compile(pattern) if pattern else None
    except re.error as e:
        raise UserError(f"{flag} '{pattern}' is not a valid regular expression ({e})") from None


def find_runs(root: Path | str, pattern: str | None = None, markers: tuple[str, ...] = RUN_MARKERS
              ) -> list[tuple[str, Path]]:
    """(name, folder) of every run below `root` (root itself included): a folder holding one of `markers`.
    The name is the folder's path relative to root (root's own name for root), as summarize_runs.py
    names runs; `pattern` (a regular expression) keeps the names it matches. Sorted by name. No root,
    a bad pattern, or no run at all is a UserError."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root} does not exist; pass a run directory or a folder that holds run directories")
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; pass a run directory or a folder that holds run directories")
    regex = compile_filter(pattern)
    folders = sorted({p.parent for m in markers for p in root.rglob(m) if p.is_file()})
    if not folders:
        raise UserError(f"no runs under {root} (no folder holds {' or '.join(markers)}); "
                        "train one with python train.py --out_dir DIR")
    runs = [(str(d.relative_to(root)) if d != root else d.resolve().name, d) for d in folders]
    kept = [(name, d) for name, d in runs if regex is None or regex.search(name)]
    if not kept:
        raise UserError(f"none of the {len(runs)} runs under {root} matches --filter '{pattern}' "
                        f"(runs: {', '.join(n for n, _ in runs[:8])}{', ...' if len(runs) > 8 else ''})")
    return sorted(kept)


def checkpoint_of(run_dir: Path) -> Path | None:
    return RunDir(run_dir).latest_checkpoint_path()


# ---------------------------------------------------------------------------------------- one run
def _json_or_none(run: RunDir, name: str) -> dict | None:
    """A small JSON file of the run, or None when it is missing or unreadable (the checkpoint stands in)."""
    value = run.read_json_or_none(name)
    return value if isinstance(value, dict) else None


def params_of(model_config: dict) -> int:
    """model.num_params() of the model a config describes, built on the meta device (no memory)."""
    import torch

    from gpt_conf import GPTConfig
    from model import GPT
    with torch.device("meta"):
        return GPT(GPTConfig.from_dict(model_config)).num_params()


def constants_of(ckpt: dict) -> dict:
    """GPT.learned_constants of a checkpoint (the model is built on the meta device: no memory)."""
    import torch

    from gpt_conf import GPTConfig
    from model import GPT
    with torch.device("meta"):
        model = GPT(GPTConfig.from_dict(ckpt["model_config"]))
    return model.learned_constants(ckpt["model"])


def constant_column(name: str) -> str:
    """transformer.h.3.attn.softmax.beta -> L3.attn.softmax.beta; transformer.ln_f.radius -> ln_f.radius."""
    return re.sub(r"^h\.(\d+)\.", r"L\1.", name.removeprefix("transformer."))


def read_run(name: str, run_dir: Path, from_ckpt: bool = False) -> tuple[dict, dict]:
    """(row of COLUMNS and the learned constants, flat settings {key: value} of the config's model and
    train sections)."""
    summary = _json_or_none(RunDir(run_dir), SUMMARY)
    config = _json_or_none(RunDir(run_dir), CONFIG)
    row = {"run": name, "status": (summary or {}).get("status")}
    ckpt_path = checkpoint_of(run_dir)
    if (from_ckpt or summary is None) and ckpt_path is None:
        raise UserError(f"run {run_dir} has no readable summary.json and no checkpoint "
                        f"({' / '.join(CHECKPOINTS)}); delete the folder or re-run it")
    need_ckpt = from_ckpt or summary is None or config is None
    ckpt = load_checkpoint(ckpt_path) if need_ckpt and ckpt_path is not None else None
    if from_ckpt or summary is None:
        best = ckpt.get("best_val_loss")
        row.update(best_val_loss=best if isinstance(best, (int, float)) and math.isfinite(best) else None,
                   best_iter=ckpt.get("best_iter"), iter=ckpt.get("iter_num"),
                   num_params=params_of(ckpt["model_config"]), source=ckpt_path.name)
        constants = constants_of(ckpt)
    else:
        row.update(best_val_loss=summary.get("best_val_loss"), best_iter=summary.get("best_iter"),
                   iter=summary.get("iters"), num_params=summary.get("num_params"), source=SUMMARY)
        constants = summary.get("learned_constants") or {}  # runs before this key have none
    row.update({constant_column(k): v for k, v in constants.items()})
    if config is not None and not from_ckpt:
        sections = [config.get("model") or {}, config.get("train") or {}]
    elif ckpt is not None:
        sections = [ckpt["model_config"], ckpt.get("train_config") or {}]
    else:
        sections = []
    settings = {k: v for s in sections for k, v in s.items() if k not in NOT_SETTINGS}
    if settings.get("init_from") == "resume":  # a resumed run is the same run as an uninterrupted one
        settings["init_from"] = "scratch"
    return row, settings


def differing_keys(settings: list[dict]) -> list[str]:
    """Keys whose values are not all equal across the runs (a missing key counts as a value), in the
    order they first appear (model settings, then training)."""
    keys = list(dict.fromkeys(k for s in settings for k in s))
    return [k for k in keys if len({json.dumps(s.get(k, "<unset>"), sort_keys=True) for s in settings}) > 1]


def collect(root: Path | str, pattern: str | None = None, from_ckpt: bool = False) -> tuple[list[dict], list[str]]:
    """(rows, extra columns): one row per run: COLUMNS, then the settings that differ between the runs,
    then the learned constants (ConSmax's beta, ...; "did beta move?") of any run that has them."""
    read = [read_run(name, d, from_ckpt) for name, d in find_runs(root, pattern)]
    varied = differing_keys([s for _, s in read])
    constants = list(dict.fromkeys(k for row, _ in read for k in row if k not in COLUMNS))
    rows = [{**{k: row.get(k) for k in COLUMNS}, **{k: s.get(k) for k in varied}, **{k: row.get(k) for k in constants}}
            for row, s in read]
    return rows, varied + constants


# ---------------------------------------------------------------------------------------- output
def build_table(rows: list[dict], columns: list[str], title: str):
    from rich.table import Table
    table = Table(title=title)
    for key in columns:
        header = COLUMNS.get(key, key.replace("_variant", "").replace("softmax_attn", "softmax"))
        table.add_column(header, justify="right" if key in ("best_val_loss", "best_iter", "iter", "num_params")
                         else "left")
    for r in rows:
        table.add_row(*(fmt(k, r.get(k)) for k in columns))
    return table


def rows_to_csv(rows: list[dict], columns: list[str]) -> bytes:
    """CSV with a header; lists and dicts as JSON, None as an empty cell."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    for r in rows:
        w.writerow({k: json.dumps(r.get(k)) if isinstance(r.get(k), (list, dict)) else r.get(k) for k in columns})
    return buf.getvalue().encode()


def export(rows: list[dict], columns: list[str], csv_path: str | None, json_path: str | None):
    if csv_path:
        atomic_write_bytes(csv_path, rows_to_csv(rows, columns))
    if json_path:
        atomic_write_json(json_path, [{k: r.get(k) for k in columns} for r in rows])


def console_for_tables():
    from rich.console import Console
    console = Console()
    return console if console.is_terminal else Console(width=250)  # a pipe: do not squeeze to 80 columns


def main(argv: list[str] | None = None) -> list[dict]:
    p = ArgumentParser(prog="analysis/inspect_ckpts.py", description=__doc__.splitlines()[0])
    p.add_argument("root", metavar="DIR",
                   help="a run directory or a folder holding run directories (searched recursively)")
    p.add_argument("--filter", help="regular expression on the run path (relative to DIR); keeps the runs it matches")
    p.add_argument("--sort", default="best_val_loss",
                   help=f"column to sort by: {', '.join(COLUMNS)} or a differing setting (default best_val_loss)")
    p.add_argument("--descending", "--desc", action="store_true", help="largest first")
    p.add_argument("--csv", help="also write the table to this CSV file")
    p.add_argument("--json", help="also write the table (a list of rows) to this JSON file")
    p.add_argument("--from_ckpt", action="store_true",
                   help="read every run's numbers and settings from its checkpoint, not summary.json / config.json")
    p.add_argument("--watch", type=float, metavar="SECONDS",
                   help="redraw the table every SECONDS (re-reading the runs) until Ctrl-C")
    p.add_argument("--watch_count", type=int, metavar="N", help="with --watch: stop after N tables")
    p.add_argument("--activation_stats", action="store_true",
                   help="also print each run's last recorded activation statistics (--activation_stats_interval)")
    args = p.parse_args(argv)
    if args.watch is not None and args.watch <= 0:
        raise UserError(f"--watch must be a positive number of seconds, got {args.watch}")
    if args.watch_count is not None and (args.watch is None or args.watch_count < 1):
        raise UserError("--watch_count needs --watch and must be at least 1")

    def refresh():
        rows, varied = collect(args.root, args.filter, args.from_ckpt)
        columns = list(COLUMNS) + varied
        if args.sort not in columns:
            raise UserError(unknown_name_message("--sort column", args.sort, columns))
        try:
            rows = sort_rows(rows, args.sort, args.descending)
        except TypeError:  # numbers in some runs, text in others: compare them as text
            rows = sorted(rows, key=lambda r: str(r.get(args.sort)), reverse=args.descending)
        export(rows, columns, args.csv, args.json)
        title = f"{len(rows)} runs in {args.root}" + (f" ({time.strftime('%H:%M:%S')})" if args.watch else "")
        return rows, build_table(rows, columns, title)

    console = console_for_tables()
    rows, table = refresh()
    if args.watch is None:
        console.print(table)
        if args.activation_stats:
            from analysis.plot_activation_stats import print_final
            from run_dir import ACTIVATION_STATS
            for _, run_dir in find_runs(args.root, args.filter, markers=(ACTIVATION_STATS,)):
                print_final(run_dir, console)
        return rows
    from rich.live import Live
    with Live(table, console=console, auto_refresh=False) as live:
        shown = 1
        try:
            while args.watch_count is None or shown < args.watch_count:
                time.sleep(args.watch)
                rows, table = refresh()
                live.update(table, refresh=True)
                shown += 1
        except KeyboardInterrupt:  # the usual way to leave --watch: not an error
            pass
    return rows


if __name__ == "__main__":
    sys.exit(run_cli(main))
