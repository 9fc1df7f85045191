"""KV-cache decoding speed: tokens/s of generation.Engine with the cache against without it, per normaliser.

For each attention normaliser (--variants, default softmax and consmax) a GPT of the gpt2 preset's
size (12 layers x 12 heads x 768, context 1024, vocabulary 50304; random weights: speed does not depend
on them) in --dtype prefills a random prompt of --prompt_len tokens (--batch_size rows), then takes
--new_tokens greedy steps, once with the KV cache (each step runs one position through the model) and
once without (each step reruns the whole context), alternately for --repeats rounds after one
untimed warm-up round. Prompt and new tokens stay within the context, where the cache is used.

Reported per variant and mode: the prefill time, the decode time (the steps after the prefill; CUDA
synchronised), decode tokens/s = batch x new tokens / decode time (median over the rounds), the ratio
cached / uncached, and whether both modes chose the same tokens (in bf16 they may part after a
near-tie: the two paths round differently). Plain softmax runs through SDPA (a masked call when
cached); the other normalisers through --softmax_kernel (auto: the fused Triton attention on a GPU).

Target (issue 15), printed as met / missed, never asserted: cached decoding >= 5x uncached.

    python benchmarks/bench_decode.py --device cuda                         # bf16 on a GPU
    python benchmarks/bench_decode.py --device cuda --batch_size 8 --prompt_len 512 --new_tokens 256
    python benchmarks/bench_decode.py --quick                               # tiny model: a smoke test

Output: a table, and JSON at --json (default benchmarks/results/bench_decode_<device>.json).
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from benchmarks.kernel_timing import environment, fmt, write_json
from devices import DTYPES, choose_device, choose_dtype
from errors import ArgumentParser, UserError, run_cli, unknown_name_message
from generation import Engine
from gpt_conf import GPTConfig
from model import GPT
from train_args import PRESETS
from variations.kernels import KERNEL_CHOICES
from variations.registry import names

ROOT = Path(__file__).resolve().parent.parent
GPT2 = {k: PRESETS["gpt2"][k] for k in ("n_layer", "n_head", "n_embd", "block_size")}
QUICK = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=64, batch_size=1, prompt_len=8,
             new_tokens=4, repeats=1)
TARGET_SPEEDUP = 5.0


def build_parser():
    p = ArgumentParser(prog="bench_decode.py", description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--variants", nargs="+", default=["softmax", "consmax"], help="attention normalisers")
    p.add_argument("--softmax_kernel", choices=KERNEL_CHOICES, default="auto",
                   help="backend of the non-softmax normalisers (train.py's --softmax_kernel)")
    for name, default in GPT2.items():
        p.add_argument(f"--{name}", type=int, default=default, help=f"model size (default: the gpt2 preset's {default})")
    p.add_argument("--vocab_size", type=int, default=50304, help="vocabulary (default: GPT-2's, padded)")
    p.add_argument("--batch_size", type=int, default=4, help="prompts decoded together")
    p.add_argument("--prompt_len", type=int, default=768, help="prompt tokens (prefilled)")
    p.add_argument("--new_tokens", type=int, default=256, help="greedy steps after the prompt")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (median), after one warm-up round")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="weights and cache (auto: bf16 on CUDA)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--quick", action="store_true", help="a tiny model and few steps: a smoke test")
    p.add_argument("--json", type=Path, default=None, help="output JSON path")
    return p


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode(model: GPT, prompt: torch.Tensor, new_tokens: int, use_cache: bool) -> dict:
    """Prefill, then new_tokens greedy steps; seconds of each part and the tokens chosen."""
    device = prompt.device
    engine = Engine(model, use_cache=use_cache)
    sync(device)
    t0 = time.perf_counter()
    engine.prefill(prompt)
    sync(device)
    t1 = time.perf_counter()
    for _ in range(new_tokens):
        engine.step(temperature=0)
    sync(device)
    t2 = time.perf_counter()
    return {"prefill_s": t1 - t0, "decode_s": t2 - t1, "tokens": engine.ids[:, prompt.size(1):]}


def measure(variant: str, args, device: torch.device, dtype: torch.dtype) -> dict:
    config = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=args.block_size,
                       vocab_size=args.vocab_size, softmax_variant_attn=variant, softmax_kernel=args.softmax_kernel)
    torch.manual_seed(0)
    model = GPT(config).to(device=device, dtype=dtype).eval()
    prompt = torch.randint(0, args.vocab_size, (args.batch_size, args.prompt_len), device=device)
    runs = {"cached": [], "uncached": []}
    tokens = {}
    for r in range(args.repeats + 1):  # round 0: warm-up (kernel compilation, allocator)
        for mode in runs:
            out = decode(model, prompt, args.new_tokens, use_cache=mode == "cached")
            tokens[mode] = out.pop("tokens")
            if r:
                runs[mode].append(out)
    row = {"variant": variant, "params": model.num_params()}
    new = args.batch_size * args.new_tokens
    for mode, rounds in runs.items():
        decode_s = statistics.median(o["decode_s"] for o in rounds)
        row[mode] = {"prefill_ms": 1000 * statistics.median(o["prefill_s"] for o in rounds),
                     "decode_ms": 1000 * decode_s, "ms_per_token": 1000 * decode_s / args.new_tokens,
                     "tokens_per_s": new / decode_s, "decode_s_per_round": [o["decode_s"] for o in rounds]}
    row["speedup"] = row["cached"]["tokens_per_s"] / row["uncached"]["tokens_per_s"]
    same = tokens["cached"] == tokens["uncached"]
    row["same_tokens"] = bool(same.all())
    row["first_difference"] = None if row["same_tokens"] else int(same.all(dim=0).float().argmin())
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def targets(rows: list[dict]) -> dict:
    return {"kv_cache_5x_uncached": {r["variant"]: {"speedup": round(r["speedup"], 2),
                                                    "met": r["speedup"] >= TARGET_SPEEDUP} for r in rows}}


def print_table(result: dict):
    s = result["settings"]
    table = Table(title=f"decode, {s['dtype']}, {result['environment']['device_name']}: batch {s['batch_size']}, "
                        f"prompt {s['prompt_len']}, {s['new_tokens']} new tokens")
    for c in ("variant", "cached tok/s", "uncached tok/s", "cached / uncached", "cached ms/token",
              "uncached ms/token", "prefill ms", "same tokens"):
        table.add_column(c, justify="left" if c == "variant" else "right")
    for r in result["rows"]:
        c, u = r["cached"], r["uncached"]
        table.add_row(r["variant"], fmt(c["tokens_per_s"], ",.0f"), fmt(u["tokens_per_s"], ",.0f"),
                      fmt(r["speedup"], ".2f"), fmt(c["ms_per_token"], ".3g"), fmt(u["ms_per_token"], ".3g"),
                      fmt(c["prefill_ms"], ".3g"),
                      "yes" if r["same_tokens"] else f"from step {r['first_difference']}")
    console = Console() if sys.stdout.isatty() else Console(width=150)
    console.print(table)
    for variant, t in result["targets"]["kv_cache_5x_uncached"].items():
        console.print(f"target kv_cache_5x_uncached, {variant}: {t['speedup']}x ({'met' if t['met'] else 'missed'})")


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    valid = names("softmax")
    for v in args.variants:
        if v not in valid:
            raise UserError(unknown_name_message("softmax variant", v, valid))
    for name in ("batch_size", "prompt_len", "new_tokens", "repeats"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1")
    if args.prompt_len + args.new_tokens > args.block_size:
        raise UserError(f"--prompt_len {args.prompt_len} + --new_tokens {args.new_tokens} exceeds --block_size "
                        f"{args.block_size}: past it the window slides and the cache is not used")
    device = choose_device(args.device, None)
    dtype = choose_dtype(args.dtype, device)
    with torch.inference_mode():
        rows = [measure(v, args, device, dtype) for v in args.variants]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["dtype"] = str(dtype).removeprefix("torch.")
    result = {"environment": environment(device, "benchmarks/bench_decode.py", argv), "settings": settings,
              "rows": rows, "targets": targets(rows)}
    write_json(args.json or ROOT / "benchmarks" / "results" / f"bench_decode_{device.type}.json", result)
    print_table(result)
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
