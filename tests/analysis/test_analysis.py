"""analysis/summarize_runs.py over real run directories."""
from __future__ import annotations

import csv
import importlib.util

import pytest

import train
from errors import UserError

from conftest import ROOT

spec = importlib.util.spec_from_file_location("summarize_runs", ROOT / "analysis" / "summarize_runs.py")
summarize_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(summarize_runs)


def test_table_filter_sort_and_csv(char_data, tmp_path, capsys):
    for name, sm in (("a_softmax", "softmax"), ("b_consmax", "consmax")):
        train.main(["--preset", "debug", "--dataset", str(char_data), "--device", "cpu", "--max_iters", "4",
                    "--out_dir", str(tmp_path / "runs" / name), "--softmax_variant_attn", sm])
    rows = summarize_runs.main([str(tmp_path / "runs"), "--sort", "run", "--csv", str(tmp_path / "t.csv")])
    assert [r["run"] for r in rows] == ["a_softmax", "b_consmax"]
    assert rows[1]["softmax_variant_attn"] == "consmax" and rows[0]["status"] == "completed"
    out = capsys.readouterr().out
    assert "a_softmax" in out and "b_consmax" in out
    with open(tmp_path / "t.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["run"] for t in table] == ["a_softmax", "b_consmax"] and "best_val_loss" in table[0]
    only = summarize_runs.main([str(tmp_path / "runs"), "--filter", "cons"])
    assert [r["run"] for r in only] == ["b_consmax"]
    with pytest.raises(UserError, match="not a valid regular expression"):
        summarize_runs.main([str(tmp_path / "runs"), "--filter", "("])
    with pytest.raises(UserError, match="is not a folder"):
        summarize_runs.main([str(tmp_path / "none")])
