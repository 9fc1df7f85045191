"""Training-step cost of activation quantisation: the `cpu` preset with every activation site fake-quantised
(variations/act_quant.py) against the same model with none, in the same run.

What it measures: one optimiser step (forward, backward, AdamW step) on random tokens of the preset's
batch and context, for each configuration: `none` (no site set: the model as it trains today), and
every site at --bits with per-token ranges (`per_token`, the default of --act_bits_*) and with static
per-tensor ranges (`per_tensor`, a moving average in training). Steps are interleaved round-robin over
the configurations, the order rotating every round, after --warmup untimed rounds, so machine noise
hits them alike; the median over --iters rounds is reported with the slowdown against `none`.
The normaliser is softmax (every site exists for it); with sites inside attention the layer leaves
F.scaled_dot_product_attention for the explicit path, which is part of the price measured here, and
the `explicit` row (no site set, softmax forced onto the explicit path through --attn_logit_softcap
1e4, which changes the scores by less than 1e-6) separates that from the rounding itself.

    python benchmarks/bench_act_quant.py                       # cpu preset, 8 bits, 30 rounds
    python benchmarks/bench_act_quant.py --iters 5 --warmup 1 --preset debug   # seconds

Figures, settings and the environment go to --json (default benchmarks/results/bench_act_quant_<device>.json).
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import train_args
from errors import run_cli
from gpt_conf import GPTConfig
from io_utils import atomic_write_json
from model import GPT
from variations.act_quant import SITES

ROOT = Path(__file__).resolve().parent.parent


def configs(preset: str, bits: int) -> dict[str, GPTConfig]:
    settings = train_args.PRESETS[preset]
    base = {k: settings[k] for k in ("n_layer", "n_head", "n_embd", "block_size") if k in settings}
    base.update(vocab_size=96, dropout=0.0)
    every = {f"act_bits_{s}": bits for s in SITES}
    return {"none": GPTConfig(**base),
            "explicit": GPTConfig(**base, attn_logit_softcap=1e4),
            "per_token": GPTConfig(**base, **every),
            "per_tensor": GPTConfig(**base, **every, act_quant_granularity="per_tensor")}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu", choices=sorted(train_args.PRESETS))
    p.add_argument("--bits", type=int, default=8, help="bits of every site (default 8)")
    p.add_argument("--batch_size", type=int, help="default: the preset's")
    p.add_argument("--iters", type=int, default=30, help="timed rounds (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    p.add_argument("--json", help="default benchmarks/results/bench_act_quant_cpu.json")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    batch = args.batch_size or train_args.PRESETS[args.preset].get("batch_size", 12)
    runs = {}
    for name, cfg in configs(args.preset, args.bits).items():
        model = GPT(cfg).train()
        runs[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4), [])
    T, V = next(iter(runs.values()))[0].config.block_size, 96
    x = torch.randint(0, V, (batch, T))
    y = torch.randint(0, V, (batch, T))

    def step(model, opt) -> float:
        t0 = time.perf_counter()
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return (time.perf_counter() - t0) * 1000

    names = list(runs)
    for r in range(args.warmup + args.iters):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate: nobody always goes first
        for name in order:
            model, opt, times = runs[name]
            ms = step(model, opt)
            if r >= args.warmup:
                times.append(ms)
    base = statistics.median(runs["none"][2])
    rows = {name: {"median_ms": statistics.median(t), "slowdown": statistics.median(t) / base,
                   "times_ms": t} for name, (_, _, t) in runs.items()}
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"training step, {args.preset} preset, batch {batch}, every site at {args.bits} bits")
    for col in ("configuration", "median ms", "x none"):
        table.add_column(col, justify="right" if col != "configuration" else "left")
    for name, row in rows.items():
        table.add_row(name, f"{row['median_ms']:.1f}", f"{row['slowdown']:.2f}")
    Console().print(table)
    result = {"settings": vars(args) | {"batch_size": batch, "sites": list(SITES)}, "rows": rows,
              "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                              "cpu": platform.processor() or platform.machine(),
                              "date": datetime.date.today().isoformat(),
                              "command": "python benchmarks/bench_act_quant.py " + " ".join(argv or sys.argv[1:])}}
    out = Path(args.json or ROOT / "benchmarks" / "results" / "bench_act_quant_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(f"figures: {out}")
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
