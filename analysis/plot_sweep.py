"""Plot a sweep's log: configuration means (sd error bars) against a cost, the Pareto front, bars per setting.

    python analysis/plot_sweep.py exploration_logs/softmax_cpu.yaml                       # val loss vs params
    python analysis/plot_sweep.py exploration_logs/softmax_cpu.yaml --x macs_per_token --out softmax_macs.png
    python analysis/plot_sweep.py exploration_logs/gqa_cpu.yaml --x exp_per_token --y final_val_loss --logx
    python analysis/plot_sweep.py exploration_logs/softmax_cpu.yaml --x energy_pj_per_token_decode   # PPA estimate

Reads the YAML log written by optimization_and_search/run_experiments.py or optuna_search.py (one document
per attempt at a run, optimization_and_search/results.py): each run's last attempt (results.latest_by_name);
a damaged document is skipped with a warning saying where it is. --x and --y name any numeric key of the
runs' summary.json (best_val_loss, num_params, macs_per_token, exp_per_token, tokens_per_s,
peak_memory_bytes, wall_time_s, ...) or of their settings / resolved config (n_layer, ...).

A point is a configuration (a run's settings without its seed, results.config_key): the mean of --x and
--y over its completed seeds (results.aggregate_by_config), with error bars of one sample standard
deviation where it has more than one seed. The Pareto front holds the configurations whose means no other
configuration beats on both axes (lower is better on both). Labels never overlap: each point carries a
number (1 = the lowest mean --y) and a key beside the plot names it with its n and mean ± sd; points
closer than about 2% of the axes share one label ("3,7"). When --x is the same in every configuration a
warning says so and names keys that vary (the plot then shows only the spread of --y).

Below the scatter, one bar chart per setting that differs between the configurations (never the seed): the
mean of --y over the runs with each value, its error bar the sample standard deviation over those runs. A
bar's y axis starts at 0 unless that would flatten the differences between the bars; then the axis
label says that it does not start at 0.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from errors import ArgumentParser, UserError, closest, run_cli
from optimization_and_search.results import (SEED, aggregate_by_config, latest_by_name, load_log, metric_of, number,
                                             spread)

LABEL_DISTANCE = 0.02  # points closer than this (a fraction of the axes) share a label
FROM_ZERO = 0.25       # bars start at 0 when their spread is at least this fraction of the largest bar


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


def numeric_keys(docs: list[dict], with_config: bool = True) -> list[str]:
    """Keys with a number in some run: summary and settings (and the resolved config with with_config)."""
    keys = {}
    for d in docs:
        sections = [d.get("summary"), d.get("settings")]
        if with_config:
            sections += [(d.get("config") or {}).get("model"), (d.get("config") or {}).get("train")]
        for section in sections:
            for k, v in (section or {}).items():
                if number(v) is not None:
                    keys[k] = None
    return sorted(keys)


def varied_settings(docs: list[dict]) -> list[str]:
    """Settings that differ between the runs' configurations (the seed is not a configuration setting)."""
    keys = list(dict.fromkeys(k for d in docs for k in (d.get("settings") or {}) if k != SEED))
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


def bar_groups(docs: list[dict], key: str, y: str) -> list[tuple[str, float, float | None, int]]:
    """(value label, mean y, sample sd of y or None, run count) per value of setting `key` over the runs
    (results.spread), numbers in numeric order."""
    groups: dict[str, list] = {}
    raw: dict[str, object] = {}
    for d in docs:
        v = (d.get("settings") or {}).get(key)
        yv = number(metric_of(d, y))
        if yv is None:
            continue
        label = _label(v)
        groups.setdefault(label, []).append(yv)
        raw[label] = v
    labels = list(groups)
    if all(number(raw[lab]) is not None for lab in labels):
        labels.sort(key=lambda lab: raw[lab])
    stats = {lab: spread(groups[lab]) for lab in labels}
    return [(lab, stats[lab]["mean"], stats[lab]["std"], stats[lab]["n"]) for lab in labels]


def bar_limits(groups) -> tuple[float, float, bool]:
    """(bottom, top, starts_at_zero) of a bar chart's y axis: from 0 when every bar is positive and the
    bars (with their error bars) spread over at least FROM_ZERO of the tallest; otherwise around the
    values, so that the differences show (the caller says on the axis that it does not start at 0)."""
    low = min(m - (sd or 0.0) for _, m, sd, _ in groups)
    high = max(m + (sd or 0.0) for _, m, sd, _ in groups)
    if low <= 0 or high - low >= FROM_ZERO * high:
        return min(0.0, low * 1.05), max(0.0, high * 1.05), True
    pad = (high - low) * 0.3 or abs(high) * 0.05 or 1.0
    return low - pad, high + pad, False


def label_groups(points: list[tuple[float, float]], logx: bool = False) -> list[list[int]]:
    """Points that would print on top of each other (closer than LABEL_DISTANCE of the axes' span, after
    a log x when logx), grouped; each group gets one label at its first point."""
    if not points:
        return []
    xs = [math.log10(x) if logx else x for x, _ in points]
    ys = [y for _, y in points]

    def scale(v, vs):
        span = max(vs) - min(vs)
        return (v - min(vs)) / span if span else 0.0
    norm = [(scale(x, xs), scale(y, ys)) for x, y in zip(xs, ys)]
    groups: list[list[int]] = []
    for i, (x, y) in enumerate(norm):
        near = next((g for g in groups if math.dist(norm[g[0]], (x, y)) < LABEL_DISTANCE), None)
        if near is None:
            groups.append([i])
        else:
            near.append(i)
    return groups


def config_points(docs: list[dict], x: str, y: str) -> list[dict]:
    """Per configuration with at least one run giving both x and y: name, n, seeds, failed, x and y (means),
    x_sd and y_sd (None below two runs)."""
    xs, ys = aggregate_by_config(docs, x), aggregate_by_config(docs, y)  # the same configurations, in order
    return [{"name": cy["name"], "n": cy["n"], "seeds": cy["seeds"], "failed": cy["failed"], "x": cx["mean"],
             "y": cy["mean"], "x_sd": cx["std"], "y_sd": cy["std"]} for cx, cy in zip(xs, ys) if cy["n"]]


def constant_axis_warning(configs: list[dict], key: str, docs: list[dict]) -> str | None:
    """A warning when every configuration has the same value of `key`, naming numeric keys that vary."""
    values = [c["x"] for c in configs]
    if len(configs) < 2 or max(values) - min(values) > 1e-12 * max(1.0, abs(max(values))):
        return None
    varying = [k for k in numeric_keys(docs, with_config=False)
               if k != SEED and len({number(metric_of(d, k)) for d in docs}) > 1][:6]
    return (f"--x {key} is {values[0]:g} in every configuration, so the plot shows only the spread of the "
            "y axis" + (f"; keys that vary: {', '.join(varying)}" if varying else ""))


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
    latest = list(latest_by_name(load_log(log)).values())
    docs = [d for d in latest if d.get("status") == "completed"]
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
    usable = [d for d in docs if number(metric_of(d, args.x)) is not None and number(metric_of(d, args.y)) is not None]
    kept = {id(d) for d in usable}
    skipped = [d["name"] for d in docs if id(d) not in kept]
    if skipped:
        print(f"warning: {len(skipped)} run(s) lack {args.x} or {args.y}: {', '.join(skipped)}", file=sys.stderr)
    # the failed runs stay in: each configuration counts its own (aggregate_by_config)
    configs = config_points([d for d in latest if id(d) in kept or d.get("status") != "completed"], args.x, args.y)
    configs.sort(key=lambda c: c["y"])  # number 1 is the lowest mean y
    points = [(c["x"], c["y"]) for c in configs]
    if args.logx and any(x <= 0 for x, _ in points):
        raise UserError(f"--logx needs positive values of {args.x}")
    warning = constant_axis_warning(configs, args.x, usable)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    front = pareto_front(points)
    varied = varied_settings(usable)
    fig = draw(args, log, configs, front, usable, varied)
    out = Path(args.out) if args.out else log.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    import matplotlib.pyplot as plt
    plt.close(fig)
    names = [c["name"] for c in configs]
    front_names = [names[i] for i in front]
    runs = sum(c["n"] for c in configs)
    print(f"wrote {out}: {len(configs)} configurations ({runs} runs), Pareto front over the means "
          f"({args.x}, {args.y}): {', '.join(front_names)}")
    return {"out": out, "front": front_names, "names": names, "points": points, "varied": varied,
            "configs": configs, "warnings": [warning] if warning else []}


def draw(args, log: Path, configs: list[dict], front: list[int], docs: list[dict], varied: list[str]):
    """The figure: the scatter of configuration means with error bars, its numbered key, the bar charts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    on_front = set(front)
    lines = []  # the key: number, * on the front, name, mean ± sd, n
    for i, c in enumerate(configs):
        sd = f" ± {c['y_sd']:.4g}" if c["y_sd"] is not None else ""
        extra = f", {c['failed']} failed" if c["failed"] else ""
        lines.append(f"{i + 1:>2}{'*' if i in on_front else ' '} {c['name']}: {c['y']:.4g}{sd} (n={c['n']}{extra})")
    key_font = max(4.5, min(7.0, 300 / max(1, len(lines))))
    key_width = max(2.5, 0.62 * key_font / 72 * max(len(line) for line in lines))  # inches of monospace
    ncols = min(3, max(1, len(varied)))
    bar_rows = math.ceil(len(varied) / ncols)
    width = max(8.0, 5.5 * ncols) + key_width
    fig = plt.figure(figsize=(width, 5.5 + 3.8 * bar_rows), constrained_layout=True)
    grid = fig.add_gridspec(1 + bar_rows, ncols, height_ratios=[5.5] + [3.8] * bar_rows)
    top = grid[0, :].subgridspec(1, 2, width_ratios=[width - key_width, key_width])
    ax, key_ax = fig.add_subplot(top[0]), fig.add_subplot(top[1])
    xs, ys = [c["x"] for c in configs], [c["y"] for c in configs]
    seeded = any(c["n"] > 1 for c in configs)
    if seeded:
        ax.errorbar(xs, ys, xerr=[c["x_sd"] or 0.0 for c in configs], yerr=[c["y_sd"] or 0.0 for c in configs],
                    fmt="none", ecolor="0.55", elinewidth=1, capsize=3, zorder=1)
    rest = [i for i in range(len(configs)) if i not in on_front]
    ax.scatter([xs[i] for i in rest], [ys[i] for i in rest], color="tab:blue", alpha=0.7, zorder=2,
               label="configurations" + (" (mean ± sd over seeds)" if seeded else ""))
    ax.scatter([xs[i] for i in front], [ys[i] for i in front], color="tab:red", zorder=3,
               label="Pareto front" + (" (of the means)" if seeded else ""))
    ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="tab:red", alpha=0.7)
    for group in label_groups(list(zip(xs, ys)), args.logx):
        ax.annotate(",".join(str(i + 1) for i in group), (xs[group[0]], ys[group[0]]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    if args.logx:
        ax.set_xscale("log")
    elif max(abs(x) for x in xs) >= 1e4:  # 28.4k, 1.2M: readable ticks for parameter and MAC counts
        from matplotlib.ticker import EngFormatter
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlabel(args.x)
    ax.set_ylabel(args.y)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    runs = sum(c["n"] for c in configs)
    ax.set_title(args.title or f"{log.stem}: {args.y} vs {args.x} ({len(configs)} configurations"
                 + (f", {runs} runs" if runs != len(configs) else "") + ")")
    key_ax.axis("off")
    key_ax.text(0, 1, f"{args.y} (* Pareto front)\n" + "\n".join(lines), va="top", ha="left", family="monospace",
                fontsize=key_font, transform=key_ax.transAxes)
    for j, key in enumerate(varied):
        bax = fig.add_subplot(grid[1 + j // ncols, j % ncols])
        groups = bar_groups(docs, key, args.y)
        best = min(range(len(groups)), key=lambda i: groups[i][1]) if groups else None
        bax.bar(range(len(groups)), [g[1] for g in groups], yerr=[g[2] or 0.0 for g in groups], capsize=3,
                ecolor="0.3", color=["tab:red" if i == best else "tab:blue" for i in range(len(groups))])
        bax.set_xticks(range(len(groups)), [f"{g[0]}\n(n={g[3]})" for g in groups], fontsize=7,
                       rotation=30 if len(groups) > 4 else 0)
        from_zero = True
        if groups:
            low, high, from_zero = bar_limits(groups)
            bax.set_ylim(low, high)
        bax.set_title(key, fontsize=9)
        bax.set_ylabel(f"mean {args.y} ± sd" + ("" if from_zero else "\n(axis does not start at 0)"), fontsize=8)
        bax.grid(axis="y", alpha=0.3)
    return fig


if __name__ == "__main__":
    sys.exit(run_cli(main))
