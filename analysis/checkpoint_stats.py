"""Per-tensor statistics of a checkpoint's weights, their histograms, or a comparison with another checkpoint.

    python analysis/checkpoint_stats.py out/quickstart                      # ckpt_best.pt of the run
    python analysis/checkpoint_stats.py out/quickstart/ckpt_last.pt --filter 'attn' --csv attn.csv
    python analysis/checkpoint_stats.py out/quickstart --histograms hist/   # one PNG per tensor
    python analysis/checkpoint_stats.py out/softmax --compare out/consmax --json cmp.json

RUN_OR_CKPT is a checkpoint file or a run directory (its ckpt_best.pt, or ckpt_last.pt with --ckpt last;
best falls back to last as in sample.py). Checkpoints are loaded with weights_only=True; the statistics
are of the floating-point tensors of its "model" state dict, computed in float64:
  mean, std (unbiased, n-1), min, max, l2_norm = sqrt(sum w^2),
  kurtosis = excess kurtosis m4 / m2^2 - 3 with the central moments m_k = mean((w - mean)^k)
             (0 for a Gaussian; large for heavy-tailed weights, which quantise badly; empty when m2 = 0),
  frac_small = the fraction of entries with |w| < --zero_threshold (absolute, default 1e-3), or with
             --relative, |w| < zero_threshold * rms(w), rms(w) = l2_norm / sqrt(numel) (scale-free).
--compare OTHER gives, per tensor of both checkpoints with the same shape, the cosine similarity
a.b / (|a| |b|), the angle between them in degrees (2 atan2(|â - b̂|, |â + b̂|), accurate near 0 and 180),
and the relative L2 difference |a - b| / |a| (a = this checkpoint); tensors only in one of them, or whose
shapes differ, are listed below the table. --csv writes the table shown (the statistics, or the comparison
with --compare); --json writes everything; both atomically.
"""
from __future__ import annotations

import csv
import io
import math
import re
import sys
from pathlib import Path


from analysis.inspect_ckpts import compile_filter, console_for_tables
from errors import ArgumentParser, UserError, run_cli
from io_utils import atomic_write_bytes, atomic_write_json, load_checkpoint
from run_dir import resolve_checkpoint

# the statistics of one tensor, with their headers; derived numbers are added by tensor_stats in this order
STATS = {"shape": "shape", "numel": "numel", "mean": "mean", "std": "std", "min": "min", "max": "max",
         "kurtosis": "ex. kurt", "l2_norm": "L2", "frac_small": "small"}
COMPARE = {"shape": "shape", "cosine": "cosine", "angle_deg": "angle°", "rel_l2_diff": "|a-b|/|a|"}
HIST_BINS = 100


# ---------------------------------------------------------------------------------------- loading
def checkpoint_path(path: Path | str, which: str = "best") -> Path:
    """A checkpoint file as given, or a run directory's ckpt_<which>.pt (best falls back to last)."""
    return resolve_checkpoint(path, which)  # load_checkpoint names a missing one


def load_weights(path: Path | str, which: str = "best") -> tuple[Path, dict]:
    """(checkpoint file, its model state dict)."""
    path = checkpoint_path(path, which)
    weights = load_checkpoint(path)["model"]
    if not isinstance(weights, dict):
        raise UserError(f"{path}: its 'model' entry is not a state dict; is it a ppa-gpt checkpoint?")
    return path, weights


# ---------------------------------------------------------------------------------------- statistics
def tensor_stats(t, zero_threshold: float = 1e-3, relative: bool = False) -> dict:
    """STATS of one tensor (see the module docstring for the definitions); None where undefined."""
    import torch
    x = t.detach().reshape(-1).to(torch.float64)  # (numel,)
    n = x.numel()
    out = {"shape": list(t.shape), "numel": n}
    if n == 0:
        return {**out, **{k: None for k in STATS if k not in out}}
    mean = x.mean()
    c2 = (x - mean).square()
    m2, m4 = c2.mean().item(), c2.square().mean().item()
    l2 = torch.linalg.vector_norm(x).item()
    threshold = zero_threshold * l2 / math.sqrt(n) if relative else zero_threshold
    out.update(mean=mean.item(), std=x.std().item() if n > 1 else None, min=x.min().item(),
               max=x.max().item(), kurtosis=m4 / m2 ** 2 - 3 if m2 > 0 else None, l2_norm=l2,
               frac_small=(x.abs() < threshold).double().mean().item())
    return out


def weight_stats(weights: dict, regex: re.Pattern | None = None, zero_threshold: float = 1e-3,
                 relative: bool = False) -> tuple[dict[str, dict], list[str]]:
    """({name: stats} of the floating-point tensors whose names match, [names skipped: not floating point])."""
    import torch
    stats, skipped = {}, []
    for name, t in weights.items():
        if regex is not None and not regex.search(name):
            continue
        if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
            skipped.append(name)
            continue
        stats[name] = tensor_stats(t, zero_threshold, relative)
    return stats, skipped


def compare_weights(a: dict, b: dict, regex: re.Pattern | None = None) -> dict:
    """Per tensor of both state dicts with equal shapes: cosine, angle in degrees, |a - b| / |a|; and the
    names only in a, only in b, and with different shapes ({name: [shape in a, shape in b]})."""
    import torch
    keep = [k for k in dict.fromkeys([*a, *b]) if regex is None or regex.search(k)]
    rows, mismatched = {}, {}
    for name in keep:
        if name not in a or name not in b:
            continue
        ta, tb = a[name], b[name]
        if not (isinstance(ta, torch.Tensor) and isinstance(tb, torch.Tensor)) or ta.shape != tb.shape:
            mismatched[name] = [list(getattr(ta, "shape", [])), list(getattr(tb, "shape", []))]
            continue
        x, y = ta.detach().reshape(-1).to(torch.float64), tb.detach().reshape(-1).to(torch.float64)  # (numel,)
        na, nb = torch.linalg.vector_norm(x).item(), torch.linalg.vector_norm(y).item()
        row = {"shape": list(ta.shape), "cosine": None, "angle_deg": None,
               "rel_l2_diff": torch.linalg.vector_norm(x - y).item() / na if na > 0 else None}
        if na > 0 and nb > 0:
            ux, uy = x / na, y / nb
            row["cosine"] = (torch.dot(x, y) / (na * nb)).item()
            # Kahan's formula: exact 0 for equal directions, no acos(1 - eps) loss of precision
            row["angle_deg"] = math.degrees(2 * math.atan2(torch.linalg.vector_norm(ux - uy).item(),
                                                           torch.linalg.vector_norm(ux + uy).item()))
        rows[name] = row
    return {"rows": rows, "only_in_a": [k for k in keep if k not in b], "only_in_b": [k for k in keep if k not in a],
            "shape_mismatch": mismatched}


# ---------------------------------------------------------------------------------------- output
def _fmt(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "shape":
        return "x".join(map(str, value)) or "scalar"
    if key == "frac_small":
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def build_table(rows: dict[str, dict], columns: dict[str, str], title: str):
    from rich.table import Table
    table = Table(title=title)
    table.add_column("tensor")
    for key, header in columns.items():
        table.add_column(header, justify="left" if key == "shape" else "right")
    for name, r in rows.items():
        table.add_row(name, *(_fmt(k, r.get(k)) for k in columns))
    return table


def rows_to_csv(rows: dict[str, dict], columns) -> bytes:
    """One line per tensor; the shape as '32x32' (empty for a scalar), undefined numbers as empty cells."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["tensor", *columns])
    for name, r in rows.items():
        w.writerow([name, *("x".join(map(str, r[k])) if k == "shape" else r[k] for k in columns)])
    return buf.getvalue().encode()


def _file_name(tensor: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", tensor) + ".png"


def write_histograms(weights: dict, stats: dict[str, dict], out_dir: Path, threshold_note: str) -> list[Path]:
    """One PNG per tensor in `stats`: a HIST_BINS-bin histogram of its values (log counts), its
    statistics in the title. Written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    written = []
    for name, s in stats.items():
        if not s["numel"]:
            continue
        x = weights[name].detach().reshape(-1).to(torch.float64)  # (numel,)
        low, high = s["min"], s["max"]
        if low == high:  # a constant tensor: one bin around its value
            low, high = low - 0.5, high + 0.5
        counts, edges = torch.histogram(x, bins=HIST_BINS, range=(low, high))
        fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
        ax.stairs(counts.numpy(), edges.numpy(), fill=True, alpha=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("value")
        ax.set_ylabel("count")
        ax.set_title(f"{name} {_fmt('shape', s['shape'])}\nmean {_fmt('mean', s['mean'])}, "
                     f"std {_fmt('std', s['std'])}, ex. kurtosis {_fmt('kurtosis', s['kurtosis'])}, "
                     f"{_fmt('frac_small', s['frac_small'])} {threshold_note}", fontsize=9)
        ax.grid(alpha=0.3)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        path = out_dir / _file_name(name)
        atomic_write_bytes(path, buf.getvalue())
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> dict:
    p = ArgumentParser(prog="analysis/checkpoint_stats.py", description=__doc__.splitlines()[0])
    p.add_argument("path", metavar="RUN_OR_CKPT", help="a run directory or a checkpoint file (.pt)")
    p.add_argument("--ckpt", choices=("best", "last"), default="best",
                   help="which checkpoint of a run directory (for RUN_OR_CKPT and --compare)")
    p.add_argument("--filter", help="regular expression on tensor names; keeps the tensors it matches")
    p.add_argument("--zero_threshold", type=float, default=1e-3,
                   help="'small' column: the fraction of |w| below this (absolute unless --relative)")
    p.add_argument("--relative", action="store_true",
                   help="--zero_threshold is a fraction of each tensor's RMS instead of an absolute value")
    p.add_argument("--histograms", metavar="DIR", help="write one histogram PNG per tensor into this folder")
    p.add_argument("--compare", metavar="OTHER",
                   help="another run directory or checkpoint: per-tensor cosine, angle and relative L2 difference")
    p.add_argument("--csv", help="also write the table shown to this CSV file")
    p.add_argument("--json", help="also write the statistics (and the comparison) to this JSON file")
    args = p.parse_args(argv)
    if not args.zero_threshold >= 0:
        raise UserError(f"--zero_threshold must be a number >= 0, got {args.zero_threshold}")
    regex = compile_filter(args.filter)
    path, weights = load_weights(args.path, args.ckpt)
    stats, skipped = weight_stats(weights, regex, args.zero_threshold, args.relative)
    if not stats:
        raise UserError(f"no floating-point tensor of {path} matches --filter '{args.filter}' "
                        f"(tensors: {', '.join(list(weights)[:6])}{', ...' if len(weights) > 6 else ''})")
    result = {"checkpoint": str(path), "zero_threshold": args.zero_threshold, "relative": args.relative,
              "stats": stats, "skipped": skipped, "compare": None, "histograms": []}
    console = console_for_tables()
    note = f"|w| < {args.zero_threshold:g}" + ("·rms" if args.relative else "")
    if args.compare:
        other, other_weights = load_weights(args.compare, args.ckpt)
        cmp = compare_weights(weights, other_weights, regex)
        result["compare"] = {"other": str(other), **cmp}
        console.print(build_table(cmp["rows"], COMPARE, f"{path} (a) vs {other} (b): {len(cmp['rows'])} tensors"))
        reshaped = [f"{k} {v[0]} vs {v[1]}" for k, v in cmp["shape_mismatch"].items()]
        for what, names in (("only in a", cmp["only_in_a"]), ("only in b", cmp["only_in_b"]),
                            ("different shapes (a, b)", reshaped)):
            if names:
                console.print(f"{what}: {', '.join(names)}", highlight=False, soft_wrap=True)
    else:
        console.print(build_table(stats, {**STATS, "frac_small": note},
                                  f"{path}: {len(stats)} tensors, {sum(s['numel'] for s in stats.values()):,} values"))
    if skipped:
        console.print(f"not floating point, skipped: {', '.join(skipped)}", highlight=False, soft_wrap=True)
    if args.histograms:
        result["histograms"] = [str(h) for h in write_histograms(weights, stats, Path(args.histograms), note)]
        console.print(f"wrote {len(result['histograms'])} histograms to {args.histograms}", highlight=False)
    if args.csv:
        table_rows, columns = (result["compare"]["rows"], COMPARE) if args.compare else (stats, STATS)
        atomic_write_bytes(args.csv, rows_to_csv(table_rows, columns))
    if args.json:
        atomic_write_json(args.json, result)
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
