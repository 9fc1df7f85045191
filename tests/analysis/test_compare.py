"""analysis/compare.py: the t quantile against known values (and scipy), Welch's and the paired interval on
a synthetic log with hand-computed intervals, n = 1 rows, the baseline pick, the JSON."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest

from conftest import ROOT
from errors import UserError
from optimization_and_search.results import append_log

spec = importlib.util.spec_from_file_location("compare", ROOT / "analysis" / "compare.py")
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


@pytest.mark.parametrize("p, df, expected", [
    (0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 4, 2.7764), (0.975, 10, 2.2281), (0.95, 5, 2.0150),
    (0.995, 3, 5.8409), (0.975, 1000, 1.9623), (0.025, 4, -2.7764), (0.5, 7, 0.0)])
def test_t_quantile_matches_the_tables(p, df, expected):
    assert compare.t_quantile_exact(p, df) == pytest.approx(expected, abs=1e-4)
    assert compare.t_quantile(p, df) == pytest.approx(expected, abs=1e-4)


def test_exact_t_quantile_agrees_with_scipy_at_fractional_degrees_of_freedom():
    stats = pytest.importorskip("scipy.stats")
    for df in (1.3, 2.04, 3.92, 7.5, 25.0):
        for p in (0.9, 0.975, 0.995):
            assert compare.t_quantile_exact(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


# seeds 1, 2, 3 (lower is better); the intervals below are worked out by hand
LOG = {
    "a": [1.0, 2.0, 3.0],     # the baseline: mean 2, variance 1
    "b": [4.0, 5.0, 6.0],     # mean 5, variance 1: Welch df = (2/3)^2 / (2 (1/3)^2 / 2) = 4
    "c": [3.5, 5.0, 6.5],     # paired differences 2.5, 3, 3.5: mean 3, sd 0.5, df 2
    "d": [-3.0, -3.0, -3.0],  # no spread: Welch df = (1/3)^2 / ((1/3)^2 / 2) = 2
    "e": [1.1, 2.1, 3.1],     # 0.1 worse, well inside the noise
}


def synthetic_log(path):
    for seed in (1, 2, 3):
        for variant, values in LOG.items():
            append_log(path, {"name": f"v-{variant}_seed-{seed}", "status": "completed",
                              "settings": {"variant": variant, "n_layer": 2, "seed": seed},
                              "summary": {"best_val_loss": values[seed - 1]}})
    append_log(path, {"name": "v-f_seed-1", "status": "completed", "settings": {"variant": "f", "n_layer": 2, "seed": 1},
                      "summary": {"best_val_loss": 0.5}})                       # one seed only
    append_log(path, {"name": "v-f_seed-2", "status": "failed", "exit_code": 1,
                      "settings": {"variant": "f", "n_layer": 2, "seed": 2}, "summary": None})
    append_log(path, {"name": "v-a_nl-4_seed-1", "status": "completed",
                      "settings": {"variant": "a", "n_layer": 4, "seed": 1}, "summary": {"best_val_loss": 9.0}})


def test_welch_intervals_by_hand(tmp_path):
    log = tmp_path / "log.yaml"
    synthetic_log(log)
    result = compare.main([str(log), "--baseline", "variant=a", "--baseline", "n_layer=2",
                           "--json", str(tmp_path / "c.json")])
    rows = {r["name"]: r for r in result["rows"]}
    assert result["rows"][0]["name"] == "v-a" and result["rows"][0]["verdict"] == "baseline"
    t4, t2 = 2.776445105, 4.302652730
    b = rows["v-b"]  # 3 +- t(0.975, 4) sqrt(1/3 + 1/3)
    assert (b["difference"], b["df"]) == (pytest.approx(3.0), pytest.approx(4.0))
    assert (b["low"], b["high"]) == (pytest.approx(3 - t4 * math.sqrt(2 / 3)), pytest.approx(3 + t4 * math.sqrt(2 / 3)))
    assert b["verdict"] == "worse" and b["test"] == "Welch t"
    d = rows["v-d"]  # -5 +- t(0.975, 2) sqrt(1/3)
    assert d["df"] == pytest.approx(2.0)
    assert (d["low"], d["high"]) == (pytest.approx(-5 - t2 / math.sqrt(3)), pytest.approx(-5 + t2 / math.sqrt(3)))
    assert d["verdict"] == "better"
    e = rows["v-e"]
    assert e["low"] < 0 < e["high"] and e["verdict"] == "within noise"
    f = rows["v-f"]  # n = 1: no interval, and the row says why; its failed seed is counted
    assert f["n"] == 1 and f["failed"] == 1 and f["low"] is None and "n = 1" in f["undefined"] and f["verdict"] == "n/a"
    assert rows["v-a_nl-4"]["n"] == 1 and rows["v-a_nl-4"]["undefined"]
    assert [r["name"] for r in result["rows"][1:]] == ["v-d", "v-f", "v-e", "v-b", "v-c", "v-a_nl-4"]  # best first
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["baseline"] == "v-a" and saved["test"] == "Welch t" and len(saved["rows"]) == 7


def test_paired_intervals_by_hand(tmp_path, capsys):
    log = tmp_path / "log.yaml"
    synthetic_log(log)
    result = compare.main([str(log), "--baseline", "v-a", "--paired", "--confidence", "0.95"])
    rows = {r["name"]: r for r in result["rows"]}
    c = rows["v-c"]  # 3 +- t(0.975, 2) 0.5 / sqrt(3)
    half = 4.302652730 * 0.5 / math.sqrt(3)
    assert (c["pairs"], c["df"], c["seeds"]) == (3, 2, [1, 2, 3])
    assert (c["low"], c["high"]) == (pytest.approx(3 - half), pytest.approx(3 + half)) and c["verdict"] == "worse"
    b = rows["v-b"]  # every difference is 3: no spread, the interval is the point 3
    assert (b["low"], b["high"]) == (pytest.approx(3.0), pytest.approx(3.0)) and b["verdict"] == "worse"
    assert rows["v-f"]["undefined"].startswith("1 seed(s) in common")
    out = capsys.readouterr().out
    assert "paired t" in out and "batch order" in out and "undefined" in out


def test_higher_is_better_flips_the_verdict_and_the_order():
    rows = compare.compare([
        {"name": "base", "key": "k", "settings": {}, "n": 2, "mean": 1.0, "std": 0.0, "values": [1.0, 1.0],
         "seeds": [1, 2], "failed": 0, "missing": 0},
        {"name": "fast", "key": "k", "settings": {}, "n": 2, "mean": 2.0, "std": 0.0, "values": [2.0, 2.0],
         "seeds": [1, 2], "failed": 0, "missing": 0}], 0, higher_is_better=True)
    assert rows[1]["verdict"] == "better"
    assert compare.verdict(-2.0, -1.0) == "better" and compare.verdict(-1.0, 1.0) == "within noise"


def test_baseline_errors_are_one_line(tmp_path):
    log = tmp_path / "log.yaml"
    synthetic_log(log)
    with pytest.raises(UserError, match="matches 2 configurations .*differ in n_layer"):
        compare.main([str(log), "--baseline", "variant=a"])
    with pytest.raises(UserError, match=r"no configuration has variant=z; its values: "):
        compare.main([str(log), "--baseline", "variant=z"])
    with pytest.raises(UserError, match="no configuration sets 'varaint'"):
        compare.main([str(log), "--baseline", "varaint=a"])
    with pytest.raises(UserError, match="--confidence must be between 0 and 1"):
        compare.main([str(log), "--baseline", "v-a", "--confidence", "95"])


def test_without_scipy_the_exact_quantile_is_used(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "scipy.stats", None)  # `from scipy.stats import t` fails
    assert compare.t_quantile(0.975, 4) == pytest.approx(2.776445105, abs=1e-9)
