"""Plot a sweep's result log: loss against a cost with the Pareto front, and a bar chart per varied setting.

    python analysis/plot_sweep.py exploration_logs/softmax_cpu.yaml                       # val loss vs params
    python analysis/plot_sweep.py exploration_logs/softmax_cpu.yaml --x macs_per_token --out softmax_macs.png
    python analysis/plot_sweep.py exploration_logs/gqa_cpu.yaml --x exp_per_token --y final_val_loss --logx
    python analysis/plot_sweep.py exploration_logs/softmax_cpu.yaml --x energy_pj_per_token_decode   # PPA estimate

Reads the YAML log written by optimization_and_search/run_experiments.py or optuna_search.py (one document
per attempt at a run, optimization_and_search/results.py): each run's last attempt (results.latest_by_name),
if it completed; a damaged document is skipped with a warning saying where it is. --x and --y name any numeric key of the runs' summary.json (best_val_loss, num_params,
macs_per_token, exp_per_token, tokens_per_s, peak_memory_bytes, wall_time_s, ...) or of their settings /
resolved config (n_layer, ...). The Pareto front holds the runs
that no other run beats on both axes (lower is better on both). Below the scatter, one bar chart per
setting that differs between the runs: the mean of --y over the runs with each value.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path


from errors import ArgumentParser, UserError, closest, run_cli
from optimization_and_search.results import latest_by_name, load_log


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points that no other point dominates (<= on both coordinates, < on one), minimising
    both; ordered by x. Exact duplicates of a front point are on the front too."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front: list[int] = []
    best_y = math.inf
    for i in order:
        x, y = points[i]
        if y < best_y:
            front.append(i)
            best_y = y
        elif front and points[front[-1]] == (x, y):
            front.append(i)
    return front


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def value_of(doc: dict, key: str):
    """A key of the run's summary, else its settings, else its resolved config (model, then train)."""
    for section in (doc.get("summary"), doc.get("settings"), (doc.get("config") or {}).get("model"),
                    (doc.get("config") or {}).get("train")):
        if isinstance(section, dict) and key in section:
            return section[key]
    return None


def numeric_keys(docs: list[dict], with_config: bool = True) -> list[str]:
    """Keys with a number in some run: summary and settings (and the resolved config with with_config)."""
    keys = {}
    for d in docs:
        sections = [d.get("summary"), d.get("settings")]
        if with_config:
            sections += [(d.get("config") or {}).get("model"), (d.get("config") or {}).get("train")]
        for section in sections:
            for k, v in (section or {}).items():
                if _number(v) is not None:
                    keys[k] = None
    return sorted(keys)


def varied_settings(docs: list[dict]) -> list[str]:
    keys = list(dict.fromkeys(k for d in docs for k in (d.get("settings") or {})))
    return [k for k in keys
            if len({json.dumps((d.get("settings") or {}).get(k, "<unset>"), sort_keys=True) for d in docs}) > 1]


def _label(value) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, list):
        return "+".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def bar_groups(docs: list[dict], key: str, y: str) -> list[tuple[str, float, int]]:
    """(value label, mean y, run count) per value of setting `key`, numbers in numeric order."""
    groups: dict[str, list] = {}
    raw: dict[str, object] = {}
    for d in docs:
        v = (d.get("settings") or {}).get(key)
        yv = _number(value_of(d, y))
        if yv is None:
            continue
        label = _label(v)
        groups.setdefault(label, []).append(yv)
        raw[label] = v
    labels = list(groups)
    if all(_number(raw[lab]) is not None for lab in labels):
        labels.sort(key=lambda lab: raw[lab])
    return [(lab, sum(groups[lab]) / len(groups[lab]), len(groups[lab])) for lab in labels]


def main(argv: list[str] | None = None) -> dict:
    p = ArgumentParser(prog="analysis/plot_sweep.py", description=__doc__.splitlines()[0])
    p.add_argument("log", help="result log of a sweep, e.g. exploration_logs/softmax_cpu.yaml")
    p.add_argument("--x", default="num_params", help="cost axis: num_params, macs_per_token or any numeric key")
    p.add_argument("--y", default="best_val_loss", help="quality axis (lower is better)")
    p.add_argument("--out", help="PNG to write (default: the log's path with .png)")
    p.add_argument("--logx", action="store_true", help="logarithmic x axis")
    p.add_argument("--title", help="figure title (default: the sweep's name)")
    args = p.parse_args(argv)
    log = Path(args.log)
    if not log.is_file():
        raise UserError(f"result log {log} not found (sweeps write exploration_logs/<sweep name>.yaml)")
    docs = [d for d in latest_by_name(load_log(log)).values() if d.get("status") == "completed"]
    if not docs:
        raise UserError(f"{log} holds no completed run to plot")
    available = numeric_keys(docs)
    for axis, key in (("--x", args.x), ("--y", args.y)):
        if key not in available:
            guess = closest(key, available)
            shown = numeric_keys(docs, with_config=False)
            raise UserError(f"{axis} '{key}' is not a numeric key of the runs in {log}"
                            + (f"; did you mean '{guess}'?" if guess else "")
                            + f" available: {', '.join(shown)} (and any numeric key of their config.json)")
    points, names, skipped = [], [], []
    for d in docs:
        x, y = _number(value_of(d, args.x)), _number(value_of(d, args.y))
        if x is None or y is None:
            skipped.append(d["name"])
            continue
        points.append((x, y))
        names.append(d["name"])
    if skipped:
        print(f"warning: {len(skipped)} run(s) lack {args.x} or {args.y}: {', '.join(skipped)}", file=sys.stderr)
    if args.logx and any(x <= 0 for x, _ in points):
        raise UserError(f"--logx needs positive values of {args.x}")
    front = pareto_front(points)
    varied = varied_settings(docs)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(3, max(1, len(varied)))
    bar_rows = math.ceil(len(varied) / ncols)
    fig = plt.figure(figsize=(max(8.0, 5.5 * ncols), 5.5 + 3.8 * bar_rows), constrained_layout=True)
    grid = fig.add_gridspec(1 + bar_rows, ncols, height_ratios=[5.5] + [3.8] * bar_rows)
    ax = fig.add_subplot(grid[0, :])
    on_front = set(front)
    xs, ys = [pt[0] for pt in points], [pt[1] for pt in points]
    ax.scatter([x for i, x in enumerate(xs) if i not in on_front], [y for i, y in enumerate(ys) if i not in on_front],
               color="tab:blue", alpha=0.6, label="runs")
    ax.scatter([xs[i] for i in front], [ys[i] for i in front], color="tab:red", zorder=3, label="Pareto front")
    ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="tab:red", alpha=0.7)
    for i, n in enumerate(names):
        if len(names) <= 20 or i in on_front:
            ax.annotate(n, (xs[i], ys[i]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if args.logx:
        ax.set_xscale("log")
    elif max(abs(x) for x in xs) >= 1e4:  # 28.4k, 1.2M: readable ticks for parameter and MAC counts
        from matplotlib.ticker import EngFormatter
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlabel(args.x)
    ax.set_ylabel(args.y)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(args.title or f"{log.stem}: {args.y} vs {args.x} ({len(points)} runs)")
    for j, key in enumerate(varied):
        bax = fig.add_subplot(grid[1 + j // ncols, j % ncols])
        groups = bar_groups(docs, key, args.y)
        best = min(range(len(groups)), key=lambda i: groups[i][1]) if groups else None
        bax.bar(range(len(groups)), [g[1] for g in groups],
                color=["tab:red" if i == best else "tab:blue" for i in range(len(groups))])
        bax.set_xticks(range(len(groups)), [f"{g[0]}\n(n={g[2]})" for g in groups], fontsize=7,
                       rotation=30 if len(groups) > 4 else 0)
        if groups:
            low, high = min(g[1] for g in groups), max(g[1] for g in groups)
            pad = (high - low) * 0.5 or abs(high) * 0.05 or 1.0
            bax.set_ylim(low - pad, high + pad)
        bax.set_title(key, fontsize=9)
        bax.set_ylabel(f"mean {args.y}", fontsize=8)
        bax.grid(axis="y", alpha=0.3)
    out = Path(args.out) if args.out else log.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    front_names = [names[i] for i in front]
    print(f"wrote {out}: {len(points)} runs, Pareto front ({args.x}, {args.y}): {', '.join(front_names)}")
    return {"out": out, "front": front_names, "names": names, "points": points, "varied": varied}


if __name__ == "__main__":
    sys.exit(run_cli(main))
