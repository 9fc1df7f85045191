"""Speed, memory and analytic cost of every registered variant, one component kind at a time, each
against the baseline model in the same run.

For each kind (all of variations.registry.KINDS, or --kinds) and each variant registered for it (read
from the registry at run time, so newly added variants are included without editing this file), the
benchmark builds a GPT of fixed size that differs from the baseline only in that kind's flag
(gpt_conf.component_flags(kind)[0], e.g. --softmax_variant_attn). The baseline is every GPTConfig
default: causal attention with softmax, layernorm, gelu MLP, learned positions, plain linear layers;
in each kind's table it is the row of the flag's default value. For each model it reports:

- ms: the median over --iters of one forward + backward pass (loss on random tokens; no optimiser
  step), after --warmup untimed ones; torch.cuda.synchronize around each timing on CUDA. Steps are
  interleaved across the kind's models (round-robin, the order rotating every round), so that a slow
  stretch of a shared machine hits the baseline and the variants alike. tokens/s = batch x block / ms.
- saved activations: the bytes autograd keeps for the backward pass during the forward pass, found with
  torch.autograd.graph.saved_tensors_hooks: every saved tensor's storage, each storage counted once,
  parameters excluded (under autocast the low-precision copies of weights are included: they are kept
  for the backward too). The same on every device, independent of allocator and machine: the
  activation memory a training step needs, a PPA figure.
- peak memory (CUDA only): the CUDA allocator's peak during one forward + backward above what was
  allocated before it, plus the model's parameter bytes: the peak of a process holding this model alone
  (activations, gradients, workspaces). On CPU no per-model figure is honest: the peak resident set
  includes torch itself and the allocator keeps freed memory, so the column reads n/a there.
- the parameter count, and the model's analytic cost per token at context block_size (model.cost,
  summed with variations.cost.total): MACs, elementwise, exp, div, sqrt, cmp, reduce, act_mem.

Time and memory are also given as ratios to the kind's baseline. Plain softmax runs through fused
F.scaled_dot_product_attention, every other attention normaliser through the explicit path (scores,
mask, normaliser, weighted sum); the softmax table therefore also has a reference row, the baseline
forced onto the explicit path, and a ratio to it ("x explicit"), which isolates the normaliser's own
cost from the loss of the fused kernel (--no-softmax_explicit_reference drops it).

A variant that fails to build or to run is recorded with its error and the run goes on.

    python benchmarks/bench_variants.py                                  # every kind, CPU or CUDA
    python benchmarks/bench_variants.py --kinds softmax norm --device cuda --dtype bfloat16
    python benchmarks/bench_variants.py --quick                          # tiny sizes, seconds

Output: a table per kind, and JSON at --json (default benchmarks/results/bench_variants_<device>.json)
with the environment (torch version, device name, date, command line), the settings and every row.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path


import torch

from benchmarks.bench_train import cpu_model, device_name
from devices import DTYPES, choose_device, choose_dtype
from errors import ArgumentParser, UserError, run_cli, unknown_name_message
from gpt_conf import GPTConfig, component_flags
from model import GPT
from variations.cost import COUNTS, total
from variations.registry import KINDS, names

ROOT = Path(__file__).resolve().parent.parent

# Default model and batch: 4 x 256 wide at context 256; a batch of 2 sequences (512 tokens per step) keeps
# the default run of every kind (57 models on 2026-11-21: 84 s) within the ~3 minutes wanted on 2 CPU cores
SIZES = dict(n_layer=4, n_head=4, n_embd=256, block_size=256, batch_size=2, vocab_size=512)
# --quick: a model small enough that every kind runs in seconds (explicit flags still win)
QUICK = dict(n_layer=2, n_head=2, n_embd=64, block_size=32, batch_size=4, vocab_size=128, warmup=1, iters=3)


# ------------------------------------------------------------------------------------ arguments
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="bench_variants.py", allow_abbrev=False,
        description="Forward+backward time, activation memory and analytic cost of every registered variant, "
                    "one component kind at a time, against the all-defaults baseline in the same run.")
    p.add_argument("--kinds", nargs="+", metavar="KIND",
                   help=f"component kinds to benchmark (default: all: {' '.join(KINDS)})")
    for name, default in SIZES.items():
        p.add_argument(f"--{name}", type=int, default=default, help=f"(default: {default})")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="auto: bfloat16 on CUDA that supports it, float16 on other CUDA, else float32; "
                        "half precision runs under autocast, as in train.py (default: auto)")
    p.add_argument("--warmup", type=int, default=3, help="untimed forward+backward passes per model (default: 3)")
    p.add_argument("--iters", type=int, default=10, help="timed forward+backward passes per model (default: 10)")
    p.add_argument("--threads", type=int,
                   help="torch intra-op threads for the run (default: torch's own, usually one per core)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the weights and the random tokens")
    p.add_argument("--softmax_explicit_reference", action=argparse.BooleanOptionalAction, default=True,
                   help="add the baseline softmax on the explicit attention path to the softmax table (default: on)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes for a smoke test: " + " ".join(f"--{k} {v}" for k, v in QUICK.items()))
    p.add_argument("--json", metavar="PATH",
                   help="where to write the figures (default: benchmarks/results/bench_variants_<device>.json)")
    return p


def parse_args(argv: list[str] | None):
    parser = build_parser()
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    for name in (*SIZES, "iters", *(["threads"] if args.threads is not None else [])):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise UserError(f"--warmup must be at least 0, got {args.warmup}")
    kinds = []
    for kind in args.kinds or KINDS:
        if kind not in KINDS:
            raise UserError(f"--kinds: {unknown_name_message('component kind', kind, KINDS)}")
        if kind not in kinds:
            kinds.append(kind)
    args.kinds = kinds
    return args


# ------------------------------------------------------------------------------------ measurement
def error_text(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


class Entry:
    """One model of a kind's table, with its row of figures."""

    def __init__(self, row: dict):
        self.row = row
        self.model: GPT | None = None
        self.times_ms: list[float] = []

    def fail(self, stage: str, e: BaseException):
        self.row.update(status="error", error=f"{stage}: {error_text(e)}",
                        traceback=traceback.format_exc(limit=-4).strip().splitlines()[-8:])
        self.model = None


class Bench:
    """Device, precision and the fixed batch shared by every model."""

    def __init__(self, args, device: torch.device, dtype: torch.dtype):
        self.args, self.device, self.dtype = args, device, dtype
        self.sizes = {k: getattr(args, k) for k in SIZES if k != "batch_size"}
        self.tokens = args.batch_size * args.block_size
        gen = torch.Generator().manual_seed(args.seed)
        shape = (args.batch_size, args.block_size)
        self.idx = torch.randint(0, args.vocab_size, shape, generator=gen).to(device)
        self.targets = torch.randint(0, args.vocab_size, shape, generator=gen).to(device)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype != torch.float32 else nullcontext()

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def build(self, config: GPTConfig) -> GPT:
        torch.manual_seed(self.args.seed)  # the same initial weights wherever the models agree
        return GPT(config).to(self.device).train()

    def step(self, model: GPT):
        """One forward + backward pass; the gradients are dropped again afterwards."""
        with self.autocast():
            _, loss = model(self.idx, self.targets)
        loss.backward()
        return loss

    def timed_step(self, model: GPT) -> float:
        self.sync()
        t0 = time.perf_counter()
        self.step(model)
        self.sync()
        ms = 1000 * (time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
        return ms

    def memory(self, model: GPT) -> tuple[int, int | None]:
        """(saved activation bytes, CUDA peak bytes or None) of one forward + backward pass."""
        param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor):
            try:
                storage = t.untyped_storage()
            except Exception:  # a tensor without storage (none in the built-in ops): nothing to count
                return t
            ptr = storage.data_ptr()
            if ptr not in param_storages:
                saved[ptr] = storage.nbytes()  # a storage saved twice (or by two views) counts once
            return t

        gc.collect()
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with self.autocast():
                _, loss = model(self.idx, self.targets)
        loss.backward()
        peak = None
        if cuda:
            torch.cuda.synchronize(self.device)
            param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
            peak = torch.cuda.max_memory_allocated(self.device) - before + param_bytes
        model.zero_grad(set_to_none=True)
        return sum(saved.values()), peak


def cost_figures(model: GPT, T: int) -> dict:
    """Per-token totals of model.cost(T), and the same summed by part over the layers."""
    rows = model.cost(T)
    by_part: dict[str, list] = {}
    for key, c in rows.items():
        part = key.split(".", 2)[2] if key.startswith("layer.") else key  # layer.<i>.attention -> attention
        by_part.setdefault(part, []).append(c)
    return {"total": total(rows.values()).counts(),
            "by_part": {part: total(cs).counts() for part, cs in by_part.items()}}


def make_entries(kind: str, bench: Bench) -> list[Entry]:
    """Build the baseline and every registered variant of `kind` (and the softmax reference row)."""
    flag = component_flags(kind)[0]
    baseline = getattr(GPTConfig(**bench.sizes), flag)
    entries = []
    for name in sorted(names(kind), key=lambda n: n != baseline):  # the baseline first, then by name
        entry = Entry({"kind": kind, "variant": name, "flag": f"--{flag} {name}", "baseline": name == baseline,
                       "reference": False, "status": "ok", "error": None})
        try:
            entry.model = bench.build(GPTConfig(**{**bench.sizes, flag: name}))
        except Exception as e:
            entry.fail("build", e)
        entries.append(entry)
    if kind == "softmax" and bench.args.softmax_explicit_reference:  # second row
        entry = Entry({"kind": kind, "variant": f"{baseline} (explicit path)", "flag": f"--{flag} {baseline}",
                       "baseline": False, "reference": True, "status": "ok", "error": None,
                       "note": "the baseline normaliser on attention's explicit path (use_sdpa off)"})
        try:
            model = bench.build(GPTConfig(**{**bench.sizes, flag: baseline}))
            switched = [b.attn for b in model.transformer.h if b.attn.use_sdpa]
            for m in switched:
                m.use_sdpa, m.uses_softmax_kernel = False, True
            if switched:
                entry.model = model
                entries.insert(1, entry)
        except Exception as e:
            entry.fail("build", e)
            entries.insert(1, entry)
    for entry in entries:
        if entry.model is None:
            continue
        entry.row["params"] = entry.model.num_params()
        try:
            entry.row["cost"] = cost_figures(entry.model, bench.args.block_size)
            entry.row["cost_params_match"] = entry.row["cost"]["total"]["params"] == entry.row["params"]
        except Exception as e:
            entry.row.update(cost=None, cost_error=error_text(e))
    return entries


def run_kind(kind: str, bench: Bench) -> dict:
    entries = make_entries(kind, bench)

    def live():
        return [e for e in entries if e.model is not None]

    def guarded(entry: Entry, stage: str, fn):
        try:
            return fn(entry.model)
        except Exception as e:
            entry.fail(stage, e)
            if bench.device.type == "cuda":
                torch.cuda.empty_cache()
            return None

    for _ in range(bench.args.warmup):
        for e in live():
            guarded(e, "run", bench.step)
            if e.model is not None:
                e.model.zero_grad(set_to_none=True)
    for e in live():
        mem = guarded(e, "run", bench.memory)
        if mem is not None:
            e.row["saved_activation_bytes"], e.row["peak_memory_bytes"] = mem
    for r in range(bench.args.iters):
        models = live()
        k = r % max(1, len(models))
        for e in models[k:] + models[:k]:  # rotate the order every round
            ms = guarded(e, "run", bench.timed_step)
            if ms is not None:
                e.times_ms.append(ms)

    for e in entries:
        if e.row["status"] == "ok":
            med = statistics.median(e.times_ms)
            e.row.update(median_ms=med, min_ms=min(e.times_ms), times_ms=[round(t, 3) for t in e.times_ms],
                         tokens_per_s=bench.tokens * 1000 / med)
        e.model = None
    add_ratios([e.row for e in entries])
    rows = [e.row for e in entries]
    gc.collect()
    if bench.device.type == "cuda":
        torch.cuda.empty_cache()
    flag = component_flags(kind)[0]
    return {"flag": flag, "baseline": getattr(GPTConfig(**bench.sizes), flag), "rows": rows}


def add_ratios(rows: list[dict]):
    """Time and memory of each row over the baseline's (and, where a reference row exists, its time
    over the reference's)."""
    def ratio(a, b):
        return a / b if a is not None and b else None

    base = next((r for r in rows if r["baseline"] and r["status"] == "ok"), {})
    ref = next((r for r in rows if r["reference"] and r["status"] == "ok"), None)
    for r in rows:
        r["time_ratio"] = ratio(r.get("median_ms"), base.get("median_ms"))
        r["saved_activation_ratio"] = ratio(r.get("saved_activation_bytes"), base.get("saved_activation_bytes"))
        r["peak_memory_ratio"] = ratio(r.get("peak_memory_bytes"), base.get("peak_memory_bytes"))
        if ref is not None:
            r["time_ratio_vs_reference"] = ratio(r.get("median_ms"), ref.get("median_ms"))


# ------------------------------------------------------------------------------------ report
def compact(x, digits: int = 3) -> str:
    """1234567 -> '1.23M'; None -> '-'."""
    if x is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.{digits}g}{unit}"
    return f"{x:.{digits}g}"


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def mib(n) -> str:
    return "-" if n is None else f"{n / 2 ** 20:,.1f} MiB"


def print_tables(result: dict):
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    s, env = result["settings"], result["environment"]
    cuda = s["device"].startswith("cuda")
    console = Console() if sys.stdout.isatty() else Console(width=200)
    for kind, k in result["kinds"].items():
        rows = k["rows"]
        has_ref = any(r["reference"] for r in rows)
        table = Table(title=f"{kind}: --{k['flag']} (baseline {k['baseline']}); forward+backward, batch "
                            f"{s['batch_size']} x {s['block_size']} tokens, median of {s['iters']}",
                      caption=f"{env['device_name']}, {env['torch_threads']} threads, {s['dtype']}, torch {env['torch']}; costs per token at "
                              f"T = {s['block_size']}, forward pass")
        cols = ["variant", "params", "ms", "x base"] + (["x explicit"] if has_ref else []) + \
               ["tokens/s", "saved act.", "x base"] + (["peak mem", "x base"] if cuda else []) + \
               ["MAC/tok", "elem/tok", "exp/tok", "div/tok", "sqrt/tok", "cmp/tok", "reduce/tok", "act/tok"]
        for c in cols:
            table.add_column(c, justify="left" if c == "variant" else "right")
        for r in rows:
            label = escape(r["variant"] + (" (baseline)" if r["baseline"] else ""))
            if r["status"] != "ok":
                table.add_row(label, fmt(r.get("params"), ","), "failed", *[""] * (len(cols) - 3))
                continue
            c = (r.get("cost") or {}).get("total") or {}
            cells = [label, f"{r['params']:,}", f"{r['median_ms']:.2f}", fmt(r["time_ratio"], ".3f")]
            if has_ref:
                cells.append(fmt(r.get("time_ratio_vs_reference"), ".3f"))
            cells += [f"{r['tokens_per_s']:,.0f}", mib(r.get("saved_activation_bytes")),
                      fmt(r["saved_activation_ratio"], ".3f")]
            if cuda:
                cells += [mib(r.get("peak_memory_bytes")), fmt(r["peak_memory_ratio"], ".3f")]
            cells += [compact(c.get(name)) for name in ("macs", "elementwise", "exp", "div", "sqrt", "cmp", "reduce",
                                                        "act_mem")]
            table.add_row(*cells)
        console.print(table)
        for r in rows:
            if r["status"] != "ok":
                console.print(escape(f"  {kind} {r['variant']} failed: {r['error']}"))
            elif r.get("cost_error"):
                console.print(escape(f"  {kind} {r['variant']}: model.cost failed: {r['cost_error']}"))
            elif r.get("cost_params_match") is False:
                console.print(f"  {kind} {r['variant']}: cost params {r['cost']['total']['params']:,} != "
                              f"real parameter count {r['params']:,}")
    if not cuda:
        console.print("peak memory: n/a on CPU (the process's resident set includes torch and the allocator's "
                      "cache); 'saved act.' is what autograd keeps for the backward pass.")
    console.print(f"figures: {result['json_path']}")


# ------------------------------------------------------------------------------------ main
def environment(device: torch.device, argv: list[str] | None) -> dict:
    env = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "torch": torch.__version__,
           "python": platform.python_version(), "platform": platform.platform(), "device": str(device),
           "device_name": device_name(device), "cpu_model": cpu_model(), "torch_threads": torch.get_num_threads(),
           "command": shlex.join(["python", "benchmarks/bench_variants.py", *argv]) if argv is not None
           else shlex.join(["python", *sys.argv])}
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
    return env


def loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def with_threads(args, run, argv: list[str] | None) -> dict:
    """run(args, argv) under --threads; main may be called in-process (tests): torch is left as it was."""
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run(args, argv)
    finally:
        torch.set_num_threads(threads)


def device_and_dtype(args) -> tuple[torch.device, torch.dtype]:
    """--device and --dtype resolved as train.py does (TF32 matmuls on CUDA)."""
    device = choose_device(args.device, None)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device, choose_dtype(args.dtype, device)


def main(argv: list[str] | None = None) -> dict:
    return with_threads(parse_args(argv), run, argv)


def run(args, argv: list[str] | None) -> dict:
    device, dtype = device_and_dtype(args)
    bench = Bench(args, device, dtype)
    GPTConfig(**bench.sizes)  # bad sizes are the user's error, not a variant's failure
    started, load_before = time.perf_counter(), loadavg()
    kinds = {}
    for kind in args.kinds:
        t0 = time.perf_counter()
        kinds[kind] = run_kind(kind, bench)
        ok = sum(r["status"] == "ok" for r in kinds[kind]["rows"])
        print(f"{kind}: {ok}/{len(kinds[kind]['rows'])} models ran ({time.perf_counter() - t0:.1f} s)",
              file=sys.stderr)
    result = {
        "benchmark": "bench_variants",
        "environment": environment(device, argv),
        "settings": {**bench.sizes, "batch_size": args.batch_size, "tokens_per_step": bench.tokens,
                     "device": str(device), "dtype": str(dtype).removeprefix("torch."), "warmup": args.warmup,
                     "iters": args.iters, "seed": args.seed, "kinds": args.kinds, "cost_counts": list(COUNTS)},
        "registered": {kind: names(kind) for kind in KINDS},
        "wall_time_s": time.perf_counter() - started,
        "loadavg_1min": {"before": load_before, "after": loadavg()},  # other work on a shared machine
        "kinds": kinds,
    }
    json_path = Path(args.json) if args.json else ROOT / "benchmarks" / "results" / f"bench_variants_{device.type}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    result["json_path"] = str(json_path)
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_tables(result)
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
