"""Training-loop speed of train.py for a preset: ms per optimiser step, tokens/s, MFU and peak memory,
optionally side by side with karpathy/nanoGPT's own train.py on the same settings and the same data.

What it measures: `train.main` runs the preset (with --iters steps and any overrides) in-process, in
a temporary out_dir, with evaluation cut to the minimum (eval_interval > iters, eval_iters 1) and a
log line per step (as nanoGPT's --log_interval=1), so the timing is the training loop. ms/iter is
the loop period, from one Trainer.train_step call to the next: the step (next batch, forward,
backward, clipping, optimiser step) plus the loop's per-step work (loss.item(), logging), which is
what nanoGPT's `time` covers too (from one iteration's end to the next). train.py's own figure
(train_step alone, its iter_time_ms) is kept in the JSON beside it. The first --skip steps of each
run are dropped (warm-up, torch.compile); mean and median over the rest are reported, and with
--repeats R the median of the R runs.

MFU: where the device's peak FLOP/s is known (CUDA GPUs in devices.PEAK_FLOPS, or --peak_flops given
through --extra) against that peak, as the run itself reports it; otherwise (CPU) the benchmark
times a large fp32 matmul (--matmul_size, default 2048, same thread count) before each repeat and
reports MFU "vs measured matmul peak", an attainable rather than a theoretical peak. Peak memory:
the CUDA allocator's peak on CUDA; on CPU the process's peak resident set (VmHWM, reset before each
of our runs), torch's own libraries included.

With --nanogpt PATH (a checkout of karpathy/nanoGPT: train.py, model.py, configurator.py) the
benchmark also runs that train.py in a subprocess on the same model, batch, schedule and data
(a temporary copy of the checkout whose data/<dataset>/ links our train.bin and val.bin and holds the
meta.pkl nanoGPT reads), parses its `iter N: loss L, time T ms` lines, drops the same warm-up steps and
reports it beside ours. Runs are interleaved (ours, nanoGPT, ours, nanoGPT, ...) so machine noise hits
both alike, and both use torch's default thread count (recorded). Only settings nanoGPT can express
are accepted: causal softmax attention, LayerNorm, GELU MLP of width 4 x n_embd, learned positions.

    python benchmarks/bench_train.py --preset cpu --iters 300 --repeats 3
    python benchmarks/bench_train.py --preset cpu --iters 300 --repeats 3 --nanogpt /tmp/nanoGPT
    python benchmarks/bench_train.py --preset gpt2 --device cuda --iters 50 --extra "--gradient_accumulation_steps 1"
    python benchmarks/bench_train.py --preset debug --iters 20 --extra "--softmax_variant_attn consmax"

Figures, settings and the environment (torch version, device / CPU model, threads, date, command
line) go to --json (default benchmarks/results/bench_train_<preset>_<device>.json).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as _dt
import gc
import json
import os
import pickle
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

import train
import train_args
from devices import DTYPES, choose_device, choose_dtype, peak_flops
from model import GPT
from run_dir import METRICS

ROOT = Path(__file__).resolve().parent.parent

NANOGPT_FILES = ("train.py", "model.py", "configurator.py")
NANOGPT_ITER_RE = re.compile(r"^iter (\d+): loss (\S+), time ([0-9.]+)ms")
NANOGPT_PARAMS_RE = re.compile(r"^number of parameters: ([0-9.]+)M")
# Runs nanoGPT's train.py unchanged (as `python train.py ARGS` would), reporting torch's thread count
# first and the process's peak memory last: the CUDA allocator's peak where CUDA was used, and the peak
# resident set (VmHWM belongs to this process's own address space; ru_maxrss would inherit the
# parent's peak across fork/exec).
NANOGPT_LAUNCHER = """\
import runpy, sys, torch
print('bench: torch_threads', torch.get_num_threads(), torch.get_num_interop_threads(), flush=True)
sys.argv = ['train.py'] + sys.argv[1:]
runpy.run_path('train.py', run_name='__main__')
if torch.cuda.is_available() and torch.cuda.is_initialized():
    print('bench: peak_cuda_bytes', torch.cuda.max_memory_allocated(), flush=True)
try:
    hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]
    print('bench: peak_rss_bytes', int(hwm) * 1024, flush=True)
except (OSError, IndexError):
    import resource
    print('bench: peak_rss_bytes', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, flush=True)
"""


# ------------------------------------------------------------------------------------ arguments
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_train.py", allow_abbrev=False,
        description="Time train.py's training loop for a preset (ms/iter, tokens/s, MFU, peak memory), "
                    "optionally beside karpathy/nanoGPT's train.py on the same settings.")
    p.add_argument("--preset", default="cpu", choices=sorted(train_args.PRESETS),
                   help="train.py preset to benchmark (default: cpu)")
    p.add_argument("--iters", type=int, default=200, help="optimiser steps per run (default: 200)")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of each implementation, interleaved; the median is reported (default: 1)")
    p.add_argument("--skip", type=int, default=5,
                   help="warm-up steps dropped from the start of every run before averaging (default: 5, "
                        "as nanoGPT's MFU estimate)")
    p.add_argument("--device", help="override the preset's device (cpu, cuda, cuda:N, mps, auto)")
    p.add_argument("--dtype", choices=DTYPES, help="override the preset's dtype")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: the preset's setting)")
    p.add_argument("--extra", action="append", default=[], metavar="FLAGS",
                   help="further train.py flags as one quoted string, e.g. --extra \"--n_layer 6 --bias\" "
                        "(repeatable; use --extra=--bias for a single flag)")
    p.add_argument("--json", metavar="PATH",
                   help="where to write the figures (default: benchmarks/results/bench_train_<preset>_<device>.json)")
    p.add_argument("--nanogpt", metavar="PATH",
                   help="checkout of karpathy/nanoGPT (train.py, model.py, configurator.py) to run on the "
                        "same settings and data, interleaved with ours")
    p.add_argument("--matmul_size", type=int, default=2048,
                   help="n of the n x n fp32 matmul timed for the measured peak when the device's peak is "
                        "unknown (default: 2048)")
    p.add_argument("--matmul_reps", type=int, default=5, help="timed matmuls per measurement (default: 5)")
    p.add_argument("--verbose", action="store_true", help="show the training runs' own output")
    return p


# ------------------------------------------------------------------------------------ helpers
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return cpu_model()


def environment(device: torch.device, argv: list[str] | None) -> dict:
    env = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": str(device), "device_name": device_name(device), "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        "command": shlex.join(["python", "benchmarks/bench_train.py", *argv]) if argv is not None
        else shlex.join(["python", *sys.argv]),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
    return env


def reset_peak_memory(device: torch.device):
    """Free what earlier runs left behind, then start the peak-memory counters afresh, so that a run's
    figure is its own: the CUDA allocator's, and the process's peak RSS (VmHWM, ru_maxrss; on Linux,
    elsewhere the latter stays the process's peak)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back to the OS (glibc)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_bytes() -> int | None:
    """This process's peak resident set since the last reset (VmHWM). Unlike ru_maxrss it is not
    raised by a parent's peak inherited across fork/exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def measure_matmul_peak(device: torch.device, n: int, reps: int) -> dict:
    """Best fp32 n x n matmul throughput over `reps` timed products (after two warm-up ones)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type == "mps":
            torch.mps.synchronize()

    for _ in range(2):
        torch.mm(a, b, out=out)
    sync()
    times = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        sync()
        times.append(time.perf_counter() - t0)
    del a, b, out
    flops = 2.0 * n ** 3
    return {"n": n, "reps": len(times), "threads": torch.get_num_threads(), "times_s": times,
            "flops_per_s": flops / min(times), "flops_per_s_median": flops / statistics.median(times)}


def step_stats(step_ms: dict[int, float], skip: int, last: int) -> dict:
    """Mean and median ms of steps skip+1..last (1-based step numbers); for runs too short for that,
    all but the first step, or failing that all of them."""
    for used_skip in (skip, 1, 0):
        kept = [ms for s, ms in sorted(step_ms.items()) if used_skip < s <= last]
        if kept:
            break
    else:
        return {"steps": 0, "skip": skip, "mean_ms": None, "median_ms": None}
    q = statistics.quantiles(kept, n=10, method="inclusive") if len(kept) > 1 else kept * 9
    return {"steps": len(kept), "skip": used_skip, "mean_ms": statistics.fmean(kept),
            "median_ms": statistics.median(kept), "p10_ms": q[0], "p90_ms": q[-1],
            "min_ms": min(kept), "max_ms": max(kept)}


def median_of(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ------------------------------------------------------------------------------------ our run
def our_argv(args, out_dir: Path) -> list[str]:
    argv = ["--preset", args.preset]
    if args.device:
        argv += ["--device", args.device]
    if args.dtype:
        argv += ["--dtype", args.dtype]
    if args.compile is not None:
        argv += ["--compile" if args.compile else "--no-compile"]
    # log (and so synchronise) every step, as nanoGPT with --log_interval=1; overridable through --extra
    argv += ["--log_interval", "1"]
    for extra in args.extra:
        argv += shlex.split(extra)
    # last, so that they win: the timing must be the training loop
    argv += ["--max_iters", str(args.iters), "--eval_interval", str(args.iters + 1), "--eval_iters", "1",
             "--out_dir", str(out_dir), "--overwrite", "--init_from", "scratch"]
    return argv


def run_ours(argv: list[str], out_dir: Path, device: torch.device, tokens_per_iter: int, skip: int, iters: int,
             verbose: bool) -> dict:
    """One train.main run. Its per-step figure to compare is the loop period: from one train_step call
    to the next, so it covers the step and the loop's own per-step work (logging), as nanoGPT's `time`
    does (from one iteration's end to the next). train.py's own step time (train_step alone, from
    metrics.jsonl) is kept beside it."""
    starts: list[float] = []
    train_step = train.Trainer.train_step

    def stamped_train_step(self):
        starts.append(time.perf_counter())
        return train_step(self)

    reset_peak_memory(device)
    load_before = loadavg()
    log_path = out_dir.parent / f"{out_dir.name}.log"
    with open(log_path, "w") as log, \
            (contextlib.nullcontext() if verbose else contextlib.redirect_stdout(log)), \
            mock.patch.object(train.Trainer, "train_step", stamped_train_step):
        summary = train.main(argv)
    period_ms = {k + 1: 1000 * (b - a) for k, (a, b) in enumerate(zip(starts, starts[1:]))}  # steps 1..N-1
    own_ms = {}
    for line in (out_dir / METRICS).read_text().splitlines():
        rec = json.loads(line)
        if rec.get("type") == "train" and rec.get("iter_time_ms") is not None:
            own_ms[rec["iter"]] = rec["iter_time_ms"]
    stats = step_stats(period_ms, skip, iters - 1)
    mean = stats["mean_ms"]
    return {
        **stats, "tokens_per_s": tokens_per_iter * 1000 / mean if mean else None,
        "final_loss": summary["final_train_loss"],
        # CPU: VmHWM where there is one (the run's ru_maxrss figure can carry a parent's peak)
        "peak_memory_bytes": summary["peak_memory_bytes"] if device.type != "cpu"
        else peak_rss_bytes() or summary["peak_memory_bytes"],
        "step_ms": [round(period_ms[k], 3) for k in sorted(period_ms)],
        "train_step_only": {**step_stats(own_ms, skip, iters - 1),
                            "step_ms": [round(own_ms[k], 3) for k in sorted(own_ms)]},
        "summary": summary, "loadavg_before": load_before, "loadavg_after": loadavg(),
    }


# ------------------------------------------------------------------------------------ nanoGPT
def nanogpt_incompatibilities(mc, tc) -> list[str]:
    """Settings of ours that nanoGPT's model or train.py cannot express."""
    wanted = dict(attention_variant="causal", softmax_variant_attn="softmax", norm_variant="layernorm",
                  mlp_variant="mlp", activation_variant="gelu", position_variant="learned")
    bad = [f"--{k} {getattr(mc, k)} (nanoGPT: {v})" for k, v in wanted.items() if getattr(mc, k) != v]
    if mc.n_kv_head != mc.n_head:
        bad.append(f"--n_kv_head {mc.n_kv_head} (nanoGPT: n_head)")
    if mc.mlp_hidden_size != 4 * mc.n_embd:
        bad.append(f"MLP width {mc.mlp_hidden_size} (nanoGPT: 4 x n_embd = {4 * mc.n_embd})")
    if mc.norm_eps != 1e-5:
        bad.append(f"--norm_eps {mc.norm_eps} (nanoGPT: 1e-5)")
    if mc.init_std != 0.02:
        bad.append(f"--init_std {mc.init_std} (nanoGPT: 0.02)")
    return bad


def nanogpt_argv(mc, tc, device: torch.device, dtype: torch.dtype, dataset: str, iters: int,
                 out_dir: Path) -> list[str]:
    """nanoGPT's command-line flags (configurator.py syntax) for our resolved settings."""
    warmup = tc.warmup_iters
    decay = max(tc.lr_decay_iters or tc.max_iters, warmup + 1)  # nanoGPT divides by (decay - warmup)
    settings = dict(
        dataset=dataset, device=device.type if device.type != "cuda" else str(device),
        dtype=str(dtype).removeprefix("torch."), compile=bool(tc.compile),
        eval_iters=1, eval_interval=iters + 1, log_interval=1, always_save_checkpoint=False,
        wandb_log=False, init_from="scratch", out_dir=str(out_dir),
        block_size=mc.block_size, batch_size=tc.batch_size, n_layer=mc.n_layer, n_head=mc.n_head,
        n_embd=mc.n_embd, dropout=float(mc.dropout), bias=bool(mc.bias),
        gradient_accumulation_steps=tc.gradient_accumulation_steps, max_iters=iters,
        learning_rate=float(tc.learning_rate), min_lr=float(tc.min_lr), warmup_iters=warmup,
        lr_decay_iters=decay, decay_lr=bool(tc.decay_lr), weight_decay=float(tc.weight_decay),
        beta1=float(tc.beta1), beta2=float(tc.beta2), grad_clip=float(tc.grad_clip),
    )
    return [f"--{k}={v!r}" if isinstance(v, float) else f"--{k}={v}" for k, v in settings.items()]


def prepare_nanogpt(checkout: Path, work: Path, data_dir: Path, meta: dict, vocab_size: int) -> str:
    """A copy of the checkout's scripts in `work`, with data/<name>/ linking our token files."""
    for name in NANOGPT_FILES:
        if not (checkout / name).is_file():
            raise SystemExit(f"--nanogpt {checkout}: {name} not found; pass a checkout of karpathy/nanoGPT")
    if meta.get("dtype") != "uint16":
        raise SystemExit(f"--nanogpt: nanoGPT reads uint16 token files, but {data_dir} holds {meta.get('dtype')}")
    work.mkdir(parents=True)
    for src in checkout.glob("*.py"):
        shutil.copy2(src, work / src.name)
    name = data_dir.name
    target = work / "data" / name
    target.mkdir(parents=True)
    for split in ("train", "val"):
        (target / f"{split}.bin").symlink_to((data_dir / f"{split}.bin").resolve())
    nano_meta = {"vocab_size": vocab_size}  # our (possibly padded) vocabulary: the same model size
    if meta.get("chars"):
        chars = meta["chars"]
        nano_meta.update(itos=dict(enumerate(chars)), stoi={c: i for i, c in enumerate(chars)})
    with open(target / "meta.pkl", "wb") as f:  # written for nanoGPT; never read here
        pickle.dump(nano_meta, f)
    return name


def run_nanogpt(work: Path, argv: list[str], device: torch.device, tokens_per_iter: int, skip: int, iters: int,
                log_path: Path, verbose: bool) -> dict:
    load_before = loadavg()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", NANOGPT_LAUNCHER, *argv], cwd=work, env=os.environ.copy(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    log_path.write_text(proc.stdout)
    if verbose:
        print(proc.stdout)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-25:])
        raise SystemExit(f"nanoGPT's train.py failed (exit {proc.returncode}):\n{tail}")
    step_ms, losses, params_m, threads, peak_rss, peak_cuda = {}, {}, None, None, None, None
    for line in proc.stdout.splitlines():
        if m := NANOGPT_ITER_RE.match(line):
            step = int(m.group(1)) + 1  # nanoGPT counts from iter 0; ours from step 1
            step_ms[step] = float(m.group(3))
            losses[step] = float(m.group(2))
        elif m := NANOGPT_PARAMS_RE.match(line):
            params_m = float(m.group(1))
        elif line.startswith("bench: torch_threads"):
            threads = [int(x) for x in line.split()[2:]]
        elif line.startswith("bench: peak_rss_bytes"):
            peak_rss = int(line.split()[2])
        elif line.startswith("bench: peak_cuda_bytes"):
            peak_cuda = int(line.split()[2])
    if not step_ms:
        raise SystemExit(f"no 'iter N: loss L, time T ms' lines in nanoGPT's output (see {log_path})")
    stats = step_stats(step_ms, skip, iters - 1)  # the steps compared in ours (nanoGPT runs iters + 1)
    stats["step_ms"] = [round(step_ms[k], 3) for k in sorted(step_ms)]
    mean = stats["mean_ms"]
    return {
        **stats, "tokens_per_s": tokens_per_iter * 1000 / mean if mean else None,
        "final_loss": losses.get(iters), "params_printed_M": params_m, "peak_rss_bytes": peak_rss,
        "peak_memory_bytes": peak_cuda if device.type == "cuda" else peak_rss,
        "torch_threads": threads[0] if threads else None,
        "torch_interop_threads": threads[1] if threads and len(threads) > 1 else None,
        "steps_logged": len(step_ms), "wall_time_s": wall,
        "loadavg_before": load_before, "loadavg_after": loadavg(),
    }


# ------------------------------------------------------------------------------------ report
def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def fmt_mem(n: int | None) -> str:
    return "-" if n is None else f"{n / 2 ** 20:,.0f} MiB"


def print_table(result: dict):
    from rich.console import Console
    from rich.table import Table

    s, env, mfu_ref = result["settings"], result["environment"], result["mfu_reference"]
    table = Table(title=f"bench_train: preset {s['preset']}, {s['iters']} steps per run, median of {s['repeats']} "
                        f"run(s), first {s['skip']} steps dropped",
                  caption=f"{env['device_name']}, {env['torch_threads']} threads, torch {env['torch']}; "
                          f"MFU {mfu_ref['label']}")
    for col in ("run", "preset", "device", "dtype", "params", "ms/iter mean", "ms/iter median", "tokens/s",
                "MFU", "peak memory", "last loss"):
        table.add_column(col, justify="left" if col in ("run", "preset", "device", "dtype") else "right")
    rows = [("ours (train.py)", result["ours"]["median"], f"{result['num_params']:,}")]
    if result.get("nanogpt"):
        pm = result["nanogpt"]["median"].get("params_printed_M")
        rows.append(("nanoGPT train.py", result["nanogpt"]["median"], f"{pm}M non-emb." if pm else "-"))
    for name, m, params in rows:
        table.add_row(name, s["preset"], s["device"], s["dtype"], params,
                      fmt(m["mean_ms"], ".2f"), fmt(m["median_ms"], ".2f"), fmt(m["tokens_per_s"], ",.0f"),
                      "-" if m["mfu"] is None else f"{100 * m['mfu']:.1f}%",
                      fmt_mem(m["peak_memory_bytes"]), fmt(m["final_loss"], ".4f"))
    if result.get("ratio"):
        r = result["ratio"]
        table.add_section()
        table.add_row("ours / nanoGPT", "", "", "", "", fmt(r["mean_ms"], ".3f"), fmt(r["median_ms"], ".3f"),
                      fmt(r["tokens_per_s"], ".3f"), "", fmt(r["peak_memory"], ".3f"), "")
        if s["repeats"] > 1:
            table.add_row("  paired, per repeat", "", "", "", "", fmt(r["paired_mean_ms"], ".3f"),
                          fmt(r["paired_median_ms"], ".3f"), "", "", "", "")
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(table)
    if mfu_ref["kind"] == "measured_matmul":
        console.print(f"MFU is vs measured matmul peak: {mfu_ref['flops_per_s'] / 1e9:,.1f} GFLOP/s (best fp32 "
                      f"{mfu_ref['n']}x{mfu_ref['n']} matmul, {env['torch_threads']} threads, median of repeats), "
                      f"an attainable peak rather than the CPU's theoretical one.")
    o = result["ours"]["median"]
    console.print(f"ms/iter: loop period, one step's start to the next's (nanoGPT's `time` likewise). train.py's "
                  f"own step time (train_step alone, no logging): {fmt(o['train_step_only_mean_ms'], '.2f')} ms "
                  f"mean, {fmt(o['train_step_only_median_ms'], '.2f')} ms median.")
    console.print(f"figures: {result['json_path']}")


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.iters < 3:
        raise SystemExit("--iters must be at least 3 (a run's first step is never timed, nor its last one's end)")
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp = Path(tmp)
        # resolve the settings once, as train.py will, for the nanoGPT flags and the FLOP count
        probe = our_argv(args, tmp / "probe")
        mc, tc, meta, _ = train.build_configs(train_args.parse_args(probe))
        device = choose_device(tc.device, None)
        dtype = choose_dtype(tc.dtype, device)
        tokens_per_iter = tc.batch_size * mc.block_size * tc.gradient_accumulation_steps
        with torch.device("meta"):
            model = GPT(mc)
        flops_per_token, num_params = model.flops_per_token(), model.num_params()
        del model
        known_peak = tc.peak_flops or peak_flops(device, dtype)

        nano_work = nano_args = None
        if args.nanogpt:
            bad = nanogpt_incompatibilities(mc, tc)
            if bad:
                raise SystemExit("--nanogpt: these settings have no nanoGPT equivalent: " + "; ".join(bad))
            if device.type == "cpu" and dtype != torch.float32:
                print(f"warning: nanoGPT ignores --dtype on CPU (always float32); ours runs {dtype}", file=sys.stderr)
            nano_work = tmp / "nanogpt"
            dataset = prepare_nanogpt(Path(args.nanogpt).expanduser().resolve(), nano_work,
                                      Path(meta["data_dir"]), meta, mc.vocab_size)
            nano_args = nanogpt_argv(mc, tc, device, dtype, dataset, args.iters, nano_work / "out")

        ours_runs, nano_runs, matmul = [], [], []
        for r in range(args.repeats):
            print(f"repeat {r + 1}/{args.repeats}:", file=sys.stderr)
            if not known_peak:
                matmul.append(measure_matmul_peak(device, args.matmul_size, args.matmul_reps))
                print(f"  matmul peak {matmul[-1]['flops_per_s'] / 1e9:,.1f} GFLOP/s", file=sys.stderr)
            out_dir = tmp / f"ours_{r}"
            ours_runs.append(run_ours(our_argv(args, out_dir), out_dir, device, tokens_per_iter, args.skip,
                                      args.iters, args.verbose))
            print(f"  ours     {fmt(ours_runs[-1]['mean_ms'], '.2f')} ms/iter (mean), "
                  f"{fmt(ours_runs[-1]['median_ms'], '.2f')} (median); train_step alone "
                  f"{fmt(ours_runs[-1]['train_step_only']['median_ms'], '.2f')} (median)", file=sys.stderr)
            if nano_args:
                nano_runs.append(run_nanogpt(nano_work, nano_args, device, tokens_per_iter, args.skip,
                                             args.iters, tmp / f"nanogpt_{r}.log", args.verbose))
                print(f"  nanoGPT  {fmt(nano_runs[-1]['mean_ms'], '.2f')} ms/iter (mean), "
                      f"{fmt(nano_runs[-1]['median_ms'], '.2f')} (median)", file=sys.stderr)

    if known_peak:
        peak = known_peak
        mfu_ref = {"kind": "device_peak", "label": f"vs the device's {peak / 1e12:g} TFLOP/s peak",
                   "flops_per_s": peak}
    else:
        peak = median_of([m["flops_per_s"] for m in matmul])
        mfu_ref = {"kind": "measured_matmul", "label": f"vs measured matmul peak ({peak / 1e9:,.1f} GFLOP/s)",
                   "flops_per_s": peak, "n": args.matmul_size, "per_repeat": matmul}

    def summarise(runs: list[dict], extra_keys=()) -> dict:
        med = {k: median_of([run[k] for run in runs]) for k in
               ("mean_ms", "median_ms", "p10_ms", "p90_ms", "tokens_per_s", "peak_memory_bytes", "final_loss",
                *extra_keys)}
        if med["peak_memory_bytes"] is not None:
            med["peak_memory_bytes"] = int(med["peak_memory_bytes"])
        med["mfu"] = flops_per_token * med["tokens_per_s"] / peak if med["tokens_per_s"] and peak else None
        return med

    ours = {"median": summarise(ours_runs), "runs": ours_runs}
    # train.py's own per-step figure: train_step alone (no logging), as in its summary's iter_time_ms
    ours["median"]["train_step_only_mean_ms"] = median_of([run["train_step_only"]["mean_ms"] for run in ours_runs])
    ours["median"]["train_step_only_median_ms"] = median_of([run["train_step_only"]["median_ms"]
                                                             for run in ours_runs])
    ours["median"]["summary_iter_time_ms"] = median_of([run["summary"]["iter_time_ms"] for run in ours_runs])
    # the run's own MFU figure where it has one (CUDA): mean over all but its first step
    ours["median"]["mfu_run"] = median_of([run["summary"]["mfu"] for run in ours_runs])
    result = {
        "benchmark": "bench_train",
        "environment": environment(device, argv),
        "settings": {"preset": args.preset, "iters": args.iters, "repeats": args.repeats, "skip": args.skip,
                     "device": str(device), "dtype": str(dtype).removeprefix("torch."), "compile": tc.compile,
                     "tokens_per_iter": tokens_per_iter, "train_argv": our_argv(args, Path("<tmp>/ours")),
                     "model": mc.to_dict()},
        "num_params": num_params, "flops_per_token": flops_per_token, "mfu_reference": mfu_ref,
        "ours": ours,
    }
    if nano_runs:
        result["nanogpt"] = {"median": summarise(nano_runs, ("params_printed_M",)), "runs": nano_runs,
                             "checkout": str(Path(args.nanogpt).expanduser().resolve()),
                             "argv": ["train.py", *[a.replace(str(nano_work), "<tmp>") for a in nano_args]]}
        o, n = ours["median"], result["nanogpt"]["median"]

        def ratio(a, b):
            return a / b if a is not None and b else None
        result["ratio"] = {"mean_ms": ratio(o["mean_ms"], n["mean_ms"]),
                           "median_ms": ratio(o["median_ms"], n["median_ms"]),
                           "tokens_per_s": ratio(o["tokens_per_s"], n["tokens_per_s"]),
                           "peak_memory": ratio(o["peak_memory_bytes"], n["peak_memory_bytes"]),
                           # each repeat's ours / nanoGPT, then the median: noise that hits a pair cancels
                           "paired_mean_ms": median_of([ratio(a["mean_ms"], b["mean_ms"])
                                                        for a, b in zip(ours_runs, nano_runs)]),
                           "paired_median_ms": median_of([ratio(a["median_ms"], b["median_ms"])
                                                          for a, b in zip(ours_runs, nano_runs)]),
                           "p10_ms": ratio(o["p10_ms"], n["p10_ms"]),
                           "note": "ours / nanoGPT: below 1 for time means ours is faster; paired_*: median "
                                   "over repeats of each repeat's ratio"}
    json_path = Path(args.json) if args.json else \
        ROOT / "benchmarks" / "results" / f"bench_train_{args.preset}_{device.type}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    result["json_path"] = str(json_path)
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_table(result)
    return result


if __name__ == "__main__":
    from errors import run_cli
    sys.exit(run_cli(main))
