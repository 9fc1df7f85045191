"""Shared by bench_softmax.py and bench_attention.py: timing, memory, environment and output helpers.

Timings are the median over `iters` calls after `warmup` untimed ones; on CUDA each call is timed
with CUDA events (device time, launch overhead included), elsewhere with perf_counter after the call
returns. Not a script.
"""
from __future__ import annotations

import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch


from benchmarks.bench_train import environment as _environment
from io_utils import atomic_write_json
from variations import kernels

ROOT = Path(__file__).resolve().parent.parent

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def time_ms(fn, device: torch.device, iters: int, warmup: int) -> float:
    """Median milliseconds of fn()."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def peak_bytes(fn, device: torch.device) -> int | None:
    """CUDA allocator peak during one fn() above what was allocated before it (None off CUDA)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def saved_bytes(fn) -> int:
    """Bytes autograd keeps for the backward pass during fn(): every saved tensor's storage, once.
    Device independent: the activation memory the computation needs, on CPU too."""
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def fused_status(device: torch.device) -> tuple[bool, str]:
    """(may the Triton kernels run here, why): on CUDA with Triton, or in the interpreter on CPU (for
    smoke tests of this script; its times mean nothing)."""
    if kernels.triton_version() is None:
        return False, "Triton is not installed"
    if device.type == "cuda" or kernels.interpreter_on():
        return True, "Triton " + kernels.triton_version() + (" (CPU interpreter)" if device.type != "cuda" else "")
    return False, f"no CUDA device ({device.type}); the fused kernels need one"


def environment(device: torch.device, script: str, argv: list[str] | None) -> dict:
    env = _environment(device, argv)
    env["command"] = shlex.join(["python", script, *(argv if argv is not None else sys.argv[1:])])
    env["triton"] = kernels.triton_version()
    return env


def write_json(path: Path, result: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, json.loads(json.dumps(result, default=str)))


def finish(script: str, device: torch.device, fused: str, args, argv: list[str] | None, rows: list[dict],
           targets, print_table) -> dict:
    """The result of a kernel benchmark: environment, settings, rows and targets(rows); written as
    JSON (--json, default benchmarks/results/<script>_<device>.json) and printed with print_table."""
    result = {"environment": environment(device, f"benchmarks/{script}.py", argv), "fused": fused,
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "rows": rows, "targets": targets(rows)}
    write_json(args.json or ROOT / "benchmarks" / "results" / f"{script}_{device.type}.json", result)
    print_table(result)
    return result


def fmt(value, spec: str = ".3g", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)
