"""benchmarks/bench_softmax.py, bench_attention.py and compile_kernels.py on tiny sizes: the JSON
holds every figure (no timing assertions). On CPU the fused paths run in Triton's interpreter."""
from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")

from benchmarks import bench_attention, bench_softmax  # noqa: E402
from conftest import run_script  # noqa: E402
from errors import UserError  # noqa: E402


def test_bench_softmax_figures(tmp_path):
    out = tmp_path / "softmax.json"
    result = bench_softmax.main(["--quick", "--device", "cpu", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result, default=str))
    rows = result["rows"]
    assert {(r["variant"], r["T"], r["mode"]) for r in rows} == {
        (v, T, m) for v in ("softmax", "consmax") for T in (16, 33) for m in ("forward", "forward+backward")}
    for r in rows:
        assert r["torch_ms"] > 0 and r["copy_gbps"] > 0
        assert r["fused_ms"] > 0 and r["speedup"] == pytest.approx(r["torch_ms"] / r["fused_ms"])
    assert result["targets"]["speedup_3x_multi_op"]["of"] == 4  # consmax rows only
    assert result["environment"]["triton"] and "interpreter" in result["fused"]


def test_bench_attention_memory_is_linear_for_fused(tmp_path):
    result = bench_attention.main(["--quick", "--device", "cpu", "--json", str(tmp_path / "a.json")])
    fb = [r for r in result["rows"] if r["mode"] == "forward+backward"]
    assert all(r["fused_ms"] > 0 and r["materialised_ms"] > 0 and r["sdpa_ms"] > 0 for r in fb)
    growth = result["targets"]["memory_exponent"]
    # saved bytes from T = 16 to 40: q, k, v only for fused; the T x T matrices for materialised
    assert growth["fused_saved_bytes"] == pytest.approx(1.0, abs=0.05)
    assert growth["materialised_saved_bytes"] > 1.5


def test_bench_errors():
    with pytest.raises(UserError, match="did you mean 'consmax'"):
        bench_softmax.main(["--variants", "consmx"])
    with pytest.raises(UserError, match="elementwise softmax variant .*'softmax'"):
        bench_attention.main(["--variants", "softmax"])


@pytest.mark.slow
def test_kernels_compile_for_cuda_without_a_gpu(tmp_path):
    """Ahead-of-time compilation for sm_90 with Triton's bundled ptxas: what the interpreter cannot
    check (types, lowering, register spills)."""
    out = tmp_path / "compile.json"
    proc = run_script("benchmarks/compile_kernels.py", "--quick", "--json", str(out),
                      env={"TRITON_INTERPRET": "0"})
    if proc.returncode != 0 and "cuobjdump" not in proc.stderr and "nvidia" in proc.stderr.lower():
        pytest.skip(f"Triton's NVIDIA backend is unavailable here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {r["kernel"] for r in rows} == {"rows_fwd", "rows_bwd", "attn_fwd", "attn_bwd_dkdv", "attn_bwd_dq"}
    for r in rows:
        assert r["arch"] == "sm_90"
        if "registers" in r:  # cuobjdump ships with Triton's NVIDIA backend
            assert 0 < r["registers"] <= 255 and r["spill_bytes"] == 0, r
    assert os.environ.get("TRITON_INTERPRET") != "0"  # the child's setting did not leak here
