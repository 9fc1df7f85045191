"""analysis/plot_runs.py: the plotted series are metrics.jsonl's records (iter, tokens, time), the PNG, errors."""
from __future__ import annotations

import shutil

import pytest

from analysis import plot_runs
from errors import UserError
from test_inspect_ckpts import RUNS, runs_root  # noqa: F401  (the three tiny runs a, b, c)

from conftest import read_metrics

PNG = b"\x89PNG\r\n\x1a\n"


def test_series_are_the_metrics_records(runs_root, tmp_path, capsys):  # noqa: F811
    result = plot_runs.main([str(runs_root), "--out", str(tmp_path / "fig" / "loss.png"), "--log_y"])
    assert (tmp_path / "fig" / "loss.png").read_bytes()[:8] == PNG
    assert list(result["series"]) == list(RUNS)  # a folder of runs: every run, named by its path below it
    for name, s in result["series"].items():
        records = read_metrics(runs_root / name)
        train = [r for r in records if r["type"] == "train"]
        evals = [r for r in records if r["type"] == "eval"]
        assert result["counts"][name] == {"train": len(train), "val": len(evals)} == {"train": 10, "val": 3}
        assert s["train"] == ([r["iter"] for r in train], [r["loss"] for r in train])
        assert s["val"] == ([r["iter"] for r in evals], [r["val_loss"] for r in evals])
    assert "a (10 train, 3 val points)" in capsys.readouterr().out


def test_x_tokens_and_time(runs_root, tmp_path):  # noqa: F811
    runs = [str(runs_root / "a"), str(runs_root / "c")]
    by_tokens = plot_runs.main([*runs, "--x", "tokens", "--out", str(tmp_path / "t.png")])
    assert list(by_tokens["series"]) == ["a", "c"]
    records = read_metrics(runs_root / "a")
    assert by_tokens["series"]["a"]["train"][0] == [r["tokens"] for r in records if r["type"] == "train"]
    by_time = plot_runs.main([*runs, "--x", "time", "--out", str(tmp_path / "w.png")])
    evals = [r for r in records if r["type"] == "eval"]
    xs, _ = by_time["series"]["a"]["train"]
    assert by_time["series"]["a"]["val"][0] == [r["wall_time_s"] for r in evals]
    # train steps: between the first and last evaluation's time, in step order
    assert xs == sorted(xs) and evals[0]["wall_time_s"] <= xs[0] and xs[-1] <= evals[-1]["wall_time_s"]
    assert by_time["counts"] == by_tokens["counts"] and (tmp_path / "w.png").read_bytes()[:8] == PNG


def test_filter_and_truncated_metrics(runs_root, tmp_path):  # noqa: F811
    root = tmp_path / "runs"
    for name in RUNS:
        shutil.copytree(runs_root / name, root / "sweep" / name)
    with open(root / "sweep" / "b" / "metrics.jsonl", "a") as f:
        f.write('{"iter": 11, "type": "tra')  # a run killed in the middle of a line
    result = plot_runs.main([str(root), "--filter", "sweep/[ab]$", "--out", str(tmp_path / "f.png")])
    assert list(result["series"]) == ["a", "b"] and result["counts"]["b"] == {"train": 10, "val": 3}


def test_errors(runs_root, tmp_path):  # noqa: F811
    (tmp_path / "empty").mkdir()
    out = str(tmp_path / "x.png")
    with pytest.raises(UserError, match=r"^no runs under .*empty \(no folder holds metrics.jsonl\)"):
        plot_runs.main([str(tmp_path / "empty"), "--out", out])
    with pytest.raises(UserError, match="does not exist"):
        plot_runs.main([str(tmp_path / "missing"), "--out", out])
    with pytest.raises(UserError, match=r"--filter '\(' is not a valid regular expression"):
        plot_runs.main([str(runs_root), "--filter", "(", "--out", out])
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match="none of the 1 runs has a loss in its metrics.jsonl yet"):
        plot_runs.main([str(tmp_path / "fresh"), "--out", out])
    with pytest.raises(UserError, match="invalid choice: 'wall'"):
        plot_runs.main([str(runs_root), "--x", "wall", "--out", out])
