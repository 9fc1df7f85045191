"""analysis/plot_sweep.py: the Pareto front on hand-made points, the PNG, errors for missing keys; with
seeds: points are configuration means with sd error bars, the front over the means, the constant-axis
warning, bar charts with error bars and a y axis that starts at 0 only when that keeps the differences."""
from __future__ import annotations

import importlib.util
import statistics

import pytest

from conftest import ROOT
from errors import UserError
from optimization_and_search.results import append_log

spec = importlib.util.spec_from_file_location("plot_sweep", ROOT / "analysis" / "plot_sweep.py")
plot_sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_sweep)


def test_pareto_front_on_hand_made_points():
    front = plot_sweep.pareto_front
    assert front([]) == []
    assert front([(1.0, 5.0)]) == [0]
    #          0           1           2           3           4           5
    points = [(3.0, 2.0), (1.0, 4.0), (2.0, 3.0), (2.0, 3.5), (4.0, 2.0), (5.0, 1.0)]
    # 3 is beaten by 2 (same cost, lower loss); 4 by 0 (same loss, cheaper)
    assert front(points) == [1, 2, 0, 5]
    assert front([(1.0, 1.0), (2.0, 2.0), (3.0, 3.0)]) == [0]          # one point dominates all
    assert front([(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)]) == [0, 1, 2]    # a clean trade-off
    assert front([(1.0, 2.0), (1.0, 2.0), (0.5, 3.0)]) == [2, 0, 1]    # exact duplicates are both on it


def fake_log(path):
    runs = [("sva-softmax_nl-1", "softmax", 1, 1000, 2.0), ("sva-softmax_nl-2", "softmax", 2, 2000, 1.6),
            ("sva-consmax_nl-1", "consmax", 1, 1000, 1.9), ("sva-consmax_nl-2", "consmax", 2, 2000, 1.7)]
    for name, sm, nl, params, loss in runs:
        append_log(path, {"name": name, "status": "completed", "exit_code": 0,
                          "settings": {"max_iters": 6, "softmax_variant_attn": sm, "n_layer": nl},
                          "config": {"model": {"n_layer": nl, "n_embd": 32}, "train": {"max_iters": 6}},
                          "summary": {"best_val_loss": loss, "num_params": params, "macs_per_token": 3 * params,
                                      "energy_pj_per_token_decode": (5 if sm == "softmax" else 4) * params,
                                      "tokens_per_s": None}})
    append_log(path, {"name": "broken", "status": "failed", "exit_code": 2, "settings": {"n_layer": 9},
                      "summary": None, "log_tail": "error"})


def test_plot_writes_png_with_front_and_bars(tmp_path):
    log = tmp_path / "sweep.yaml"
    fake_log(log)
    result = plot_sweep.main([str(log)])
    assert result["out"] == tmp_path / "sweep.png"
    assert result["out"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["front"] == ["sva-consmax_nl-1", "sva-softmax_nl-2"]
    assert result["varied"] == ["softmax_variant_attn", "n_layer"]  # failed runs are left out
    assert plot_sweep.bar_groups([d for d in plot_sweep.load_log(log) if d["status"] == "completed"],
                                 "softmax_variant_attn", "best_val_loss") == [
        ("softmax", pytest.approx(1.8), pytest.approx(statistics.stdev([2.0, 1.6])), 2),
        ("consmax", pytest.approx(1.8), pytest.approx(statistics.stdev([1.9, 1.7])), 2)]
    other = plot_sweep.main([str(log), "--x", "macs_per_token", "--y", "best_val_loss", "--logx",
                             "--out", str(tmp_path / "sub" / "macs.png")])
    assert (tmp_path / "sub" / "macs.png").stat().st_size > 0 and other["front"] == result["front"]
    by_config = plot_sweep.main([str(log), "--x", "n_embd", "--out", str(tmp_path / "e.png")])  # a config key
    assert by_config["front"] == ["sva-softmax_nl-2"]
    # loss against the PPA estimate's energy: consmax, cheaper per token here, joins the front at 2 layers
    energy = plot_sweep.main([str(log), "--x", "energy_pj_per_token_decode", "--out", str(tmp_path / "en.png")])
    assert energy["front"] == ["sva-consmax_nl-1", "sva-consmax_nl-2", "sva-softmax_nl-2"]


def test_plot_errors(tmp_path):
    log = tmp_path / "sweep.yaml"
    fake_log(log)
    with pytest.raises(UserError, match="--x 'macs_per_tok' is not a numeric key.*did you mean 'macs_per_token'"):
        plot_sweep.main([str(log), "--x", "macs_per_tok"])
    with pytest.raises(UserError, match="--y 'tokens_per_s' is not a numeric key"):  # never a number here
        plot_sweep.main([str(log), "--y", "tokens_per_s"])
    with pytest.raises(UserError, match="not found"):
        plot_sweep.main([str(tmp_path / "none.yaml")])
    only_failed = tmp_path / "failed.yaml"
    append_log(only_failed, {"name": "x", "status": "failed", "exit_code": 1})
    with pytest.raises(UserError, match="no completed run"):
        plot_sweep.main([str(only_failed)])


def test_one_point_per_run_its_last_attempt_and_a_damaged_document_skipped(tmp_path, capsys):
    log = tmp_path / "sweep.yaml"
    append_log(log, {"name": "a", "status": "interrupted", "settings": {"n_layer": 1}, "summary": None})
    fake_log(log)
    append_log(log, {"name": "a", "status": "completed", "settings": {"n_layer": 1},
                     "summary": {"best_val_loss": 1.5, "num_params": 1500}})
    data = log.read_bytes()
    at = data.index(b"sva-softmax_nl-2")  # damage the second document
    log.write_bytes(data[:at] + b"\xff" + data[at:])
    result = plot_sweep.main([str(log)])
    assert sorted(result["names"]) == ["a", "sva-consmax_nl-1", "sva-consmax_nl-2", "sva-softmax_nl-1"]
    assert result["points"][result["names"].index("a")] == (1500.0, 1.5)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{log}: document 3 (byte " in err[0] and f"(byte {at})" in err[0]


# ------------------------------------------------------------------------------------ seeds and spread
SEEDED = {  # configuration -> (num_params, best val loss per seed 1, 2, 3)
    "sva-softmax": (1000, [2.0, 1.0, 1.5]),    # mean 1.5; its seed 2 alone would beat every other run
    "sva-consmax": (2000, [1.2, 1.4, 1.6]),    # mean 1.4: on the front of the means
    "sva-relumax": (1000, [1.6, 1.6, 1.6]),    # mean 1.6 at the same cost as softmax: dominated
}


def seeded_log(path, params=None):
    for seed in (1, 2, 3):
        for config, (n_params, losses) in SEEDED.items():
            append_log(path, {"name": f"{config}_seed-{seed}", "status": "completed", "exit_code": 0,
                              "settings": {"softmax_variant_attn": config.split("-")[1], "seed": seed},
                              "summary": {"best_val_loss": losses[seed - 1],
                                          "num_params": params if params is not None else n_params}})
    append_log(path, {"name": "sva-relumax_seed-4", "status": "failed", "exit_code": 1,
                      "settings": {"softmax_variant_attn": "relumax", "seed": 4}, "summary": None})


def test_points_are_configuration_means_with_error_bars_and_the_front_is_over_the_means(tmp_path):
    log = tmp_path / "seeded.yaml"
    seeded_log(log)
    result = plot_sweep.main([str(log)])
    png = result["out"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    by_name = {c["name"]: c for c in result["configs"]}
    assert sorted(by_name) == sorted(SEEDED)
    for name, (n_params, losses) in SEEDED.items():
        c = by_name[name]
        assert c["y"] == pytest.approx(statistics.mean(losses)) and c["y_sd"] == pytest.approx(statistics.stdev(losses))
        assert c["x"] == n_params and c["x_sd"] == 0.0 and c["n"] == 3 and c["seeds"] == [1, 2, 3]
    assert by_name["sva-relumax"]["failed"] == 1  # the failed seed is left out and counted
    assert result["names"] == ["sva-consmax", "sva-softmax", "sva-relumax"]  # numbered by mean loss
    assert result["front"] == ["sva-softmax", "sva-consmax"]  # per run, softmax's seed 2 alone would be the front
    assert result["varied"] == ["softmax_variant_attn"]  # never the seed
    assert result["warnings"] == []


def test_constant_x_axis_is_a_warning_not_a_silent_line(tmp_path, capsys):
    log = tmp_path / "flat.yaml"
    seeded_log(log, params=5000)
    result = plot_sweep.main([str(log), "--out", str(tmp_path / "flat.png")])
    err = capsys.readouterr().err
    assert "warning: --x num_params is 5000 in every configuration" in err and "best_val_loss" in err
    assert result["warnings"] and (tmp_path / "flat.png").stat().st_size > 0


def test_bar_axis_starts_at_zero_unless_that_hides_the_differences():
    low, high, from_zero = plot_sweep.bar_limits([("a", 1.50, 0.01, 3), ("b", 1.55, 0.02, 3)])
    assert not from_zero and 1.0 < low < 1.49 and 1.57 < high < 1.7
    low, high, from_zero = plot_sweep.bar_limits([("a", 1.0, None, 1), ("b", 3.0, None, 1)])
    assert from_zero and low == 0.0 and high == pytest.approx(3.15)


def test_labels_of_points_on_top_of_each_other_are_merged():
    points = [(1000.0, 1.5), (1001.0, 1.5001), (2000.0, 1.0), (1500.0, 1.25)]
    assert plot_sweep.label_groups(points) == [[0, 1], [2], [3]]
    assert plot_sweep.label_groups([(1.0, 1.0)]) == [[0]]
