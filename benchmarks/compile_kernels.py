"""Compile the Triton kernels for NVIDIA GPUs without one, and report their resources.

Triton compiles ahead of time to PTX and to a cubin with its bundled ptxas, so every kernel of
variations/triton_softmax.py and variations/triton_attention.py can be built for any architecture
on a machine with no GPU. This catches what the CPU interpreter cannot (type errors, unsupported
ops, register spills) and gives per-kernel figures from the cubin (cuobjdump --dump-resource-usage):
registers per thread, spilled bytes (LOCAL), static shared memory, plus Triton's dynamic shared
memory and warp count. Registers and shared memory bound occupancy, hence speed.

    python benchmarks/compile_kernels.py                      # sm_80 and sm_90, bf16, every transform
    python benchmarks/compile_kernels.py --arch 90 --dtype float16 --transforms consmax softmax
    python benchmarks/compile_kernels.py --quick              # one transform per kernel: a smoke test

Must run without TRITON_INTERPRET (interpreted kernels cannot be compiled); the script clears it.
Output: a table, and JSON at --json (default benchmarks/results/compile_kernels.json).
"""
from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "0"  # before triton is imported: real jit functions

import inspect  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import triton  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from benchmarks.kernel_timing import write_json  # noqa: E402
from errors import ArgumentParser, UserError, run_cli, unknown_name_message  # noqa: E402
from variations import triton_attention as ta  # noqa: E402
from variations import triton_softmax as ts  # noqa: E402
from variations import triton_transforms as tt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

TRITON_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
# kernel -> (jit function, its tensor arguments of the data dtype, fp32 tensor/scalar arguments)
KERNELS = {
    "rows_fwd": (ts.rows_fwd, "X Y", "P dmax"),
    "rows_bwd": (ts.rows_bwd, "X Y DY DX", "P DP dmax"),
    "attn_fwd": (ta.attn_fwd, "Q K V O", "P scale dmax"),
    "attn_bwd_dkdv": (ta.attn_bwd_dkdv, "Q K V DO DK DV", "P DP scale dmax"),
    "attn_bwd_dq": (ta.attn_bwd_dq, "Q K V DO DQ", "P scale dmax"),
}


def launch(kernel: str, transform: str, dtype: str, single: bool) -> tuple[dict, int]:
    """(constexprs, num_warps) as the wrappers launch them: rows of 4096 (single pass) or of twice
    SINGLE_PASS_MAX (tiled); attention with 64 x 64 tiles and head size 64."""
    T = tt.TRANSFORMS[transform]
    if kernel.startswith("rows"):
        block_r, block_n, single, warps = ts.launch_shape(4096 if single else 2 * ts.SINGLE_PASS_MAX)
        return dict(T=T, CAUSAL=True, WINDOWED=False, BLOCK_R=block_r, BLOCK_N=block_n, SINGLE=single), warps
    precision = "ieee" if dtype == "float32" else "tf32"
    return dict(T=T, WINDOWED=False, PRECISION=precision, UPCAST=False, BLOCK_M=64, BLOCK_N=64, BLOCK_D=64), 4


def resources(cubin: bytes) -> dict:
    """Registers, spill (LOCAL) and static shared bytes of the cubin's kernel, via the bundled cuobjdump."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return {}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "kernel.cubin"
        path.write_bytes(cubin)
        out = subprocess.run([str(tool), "--dump-resource-usage", str(path)], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    return {"registers": int(m[1]), "stack": int(m[2]), "static_shared": int(m[3]), "spill_bytes": int(m[4])} if m else {}


def compile_one(kernel: str, transform: str, dtype: str, arch: int, single: bool = True) -> dict:
    fn, data_args, fp32_args = KERNELS[kernel]
    ce, warps = launch(kernel, transform, dtype, single)
    types = {a: f"*{TRITON_DTYPES[dtype]}" for a in data_args.split()}
    types.update({a: ("*fp32" if a in ("P", "DP") else "fp32") for a in fp32_args.split()})
    signature = {p: "constexpr" if p in ce else types.get(p, "i32") for p in inspect.signature(fn.fn).parameters}
    start = time.perf_counter()
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=ce), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": warps})
    return {"kernel": kernel, "transform": transform, "dtype": dtype, "arch": f"sm_{arch}", "single_pass": single,
            "compile_s": time.perf_counter() - start, "num_warps": compiled.metadata.num_warps,
            "shared": compiled.metadata.shared, **resources(compiled.asm["cubin"])}


def build_parser():
    p = ArgumentParser(prog="compile_kernels.py", description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--arch", nargs="+", type=int, default=[80, 90], help="compute capabilities (80: A100, 90: H100)")
    p.add_argument("--dtype", nargs="+", choices=list(TRITON_DTYPES), default=["bfloat16"], help="data dtypes")
    p.add_argument("--transforms", nargs="+", default=None, help="score transforms (default: all)")
    p.add_argument("--kernels", nargs="+", default=None, help=f"kernels (default: all of {', '.join(KERNELS)})")
    p.add_argument("--quick", action="store_true", help="one transform per kernel family, one arch")
    p.add_argument("--json", type=Path, default=None, help="output JSON path")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    for t in args.transforms or []:
        if t not in tt.TRANSFORMS:
            raise UserError(unknown_name_message("kernel transform", t, list(tt.TRANSFORMS)))
    for k in args.kernels or []:
        if k not in KERNELS:
            raise UserError(unknown_name_message("kernel", k, list(KERNELS)))
    if args.quick:
        args.arch = args.arch[-1:]
    rows = []
    for arch in args.arch:
        for dtype in args.dtype:
            for kernel in args.kernels or KERNELS:
                attention = kernel.startswith("attn")
                transforms = args.transforms or list(tt.TRANSFORMS)
                transforms = [t for t in transforms if not (attention and tt.is_normalising(t))]
                if args.quick:
                    transforms = transforms[:1] if attention else ["scaled_softmax", "consmax"]
                for t in transforms:
                    for single in ([True] if attention else [True, False]):
                        rows.append(compile_one(kernel, t, dtype, arch, single))
    result = {"triton": triton.__version__, "rows": rows}
    write_json(args.json or ROOT / "benchmarks" / "results" / "compile_kernels.json", result)
    table = Table(title=f"Triton {triton.__version__} kernels compiled offline")
    for c in ("kernel", "transform", "dtype", "arch", "pass", "warps", "registers", "spill", "shared B", "compile s"):
        table.add_column(c)
    for r in rows:
        table.add_row(r["kernel"], r["transform"], r["dtype"], r["arch"], "single" if r["single_pass"] else "tiled",
                      str(r["num_warps"]), str(r.get("registers", "-")), str(r.get("spill_bytes", "-")),
                      str(r["shared"]), f"{r['compile_s']:.1f}")
    (Console() if sys.stdout.isatty() else Console(width=150)).print(table)
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
