"""optimization_and_search/results.py as every reader sees it: a damaged log keeps its readable documents
and says where the others are; one row per run (its last attempt) in the results, the CSV and the plan;
configurations (settings without the seed) and their statistics over seeds against direct computations."""
from __future__ import annotations

import csv
import statistics

import pytest

from errors import UserError
from optimization_and_search import hyperparam_search as hs
from optimization_and_search.results import (aggregate_by_config, append_log, config_key, config_name, latest_by_name,
                                             load_log, read_yaml_file, run_seed, seed_run_name,
                                             write_config_csv)
from optimization_and_search.run_experiments import main
from optimization_and_search.sweep_config import load_sweep


def write_sweep(tmp_path, char_data) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(f"preset: debug\nmax_iters: 6\ndevice: cpu\ndataset: {char_data}\nn_layer: [1, 2]\n")
    return str(path)


def attempt(name: str, status: str, settings: dict, loss: float | None = None) -> dict:
    return {"name": name, "status": status, "exit_code": 0 if status == "completed" else None,
            "settings": settings, "summary": {"best_val_loss": loss, "num_params": 100} if loss else None}


def damage(path, document: int) -> int:
    """Put a non-UTF-8 byte into the given document (1-based); the byte's offset."""
    data = path.read_bytes()
    start = -1
    for _ in range(document):
        start = data.index(b"---\n", start + 1)
    at = data.index(b"status:", start)
    path.write_bytes(data[:at] + b"\xff" + data[at:])
    return at


def test_a_non_utf8_document_is_reported_with_its_position_and_the_rest_is_kept(tmp_path, capsys):
    log = tmp_path / "log.yaml"
    for name in ("a", "b", "c"):
        append_log(log, attempt(name, "completed", {"n_layer": 1}, 1.0))
    at = damage(log, 2)
    assert [d["name"] for d in load_log(log)] == ["a", "c"]
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"warning: {log}: document 2 (byte ") and f"is not UTF-8 (byte {at}); skipped" in line
    append_log(log, attempt("d", "completed", {"n_layer": 1}, 1.0))  # the log still grows
    assert [d["name"] for d in load_log(log, warn=lambda _: None)] == ["a", "c", "d"]


def test_a_damaged_single_document_log_is_one_line_saying_where(tmp_path):
    path = tmp_path / "search.yaml"
    path.write_bytes(b"name: t\nsteps: []\nnote: caf\xe9\n")
    with pytest.raises(UserError, match=r"^search log \S+ is not UTF-8 \(byte 27, line 3\); repair it or move it away$"):
        hs.load_log(path)
    path.write_text("name: t\nsteps: [\n")
    with pytest.raises(UserError, match=r"is not valid YAML \(.*line 3 column 1\)"):
        read_yaml_file(path, "search log")


def test_interrupted_then_completed_is_one_row_and_a_damaged_document_is_skipped(tmp_path, char_data, capsys):
    """Every reader goes through latest_by_name: the plan, the results table and the CSV of the runner."""
    config = write_sweep(tmp_path, char_data)
    one, two = load_sweep(config).runs
    log = tmp_path / "logs" / "s.yaml"
    append_log(log, attempt(one.name, "interrupted", one.settings))
    append_log(log, attempt(two.name, "failed", two.settings))
    append_log(log, attempt(one.name, "completed", one.settings, 1.5))
    append_log(log, attempt(two.name, "completed", two.settings, 1.25))  # the retry of the failed run
    append_log(log, attempt("old-run", "completed", {"n_layer": 9}, 2.0))
    damage(log, 5)
    assert [(d["name"], d["status"]) for d in latest_by_name(load_log(log)).values()] == [
        (one.name, "completed"), (two.name, "completed")]
    result = main(["-c", config, "--out_root", str(tmp_path / "out"), "--log_dir", str(tmp_path / "logs"),
                   "--csv", str(tmp_path / "s.csv")])
    assert result["ran"] == [] and [t.state for t in result["tasks"]] == ["done", "done"]
    with open(tmp_path / "s.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["name"], r["status"], r["best_val_loss"]) for r in rows] == [
        (one.name, "completed", "1.5"), (two.name, "completed", "1.25")]
    err = capsys.readouterr().err
    assert "document 5 (byte" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing trained


# ------------------------------------------------------------------------------------ configurations
def seeded_attempts(log):
    """Two configurations over seeds 1..3 (one seed of b failed, one interrupted and then completed), an
    older run without a seed, and a completed run without the metric."""
    values = {"a": [1.50, 1.40, 1.62], "b": [1.30, None, 1.36]}
    for seed in (1, 2, 3):
        for config, losses in values.items():
            settings = {"softmax_variant_attn": config, "n_layer": 2, "seed": seed}
            name = f"sva-{config}_seed-{seed}"
            if config == "a" and seed == 3:
                append_log(log, attempt(name, "interrupted", settings))
            if losses[seed - 1] is None:
                append_log(log, attempt(name, "failed", settings))
            else:
                append_log(log, {**attempt(name, "completed", settings, losses[seed - 1]),
                                 "summary": {"best_val_loss": losses[seed - 1], "num_params": 100 * seed}})
    append_log(log, attempt("old", "completed", {"softmax_variant_attn": "a", "n_layer": 4}, 2.0))
    append_log(log, {"name": "sva-c_seed-1", "status": "completed",
                     "settings": {"softmax_variant_attn": "c", "n_layer": 2, "seed": 1}, "summary": {}})
    return values


def test_configuration_key_and_name_leave_the_seed_out():
    a1 = {"n_layer": 2, "seed": 1, "softmax_variant_attn": "a"}
    assert config_key(a1) == config_key({"softmax_variant_attn": "a", "n_layer": 2, "seed": 7})
    assert config_key(a1) == config_key({"softmax_variant_attn": "a", "n_layer": 2})
    assert config_key(a1) != config_key({"softmax_variant_attn": "a", "n_layer": 3, "seed": 1})
    assert seed_run_name("sva-a", 1337) == "sva-a_seed-1337"
    assert config_name("sva-a_seed-1337", {"seed": 1337}) == "sva-a"
    assert config_name("seed-1_sva-a", {"seed": 1}) == "sva-a"             # an older sweep that varied seed
    assert config_name("sva-a_seed-1337", {}) == "sva-a_seed-1337"         # no seed setting: the name as is
    assert config_name("trial_3_seed-2", {"seed": 2}) == "trial_3"
    assert run_seed({"settings": {"seed": 5}, "config": {"train": {"seed": 5}}}) == 5
    assert run_seed({"settings": {}, "config": {"train": {"seed": 1337}}}) == 1337  # train.py's default, recorded
    assert run_seed({"settings": {}, "config": None}) is None


def test_aggregate_by_config_against_direct_computations(tmp_path):
    log = tmp_path / "log.yaml"
    values = seeded_attempts(log)
    configs = {c["name"]: c for c in aggregate_by_config(load_log(log), "best_val_loss")}
    assert list(configs) == ["sva-a", "sva-b", "old", "sva-c"]
    a, b = configs["sva-a"], configs["sva-b"]
    assert (a["n"], a["seeds"], a["failed"], a["missing"]) == (3, [1, 2, 3], 0, 0)  # interrupted, then completed
    assert a["mean"] == pytest.approx(statistics.mean(values["a"]))
    assert a["std"] == pytest.approx(statistics.stdev(values["a"]))
    assert (a["min"], a["max"]) == (1.40, 1.62) and a["values"] == values["a"]
    assert a["settings"] == {"softmax_variant_attn": "a", "n_layer": 2}
    assert (b["n"], b["seeds"], b["failed"]) == (2, [1, 3], 1)  # the failed seed is left out and counted
    assert b["mean"] == pytest.approx(statistics.mean([1.30, 1.36]))
    assert b["std"] == pytest.approx(statistics.stdev([1.30, 1.36]))
    old = configs["old"]
    assert (old["n"], old["mean"], old["std"], old["seeds"]) == (1, 2.0, None, [None])  # n = 1: no sd
    c = configs["sva-c"]
    assert (c["n"], c["missing"], c["mean"], c["min"]) == (0, 1, None, None)
    params = {x["name"]: x for x in aggregate_by_config(load_log(log), "num_params")}  # any summary key
    assert params["sva-a"]["mean"] == pytest.approx(statistics.mean([100, 200, 300]))
    # the same configuration and seed under another name (an Optuna trial repeating parameters): counted once
    append_log(log, attempt("trial_9_seed-2", "completed", {"softmax_variant_attn": "a", "n_layer": 2, "seed": 2}, 1.0))
    again = aggregate_by_config(load_log(log))[0]
    assert (again["n"], again["values"], again["runs"][1]) == (3, [1.50, 1.0, 1.62], "trial_9_seed-2")


def test_config_csv_one_row_per_configuration(tmp_path):
    log = tmp_path / "log.yaml"
    values = seeded_attempts(log)
    write_config_csv(tmp_path / "c.csv", load_log(log))
    with open(tmp_path / "c.csv", newline="") as f:
        rows = {r["configuration"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["sva-a", "sva-b", "old", "sva-c"]
    a = rows["sva-a"]
    assert (a["runs"], a["failed"], a["seeds"], a["softmax_variant_attn"], a["n_layer"]) == ("3", "0", "1 2 3", "a", "2")
    assert "seed" not in a
    assert float(a["best_val_loss_mean"]) == pytest.approx(statistics.mean(values["a"]))
    assert float(a["best_val_loss_std"]) == pytest.approx(statistics.stdev(values["a"]))
    assert (float(a["best_val_loss_min"]), float(a["best_val_loss_max"])) == (1.40, 1.62)
    assert rows["sva-b"]["failed"] == "1" and rows["sva-b"]["seeds"] == "1 3"
    assert rows["old"]["best_val_loss_std"] == "" and rows["sva-c"]["runs"] == "1"
