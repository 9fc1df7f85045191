"""optimization_and_search/run_experiments.py: dry run, a real 2-run sweep, resume, failed runs, logs, CSV."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_script
from errors import UserError
from optimization_and_search import results, run_experiments
from optimization_and_search.results import append_log, dump_doc, load_log
from optimization_and_search.run_experiments import main
from optimization_and_search.sweep_config import load_sweep


def write_sweep(tmp_path, char_data, body: str, name: str = "s") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"preset: debug\nmax_iters: 6\ndevice: cpu\ndataset: {char_data}\n" + body)
    return str(path)


def sweep_args(tmp_path, config: str, *extra: str) -> list[str]:
    return ["-c", config, "--out_root", str(tmp_path / "out"), "--log_dir", str(tmp_path / "logs"), *extra]


def test_dry_run_prints_the_run_list_and_runs_nothing(tmp_path, char_data, capsys):
    config = write_sweep(tmp_path, char_data, "softmax_variant_attn: [softmax, consmax]\nn_layer: [1, 2]\n")
    result = main(sweep_args(tmp_path, config, "--dry_run"))
    out = capsys.readouterr().out
    names = ["sva-softmax_nl-1", "sva-softmax_nl-2", "sva-consmax_nl-1", "sva-consmax_nl-2"]
    assert [t.name for t in result["tasks"]] == names and result["ran"] == []
    for n in names:
        assert n in out
    assert "4 runs" in out and "softmax_variant_attn" in out and "to run" in out
    assert not (tmp_path / "out").exists() and not (tmp_path / "logs").exists()


def test_dry_run_shows_configurations_times_seeds(tmp_path, char_data, capsys):
    config = write_sweep(tmp_path, char_data, "softmax_variant_attn: [softmax, consmax]\nseeds: [1, 2, 3]\n")
    result = main(sweep_args(tmp_path, config, "--dry_run"))
    out = " ".join(capsys.readouterr().out.split())  # the table wraps its caption
    assert "2 configurations x 3 seeds = 6 runs" in out and "seeds: 1, 2, 3" in out
    assert [t.name for t in result["tasks"]][:3] == ["sva-softmax_seed-1", "sva-consmax_seed-1", "sva-softmax_seed-2"]
    assert result["tasks"][0].settings["seed"] == 1
    result = main(sweep_args(tmp_path, config, "--dry_run", "--seeds", "2"))  # a count from train.py's default
    assert [t.name for t in result["tasks"]][:2] == ["sva-softmax_seed-1337", "sva-consmax_seed-1337"]
    assert len(result["tasks"]) == 4
    assert len(main(sweep_args(tmp_path, config, "--dry_run", "--seeds", "5", "9"))["tasks"]) == 4  # the seeds
    with pytest.raises(UserError, match="--seeds: 1337 is a count of seeds"):
        main(sweep_args(tmp_path, config, "--dry_run", "--seeds", "1337"))


def test_a_seeded_sweep_runs_each_seed_once_and_reports_per_configuration(tmp_path, char_data, capsys):
    config = write_sweep(tmp_path, char_data, "n_layer: 1\nseeds: [1, 2]\n", name="seeded")
    result = main(sweep_args(tmp_path, config, "--jobs", "2", "--csv", str(tmp_path / "runs.csv"),
                             "--csv_configs", str(tmp_path / "configs.csv")))
    assert result["ran"] == ["run_seed-1", "run_seed-2"]
    docs = sorted(load_log(tmp_path / "logs" / "seeded.yaml"), key=lambda d: d["name"])  # in the order they ended
    assert [(d["name"], d["settings"]["seed"], d["config"]["train"]["seed"]) for d in docs] == [
        ("run_seed-1", 1, 1), ("run_seed-2", 2, 2)]
    losses = [d["summary"]["best_val_loss"] for d in docs]
    out = capsys.readouterr().out
    assert "results (mean ± sd over 2 seeds)" in out and "2/2" in out
    with open(tmp_path / "configs.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["configuration"], row["runs"], row["seeds"]) == ("run", "2", "1 2")
    assert float(row["best_val_loss_mean"]) == pytest.approx(sum(losses) / 2)
    with open(tmp_path / "runs.csv", newline="") as f:
        assert sorted((r["name"], r["configuration"]) for r in csv.DictReader(f)) == [
            ("run_seed-1", "run"), ("run_seed-2", "run")]
    assert main(sweep_args(tmp_path, config))["ran"] == []  # each seed's run is a run: resumed as one


def test_cli_errors_are_one_line(tmp_path, char_data):
    config = write_sweep(tmp_path, char_data, "n_layr: [1, 2]\n")
    r = run_script("optimization_and_search/run_experiments.py", *sweep_args(tmp_path, config, "--dry_run"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: sweep file {config}: n_layr: unknown setting 'n_layr' (not a train.py argument); "
        "did you mean 'n_layer'? (python train.py --help lists them)"]
    with pytest.raises(UserError, match="--set takes KEY=VALUE"):
        main(sweep_args(tmp_path, config, "--set", "n_layer"))
    with pytest.raises(UserError, match="--jobs must be at least 1"):
        main(sweep_args(tmp_path, config, "--jobs", "0"))


def test_two_run_sweep_in_parallel_log_and_csv(tmp_path, char_data):
    config = write_sweep(tmp_path, char_data, "softmax_variant_attn: [softmax, consmax]\n")
    result = main(sweep_args(tmp_path, config, "--jobs", "2", "--csv", str(tmp_path / "s.csv")))
    assert result["ran"] == ["sva-softmax", "sva-consmax"]
    log = tmp_path / "logs" / "s.yaml"
    docs = list(yaml.safe_load_all(log.read_text()))
    assert sorted(d["name"] for d in docs) == ["sva-consmax", "sva-softmax"]
    for d in docs:
        assert set(d) == {"name", "status", "exit_code", "out_dir", "started_at", "finished_at", "settings",
                          "config", "summary"}
        assert d["status"] == "completed" and d["exit_code"] == 0
        assert d["out_dir"] == str(tmp_path / "out" / d["name"])
        assert d["settings"] == {"preset": "debug", "max_iters": 6, "device": "cpu", "dataset": str(char_data),
                                 "softmax_variant_attn": d["name"].split("-")[1]}
        assert d["config"]["model"]["softmax_variant_attn"] == d["settings"]["softmax_variant_attn"]
        summary = json.loads((tmp_path / "out" / d["name"] / "summary.json").read_text())
        assert d["summary"] == summary and summary["status"] == "completed" and summary["iters"] == 6
        assert {"best_val_loss", "num_params", "macs_per_token", "tokens_per_s", "wall_time_s"} <= set(summary)
        # every job gets --threads: the cores shared out (not logged as a setting: the sweep did not set it)
        expected_threads = max(1, run_experiments.cpu_count() // 2)
        assert d["config"]["train"]["threads"] == expected_threads and summary["threads"] == expected_threads
    with open(tmp_path / "s.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["name"] for r in rows) == ["sva-consmax", "sva-softmax"]
    row = next(r for r in rows if r["name"] == "sva-consmax")
    assert row["softmax_variant_attn"] == "consmax" and row["status"] == "completed"
    assert float(row["best_val_loss"]) == next(d for d in docs if d["name"] == "sva-consmax")["summary"]["best_val_loss"]
    assert row["summary_device"] == "cpu" and "num_params" in row  # summary keys that are also settings get a prefix
    # the same command again runs nothing
    again = main(sweep_args(tmp_path, config, "--jobs", "2"))
    assert again["ran"] == [] and len(load_log(log)) == 2


def test_resume_after_a_kill_runs_only_the_unfinished_run(tmp_path, char_data):
    config = write_sweep(tmp_path, char_data, "softmax_variant_attn: [softmax, consmax]\n")
    sweep = load_sweep(config)
    first, second = sweep.runs
    log = tmp_path / "logs" / "s.yaml"
    done = {"name": first.name, "status": "completed", "exit_code": 0, "out_dir": str(tmp_path / "out" / first.name),
            "started_at": "2025-01-01T00:00:00+00:00", "finished_at": "2025-01-01T00:00:05+00:00",
            "settings": first.settings, "config": {"model": {}, "train": {}},
            "summary": {"status": "completed", "best_val_loss": 1.5, "num_params": 1000}}
    append_log(log, done)
    killed = tmp_path / "out" / second.name  # the runner died while this one trained
    killed.mkdir(parents=True)
    (killed / "summary.json").write_text(json.dumps({"status": "running", "best_val_loss": 4.0, "iters": 2}))
    result = main(sweep_args(tmp_path, config))
    assert result["ran"] == [second.name]
    assert not (tmp_path / "out" / first.name).exists()  # never re-run
    docs = load_log(log)
    assert docs[0] == done
    assert [d["name"] for d in docs] == [first.name, second.name] and docs[1]["status"] == "completed"
    assert json.loads((killed / "summary.json").read_text())["status"] == "completed"


def test_failed_run_is_recorded_and_retried(tmp_path, char_data):
    config = write_sweep(tmp_path, char_data, "block_size: 1000000\n", name="fail")  # larger than the data
    result = main(sweep_args(tmp_path, config))
    assert result["ran"] == ["run"]
    log = tmp_path / "logs" / "fail.yaml"
    (doc,) = load_log(log)
    assert doc["status"] == "failed" and doc["exit_code"] == 2
    assert "--block_size 1000000 needs more than" in doc["log_tail"]
    assert len(doc["log_tail"].splitlines()) <= 40
    assert main(sweep_args(tmp_path, config))["ran"] == []  # left alone without --retry_failed
    assert len(load_log(log)) == 1
    assert main(sweep_args(tmp_path, config, "--retry_failed"))["ran"] == ["run"]
    docs = list(yaml.safe_load_all(log.read_text()))
    assert [d["status"] for d in docs] == ["failed", "failed"] and docs[1]["exit_code"] == 2


def test_finished_run_missing_from_the_log_is_recorded_without_training(tmp_path, char_data):
    """The runner was killed after train.py finished but before the result reached the log."""
    config = write_sweep(tmp_path, char_data, "n_layer: 1\n", name="late")
    (run,) = load_sweep(config).runs
    out = tmp_path / "out" / run.name
    out.mkdir(parents=True)
    (out / run_experiments.RUN_MARKER).write_text(json.dumps({"settings": run.settings, "started_at": "t0"}))
    (out / "summary.json").write_text(json.dumps({"status": "completed", "best_val_loss": 2.0}))
    (out / "config.json").write_text(json.dumps({"model": {"n_layer": 1}, "train": {}}))
    result = main(sweep_args(tmp_path, config))
    assert result["ran"] == []
    (doc,) = load_log(tmp_path / "logs" / "late.yaml")
    assert doc["status"] == "completed" and doc["summary"]["best_val_loss"] == 2.0 and doc["started_at"] == "t0"


def test_settings_changed_since_logged_runs_again(tmp_path, char_data):
    config = write_sweep(tmp_path, char_data, "n_layer: 1\n", name="changed")
    (run,) = load_sweep(config).runs
    append_log(tmp_path / "logs" / "changed.yaml", {"name": run.name, "status": "completed",
                                                    "settings": {**run.settings, "max_iters": 99}})
    tasks = main(sweep_args(tmp_path, config, "--dry_run"))["tasks"]
    assert tasks[0].state == "pending" and "settings changed" in tasks[0].note


def test_log_reader_skips_a_torn_last_document(tmp_path):
    log = tmp_path / "x.yaml"
    append_log(log, {"name": "a", "status": "completed", "log_tail": "line 1\nline 2"})
    append_log(log, {"name": "b", "status": "failed", "exit_code": 1})
    assert [d["name"] for d in yaml.safe_load_all(log.read_text())] == ["a", "b"]
    assert load_log(log)[0]["log_tail"] == "line 1\nline 2"
    log.write_text(log.read_text() + dump_doc({"name": "c", "settings": {"n_layer": 2}})[:-12] + ": [unclosed\n")
    assert [d["name"] for d in load_log(log)] == ["a", "b"]
    assert load_log(tmp_path / "missing.yaml") == []


def test_rows_for_csv():
    columns, rows = results.flat_rows([
        {"name": "a", "status": "completed", "settings": {"n_layer": 1, "dtype": "float32"},
         "summary": {"best_val_loss": 1.0, "dtype": "float32"}},
        {"name": "b", "status": "failed", "exit_code": 2, "settings": {"attention_variant_layerlist": ["causal", "linear"]},
         "summary": None}])
    assert columns == ["name", "configuration", "status", "exit_code", "out_dir", "started_at", "finished_at",
                       "n_layer", "dtype", "attention_variant_layerlist", "best_val_loss", "summary_dtype"]
    assert rows[1]["attention_variant_layerlist"] == "causal linear" and rows[1]["exit_code"] == 2
    assert rows[0]["summary_dtype"] == "float32" and rows[0]["best_val_loss"] == 1.0


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_the_runner_keeps_finished_results_and_stops_its_runs(tmp_path, char_data):
    config = write_sweep(tmp_path, char_data, "parameter_groups:\n  - max_iters: 6\n  - max_iters: 100000\n",
                         name="kill")
    log, long_run = tmp_path / "logs" / "kill.yaml", tmp_path / "out" / "mi-100000"
    runner = subprocess.Popen([sys.executable, "optimization_and_search/run_experiments.py",
                               *sweep_args(tmp_path, config)], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (load_log(log) and (long_run / "train.log").exists()) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        assert _processes_mentioning(str(long_run)), "the long run is training when the runner is killed"
    finally:
        runner.kill()  # SIGKILL: no handler runs
        runner.wait()
    docs = list(yaml.safe_load_all(log.read_text()))
    assert [(d["name"], d["status"]) for d in docs] == [("mi-6", "completed")]
    deadline = time.time() + 20  # the training process dies with its runner (PR_SET_PDEATHSIG)
    while _processes_mentioning(str(long_run)) and time.time() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(str(long_run)) == []
    assert main(sweep_args(tmp_path, config, "--dry_run"))["tasks"][0].state == "done"


def test_runs_are_spread_over_gpus_and_share_the_cpu_cores(monkeypatch):
    monkeypatch.setattr(run_experiments, "visible_gpus", lambda: ["0", "3"])
    monkeypatch.setattr(run_experiments, "cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    runner = run_experiments.Runner(None, [], None, jobs=4, python=sys.executable, console=None)
    tasks = [run_experiments.Task(f"t{i}", {}, Path("x")) for i in range(3)]
    envs = [runner.env_for(t) for t in tasks]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "3", "0"]
    assert {e["OMP_NUM_THREADS"] for e in envs} == {"2"}
    runner.release(tasks[1])  # GPU 3 is free again
    assert runner.env_for(run_experiments.Task("t3", {}, Path("x")))["CUDA_VISIBLE_DEVICES"] == "3"
    # threads for any job count, one job included; --threads overrides the share
    assert run_experiments.Runner(None, [], None, jobs=1, python=sys.executable, console=None).threads == 8
    assert run_experiments.Runner(None, [], None, jobs=3, python=sys.executable, console=None).threads == 2
    assert run_experiments.Runner(None, [], None, jobs=1, python=sys.executable, console=None, threads=3).threads == 3
