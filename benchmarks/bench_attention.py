"""Fused Triton attention vs the materialised reference vs SDPA, time and memory against context length.

For each T (--lengths, default 256 ... 8192) and each elementwise normaliser (--variants, default
consmax), three implementations of causal attention on q, k, v of shape (B, nh, T, hs) (nkv kv heads):

- fused: variations/triton_attention.py, tile by tile, never storing the T x T matrix
- materialised: the explicit path of attention.causal -- scores q k^T / sqrt(hs), the torch
  normaliser with the causal mask, weights @ v -- as every non-softmax variant runs without Triton
- sdpa: F.scaled_dot_product_attention(is_causal=True) with plain softmax (FlashAttention on a GPU):
  the speed a normaliser has to match to cost nothing

each forward and forward+backward. Reported: median ms (CUDA events), the CUDA allocator's peak
above the inputs during one call (GPU only), and the bytes autograd saves for the backward pass
(any device; linear in T for fused and sdpa, quadratic for materialised). A configuration that runs
out of memory is recorded as such and the run goes on (--max_materialised_T skips the reference
where its T x T matrices would not fit anyway).

Targets (issue 4), printed as met / missed, never asserted: at T = 2048 the fused consmax attention
at least 5x faster than materialised and within 2x of SDPA's plain-softmax time; memory linear in T.

    python benchmarks/bench_attention.py --device cuda                     # bf16, B 4, 12 heads of 64
    python benchmarks/bench_attention.py --device cuda --variants consmax relumax --n_kv_head 4
    TRITON_INTERPRET=1 python benchmarks/bench_attention.py --quick        # CPU smoke test

Output: a table, and JSON at --json (default benchmarks/results/bench_attention_<device>.json).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path


import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from benchmarks.kernel_timing import DTYPES, finish, fmt, fused_status, peak_bytes, saved_bytes, time_ms
from devices import choose_device
from errors import ArgumentParser, UserError, run_cli, unknown_name_message
from gpt_conf import GPTConfig
from variations import kernels
from variations.attention import causal_mask
from variations.registry import create, get, names


MODES = ("forward", "forward+backward")


def build_parser():
    p = ArgumentParser(prog="bench_attention.py", description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--variants", nargs="+", default=["consmax"], help="elementwise softmax variants to fuse")
    p.add_argument("--lengths", nargs="+", type=int, default=[256, 512, 1024, 2048, 4096, 8192], help="context lengths T")
    p.add_argument("--batch_size", type=int, default=4, help="B")
    p.add_argument("--n_head", type=int, default=12, help="query heads")
    p.add_argument("--n_kv_head", type=int, default=None, help="key/value heads (GQA); default n_head")
    p.add_argument("--head_dim", type=int, default=64, help="channels per head")
    p.add_argument("--dtype", choices=list(DTYPES), default="bfloat16", help="dtype of q, k, v")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--iters", type=int, default=10, help="timed calls per measurement (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    p.add_argument("--max_materialised_T", type=int, default=8192, help="skip the materialised reference above this T")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    p.add_argument("--json", type=Path, default=None, help="output JSON path")
    return p


def implementations(module, window=None) -> dict:
    """name -> f(q, k, v) returning (B, nh, T, hs)."""
    def materialised(q, k, v):
        nh, nkv = q.size(1), k.size(1)
        if nkv != nh:
            k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
        return module(scores, causal_mask(q.size(2), k.size(2), q.device, window)) @ v

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.size(1) != q.size(1))

    return {"fused": lambda q, k, v: kernels.fused_attention(module, q, k, v, window),
            "materialised": materialised, "sdpa": sdpa}


def measure(variant: str, T: int, args, device, dtype, fused_ok: bool) -> list[dict]:
    nkv = args.n_kv_head or args.n_head
    module = create("softmax", variant, GPTConfig(n_head=args.n_head, n_kv_head=nkv, vocab_size=64,
                                                  n_embd=args.n_head * args.head_dim)).to(device)
    shape_q = (args.batch_size, args.n_head, T, args.head_dim)
    shape_kv = (args.batch_size, nkv, T, args.head_dim)
    rows = []
    for mode in MODES:
        row = {"variant": variant, "T": T, "mode": mode}
        for name, fn in implementations(module).items():
            if name == "fused" and not fused_ok:
                continue
            if name == "materialised" and T > args.max_materialised_T:
                row[f"{name}_error"] = f"skipped (T > --max_materialised_T {args.max_materialised_T})"
                continue
            grad = mode != "forward"
            q = torch.randn(shape_q, device=device, dtype=dtype, requires_grad=grad)
            k = torch.randn(shape_kv, device=device, dtype=dtype, requires_grad=grad)
            v = torch.randn(shape_kv, device=device, dtype=dtype, requires_grad=grad)
            dy = torch.randn(shape_q, device=device, dtype=dtype)

            def call(fn=fn, q=q, k=k, v=v, dy=dy):
                out = fn(q, k, v)
                if grad:
                    out.backward(dy)
                    for t in (q, k, v, *module.parameters()):
                        t.grad = None
            try:
                row[f"{name}_ms"] = time_ms(call, device, args.iters, args.warmup)
                row[f"{name}_peak_bytes"] = peak_bytes(call, device)
                if grad:
                    row[f"{name}_saved_bytes"] = saved_bytes(lambda: fn(q, k, v))
            except torch.OutOfMemoryError:
                row[f"{name}_error"] = "out of memory"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        if "fused_ms" in row and "materialised_ms" in row:
            row["fused_vs_materialised"] = row["materialised_ms"] / row["fused_ms"]
        if "fused_ms" in row and "sdpa_ms" in row:
            row["fused_vs_sdpa"] = row["fused_ms"] / row["sdpa_ms"]
        rows.append(row)
    return rows


def linear_growth(rows: list[dict], key: str) -> float | None:
    """Exponent p of memory ~ T^p fitted between the shortest and the longest T (1: linear, 2: quadratic)."""
    pts = sorted((r["T"], r[key]) for r in rows if r.get(key))
    if len(pts) < 2 or pts[0][0] == pts[-1][0]:
        return None
    (t0, m0), (t1, m1) = pts[0], pts[-1]
    return math.log(m1 / m0) / math.log(t1 / t0)


def targets(rows: list[dict]) -> dict:
    at = [r for r in rows if r["T"] == 2048 and r["variant"] == "consmax" and "fused_ms" in r]
    fb = [r for r in rows if r["mode"] == "forward+backward"]
    return {
        "T2048_fused_5x_materialised": [round(r["fused_vs_materialised"], 2) for r in at if "fused_vs_materialised" in r],
        "T2048_fused_within_2x_sdpa": [round(r["fused_vs_sdpa"], 2) for r in at if "fused_vs_sdpa" in r],
        "memory_exponent": {f"{name}_{what}": linear_growth(fb, f"{name}_{what}")
                            for name in ("fused", "materialised", "sdpa") for what in ("saved_bytes", "peak_bytes")
                            if linear_growth(fb, f"{name}_{what}") is not None},
    }


def print_table(result: dict):
    console = Console() if sys.stdout.isatty() else Console(width=170)
    table = Table(title=f"causal attention, {result['settings']['dtype']}, {result['environment']['device_name']}"
                        f" -- fused: {result['fused']}")
    cols = ["variant", "T", "mode", "fused ms", "materialised ms", "sdpa ms", "x materialised", "/ sdpa",
            "fused MiB", "materialised MiB", "sdpa MiB"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("variant", "mode") else "right")

    def mib(r, name):
        if f"{name}_error" in r:
            return r[f"{name}_error"][:14]
        n = r.get(f"{name}_peak_bytes") or r.get(f"{name}_saved_bytes")
        return fmt(n / 2 ** 20 if n else None, ".4g")

    for r in result["rows"]:
        table.add_row(r["variant"], str(r["T"]), r["mode"], fmt(r.get("fused_ms")), fmt(r.get("materialised_ms")),
                      fmt(r.get("sdpa_ms")), fmt(r.get("fused_vs_materialised"), ".2f"), fmt(r.get("fused_vs_sdpa"), ".2f"),
                      mib(r, "fused"), mib(r, "materialised"), mib(r, "sdpa"))
    console.print(table)
    console.print("MiB: the CUDA peak during the call on a GPU, else the bytes saved for the backward pass")
    for name, value in result["targets"].items():
        console.print(f"target {name}: {value}")


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    valid = [n for n in names("softmax") if get("softmax", n).elementwise]
    for v in args.variants:
        if v not in valid:
            raise UserError(unknown_name_message("elementwise softmax variant (fusable attention)", v, valid))
    if args.quick:
        args.lengths, args.batch_size, args.n_head, args.head_dim = [16, 40], 1, 2, 16
        args.iters, args.warmup = 2, 1
    nkv = args.n_kv_head or args.n_head
    if args.n_head % nkv:
        raise UserError(f"--n_head {args.n_head} must be a multiple of --n_kv_head {nkv}")
    device = choose_device(args.device, None)
    fused_ok, why = fused_status(device)
    rows = []
    for variant in args.variants:
        for T in args.lengths:
            rows.extend(measure(variant, T, args, device, DTYPES[args.dtype], fused_ok))
    return finish("bench_attention", device, why, args, argv, rows, targets, print_table)


if __name__ == "__main__":
    sys.exit(run_cli(main))
