"""benchmarks/bench_rtl.py on two small units: the JSON holds the figures (no timing assertions)."""
from __future__ import annotations

import json

import pytest

from benchmarks import bench_rtl
from hardware import tools


@pytest.mark.skipif(bool(tools.missing_tools()), reason=f"EDA tools missing ({tools.INSTALL})")
def test_bench_rtl_writes_its_figures(tmp_path):
    out = tmp_path / "bench.json"
    result = bench_rtl.main(["--quick", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(result))
    assert [r["variant"] for r in data["rows"]] == ["relumax", "consmax"]
    for r in data["rows"]:
        assert r["bit_exact"] and r["simulated_outputs"] > 0
        assert r["synthesise_s"] > 0 and r["cells"] > 0 and r["generate_ms"] > 0
    assert data["environment"]["yosys"].startswith("Yosys")
