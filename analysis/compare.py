"""Compare every configuration of a sweep with a baseline: the difference, its t interval, within noise or not.

    python analysis/compare.py exploration_logs/softmax_cpu.yaml --baseline softmax_variant_attn=softmax
    python analysis/compare.py LOG --baseline softmax_variant_attn=softmax --baseline n_layer=4 --paired
    python analysis/compare.py LOG --baseline sva-softmax --metric tokens_per_s --higher_is_better --json cmp.json

Reads the sweep's result log (results.py): a configuration is a run's settings without its seed, its
statistics come from results.aggregate_by_config (completed runs only; the failed ones are counted).
--baseline KEY=VALUE (repeatable, every pair must match) or a configuration's name picks the baseline.

Each row: the configuration, n, mean ± sd, the difference from the baseline (configuration - baseline),
its confidence interval, the test, and the verdict: "within noise" when the interval contains 0, else
"better" or "worse" (lower is better unless --higher_is_better).

- Default: Welch's t interval for the difference of two means (unequal variances, Welch-Satterthwaite
  degrees of freedom). It needs n >= 2 on both sides; with n = 1 on either side the interval is
  undefined, and the row says so.
- --paired: the paired t interval over the seeds both configurations have (n - 1 degrees of freedom on
  the per-seed differences). Pairing is valid because a seed fixes the batch order and, where the shapes
  agree, the initial weights (train.py seeds both from --seed): seed-to-seed luck is shared by the two
  runs of a pair and cancels in their difference. It needs 2 or more shared seeds.

The t quantile comes from scipy when it is installed, else from `t_quantile_exact` (bisection on the
Student t distribution function, written with the regularised incomplete beta function). Each row is
one comparison at the stated confidence, with no correction for multiple comparisons: among many
configurations that truly equal the baseline, about one in twenty gets a verdict at 95% by chance.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import yaml

from errors import ArgumentParser, UserError, run_cli
from io_utils import atomic_write_bytes
from optimization_and_search.results import aggregate_by_config, latest_by_name, load_log

PAIRING = ("a seed fixes the batch order and, where the shapes agree, the initial weights, so seed-to-seed "
           "luck cancels in each pair's difference")


# ------------------------------------------------------------------------------------ the t quantile
def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for aa in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                   -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom (any df > 0, not only whole numbers)."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile_exact(p: float, df: float) -> float:
    """The p quantile of Student's t: bisection on t_cdf (to about 1e-12)."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile_exact(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2.0


def t_quantile(p: float, df: float) -> float:
    """scipy.stats.t.ppf when scipy is installed, else t_quantile_exact."""
    try:
        from scipy.stats import t
    except ImportError:
        return t_quantile_exact(p, df)
    return float(t.ppf(p, df))


# ------------------------------------------------------------------------------------ intervals
def _interval(diff: float, se: float, df: float, confidence: float) -> tuple[float, float]:
    half = t_quantile((1.0 + confidence) / 2.0, df) * se if se > 0 else 0.0
    return diff - half, diff + half


def welch_interval(values: list[float], baseline: list[float], confidence: float = 0.95) -> dict:
    """Welch's t interval for mean(values) - mean(baseline): difference, low, high, df, or `undefined`
    (the reason) when either side has fewer than two values. No spread on either side: a point."""
    n1, n2 = len(values), len(baseline)
    m1, m2 = sum(values) / n1, sum(baseline) / n2
    out = {"test": "Welch t", "difference": m1 - m2, "low": None, "high": None, "df": None}
    if n1 < 2 or n2 < 2:
        side = "both" if n1 < 2 and n2 < 2 else "this configuration" if n1 < 2 else "the baseline"
        return {**out, "undefined": f"n = 1 ({side}): no spread to estimate"}
    v1 = sum((v - m1) ** 2 for v in values) / (n1 - 1) / n1  # the squared standard error of each mean
    v2 = sum((v - m2) ** 2 for v in baseline) / (n2 - 1) / n2
    se = math.sqrt(v1 + v2)
    if se > 0:
        out["df"] = (v1 + v2) ** 2 / (v1 ** 2 / (n1 - 1) + v2 ** 2 / (n2 - 1))
    out["low"], out["high"] = _interval(out["difference"], se, out["df"] or 1.0, confidence)
    return out


def paired_interval(values: dict, baseline: dict, confidence: float = 0.95) -> dict:
    """The paired t interval over the seeds both have ({seed: value} each): mean of the per-seed
    differences, low, high, df = pairs - 1, pairs; `undefined` below two shared seeds."""
    shared = [s for s in values if s is not None and s in baseline]
    diffs = [values[s] - baseline[s] for s in shared]
    n = len(diffs)
    out = {"test": "paired t", "pairs": n, "seeds": shared, "difference": sum(diffs) / n if n else None,
           "low": None, "high": None, "df": n - 1 if n > 1 else None}
    if n < 2:
        return {**out, "undefined": f"{n} seed(s) in common with the baseline; pairing needs 2 or more"}
    sd = math.sqrt(sum((d - out["difference"]) ** 2 for d in diffs) / (n - 1))
    out["low"], out["high"] = _interval(out["difference"], sd / math.sqrt(n), n - 1, confidence)
    return out


def verdict(low: float, high: float, higher_is_better: bool = False) -> str:
    """within noise (the interval holds 0), else better or worse."""
    if low <= 0.0 <= high:
        return "within noise"
    return "better" if (low > 0) == higher_is_better else "worse"


# ------------------------------------------------------------------------------------ the table
def parse_value(text: str):
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return text


def find_baseline(configs: list[dict], picks: list[str]) -> int:
    """The index of the one configuration every --baseline pick (KEY=VALUE or a name) matches."""
    matching = list(range(len(configs)))
    for pick in picks:
        key, sep, text = pick.partition("=")
        if not sep:
            matching = [i for i in matching if configs[i]["name"] == pick]
            if not matching:
                raise UserError(f"--baseline {pick}: no configuration is named so; names: "
                                + ", ".join(c["name"] for c in configs))
            continue
        if not any(key in c["settings"] for c in configs):
            keys = sorted({k for c in configs for k in c["settings"]})
            raise UserError(f"--baseline {pick}: no configuration sets '{key}'; settings: {', '.join(keys)}")
        value = parse_value(text)
        found = [i for i in matching if configs[i]["settings"].get(key) == value
                 or str(configs[i]["settings"].get(key)) == text]
        if not found:
            values = sorted({json.dumps(configs[i]["settings"].get(key)) for i in matching})
            raise UserError(f"--baseline {pick}: no configuration has {key}={text}; its values: {', '.join(values)}")
        matching = found
    if len(matching) > 1:
        differ = sorted({k for i in matching for k in configs[i]["settings"]
                         if len({json.dumps(configs[j]["settings"].get(k)) for j in matching}) > 1})
        raise UserError(f"--baseline {' '.join(picks)} matches {len(matching)} configurations "
                        f"({', '.join(configs[i]['name'] for i in matching)}); add --baseline KEY=VALUE to pick one "
                        f"(they differ in {', '.join(differ)})")
    return matching[0]


def compare(configs: list[dict], base: int, confidence: float = 0.95, paired: bool = False,
            higher_is_better: bool = False) -> list[dict]:
    """A row per configuration (the baseline first, then best mean first): its aggregate_by_config
    statistics, and for the others the interval (welch_interval or paired_interval) and the verdict."""
    b = configs[base]
    if not b["n"]:
        raise UserError(f"the baseline {b['name']} has no completed run with {b['key']} ({b['failed']} failed)")
    rows = [{**b, "baseline": True, "verdict": "baseline"}]
    others = [c for i, c in enumerate(configs) if i != base]
    others.sort(key=lambda c: (c["mean"] is None, (-1 if higher_is_better else 1) * (c["mean"] or 0.0)))
    for c in others:
        row = {**c, "baseline": False}
        if not c["n"]:
            row.update(verdict="n/a", undefined=f"no completed run ({c['failed']} failed)")
        elif paired:
            row.update(paired_interval(dict(zip(c["seeds"], c["values"])), dict(zip(b["seeds"], b["values"])),
                                       confidence))
        else:
            row.update(welch_interval(c["values"], b["values"], confidence))
        if "verdict" not in row:
            row["verdict"] = "n/a" if row.get("undefined") else verdict(row["low"], row["high"], higher_is_better)
        rows.append(row)
    return rows


def _f(v) -> str:
    return "-" if v is None else f"{v:.4g}" if abs(v) < 1e4 else f"{v:.4e}"


def print_table(rows: list[dict], metric: str, confidence: float, paired: bool, higher_is_better: bool) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console() if Console().is_terminal else Console(width=200)
    direction = "higher" if higher_is_better else "lower"
    table = Table(title=f"{metric} against the baseline {rows[0]['name']} ({direction} is better)")
    for col in ("configuration", "n", "mean ± sd", "difference", f"{confidence:.0%} CI", "test", "verdict"):
        table.add_column(col, justify="left" if col in ("configuration", "test", "verdict") else "right")
    for r in rows:
        n = str(r["n"]) + (f" (+{r['failed']} failed)" if r["failed"] else "")
        mean = "-" if r["mean"] is None else _f(r["mean"]) + (f" ± {_f(r['std'])}" if r["std"] is not None else "")
        if r["baseline"]:
            table.add_row(f"{r['name']} (baseline)", n, mean, "", "", "", "baseline")
            continue
        if r.get("undefined"):
            ci = f"undefined: {r['undefined']}"
        else:
            ci = f"[{_f(r['low'])}, {_f(r['high'])}]"
        test = ""
        if "test" in r:
            test = r["test"] + (f" ({r['pairs']} seeds)" if paired else f" (df {r['df']:.3g})" if r["df"] else "")
        table.add_row(r["name"], n, mean, _f(r.get("difference")), ci, test, r["verdict"])
    console.print(table)
    how = (f"paired t interval over the shared seeds ({PAIRING})" if paired
           else "Welch's t interval for the difference of means (unequal variances)")
    console.print(f"difference = configuration - baseline; {how}; 'within noise': the interval contains 0",
                  highlight=False)


def main(argv: list[str] | None = None) -> dict:
    p = ArgumentParser(prog="analysis/compare.py", description=__doc__.splitlines()[0])
    p.add_argument("log", help="result log of a sweep, e.g. exploration_logs/softmax_cpu.yaml")
    p.add_argument("--baseline", action="append", required=True, metavar="KEY=VALUE",
                   help="the baseline configuration: a setting it has (repeat to narrow down) or its name")
    p.add_argument("--metric", default="best_val_loss", help="numeric summary key (or setting) to compare")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    p.add_argument("--paired", action="store_true", help="paired t interval over the seeds both configurations have")
    p.add_argument("--higher_is_better", action="store_true", help="a larger metric is better (tokens_per_s, mfu)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if not 0.0 < args.confidence < 1.0:
        raise UserError(f"--confidence must be between 0 and 1 (0.95 for 95%), got {args.confidence}")
    log = Path(args.log)
    if not log.is_file():
        raise UserError(f"result log {log} not found (sweeps write exploration_logs/<sweep name>.yaml)")
    docs = list(latest_by_name(load_log(log)).values())
    if not docs:
        raise UserError(f"{log} holds no run")
    configs = aggregate_by_config(docs, args.metric)
    if not any(c["n"] for c in configs):
        raise UserError(f"no completed run in {log} has a number for --metric {args.metric}")
    rows = compare(configs, find_baseline(configs, args.baseline), args.confidence, args.paired,
                   args.higher_is_better)
    print_table(rows, args.metric, args.confidence, args.paired, args.higher_is_better)
    result = {"log": str(log), "metric": args.metric, "confidence": args.confidence,
              "test": "paired t" if args.paired else "Welch t", "higher_is_better": args.higher_is_better,
              "baseline": rows[0]["name"], "rows": rows}
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(result, indent=2) + "\n").encode())
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
