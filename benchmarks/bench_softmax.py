"""Fused Triton row kernels vs the torch reference, per attention normaliser and row length.

For each variant (every registered softmax variant, or --variants) and each row length T (--lengths,
default 128 ... 8192), causal attention scores of shape (B*H, 1, T, T) -- B*H chosen so each call
moves about --elements scores -- go through the torch reference `module(scores, causal_mask)` and the
fused kernel `fused_rows(module, scores, causal=True)`, forward and forward+backward. Reported:

- ms: median over --iters calls (CUDA events on a GPU).
- GB/s: effective bandwidth, the bytes an ideal kernel must move divided by the time: forward reads
  the scores and writes the weights (2 N bytes for N scores of the dtype); forward+backward adds
  reading the saved tensor and the upstream gradient and writing the score gradient (5 N in all).
- copy GB/s: a device-to-device copy of the same scores (`y.copy_(x)`, 2 N bytes) timed in the same
  run: the bandwidth ceiling. "% copy" = fused GB/s / copy GB/s.
- speedup: torch ms / fused ms.

Targets (issue 4), printed as met / missed, never asserted: fused kernels at >= 80% of the copy
bandwidth for rows of 1024 and longer, and >= 3x the torch reference for the multi-op variants (every
variant except plain softmax, whose torch path is a single fused op already).

    python benchmarks/bench_softmax.py --device cuda                       # bf16, all variants
    python benchmarks/bench_softmax.py --device cuda --variants consmax softmax --lengths 1024 4096
    TRITON_INTERPRET=1 python benchmarks/bench_softmax.py --quick          # CPU smoke test (times meaningless)

Output: a table, and JSON at --json (default benchmarks/results/bench_softmax_<device>.json).
Without CUDA (and without the interpreter) only the torch reference and the copy are timed.
"""
from __future__ import annotations

import sys
from pathlib import Path


import torch
from rich.console import Console
from rich.table import Table

from benchmarks.kernel_timing import DTYPES, finish, fmt, fused_status, time_ms
from devices import choose_device
from errors import ArgumentParser, UserError, run_cli, unknown_name_message
from gpt_conf import GPTConfig
from variations.attention import causal_mask
from variations.registry import create, names


BYTES_PER_SCORE = {"forward": 2, "forward+backward": 5}  # ideal traffic, in units of the dtype's size


def build_parser():
    p = ArgumentParser(prog="bench_softmax.py", description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--variants", nargs="+", default=None, help="softmax variants (default: every registered one)")
    p.add_argument("--lengths", nargs="+", type=int, default=[128, 256, 512, 1024, 2048, 4096, 8192],
                   help="row lengths T (scores are T x T per head)")
    p.add_argument("--elements", type=float, default=2 ** 25, help="scores per call (about; whole heads)")
    p.add_argument("--dtype", choices=list(DTYPES), default="bfloat16", help="dtype of the scores")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--iters", type=int, default=20, help="timed calls per measurement (median)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls first (compilation, caches)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and two variants: a smoke test")
    p.add_argument("--json", type=Path, default=None, help="output JSON path")
    return p


def measure(variant: str, T: int, args, device, dtype, fused_ok: bool) -> list[dict]:
    config = GPTConfig(n_head=1, n_embd=64, vocab_size=64)
    module = create("softmax", variant, config).to(device)
    heads = max(1, int(args.elements) // (T * T))
    x = torch.randn(heads, 1, T, T, device=device).mul(3).to(dtype)
    mask = causal_mask(T, T, device)
    n_bytes = x.numel() * x.element_size()
    y = torch.empty_like(x)
    copy_ms = time_ms(lambda: y.copy_(x), device, args.iters, args.warmup)
    from variations import kernels
    paths = {"torch": lambda s: module(s, mask)}
    if fused_ok:
        paths["fused"] = lambda s: kernels.fused_rows(module, s, None)
    rows = []
    for mode, factor in BYTES_PER_SCORE.items():
        row = {"variant": variant, "T": T, "mode": mode, "heads": heads, "copy_ms": copy_ms,
               "copy_gbps": 2 * n_bytes / copy_ms / 1e6}
        for name, fn in paths.items():
            xs = x.detach().requires_grad_(mode != "forward")
            grad = torch.randn_like(x)

            def call(fn=fn, xs=xs, grad=grad):
                out = fn(xs)
                if mode != "forward":
                    out.backward(grad)
                    xs.grad = None
                    for p in module.parameters():
                        p.grad = None
            try:
                ms = time_ms(call, device, args.iters, args.warmup)
            except torch.OutOfMemoryError:
                row[f"{name}_error"] = "out of memory"
                continue
            row[f"{name}_ms"] = ms
            row[f"{name}_gbps"] = factor * n_bytes / ms / 1e6
        if "fused_ms" in row and "torch_ms" in row:
            row["speedup"] = row["torch_ms"] / row["fused_ms"]
            row["pct_of_copy"] = 100 * row["fused_gbps"] / row["copy_gbps"]
        rows.append(row)
    return rows


def targets(rows: list[dict]) -> dict:
    """The issue's targets over the measured rows: which rows meet them."""
    long = [r for r in rows if r["T"] >= 1024 and "pct_of_copy" in r]
    multi = [r for r in rows if r["variant"] != "softmax" and "speedup" in r]
    return {
        "bandwidth_80pct_for_T_ge_1024": {"met": sum(r["pct_of_copy"] >= 80 for r in long), "of": len(long),
                                          "worst": min((r["pct_of_copy"] for r in long), default=None)},
        "speedup_3x_multi_op": {"met": sum(r["speedup"] >= 3 for r in multi), "of": len(multi),
                                "worst": min((r["speedup"] for r in multi), default=None)},
    }


def print_table(result: dict):
    console = Console() if sys.stdout.isatty() else Console(width=160)  # pipes get the whole table
    table = Table(title=f"attention normalisers, {result['settings']['dtype']}, {result['environment']['device_name']}"
                        f" -- fused: {result['fused']}")
    for col in ("variant", "T", "mode", "torch ms", "fused ms", "speedup", "torch GB/s", "fused GB/s", "copy GB/s",
                "% copy"):
        table.add_column(col, justify="left" if col in ("variant", "mode") else "right")
    for r in result["rows"]:
        table.add_row(r["variant"], str(r["T"]), r["mode"], fmt(r.get("torch_ms")), fmt(r.get("fused_ms")),
                      fmt(r.get("speedup"), ".2f"), fmt(r.get("torch_gbps"), ".4g"), fmt(r.get("fused_gbps"), ".4g"),
                      fmt(r["copy_gbps"], ".4g"), fmt(r.get("pct_of_copy"), ".0f"))
    console.print(table)
    for name, t in result["targets"].items():
        console.print(f"target {name}: {t['met']}/{t['of']} rows (worst {fmt(t['worst'], '.2f')})")


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    valid = names("softmax")
    if args.quick:
        args.variants = args.variants or ["softmax", "consmax"]
        args.lengths, args.elements, args.iters, args.warmup = [16, 33], 2048, 2, 1
    variants = args.variants or valid
    for v in variants:
        if v not in valid:
            raise UserError(unknown_name_message("softmax variant", v, valid))
    if any(T < 1 for T in args.lengths):
        raise UserError("--lengths must be positive")
    device = choose_device(args.device, None)
    dtype = DTYPES[args.dtype]
    fused_ok, why = fused_status(device)
    rows = []
    for variant in variants:
        for T in args.lengths:
            rows.extend(measure(variant, T, args, device, dtype, fused_ok))
    return finish("bench_softmax", device, why, args, argv, rows, targets, print_table)


if __name__ == "__main__":
    sys.exit(run_cli(main))
