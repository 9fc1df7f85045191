"""Training and validation loss curves of several runs on one figure, from their metrics.jsonl.

    python analysis/plot_runs.py out/softmax out/consmax --out loss.png
    python analysis/plot_runs.py out/sweep --filter 'n_layer' --x tokens --log_y --out sweep_loss.png
    python analysis/plot_runs.py out/a out/b --x time --out loss_vs_time.png

Each RUN is a run directory (holding metrics.jsonl, written by train.py), or a folder whose run
directories below it are all plotted (--filter keeps those whose path matches). The training curve is
the per-step loss of the "train" records (solid line), the validation curve the val_loss of the "eval"
records (dashed, with markers), one colour per run, the legend naming each run by its path relative to
the runs' common folder. --x iter (default) and tokens are in every record; --x time is the wall time in
seconds of the "eval" records, and train records (which carry only their own step time) get the wall time
interpolated linearly between the evaluations around their step. Lines of metrics.jsonl that are not
JSON (a run killed mid-write) are skipped. The PNG is written atomically.
"""
from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path


from analysis.inspect_ckpts import find_runs
from errors import ArgumentParser, UserError, run_cli
from io_utils import atomic_write_bytes
from run_dir import METRICS

# --x choices: the metrics.jsonl key of each, and the axis label
X_AXES = {"iter": ("iter", "iteration"), "tokens": ("tokens", "training tokens"),
          "time": ("wall_time_s", "wall time (s)")}


def read_metrics(run_dir: Path) -> list[dict]:
    """The JSON records of a run's metrics.jsonl (unparsable lines skipped)."""
    records = []
    for line in (run_dir / METRICS).read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def loss_series(records: list[dict], x: str = "iter") -> dict[str, tuple[list[float], list[float]]]:
    """{"train": (xs, losses), "val": (xs, losses)} from a run's records, x one of X_AXES."""
    import numpy as np
    train = [r for r in records if r.get("type") == "train" and r.get("loss") is not None]
    val = [r for r in records if r.get("type") == "eval" and r.get("val_loss") is not None]
    if x != "time":
        key = X_AXES[x][0]
        return {"train": ([r.get(key) for r in train], [r["loss"] for r in train]),
                "val": ([r.get(key) for r in val], [r["val_loss"] for r in val])}
    timed = [r for r in val if r.get("wall_time_s") is not None]
    if not timed:
        raise UserError("--x time needs the wall_time_s of eval records, and this run's metrics.jsonl has none; "
                        "use --x iter or --x tokens")
    # train steps: wall time interpolated between the evaluations around them (clamped at the ends)
    train_t = np.interp([r["iter"] for r in train], [r["iter"] for r in timed], [r["wall_time_s"] for r in timed])
    return {"train": (train_t.tolist(), [r["loss"] for r in train]),
            "val": ([r["wall_time_s"] for r in timed], [r["val_loss"] for r in timed])}


def expand_runs(paths: list[str], pattern: str | None) -> list[Path]:
    """Run directories: each path that holds metrics.jsonl, else the runs below it (filtered by pattern)."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if (p / METRICS).is_file() and pattern is None:
            runs.append(p)
        else:
            runs += [d for _, d in find_runs(p, pattern, markers=(METRICS,))]
    return list(dict.fromkeys(runs))


def run_labels(runs: list[Path]) -> list[str]:
    """Each run's path relative to the runs' common folder (its folder name when there is one run)."""
    resolved = [r.resolve() for r in runs]
    if len(resolved) == 1:
        return [resolved[0].name]
    common = Path(os.path.commonpath(resolved))
    return [str(r.relative_to(common)) if r != common else r.name for r in resolved]


def main(argv: list[str] | None = None) -> dict:
    p = ArgumentParser(prog="analysis/plot_runs.py", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories, or folders holding run directories")
    p.add_argument("--out", required=True, metavar="FIG.png", help="PNG file to write")
    p.add_argument("--x", choices=list(X_AXES), default="iter", help="x axis: iteration, training tokens or wall time")
    p.add_argument("--log_y", action="store_true", help="logarithmic loss axis")
    p.add_argument("--filter", help="regular expression on run paths below a RUN folder; keeps the runs it matches")
    p.add_argument("--title", help="figure title (default: the number of runs and the x axis)")
    args = p.parse_args(argv)
    runs = expand_runs(args.runs, args.filter)
    labels = run_labels(runs)

    series, counts = {}, {}
    for label, run in zip(labels, runs):
        try:
            s = loss_series(read_metrics(run), args.x)
        except UserError as e:
            raise UserError(f"{run}: {e}") from None
        if not s["train"][0] and not s["val"][0]:
            print(f"warning: {run}/metrics.jsonl holds no loss yet; left out", file=sys.stderr)
            continue
        series[label] = s
        counts[label] = {"train": len(s["train"][0]), "val": len(s["val"][0])}
    if not series:
        raise UserError(f"none of the {len(runs)} runs has a loss in its metrics.jsonl yet; train for a few steps")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 5.5), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, s) in enumerate(series.items()):
        color = colors[i % len(colors)]
        ax.plot(*s["train"], color=color, linewidth=1.0, alpha=0.7, label=f"{label} train")
        ax.plot(*s["val"], color=color, linewidth=1.6, linestyle="--", marker="o", markersize=3,
                label=f"{label} val")
    if args.log_y:
        from matplotlib.ticker import FormatStrFormatter
        ax.set_yscale("log")
        for axis_ticks in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis_ticks(FormatStrFormatter("%g"))  # 3.4, not 3.4x10^0: losses span a decade at most
    ax.set_xlabel(X_AXES[args.x][1])
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if len(series) > 6 else 1)
    ax.set_title(args.title or f"loss of {len(series)} run(s) against {X_AXES[args.x][1]}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    out = Path(args.out)
    atomic_write_bytes(out, buf.getvalue())
    print(f"wrote {out}: " + ", ".join(f"{k} ({c['train']} train, {c['val']} val points)" for k, c in counts.items()))
    return {"out": out, "x": args.x, "series": series, "counts": counts}


if __name__ == "__main__":
    sys.exit(run_cli(main))
