"""Predicted vs measured latency of every registered variant: how well the PPA model (ppa/estimate.py)
orders, and sizes, the real time of the models bench_variants.py builds.

For each kind (all of variations.registry.KINDS, or --kinds) the benchmark builds the same models as
benchmarks/bench_variants.py (its make_entries: the all-defaults baseline and one GPT per registered
variant that differs from it only in the kind's flag; for softmax also the baseline forced onto the
explicit attention path, a reference row kept out of the statistics) and, per model:

- measured, interleaved round-robin over the kind's models (the order rotating every round) after
  --warmup untimed rounds, median of --iters:
  - fwd: one inference forward pass (torch.no_grad, logits at every position, no loss) over the
    batch of batch_size x block_size random tokens: what the estimate's prefill phase models;
  - fwd+bwd: bench_variants' timed_step, one forward + backward pass with the loss (no optimiser step).
  Each round times a model's fwd, then its fwd+bwd, before moving to the next model.
- predicted: `estimate(model, target=--target, context=block_size, batch=batch_size, dtype=<the run's
  dtype>)`: `total("prefill").latency_s`, the roofline time of one forward pass over the batch; and for
  training 3 x that (ASSUMPTION: a forward + backward pass costs about 3 forward passes, the backward
  doing twice the forward's matrix products; the estimate has no backward model). Also the predicted
  time split by what the roofline charges it to (`pred_ms_by_op`): in each compute-bound component each
  counted operation's compute time (macs, elementwise, exp, div, ...), in a memory-bound one its DRAM
  time ("dram"); and the share of the predicted time in memory-bound components (the bound).

Reported, per kind and over all variants (the baseline, the same model in every kind, counted once
at the median of its kinds' figures): Spearman's rank correlation rho between predicted and measured
(fwd, and fwd+bwd against 3 x prefill), n, and the measured / predicted ratios (mean, spread: the
model's absolute error); the same pooled over kinds after scaling each kind's times by the ratio of the
pooled baseline to its own baseline (machine drift between kinds removed); and the --top variants
with the largest rank disagreement |rank predicted - rank measured| (fwd, pooled), with their
predicted bound and the operations that dominate their predicted time.

    python benchmarks/bench_ppa.py                                  # every kind on this CPU, target cpu_dev
    python benchmarks/bench_ppa.py --kinds softmax norm --iters 20
    python benchmarks/bench_ppa.py --device cuda --dtype bfloat16 --target h100_sxm
    python benchmarks/bench_ppa.py --quick                          # tiny sizes, seconds

The model sizes, --warmup, --iters, --threads, --seed and --quick are bench_variants.py's options with
its defaults. Output: rich tables, and JSON at --json (default
benchmarks/results/bench_ppa_<device>.json) with the environment (torch version, device name, date,
command line), the settings, the target's figures and every row.
"""
from __future__ import annotations

import gc
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import bench_variants as bv
from errors import ArgumentParser, UserError, run_cli
from gpt_conf import GPTConfig, component_flags
from ppa.estimate import estimate, prefill_counts, price_row
from ppa.functions import COMPUTE
from ppa.tables import load_target
from variations.cost import Cost
from variations.registry import KINDS, names

TRAIN_FACTOR = 3.0  # predicted fwd+bwd = TRAIN_FACTOR x predicted forward (an assumption; module docstring)
DEFAULT_TARGET = "cpu_dev"
MEASURES = ("fwd", "fwdbwd")  # row keys: <m>_ms measured median, pred_<m>_ms predicted
LABELS = {"fwd": "forward", "fwdbwd": "forward+backward"}


# ------------------------------------------------------------------------------------ arguments
def build_parser() -> ArgumentParser:
    """bench_variants' options, plus --target, --top and this benchmark's --json."""
    p = ArgumentParser(
        prog="bench_ppa.py", allow_abbrev=False, parents=[bv.build_parser()], conflict_handler="resolve",
        description="Predicted (ppa/estimate.py) vs measured latency of every registered variant: Spearman rank "
                    "correlation, measured/predicted ratios and the largest rank disagreements.")
    own_options(p)
    return p


def own_options(p):
    p.add_argument("--target", default=DEFAULT_TARGET,
                   help="hardware target of the estimate: a name in ppa/targets or a YAML path "
                        f"(default: {DEFAULT_TARGET})")
    p.add_argument("--top", type=int, default=10, help="rank disagreements to list (default: 10)")
    p.add_argument("--json", metavar="PATH",
                   help="where to write the figures (default: benchmarks/results/bench_ppa_<device>.json)")


def parse_args(argv: list[str] | None):
    argv = sys.argv[1:] if argv is None else list(argv)
    build_parser().parse_args(argv)  # --help, unknown flags and bad values, with every option listed
    own = ArgumentParser(add_help=False, allow_abbrev=False)
    own_options(own)
    mine, rest = own.parse_known_args(argv)
    args = bv.parse_args(rest)  # bench_variants' own checks and --quick sizes
    if mine.top < 0:
        raise UserError(f"--top must be at least 0, got {mine.top}")
    args.target, args.top, args.json = mine.target, mine.top, mine.json
    return args


# ------------------------------------------------------------------------------------ statistics
def rankdata(x) -> np.ndarray:
    """1-based ranks of the values of x; tied values share the mean of the ranks they span:
    [10, 20, 20, 30] -> [1, 2.5, 2.5, 4] (scipy.stats.rankdata's 'average')."""
    x = np.asarray(x, dtype=float)
    ranks = np.empty(len(x))
    ranks[np.argsort(x, kind="stable")] = np.arange(1, len(x) + 1)
    _, group = np.unique(x, return_inverse=True)
    return (np.bincount(group, weights=ranks) / np.bincount(group))[group]


def spearman(x, y) -> float | None:
    """Spearman's rank correlation of paired samples x, y: Pearson's correlation of their average ranks
    (rankdata), so ties are handled as scipy.stats.spearmanr does. 1: the same order, -1: the reverse.
    None where it is undefined: fewer than two pairs, or all of x (or of y) equal."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman needs two 1-d samples of one length, got shapes {x.shape} and {y.shape}")
    if len(x) < 2:
        return None
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(np.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return None if denom == 0 else float(np.clip((rx * ry).sum() / denom, -1.0, 1.0))


def ratio_stats(measured, predicted) -> dict:
    """measured / predicted over the pairs: n, mean, std (population), median, min, max."""
    r = np.asarray(measured, dtype=float) / np.asarray(predicted, dtype=float)
    if not len(r):
        return {"n": 0, "mean": None, "std": None, "median": None, "min": None, "max": None}
    return {"n": len(r), "mean": float(r.mean()), "std": float(r.std()), "median": float(np.median(r)),
            "min": float(r.min()), "max": float(r.max())}


# ------------------------------------------------------------------------------------ prediction
def time_by_op(model, est) -> dict[str, float]:
    """The predicted prefill time of one step (s) split by what the roofline charges it to: in each
    compute-bound component every counted operation's compute time (priced by the estimator's own
    price_row, one operation at a time), in each memory-bound one its DRAM time, as "dram". The parts
    sum to est.total("prefill").latency_s."""
    counts = prefill_counts(model, est.context)
    n_tok = est.tokens["prefill"]
    out: dict[str, float] = {}
    for name, priced in est.rows["prefill"].items():
        if priced.bound == "memory":
            out["dram"] = out.get("dram", 0.0) + priced.latency_s
            continue
        c = counts[name]
        for op in COMPUTE:
            if getattr(c, op):
                one = Cost(**{op: getattr(c, op)}, fmt={op: dict(c.fmt[op])} if op in c.fmt else {})
                _, seconds = price_row(one, target=est.target, tech=est.tech, fmt=est.fmt, accumulate="wide",
                                       notes=set())
                out[op] = out.get(op, 0.0) + seconds * n_tok
    return out


def predict(model, target, bench: bv.Bench) -> dict:
    """The estimate's figures for one model (row keys pred_*)."""
    est = estimate(model, target=target, context=bench.args.block_size, batch=bench.args.batch_size,
                   dtype=str(bench.dtype).removeprefix("torch."))
    pre = est.total("prefill")
    by_op = time_by_op(model, est)
    memory_share = by_op.get("dram", 0.0) / pre.latency_s if pre.latency_s else 0.0
    return {"pred_fwd_ms": pre.latency_s * 1e3, "pred_fwdbwd_ms": TRAIN_FACTOR * pre.latency_s * 1e3,
            "pred_compute_ms": pre.compute_s * 1e3, "pred_memory_ms": pre.memory_s * 1e3,
            "pred_bound": "memory" if memory_share > 0.5 else "compute", "pred_memory_share": memory_share,
            "pred_ms_by_op": {op: s * 1e3 for op, s in sorted(by_op.items(), key=lambda kv: -kv[1])},
            "pred_ms_by_part": {part: p.latency_s * 1e3 for part, p in est.grouped("prefill").items()},
            "pred_format": est.fmt}


def dominant_ops(row: dict, min_share: float = 0.05, most: int = 3) -> str:
    """'macs 88%, exp 7%': the operations with the largest shares of the predicted time."""
    by_op, total_ms = row.get("pred_ms_by_op") or {}, row.get("pred_fwd_ms") or 0
    parts = [f"{op} {100 * ms / total_ms:.0f}%" for op, ms in by_op.items() if total_ms and ms / total_ms >= min_share]
    return ", ".join(parts[:most]) or "-"


# ------------------------------------------------------------------------------------ measurement
def timed_forward(bench: bv.Bench, model) -> float:
    """ms of one inference forward pass: no autograd, logits at every position, no loss."""
    bench.sync()
    t0 = time.perf_counter()
    with torch.no_grad(), bench.autocast():
        model(bench.idx, all_logits=True)
    bench.sync()
    return 1000 * (time.perf_counter() - t0)


def run_kind(kind: str, bench: bv.Bench, target) -> dict:
    """Build the kind's models (bench_variants.make_entries), price them, then time fwd and fwd+bwd."""
    entries = bv.make_entries(kind, bench)
    fwd_times: dict[int, list[float]] = {id(e): [] for e in entries}
    for e in entries:
        if e.model is not None:
            try:
                e.row.update(predict(e.model, target, bench))
            except Exception as exc:
                e.row["pred_error"] = bv.error_text(exc)

    def guarded(e: bv.Entry, fn):
        try:
            return fn(e.model)
        except Exception as exc:
            e.fail("run", exc)
            if bench.device.type == "cuda":
                torch.cuda.empty_cache()
            return None

    def forward(model):
        return timed_forward(bench, model)

    for _ in range(bench.args.warmup):
        for e in entries:
            for fn in (forward, bench.step):
                if e.model is not None and guarded(e, fn) is not None:
                    e.model.zero_grad(set_to_none=True)
    for r in range(bench.args.iters):
        models = [e for e in entries if e.model is not None]
        k = r % max(1, len(models))
        for e in models[k:] + models[:k]:  # rotate the order every round, as bench_variants
            for times, fn in ((fwd_times[id(e)], forward), (e.times_ms, bench.timed_step)):
                ms = guarded(e, fn) if e.model is not None else None
                if ms is not None:
                    times.append(ms)

    for e in entries:
        if e.row["status"] == "ok":
            for m, times in (("fwd", fwd_times[id(e)]), ("fwdbwd", e.times_ms)):
                e.row.update({f"{m}_ms": statistics.median(times), f"{m}_times_ms": [round(t, 3) for t in times]})
                e.row[f"ratio_{m}"] = e.row[f"{m}_ms"] / e.row[f"pred_{m}_ms"] if e.row.get(f"pred_{m}_ms") else None
        e.model = None
    gc.collect()
    if bench.device.type == "cuda":
        torch.cuda.empty_cache()
    rows = [e.row for e in entries]
    add_ratios_to_baseline(rows)
    flag = component_flags(kind)[0]
    registered = [r for r in rows if not r["reference"]]
    add_ranks(registered)
    return {"flag": flag, "baseline": getattr(GPTConfig(**bench.sizes), flag), "rows": rows,
            "stats": correlate(registered)}


# ------------------------------------------------------------------------------------ analysis
def usable(r: dict) -> bool:
    return r["status"] == "ok" and all(r.get(f"{m}_ms") and r.get(f"pred_{m}_ms") for m in MEASURES)


def add_ratios_to_baseline(rows: list[dict]):
    """x base: each row's predicted and measured times over its kind's baseline's."""
    base = next((r for r in rows if r["baseline"] and usable(r)), {})
    for r in rows:
        for key in ("fwd_ms", "pred_fwd_ms", "fwdbwd_ms"):
            ok = r["status"] == "ok" and r.get(key) and base.get(key)
            r[f"{key.removesuffix('_ms')}_x_base"] = r[key] / base[key] if ok else None


def add_ranks(rows: list[dict]):
    """Forward ranks among `rows` (1: the fastest), predicted and measured, and their difference."""
    ok = [r for r in rows if usable(r)]
    rp, rm = rankdata([r["pred_fwd_ms"] for r in ok]), rankdata([r["fwd_ms"] for r in ok])
    for r, a, b in zip(ok, rp, rm):
        r.update(rank_pred=float(a), rank_meas=float(b), rank_diff=float(b - a))


def correlate(rows: list[dict], scale: dict | None = None) -> dict:
    """n, Spearman rho and measured/predicted ratio statistics of the usable rows, fwd and fwd+bwd.
    scale: {measure: {id(row): factor}} applied to the measured times (drift correction)."""
    ok = [r for r in rows if usable(r)]
    out = {"n": len(ok), "variants": [f"{r['kind']}:{r['variant']}" for r in ok]}
    for m in MEASURES:
        meas = [r[f"{m}_ms"] * (scale or {}).get(m, {}).get(id(r), 1.0) for r in ok]
        pred = [r[f"pred_{m}_ms"] for r in ok]
        out[f"rho_{m}"] = spearman(pred, meas)
        out[f"ratio_{m}"] = ratio_stats(meas, pred)
    return out


def pooled(kinds: dict) -> tuple[list[dict], dict]:
    """Every registered variant once (the baseline, the same model in every kind, at the median of its
    kinds' times), and per measure and row the factor that scales its kind's baseline onto the pooled
    baseline: {measure: {id(row): factor}}."""
    bases = [r for k in kinds.values() for r in k["rows"] if r["baseline"] and usable(r)]
    rows, scale = [], {m: {} for m in MEASURES}
    if bases:
        base = {**bases[0], "kind": "all", "variant": bases[0]["variant"] + " (baseline of every kind)"}
        for m in MEASURES:
            base[f"{m}_ms"] = statistics.median(b[f"{m}_ms"] for b in bases)
            base[f"ratio_{m}"] = base[f"{m}_ms"] / base[f"pred_{m}_ms"]
        rows.append(base)
    for k in kinds.values():
        kb = next((r for r in k["rows"] if r["baseline"] and usable(r)), None)
        for r in k["rows"]:
            if not r["baseline"] and not r["reference"] and usable(r):
                rows.append(r)
                for m in MEASURES:
                    if kb is not None:
                        scale[m][id(r)] = rows[0][f"{m}_ms"] / kb[f"{m}_ms"]
    return rows, scale


def disagreements(rows: list[dict], scale: dict, top: int) -> list[dict]:
    """The `top` rows with the largest |rank predicted - rank measured| (forward, among `rows`), measured
    times drift-corrected by `scale` (pooled)."""
    ranked = [{**r, "fwd_ms_corrected": r["fwd_ms"] * scale["fwd"].get(id(r), 1.0)} for r in rows if usable(r)]
    rp, rm = rankdata([r["pred_fwd_ms"] for r in ranked]), rankdata([r["fwd_ms_corrected"] for r in ranked])
    for r, a, b in zip(ranked, rp, rm):
        r.update(pooled_rank_pred=float(a), pooled_rank_meas=float(b), pooled_rank_diff=float(b - a))
    ranked.sort(key=lambda r: (-abs(r["pooled_rank_diff"]), r["kind"], r["variant"]))
    keys = ("kind", "variant", "pred_fwd_ms", "fwd_ms", "fwd_ms_corrected", "ratio_fwd", "pred_fwd_x_base",
            "fwd_x_base", "pooled_rank_pred", "pooled_rank_meas", "pooled_rank_diff", "pred_bound", "pred_memory_share",
            "pred_ms_by_op", "pred_ms_by_part")
    return [{**{k: r.get(k) for k in keys}, "dominant_ops": dominant_ops(r)} for r in ranked[:top]]


# ------------------------------------------------------------------------------------ report
def print_report(result: dict):
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    s, env, f = result["settings"], result["environment"], bv.fmt
    console = Console() if sys.stdout.isatty() else Console(width=200)
    for kind, k in result["kinds"].items():
        table = Table(title=f"{kind}: --{k['flag']} (baseline {k['baseline']}); batch {s['batch_size']} x "
                            f"{s['block_size']} tokens, median of {s['iters']}; predicted on {s['target']}",
                      caption=f"{env['device_name']}, {env['torch_threads']} threads, {s['dtype']}, "
                              f"torch {env['torch']}; "
                              f"predicted fwd+bwd = {TRAIN_FACTOR:g} x predicted fwd")
        for c in ("variant", "pred fwd ms", "fwd ms", "meas/pred", "pred x base", "meas x base", "rank p/m",
                  "pred fwd+bwd", "fwd+bwd ms", "meas/pred", "bound", "predicted time by op"):
            table.add_column(c, justify="left" if c in ("variant", "bound", "predicted time by op") else "right")
        for r in k["rows"]:
            label = escape(r["variant"] + (" (baseline)" if r["baseline"] else ""))
            if not usable(r):
                why = f"failed: {r['error']}" if r.get("error") else \
                    f"not priced: {r['pred_error'].split(';')[0]}" if r.get("pred_error") else "no figures"
                cells = [f(r.get(k), spec) for k, spec in (("pred_fwd_ms", ".2f"), ("fwd_ms", ".2f"), ("", ""),
                                                          ("pred_fwd_x_base", ".3f"), ("fwd_x_base", ".3f"), ("", ""),
                                                          ("pred_fwdbwd_ms", ".2f"), ("fwdbwd_ms", ".2f"))]
                table.add_row(label, *cells, "-", "-", escape(why.removeprefix("not priced: UserError: ")
                                                               .replace("UserError: ", "")))
                continue
            rank = f"{r['rank_pred']:g}/{r['rank_meas']:g}" if "rank_pred" in r else "ref."
            table.add_row(label, f"{r['pred_fwd_ms']:.2f}", f"{r['fwd_ms']:.2f}", f"{r['ratio_fwd']:.2f}",
                          f(r["pred_fwd_x_base"], ".3f"), f(r["fwd_x_base"], ".3f"), rank,
                          f"{r['pred_fwdbwd_ms']:.2f}", f"{r['fwdbwd_ms']:.2f}", f"{r['ratio_fwdbwd']:.2f}",
                          f"{r['pred_bound']} ({100 * r['pred_memory_share']:.0f}% mem)", escape(dominant_ops(r)))
        console.print(table)

    summary = Table(title=f"Spearman rho, predicted ({s['target']}) vs measured, and measured / predicted")
    for c in ("set", "n", "rho fwd", "rho fwd+bwd", "meas/pred fwd: mean ± std [min, max]", "meas/pred fwd+bwd"):
        summary.add_column(c, justify="left" if c == "set" else "right")

    def ratio_cell(st):
        return "-" if not st["n"] else f"{st['mean']:.2f} ± {st['std']:.2f} [{st['min']:.2f}, {st['max']:.2f}]"
    sets = [(kind, k["stats"]) for kind, k in result["kinds"].items()]
    sets += [("all (pooled)", result["overall"]), ("all, drift-corrected", result["overall_baseline_normalised"])]
    for name, st in sets:
        summary.add_row(name, str(st["n"]), f(st["rho_fwd"], ".3f"), f(st["rho_fwdbwd"], ".3f"),
                        ratio_cell(st["ratio_fwd"]), ratio_cell(st["ratio_fwdbwd"]))
    console.print(summary)

    dis = Table(title="Largest rank disagreements, forward, pooled over kinds, drift-corrected (rank 1: fastest)")
    for c in ("kind", "variant", "pred ms", "meas ms", "meas/pred", "pred x base", "meas x base", "rank pred",
              "rank meas", "diff", "bound", "predicted time by op"):
        dis.add_column(c, justify="left" if c in ("kind", "variant", "bound", "predicted time by op") else "right")
    for d in result["disagreements"]:
        dis.add_row(d["kind"], escape(d["variant"]), f"{d['pred_fwd_ms']:.2f}", f"{d['fwd_ms']:.2f}",
                    f"{d['ratio_fwd']:.2f}", f(d["pred_fwd_x_base"], ".3f"), f(d["fwd_x_base"], ".3f"),
                    f"{d['pooled_rank_pred']:g}", f"{d['pooled_rank_meas']:g}", f"{d['pooled_rank_diff']:+g}",
                    d["pred_bound"], escape(d["dominant_ops"]))
    console.print(dis)
    console.print(f"figures: {result['json_path']}")


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict:
    return bv.with_threads(parse_args(argv), run, argv)


def run(args, argv: list[str] | None) -> dict:
    device, dtype = bv.device_and_dtype(args)
    target = load_target(args.target)  # a bad target fails here, before any timing
    bench = bv.Bench(args, device, dtype)
    GPTConfig(**bench.sizes)  # bad sizes are the user's error, not a variant's failure
    started, load_before = time.perf_counter(), bv.loadavg()
    kinds = {}
    for kind in args.kinds:
        t0 = time.perf_counter()
        kinds[kind] = run_kind(kind, bench, target)
        ok = sum(usable(r) for r in kinds[kind]["rows"])
        print(f"{kind}: {ok}/{len(kinds[kind]['rows'])} models measured and predicted "
              f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    pool, scale = pooled(kinds)
    env = bv.environment(device, argv)
    env["command"] = shlex.join(["python", "benchmarks/bench_ppa.py", *argv]) if argv is not None \
        else shlex.join(["python", *sys.argv])
    result = {
        "benchmark": "bench_ppa",
        "environment": env,
        "settings": {**bench.sizes, "batch_size": args.batch_size, "tokens_per_step": bench.tokens,
                     "device": str(device), "dtype": str(dtype).removeprefix("torch."), "warmup": args.warmup,
                     "iters": args.iters, "seed": args.seed, "kinds": args.kinds, "target": target.name,
                     "train_factor": TRAIN_FACTOR},
        "target": {"name": target.name, "path": str(target.path), "kind": target.kind,
                   "peak_macs_per_s": target.peak_macs_per_s, "vector_ops_per_s": target.vector_ops_per_s,
                   "special_ops_per_s": target.special_ops_per_s, "dram_bytes_per_s": target.dram_bytes_per_s,
                   "onchip_bytes": target.onchip_bytes},
        "assumptions": [f"predicted fwd+bwd = {TRAIN_FACTOR:g} x the estimate's prefill latency (no backward model)",
                        "measured fwd: torch.no_grad forward, logits at every position, no loss"],
        "registered": {kind: names(kind) for kind in KINDS},
        "wall_time_s": time.perf_counter() - started,
        "loadavg_1min": {"before": load_before, "after": bv.loadavg()},
        "kinds": kinds,
        "overall": correlate(pool),
        "overall_baseline_normalised": correlate(pool, scale),
        "disagreements": disagreements(pool, scale, args.top),
    }
    json_path = Path(args.json) if args.json else bv.ROOT / "benchmarks" / "results" / f"bench_ppa_{device.type}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    result["json_path"] = str(json_path)
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_report(result)
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
