"""benchmarks/bench_act_quant.py: every configuration timed against `none` in the same run, JSON written."""
from __future__ import annotations

import json

from benchmarks import bench_act_quant


def test_quick_run_writes_every_configuration(tmp_path):
    out = tmp_path / "b.json"
    result = bench_act_quant.main(["--preset", "debug", "--iters", "2", "--warmup", "0", "--json", str(out)])
    assert list(result["rows"]) == ["none", "explicit", "per_token", "per_tensor"]
    assert result["rows"]["none"]["slowdown"] == 1.0
    assert all(len(r["times_ms"]) == 2 and r["median_ms"] > 0 for r in result["rows"].values())
    assert json.loads(out.read_text())["settings"]["bits"] == 8
