"""benchmarks/bench_ppa.py: its Spearman rank correlation against hand-computed values, the predicted
time split by operation against the estimate's total, and a --quick run on one kind end to end (every
registered variant gets predicted and measured figures; no timing assertions)."""
from __future__ import annotations

import json
import math

import pytest

from benchmarks import bench_ppa, bench_variants
from errors import UserError
from variations.registry import names

QUICK = ["--quick", "--iters", "1", "--warmup", "0", "--device", "cpu", "--threads", "1"]


def test_rankdata_averages_ties():
    assert bench_ppa.rankdata([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert bench_ppa.rankdata([3, 1, 2]).tolist() == [3, 1, 2]
    assert bench_ppa.rankdata([5, 5, 5]).tolist() == [2, 2, 2]


def test_spearman_against_hand_computed_values():
    assert bench_ppa.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert bench_ppa.spearman([1, 2, 3, 4, 5], [50, 40, 30, 20, 10]) == pytest.approx(-1.0)  # inverted order
    assert bench_ppa.spearman([1, 2, 3], [1, 9, 4]) == pytest.approx(0.5)  # ranks (1,2,3) vs (1,3,2): 1 - 6*2/24
    # ties: y's ranks are (1, 2, 3.5, 5, 3.5); x's (1..5). Deviations from 3: (-2,-1,0,1,2) and
    # (-2,-1,.5,2,.5): rho = 8 / sqrt(10 * 9.5) (scipy.stats.spearmanr gives 0.8207826816681233)
    assert bench_ppa.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert bench_ppa.spearman([1, 1, 2, 2], [2, 2, 1, 1]) == pytest.approx(-1.0)  # ties on both sides
    assert bench_ppa.spearman([1, 2, 3], [7, 7, 7]) is None  # a constant side: undefined
    assert bench_ppa.spearman([1], [2]) is None
    with pytest.raises(ValueError):
        bench_ppa.spearman([1, 2], [1, 2, 3])


def test_ratio_stats():
    st = bench_ppa.ratio_stats([2, 6], [1, 2])  # ratios 2 and 3
    assert st == {"n": 2, "mean": 2.5, "std": 0.5, "median": 2.5, "min": 2.0, "max": 3.0}
    assert bench_ppa.ratio_stats([], [])["mean"] is None


def test_time_by_op_sums_to_the_predicted_latency():
    args = bench_ppa.parse_args([*QUICK, "--kinds", "softmax"])
    bench = bench_variants.Bench(args, bench_variants.choose_device("cpu", None), bench_variants.torch.float32)
    model = bench.build(bench_variants.GPTConfig(**bench.sizes))
    pred = bench_ppa.predict(model, bench_ppa.load_target("cpu_dev"), bench)
    assert sum(pred["pred_ms_by_op"].values()) == pytest.approx(pred["pred_fwd_ms"], rel=1e-9)
    assert sum(pred["pred_ms_by_part"].values()) == pytest.approx(pred["pred_fwd_ms"], rel=1e-9)
    assert pred["pred_fwdbwd_ms"] == pytest.approx(bench_ppa.TRAIN_FACTOR * pred["pred_fwd_ms"])
    assert "macs" in pred["pred_ms_by_op"] and pred["pred_bound"] in ("compute", "memory")


def test_quick_run_of_one_kind(tmp_path):
    out = tmp_path / "ppa.json"
    result = bench_ppa.main([*QUICK, "--kinds", "softmax", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(result, default=str))
    env = data["environment"]
    assert env["torch"] and env["device"] == "cpu" and env["device_name"] and env["date"]
    assert env["command"].startswith("python benchmarks/bench_ppa.py")
    assert data["settings"]["target"] == "cpu_dev" and data["settings"]["dtype"] == "float32"
    assert data["settings"]["train_factor"] == 3.0

    table = data["kinds"]["softmax"]
    rows = {r["variant"]: r for r in table["rows"] if not r["reference"]}
    assert sorted(rows) == names("softmax")  # every registered variant, nothing added
    for name, r in rows.items():
        assert r["status"] == "ok" and bench_ppa.usable(r), (name, r.get("error"), r.get("pred_error"))
        assert r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0 and len(r["fwd_times_ms"]) == len(r["fwdbwd_times_ms"]) == 1
        assert r["pred_fwd_ms"] > 0 and r["pred_fwdbwd_ms"] == pytest.approx(3 * r["pred_fwd_ms"])
        assert r["ratio_fwd"] == pytest.approx(r["fwd_ms"] / r["pred_fwd_ms"])
        assert 1 <= r["rank_pred"] <= len(rows) and 1 <= r["rank_meas"] <= len(rows)
    for st in (table["stats"], data["overall"], data["overall_baseline_normalised"]):
        assert st["n"] == len(rows)
        for m in ("fwd", "fwdbwd"):
            assert st[f"rho_{m}"] is None or -1 <= st[f"rho_{m}"] <= 1
            assert st[f"ratio_{m}"]["n"] == len(rows) and st[f"ratio_{m}"]["min"] > 0
    assert len(data["disagreements"]) == min(10, len(rows))
    assert all(d["dominant_ops"] and d["pred_bound"] in ("compute", "memory") for d in data["disagreements"])


@pytest.mark.parametrize("argv,message", [
    (["--kinds", "softmx"], "did you mean 'softmax'"),
    (["--target", "no_such_target"], "no_such_target"),
    (["--iters", "0"], "--iters must be at least 1"),
    (["--top", "-1"], "--top must be at least 0"),
])
def test_user_errors(argv, message):
    with pytest.raises(UserError, match=message):
        bench_ppa.main([*QUICK, "--kinds", "norm", *argv])
