"""optimization_and_search/optuna_search.py and train.main's on_eval hook: search-space validation,
a resumable SQLite study on tiny training runs, multi-objective Pareto fronts, pruning, the YAML log."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from errors import UserError

optuna = pytest.importorskip("optuna")

from optimization_and_search import optuna_search as osearch  # noqa: E402
from optimization_and_search import optuna_space  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
LOG_KEYS = {"name", "status", "exit_code", "out_dir", "started_at", "finished_at", "settings", "config", "summary"}


# ------------------------------------------------------------------------------------ search space
def test_parse_space_kinds_and_normalisation():
    space = optuna_space.parse_space({
        "fixed": {"preset": "debug", "max_iters": 6, "dropout": "0"},
        "params": {
            "softmax_variant_attn": {"choices": ["softmax", "relumax"]},
            "n_layer": {"int": [1, 4], "step": 1},
            "n_embd": {"int": [32, 128], "step": 32},
            "learning_rate": {"float": ["1e-4", 1.0e-2], "log": True},  # YAML's 1e-4 is a string
            "attention_variant_layerlist": {"choices": [["causal", "linear"], "causal"]},
        }})
    assert space.fixed == {"preset": "debug", "max_iters": 6, "dropout": 0.0}
    kinds = {p.name: p for p in space.params}
    assert kinds["softmax_variant_attn"].choices == ["softmax", "relumax"]
    assert (kinds["n_embd"].low, kinds["n_embd"].high, kinds["n_embd"].step) == (32, 128, 32)
    lr = kinds["learning_rate"]
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-4, 1e-2, True)
    layer = kinds["attention_variant_layerlist"]
    assert layer.choices == [["causal", "linear"], ["causal"]]
    assert layer.distribution().choices == ("causal linear", "causal")
    assert isinstance(kinds["n_layer"].distribution(), optuna.distributions.IntDistribution)


@pytest.mark.parametrize("data, message", [
    ({"fixd": {}, "params": {"n_layer": {"int": [1, 2]}}}, "did you mean 'fixed'"),
    ({"params": {}}, "'params' is empty"),
    ({"params": {"n_layr": {"int": [1, 2]}}}, "did you mean 'n_layer'"),
    ({"fixed": {"max_iter": 5}, "params": {"n_layer": {"int": [1, 2]}}}, "did you mean 'max_iters'"),
    ({"params": {"softmax_variant_attn": {"choices": ["softmax", "consmx"]}}}, "did you mean 'consmax'"),
    ({"params": {"n_layer": {"int": [1, 2], "stp": 1}}}, "did you mean 'step'"),
    ({"params": {"n_layer": {"ints": [1, 2]}}}, "did you mean 'int'"),
    ({"params": {"n_layer": {"int": [1, 2], "float": [1, 2]}}}, "exactly one of choices, int, float"),
    ({"params": {"n_layer": {"int": [4, 2]}}}, "low 4 is above high 2"),
    ({"params": {"n_layer": {"int": [1.5, 2]}}}, "bounds must be integers"),
    ({"params": {"n_layer": {"float": [1, 2]}}}, "'n_layer' is a int setting; use int"),
    ({"params": {"learning_rate": {"int": [1, 2]}}}, "use float"),
    ({"params": {"softmax_variant_attn": {"int": [1, 2]}}}, "use choices"),
    ({"params": {"weight_decay": {"float": [0.0, 1.0], "log": True}}}, "log range needs low > 0"),
    ({"params": {"n_layer": {"int": [1, 8], "step": 2, "log": True}}}, "step and log cannot be combined"),
    ({"params": {"n_layer": {"choices": []}}}, "non-empty list"),
    ({"params": {"n_layer": {"choices": [2, "two"]}}}, "must be int"),
    ({"params": {"dtype": {"choices": ["float32", "float64"]}}}, "did you mean 'float16'"),
    ({"params": {"n_layer": [1, 2]}}, "expected a mapping"),
    ({"params": {"out_dir": {"choices": ["a", "b"]}}}, "cannot be set in a search"),
    ({"params": {"preset": {"choices": ["debug", "cpu"]}}}, "cannot be searched"),
    ({"fixed": {"preset": "debg"}, "params": {"n_layer": {"int": [1, 2]}}}, "did you mean 'debug'"),
    ({"fixed": {"n_layer": 2}, "params": {"n_layer": {"int": [1, 2]}}}, "both searched (params) and fixed"),
])
def test_parse_space_errors(data, message):
    with pytest.raises(UserError) as e:
        optuna_space.parse_space(data, "space.yaml")
    assert message in str(e.value), str(e.value)
    assert str(e.value).startswith("space.yaml"), str(e.value)


def test_train_flags_after_double_dash_are_checked_and_override_fixed():
    extra = optuna_space.parse_train_flags(["--max_iters", "7", "--preset", "debug"])
    assert extra == {"max_iters": 7, "preset": "debug"}
    space = optuna_space.parse_space({"fixed": {"max_iters": 3}, "params": {"n_layer": {"int": [1, 2]}}}, extra=extra)
    assert space.fixed["max_iters"] == 7
    with pytest.raises(UserError, match="did you mean '--max_iters'"):
        optuna_space.parse_train_flags(["--max_iter", "7"])
    with pytest.raises(UserError, match="both searched"):
        optuna_space.parse_space({"params": {"n_layer": {"int": [1, 2]}}}, extra={"n_layer": 3})
    with pytest.raises(UserError, match="cannot be given to a search"):
        optuna_space.parse_train_flags(["--out_dir", "x"])


def test_objective_validation():
    assert osearch.check_objectives(["best_val_loss", "macs_per_token"], None) == ["minimize", "minimize"]
    assert osearch.check_objectives(["tokens_per_s"], None) == ["maximize"]
    with pytest.raises(UserError, match="did you mean 'macs_per_token'"):
        osearch.check_objectives(["mac_per_token"], None)
    with pytest.raises(UserError, match="one direction per objective"):
        osearch.check_objectives(["best_val_loss", "num_params"], ["minimize"])


def test_refuses_torchrun_and_bad_counts(monkeypatch):
    with pytest.raises(UserError, match="--n_trials must be at least 1"):
        osearch.main(["-c", "x.yaml", "--n_trials", "0"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="not under torchrun"):
        osearch.main(["-c", "x.yaml"])


def test_example_search_spaces_are_valid():
    files = sorted((ROOT / "hp_searches").glob("optuna_*.yaml"))
    assert files
    for f in files:
        assert optuna_space.load_space(str(f)).params


def test_cli_reports_a_bad_space_in_one_line(tmp_path):
    space = tmp_path / "bad.yaml"
    space.write_text("params:\n  softmax_variant_attn: {choices: [softmax, consmx]}\n")
    r = subprocess.run([sys.executable, "optimization_and_search/optuna_search.py", "-c", str(space), "--dry_run"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "did you mean 'consmax'" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------ the on_eval hook
def test_on_eval_hook_stops_the_run_as_pruned(char_data, tmp_path):
    import train
    calls = []

    def on_eval(it, losses):
        calls.append((it, sorted(losses)))
        assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "running"
        return it >= 2  # keep going at step 0, stop at step 2

    summary = train.main(["--preset", "debug", "--dataset", str(char_data), "--max_iters", "10", "--eval_interval", "2",
                          "--device", "cpu", "--out_dir", str(tmp_path / "run")], on_eval=on_eval)
    assert calls == [(0, ["train", "val"]), (2, ["train", "val"])]
    assert summary["stop_reason"] == "pruned" and summary["iters"] == 2
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["status"] == "completed" and on_disk["stop_reason"] == "pruned"
    assert (tmp_path / "run" / "ckpt_last.pt").exists()


DDP_SCRIPT = """
import json, os, sys
import train
calls = []
def on_eval(it, losses):
    calls.append(it)
    return it >= 3
summary = train.main(sys.argv[1:], on_eval=on_eval)
with open(os.path.join(os.environ["HOOK_OUT"], f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump({"calls": calls, "iters": summary["iters"], "stop_reason": summary["stop_reason"]}, f)
"""


def test_on_eval_hook_under_ddp_stops_every_rank_together(char_data, tmp_path):
    script = tmp_path / "hook.py"
    script.write_text(DDP_SCRIPT)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script), "--preset", "debug", "--dataset", str(char_data), "--device", "cpu",
                        "--out_dir", str(tmp_path / "ddp"), "--max_iters", "9", "--eval_interval", "3",
                        "--gradient_accumulation_steps", "2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HOOK_OUT": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert rank0 == {"calls": [0, 3], "iters": 3, "stop_reason": "pruned"}
    assert rank1 == {"calls": [], "iters": 3, "stop_reason": "pruned"}  # only rank 0 decides; all ranks stop


# ------------------------------------------------------------------------------------ studies
def write_space(path: Path, char_data: Path, params: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump({
        "fixed": {"preset": "debug", "max_iters": 6, "eval_interval": 3, "dataset": str(char_data), "device": "cpu"},
        "params": params or {"n_layer": {"int": [1, 2]}, "learning_rate": {"float": [1.0e-4, 1.0e-2], "log": True},
                             "softmax_variant_attn": {"choices": ["softmax", "relumax"]}}}))
    return path


def run_search(tmp_path, space, *extra) -> dict:
    return osearch.main(["-c", str(space), "--out_root", str(tmp_path / "out"), "--log_dir", str(tmp_path / "logs"),
                         *extra])


def load_log(path) -> list[dict]:
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]


def check_shape(doc: dict):
    assert LOG_KEYS <= set(doc), doc.keys()
    assert doc["status"] in ("completed", "failed", "pruned", "interrupted")
    assert isinstance(doc["settings"], dict) and isinstance(doc["config"], dict)


def test_study_resumes_from_sqlite_without_rerunning(char_data, tmp_path):
    space = write_space(tmp_path / "space.yaml", char_data)
    first = run_search(tmp_path, space, "--n_trials", "1", "--study_name", "resume")
    assert first["storage"] == f"sqlite:///{(tmp_path / 'out' / 'resume' / 'study.db').resolve()}"
    docs = load_log(tmp_path / "logs" / "resume.yaml")
    assert [d["name"] for d in docs] == ["trial_0"]
    summary0 = tmp_path / "out" / "resume" / "trial_0" / "summary.json"
    mtime = summary0.stat().st_mtime_ns

    second = run_search(tmp_path, space, "--n_trials", "2", "--study_name", "resume")
    assert summary0.stat().st_mtime_ns == mtime  # trial 0 not re-run
    assert len(optuna.load_study(study_name="resume", storage=second["storage"]).trials) == 2
    docs = load_log(second["log"])
    assert [(d["name"], d["status"]) for d in docs] == [("trial_0", "completed"), ("trial_1", "completed")]
    for d in docs:
        check_shape(d)
        assert d["exit_code"] == 0 and "log_tail" not in d
        assert d["config"]["model"]["n_layer"] == d["settings"]["n_layer"] == d["optuna"]["params"]["n_layer"]
        assert d["config"]["train"]["max_iters"] == 6 and d["settings"]["preset"] == "debug"
        assert d["summary"]["status"] == "completed" and d["summary"]["best_val_loss"] == d["optuna"]["values"][0]
        assert sorted(d["optuna"]["intermediate_values"]) == [0, 3, 6]
        assert Path(d["out_dir"]) == tmp_path / "out" / "resume" / d["name"]
    assert docs[0]["optuna"]["params"] != docs[1]["optuna"]["params"]  # the sampler did not repeat itself
    assert sum(d["optuna"]["best"] for d in docs) == 1
    assert len(second["best_trials"]) == 1

    third = run_search(tmp_path, space, "--n_trials", "2", "--study_name", "resume")  # nothing left to do
    assert len(third["trials"]) == 2
    with pytest.raises(UserError, match="optimises best_val_loss"):
        run_search(tmp_path, space, "--n_trials", "2", "--study_name", "resume", "--objectives", "num_params")


def test_multi_objective_reports_a_pareto_front(char_data, tmp_path, capsys):
    space = write_space(tmp_path / "pareto.yaml", char_data, {"n_layer": {"int": [1, 2]},
                                                                "n_embd": {"choices": [16, 32]}})
    res = run_search(tmp_path, space, "--n_trials", "2", "--objectives", "best_val_loss", "macs_per_token",
                     "--storage", f"sqlite:///{tmp_path / 'db' / 'p.db'}")
    assert (tmp_path / "db" / "p.db").exists()
    out = capsys.readouterr().out
    assert "Pareto front of study 'pareto'" in out
    docs = load_log(res["log"])
    assert len(docs) == 2 and all(d["status"] == "completed" for d in docs)
    for d in docs:
        check_shape(d)
        assert d["optuna"]["values"] == [d["summary"]["best_val_loss"], d["summary"]["macs_per_token"]]
        assert d["optuna"]["intermediate_values"] == {}  # no pruning in multi-objective studies
    front = {r["trial"] for r in res["best_trials"]}
    assert front and front == {d["optuna"]["trial"] for d in docs if d["optuna"]["best"]}
    values = {d["optuna"]["trial"]: d["optuna"]["values"] for d in docs}
    for t in front:  # no front member is dominated by another trial
        assert not any(all(o <= s for o, s in zip(v, values[t])) and v != values[t] for v in values.values())
    saved = yaml.safe_load((Path(res["study_dir"]) / "best_trials.yaml").read_text())
    assert saved["objectives"] == ["best_val_loss", "macs_per_token"] and len(saved["trials"]) == len(front)


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def test_pruner_stops_trials_and_logs_them_pruned(char_data, tmp_path, monkeypatch):
    monkeypatch.setattr(osearch, "make_pruner", lambda args: AlwaysPrune())
    space = write_space(tmp_path / "prune.yaml", char_data)
    res = run_search(tmp_path, space, "--n_trials", "1")
    (doc,) = load_log(res["log"])
    check_shape(doc)
    assert doc["status"] == "pruned" and doc["exit_code"] == 0
    assert doc["summary"]["stop_reason"] == "pruned" and doc["summary"]["iters"] == 0
    assert doc["optuna"]["intermediate_values"] == {0: pytest.approx(doc["summary"]["best_val_loss"])}
    study = optuna.load_study(study_name="prune", storage=res["storage"])
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED


def test_median_pruner_by_default_and_none_for_multi_objective():
    args = osearch.build_parser().parse_args(["-c", "x", "--n_startup_trials", "2"])
    pruner = osearch.make_pruner(args)
    assert isinstance(pruner, optuna.pruners.MedianPruner)
    args = osearch.build_parser().parse_args(["-c", "x", "--objectives", "best_val_loss", "num_params"])
    assert isinstance(osearch.make_pruner(args), optuna.pruners.NopPruner)
    assert isinstance(osearch.make_sampler("auto", 0, multi=True), optuna.samplers.NSGAIISampler)
    assert isinstance(osearch.make_sampler("auto", 0, multi=False), optuna.samplers.TPESampler)


def test_failed_trial_is_logged_and_killed_trial_is_redone(char_data, tmp_path):
    # n_embd 33 is not divisible by the debug preset's n_head 2: that trial fails before training
    space = write_space(tmp_path / "kill.yaml", char_data, {"n_embd": {"choices": [33, 32]}})
    storage = f"sqlite:///{tmp_path / 'kill.db'}"
    study = optuna.create_study(storage=storage, study_name="kill")
    # a trial a killed process left RUNNING (its pid no longer exists)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial = study.ask({"n_embd": optuna.distributions.CategoricalDistribution([33, 32])})
    trial.set_user_attr("pid", dead.pid)
    trial.set_user_attr("host", socket.gethostname())
    study.enqueue_trial({"n_embd": 33})
    time.sleep(1.1)  # older than the grace period
    res = run_search(tmp_path, space, "--n_trials", "2", "--storage", storage, "--study_name", "kill",
                     "--grace_period", "1", "--heartbeat_interval", "0")
    docs = {d["name"]: d for d in load_log(res["log"])}
    killed_params = docs["trial_0"]["optuna"]["params"]
    assert docs["trial_0"]["status"] == "interrupted" and docs["trial_0"]["exit_code"] is None
    failed = docs["trial_1"]  # the enqueued n_embd 33
    assert failed["status"] == "failed" and failed["exit_code"] == 2
    assert "not divisible by --n_head" in failed["log_tail"]
    retry = [d for d in docs.values() if d["optuna"].get("retry_of") == 0]
    assert len(retry) == 1 and retry[0]["optuna"]["params"] == killed_params
    assert retry[0]["status"] == ("failed" if killed_params["n_embd"] == 33 else "completed")
    assert len(docs) == 3  # 2 counted trials + the interrupted one
    for d in docs.values():
        check_shape(d)
    st = optuna.load_study(study_name="kill", storage=storage)
    assert st.trials[0].state == optuna.trial.TrialState.FAIL


# ------------------------------------------------------------------------------------ seeds
def test_seeds_train_each_trial_per_seed_and_report_the_mean(char_data, tmp_path):
    from optimization_and_search.results import aggregate_by_config
    space = write_space(tmp_path / "seeded.yaml", char_data, {"n_layer": {"int": [1, 2]}})
    res = run_search(tmp_path, space, "--n_trials", "1", "--seeds", "2")
    docs = load_log(res["log"])
    assert [(d["name"], d["status"], d["settings"]["seed"], d["config"]["train"]["seed"]) for d in docs] == [
        ("trial_0_seed-1337", "completed", 1337, 1337), ("trial_0_seed-1338", "completed", 1338, 1338)]
    for d in docs:
        check_shape(d)
        assert Path(d["out_dir"]) == tmp_path / "out" / "seeded" / "trial_0" / f"seed_{d['settings']['seed']}"
    losses = [d["summary"]["best_val_loss"] for d in docs]
    assert docs[0]["optuna"]["values"] == [pytest.approx(sum(losses) / 2)]  # Optuna got the mean
    assert sorted(docs[0]["optuna"]["intermediate_values"]) == [0, 3, 6] and docs[1]["optuna"]["intermediate_values"] == {}
    study = optuna.load_study(study_name="seeded", storage=res["storage"])
    assert study.trials[0].value == pytest.approx(sum(losses) / 2)
    (config,) = aggregate_by_config(docs)  # one configuration, its spread over the two seeds
    assert (config["name"], config["n"], config["seeds"]) == ("trial_0", 2, [1337, 1338])
    with pytest.raises(UserError, match="averages over 2 seed"):
        run_search(tmp_path, space, "--n_trials", "2", "--study_name", "seeded")


def test_seeds_pruned_on_the_first_seed_and_seed_in_the_space_refused(char_data, tmp_path, monkeypatch):
    monkeypatch.setattr(osearch, "make_pruner", lambda args: AlwaysPrune())
    space = write_space(tmp_path / "prune.yaml", char_data)
    res = run_search(tmp_path, space, "--n_trials", "1", "--seeds", "3")
    (doc,) = load_log(res["log"])  # the later seeds never ran
    assert (doc["name"], doc["status"], doc["optuna"]["seed"]) == ("trial_0_seed-1337", "pruned", 1337)
    fixed_seed = write_space(tmp_path / "fixed.yaml", char_data)
    with pytest.raises(UserError, match="sets 'seed' and --seeds 2 gives the seeds"):
        run_search(tmp_path, fixed_seed, "--seeds", "2", "--", "--seed", "5")
    with pytest.raises(UserError, match="--seeds must be at least 1"):
        run_search(tmp_path, fixed_seed, "--seeds", "0")
