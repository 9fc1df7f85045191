"""Measure this machine's CPU peaks for the `cpu_dev` hardware target (ppa/targets/cpu_dev.yaml).

With torch threads = all cores, each figure is the best of --repeats timed runs (other processes may be
running; the best run is the one least disturbed):
- peak_macs_per_s.fp32 / .bf16: torch.mm of two --n x --n matrices (n^3 MACs a call); bf16 only when torch
  multiplies bf16 on this CPU.
- dram_bytes_per_s: `dst.copy_(src)` of a --copy_mib MiB fp32 tensor, bytes read + written per second.
- vector_ops_per_s: `torch.add(a, b, out=c)` on --vector_elems fp32 elements, elements per second. The
  tensors are kept cache-resident (4 MiB each by default) so that this is the arithmetic rate, not the DRAM
  rate, which dram_bytes_per_s already gives.
- special_ops_per_s: `torch.exp(a, out=c)` on the same tensors, elements per second.
- clock_ghz, dram_bytes, onchip_bytes: read from /proc/cpuinfo ("cpu MHz"), /proc/meminfo (MemTotal)
  and /sys/devices/system/cpu/cpu0/cache (the last-level cache).

    python benchmarks/measure_cpu.py                                 # about 8 s; JSON at benchmarks/results/
    python benchmarks/measure_cpu.py --write-yaml ppa/targets/cpu_dev.yaml   # rewrite the target file

--write-yaml writes the whole target file from the template below (the measured values, and in its sources
the date, CPU model, torch version and the command), then loads it with ppa.tables to check it.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

from errors import ArgumentParser, UserError, run_cli
from ppa.tables import load_target
from provenance import device_name


def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocation, thread pool start, kernel selection
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _clock_ghz() -> float | None:
    try:
        mhz = [float(line.split(":", 1)[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
               if line.startswith("cpu MHz")]
        return max(mhz) / 1000 if mhz else None
    except OSError:
        return None


def _mem_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _last_level_cache() -> tuple[int, int] | None:
    """(level, bytes) of the highest-level cache cpu0 reports."""
    best = None
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = int((index / "level").read_text())
            size = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        units = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}
        size_bytes = int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
        if best is None or level > best[0]:
            best = (level, size_bytes)
    return best


def measure(n: int = 2048, repeats: int = 20, copy_mib: int = 512, vector_elems: int = 1 << 20) -> dict:
    torch.set_num_threads(os.cpu_count() or 1)
    out: dict = {"threads": torch.get_num_threads()}
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        c = torch.empty(n, n, dtype=dtype)
        try:
            seconds = _best_seconds(lambda a=a, b=b, c=c: torch.mm(a, b, out=c), repeats)
        except RuntimeError as e:  # no kernel for this dtype on this CPU
            out[f"matmul_{name}_error"] = str(e).splitlines()[0]
            continue
        out[f"macs_per_s_{name}"] = n ** 3 / seconds
    src = torch.ones(copy_mib * 2 ** 20 // 4)
    dst = torch.empty_like(src)
    out["dram_bytes_per_s"] = 2 * src.numel() * 4 / _best_seconds(lambda: dst.copy_(src), repeats)
    src = dst = None  # free the copy's memory before the next figures
    x, y, z = torch.rand(vector_elems), torch.rand(vector_elems), torch.empty(vector_elems)
    calls = 20  # several calls a timing, so the per-call overhead weighs less at cache-resident sizes

    def add():
        for _ in range(calls):
            torch.add(x, y, out=z)

    def exp():
        for _ in range(calls):
            torch.exp(x, out=z)
    out["vector_ops_per_s"] = calls * vector_elems / _best_seconds(add, repeats)
    out["special_ops_per_s"] = calls * vector_elems / _best_seconds(exp, repeats)
    llc = _last_level_cache()
    out.update(clock_ghz=_clock_ghz(), dram_bytes=_mem_bytes(), onchip_bytes=llc[1] if llc else None,
               llc_level=llc[0] if llc else None, cpu_model=device_name("cpu"), cores=os.cpu_count(),
               torch_version=torch.__version__, date=datetime.date.today().isoformat(),
               settings={"n": n, "repeats": repeats, "copy_mib": copy_mib, "vector_elems": vector_elems})
    return out


def _yaml_text(m: dict, command: str) -> str:
    how = f"measured by benchmarks/measure_cpu.py on {m['date']}, {m['cpu_model']}, {m['cores']} cores, " \
          f"{m['threads']} torch threads, torch {m['torch_version']}; command: {command}"
    bf16 = (f"  bf16: {{value: {m['macs_per_s_bf16']:.4e}, source: measured}}  "
            f"# torch.mm, {m['settings']['n']}^3 MACs a call\n") if "macs_per_s_bf16" in m else ""
    return f"""# The CPU this project is developed on (a shared {m['cores']}-core virtual machine), MEASURED, not from a datasheet.
# Generated by: {command}
# Rerun that to refresh the figures; edit the template in benchmarks/measure_cpu.py, not this file.
# The peaks are attainable rates of torch kernels (best of several runs), not theoretical ones.
# Read by ppa/tables.py (schema in its docstring).
name: cpu_dev
description: the development machine's CPU ({m['cpu_model']}, {m['cores']} cores), peaks measured with torch
kind: cpu
sources:
  measured: '{how}; best of {m['settings']['repeats']} runs'
  system: 'read by benchmarks/measure_cpu.py on {m['date']}: /proc/cpuinfo "cpu MHz" (clock), /proc/meminfo MemTotal (memory), /sys/devices/system/cpu/cpu0/cache (last-level cache: L{m['llc_level']})'
  torch_flash_cpu: 'PyTorch CPU flash attention (aten/src/ATen/native/cpu/FlashAttentionKernel.cpp) splits queries into blocks of 32, 64 or 256 rows by query length (>= 192: 64; >= 768: 256); 64 taken as typical for this project''s contexts'
tech: null
clock_ghz: {{value: {m['clock_ghz']:.4g}, source: system}}
peak_macs_per_s:
  fp32: {{value: {m['macs_per_s_fp32']:.4e}, source: measured}}  # torch.mm, {m['settings']['n']}^3 MACs a call
{bf16}vector_ops_per_s: {{value: {m['vector_ops_per_s']:.4e}, source: measured}}  # torch.add, {m['settings']['vector_elems']} fp32 elements (cache-resident)
special_ops_per_s: {{value: {m['special_ops_per_s']:.4e}, source: measured}}  # torch.exp, same tensors
dram_bytes_per_s: {{value: {m['dram_bytes_per_s']:.4e}, source: measured}}  # copy of {m['settings']['copy_mib']} MiB, read + written
dram_bytes: {{value: {m['dram_bytes']}, source: system}}
onchip_bytes: {{value: {m['onchip_bytes']}, source: system}}  # last-level cache
attention_query_tile: {{value: 64, source: torch_flash_cpu}}
"""  # .4e writes the exponent's sign (1.2345e+11), which YAML 1.1 needs to read a number


def main(argv: list[str] | None = None):
    parser = ArgumentParser(prog="benchmarks/measure_cpu.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2048, help="matrix size for the matmul peaks")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per figure; the best is kept")
    parser.add_argument("--copy_mib", type=int, default=512, help="MiB copied for the memory bandwidth")
    parser.add_argument("--vector_elems", type=int, default=1 << 20, help="elements for the add and exp rates")
    parser.add_argument("--json", default="benchmarks/results/measure_cpu.json",
                        help="write the figures and the environment as JSON here ('' for none)")
    parser.add_argument("--write-yaml", dest="write_yaml", default=None,
                        help="rewrite this target file (ppa/targets/cpu_dev.yaml) with the measured figures")
    args = parser.parse_args(argv)
    if min(args.n, args.repeats, args.copy_mib, args.vector_elems) < 1:
        raise UserError("--n, --repeats, --copy_mib and --vector_elems must be positive")
    m = measure(args.n, args.repeats, args.copy_mib, args.vector_elems)
    for key in ("macs_per_s_fp32", "macs_per_s_bf16", "dram_bytes_per_s", "vector_ops_per_s", "special_ops_per_s"):
        if key in m:
            print(f"{key:20s} {m[key]:.4e}")
    print(f"{'clock_ghz':20s} {m['clock_ghz']}\n{'dram_bytes':20s} {m['dram_bytes']}\n{'onchip_bytes':20s} "
          f"{m['onchip_bytes']} (L{m['llc_level']})\n{m['cpu_model']}, {m['threads']} threads, torch {m['torch_version']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**m, "argv": sys.argv}, indent=2) + "\n")
    if args.write_yaml:
        command = "python benchmarks/measure_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
        path = Path(args.write_yaml)
        path.write_text(_yaml_text(m, command.strip()))
        load_target(path)  # check what was written against the schema
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
