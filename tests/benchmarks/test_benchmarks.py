"""benchmarks/bench_train.py end to end on a tiny run: the JSON holds the figures (no timing assertions)."""
from __future__ import annotations

import json

from benchmarks import bench_train


def test_bench_train_writes_its_figures(char_data, tmp_path):
    out = tmp_path / "bench.json"
    result = bench_train.main(["--preset", "debug", "--iters", "5", "--device", "cpu", "--json", str(out),
                               "--matmul_size", "256", "--extra", f"--dataset {char_data}"])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(result, default=str))
    ours = data["ours"]["median"]
    assert ours["mean_ms"] > 0 and ours["median_ms"] > 0
    assert ours["tokens_per_s"] > 0
    assert data["num_params"] > 0 and data["flops_per_token"] > 0
    assert 0 < ours["mfu"]  # CPU: against the measured matmul peak
    assert data["mfu_reference"]["kind"] == "measured_matmul" and data["mfu_reference"]["flops_per_s"] > 0
    assert ours["peak_memory_bytes"] > 0
    assert data["settings"]["preset"] == "debug" and data["settings"]["iters"] == 5
    assert data["ours"]["runs"][0]["summary"]["iters"] == 5
    env = data["environment"]
    assert env["torch"] and env["torch_threads"] >= 1 and env["device"] == "cpu" and env["date"]
    assert "nanogpt" not in data
