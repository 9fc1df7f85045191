"""analysis/inspect_ckpts.py over three tiny real runs: values equal summary.json and the checkpoints,
the differing settings, sort, filter, CSV/JSON round trips, --watch, and the one-line errors."""
from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch

import train
from analysis import inspect_ckpts
from errors import UserError

from conftest import run_script

# name -> extra flags: b differs from a in n_layer, c in the attention softmax
RUNS = {"a": [], "b": ["--n_layer", "3"], "c": ["--softmax_variant_attn", "consmax"]}


_trained: dict[str, object] = {}  # pytest sets an imported fixture up once per importing module: train once


@pytest.fixture(scope="session")
def runs_root(char_data, tmp_path_factory):
    """Three debug runs of 10 steps (evaluated at 0, 5, 10) under one folder; shared with
    test_checkpoint_stats.py and test_plot_runs.py, which import this fixture."""
    if str(char_data) not in _trained:
        root = tmp_path_factory.mktemp("inspect") / "runs"
        for name, extra in RUNS.items():
            train.main(["--preset", "debug", "--dataset", str(char_data), "--device", "cpu", "--max_iters", "10",
                        "--eval_interval", "5", "--out_dir", str(root / name), *extra])
        _trained[str(char_data)] = root
    return _trained[str(char_data)]


def summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_rows_equal_summaries_and_checkpoints(runs_root, capsys):
    rows = inspect_ckpts.main([str(runs_root), "--sort", "run"])
    assert [r["run"] for r in rows] == ["a", "b", "c"]
    for r in rows:
        s = summary(runs_root / r["run"])
        assert (r["best_val_loss"], r["best_iter"], r["iter"], r["num_params"], r["status"], r["source"]) == (
            s["best_val_loss"], s["best_iter"], s["iters"], s["num_params"], "completed", "summary.json")
    # exactly the settings that differ, nothing that is equal (and not out_dir, which always differs)
    assert list(rows[0])[len(inspect_ckpts.COLUMNS):] == ["n_layer", "softmax_variant_attn", *(
        f"L{i}.attn.softmax.{p}" for i in (0, 1) for p in ("beta", "gamma"))]  # then run c's learned constants
    assert [(r["n_layer"], r["softmax_variant_attn"]) for r in rows] == [(2, "softmax"), (3, "softmax"),
                                                                          (2, "consmax")]
    out = capsys.readouterr().out
    assert "3 runs in" in out and "consmax" in out and "n_layer" in out

    from_ckpt = inspect_ckpts.main([str(runs_root), "--sort", "run", "--from_ckpt"])
    for r, c in zip(rows, from_ckpt):
        ckpt = torch.load(runs_root / r["run"] / "ckpt_last.pt", weights_only=True)
        assert c["source"] == "ckpt_last.pt" and c["best_val_loss"] == ckpt["best_val_loss"]
        assert {**c, "source": r["source"]} == r  # the checkpoint tells the same story as summary.json


def test_learned_constants_are_recorded_and_shown(runs_root, capsys):
    """summary.json's learned_constants hold ConSmax's final beta and gamma of every layer (the values
    in the last checkpoint); inspect_ckpts shows them as columns, for the runs that have them."""
    ckpt = torch.load(runs_root / "c" / "ckpt_last.pt", weights_only=True)["model"]
    constants = summary(runs_root / "c")["learned_constants"]
    assert sorted(constants) == [f"transformer.h.{i}.attn.softmax.{p}" for i in (0, 1) for p in ("beta", "gamma")]
    for name, value in constants.items():
        assert value == pytest.approx(ckpt[name].item())
    assert constants["transformer.h.0.attn.softmax.beta"] != 2.5  # trained away from --consmax_beta_init
    assert summary(runs_root / "a")["learned_constants"] == {}  # softmax learns no constants
    rows = inspect_ckpts.main([str(runs_root), "--sort", "run"])
    assert rows[2]["L1.attn.softmax.gamma"] == constants["transformer.h.1.attn.softmax.gamma"]
    assert rows[0]["L0.attn.softmax.beta"] is None
    assert "L0.attn.softmax.beta" in capsys.readouterr().out


def test_differing_keys():
    runs = [{"n_layer": 2, "bias": False, "lr": 1e-3}, {"n_layer": 2, "bias": True, "lr": 1e-3},
            {"n_layer": 2, "bias": False}]
    assert inspect_ckpts.differing_keys(runs) == ["bias", "lr"]  # a missing key differs from any value
    assert inspect_ckpts.differing_keys([{"x": [1, 2]}, {"x": [1, 2]}]) == []
    assert inspect_ckpts.differing_keys([runs[0]]) == []


def test_sort_and_filter(runs_root):
    losses = {n: summary(runs_root / n)["best_val_loss"] for n in RUNS}
    rows = inspect_ckpts.main([str(runs_root)])  # default: best val loss, ascending
    assert [r["run"] for r in rows] == sorted(RUNS, key=losses.get)
    rows = inspect_ckpts.main([str(runs_root), "--sort", "best_val_loss", "--desc"])
    assert [r["run"] for r in rows] == sorted(RUNS, key=losses.get, reverse=True)
    rows = inspect_ckpts.main([str(runs_root), "--sort", "n_layer", "--descending"])
    assert rows[0]["run"] == "b"
    only = inspect_ckpts.main([str(runs_root), "--filter", "^(a|c)$", "--sort", "run"])
    assert [r["run"] for r in only] == ["a", "c"]
    assert list(only[0])[len(inspect_ckpts.COLUMNS):][:2] == ["softmax_variant_attn", "L0.attn.softmax.beta"]  # n_layer is equal now
    with pytest.raises(UserError, match=r"unknown --sort column 'nlayer'; did you mean 'n_layer'\?"):
        inspect_ckpts.main([str(runs_root), "--sort", "nlayer"])


def test_csv_and_json_round_trip(runs_root, tmp_path):
    csv_path, json_path = tmp_path / "t" / "runs.csv", tmp_path / "runs.json"
    rows = inspect_ckpts.main([str(runs_root), "--sort", "run", "--csv", str(csv_path), "--json", str(json_path)])
    assert json.loads(json_path.read_text()) == rows
    with open(csv_path, newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(rows[0])
    for r, t in zip(rows, table):
        assert t["run"] == r["run"] and float(t["best_val_loss"]) == r["best_val_loss"]
        assert int(t["num_params"]) == r["num_params"] and int(t["n_layer"]) == r["n_layer"]
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporary files


def test_watch_rereads_the_runs(runs_root, tmp_path, monkeypatch):
    root = tmp_path / "runs"
    shutil.copytree(runs_root / "a", root / "a")
    sleeps = []

    def fake_sleep(seconds):  # while "waiting", a new run appears
        sleeps.append(seconds)
        shutil.copytree(runs_root / "b", root / f"new{len(sleeps)}")

    monkeypatch.setattr(inspect_ckpts.time, "sleep", fake_sleep)
    rows = inspect_ckpts.main([str(root), "--watch", "0.5", "--watch_count", "3", "--sort", "run"])
    assert sleeps == [0.5, 0.5] and [r["run"] for r in rows] == ["a", "new1", "new2"]
    with pytest.raises(UserError, match="--watch_count needs --watch"):
        inspect_ckpts.main([str(root), "--watch_count", "2"])


def test_checkpoint_read_only_when_needed_and_corrupt(runs_root, tmp_path):
    run = tmp_path / "runs" / "a"
    shutil.copytree(runs_root / "a", run)
    (run / "ckpt_last.pt").write_bytes(b"\x00garbage, not a zip file" * 10)
    (run / "ckpt_best.pt").unlink()
    # summary.json and config.json suffice: the corrupt checkpoint is not read
    assert inspect_ckpts.main([str(run.parent)])[0]["best_val_loss"] == summary(runs_root / "a")["best_val_loss"]
    with pytest.raises(UserError, match=r"checkpoint .*ckpt_last.pt is corrupt or truncated"):
        inspect_ckpts.main([str(run.parent), "--from_ckpt"])
    (run / "summary.json").write_text('{"status": "runn')  # truncated: the checkpoint must stand in
    with pytest.raises(UserError, match="corrupt or truncated"):
        inspect_ckpts.main([str(run.parent)])
    shutil.copy(runs_root / "a" / "ckpt_last.pt", run / "ckpt_last.pt")
    row = inspect_ckpts.main([str(run.parent)])[0]
    assert row["source"] == "ckpt_last.pt" and row["status"] is None
    assert row["best_val_loss"] == summary(runs_root / "a")["best_val_loss"]


def test_errors(tmp_path, runs_root):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(UserError, match=r"^no runs under .*empty \(no folder holds summary.json or ckpt_last.pt"):
        inspect_ckpts.main([str(tmp_path / "empty")])
    with pytest.raises(UserError, match="does not exist"):
        inspect_ckpts.main([str(tmp_path / "missing")])
    with pytest.raises(UserError, match=r"--filter '\(' is not a valid regular expression"):
        inspect_ckpts.main([str(runs_root), "--filter", "("])
    with pytest.raises(UserError, match=r"none of the 3 runs under .* matches --filter 'zzz' \(runs: a, b, c\)"):
        inspect_ckpts.main([str(runs_root), "--filter", "zzz"])


@pytest.mark.slow
def test_script_runs_and_reports_errors_in_one_line(runs_root, tmp_path):
    ok = run_script("analysis/inspect_ckpts.py", str(runs_root))
    assert ok.returncode == 0, ok.stderr
    assert "3 runs in" in ok.stdout and "consmax" in ok.stdout
    (tmp_path / "empty").mkdir()
    bad = run_script("analysis/inspect_ckpts.py", str(tmp_path / "empty"))
    assert bad.returncode == 2 and bad.stderr.startswith("error: no runs under") and bad.stderr.count("\n") == 1


def test_resumed_run_has_the_same_settings(runs_root, tmp_path):
    for name in ("a", "a_resumed"):
        shutil.copytree(runs_root / "a", tmp_path / name)
    config = json.loads((tmp_path / "a_resumed" / "config.json").read_text())
    config["train"]["init_from"] = "resume"
    (tmp_path / "a_resumed" / "config.json").write_text(json.dumps(config))
    rows = inspect_ckpts.main([str(tmp_path)])
    assert len(rows) == 2 and all(len(r) == len(inspect_ckpts.COLUMNS) for r in rows)  # nothing differs
    config["train"]["init_from"] = "out/base"  # fine-tuned from another run: a real difference
    (tmp_path / "a_resumed" / "config.json").write_text(json.dumps(config))
    assert [r["init_from"] for r in inspect_ckpts.main([str(tmp_path), "--sort", "run"])] == ["scratch", "out/base"]
