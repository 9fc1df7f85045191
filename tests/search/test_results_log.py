"""optimization_and_search/results.py as every reader sees it: a damaged log keeps its readable documents
and says where the others are; one row per run (its last attempt) in the results, the CSV and the plan."""
from __future__ import annotations

import csv

import pytest

from errors import UserError
from optimization_and_search import hyperparam_search as hs
from optimization_and_search.results import append_log, latest_by_name, load_log, read_yaml_file
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
