"""optimization_and_search/locks.py and the drivers that hold its locks: a second sweep runner on one
--out_root and a second greedy search on one log are refused at once (naming the holder's pid); Optuna
workers share a study and its log; names that would leave out/ are refused."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml

from conftest import ROOT, run_script
from errors import UserError
from optimization_and_search import hyperparam_search as hs
from optimization_and_search import locks, run_experiments


def start(*args: str, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_for_holder(target, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until `proc` has written itself into the lock file of `target`."""
    path, deadline = locks.lock_file(target), time.time() + timeout
    while locks.holder(path).get("pid") != proc.pid:
        assert proc.poll() is None, f"the first driver ended early (exit code {proc.returncode})"
        assert time.time() < deadline, "the first driver never took its lock"
        time.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    proc.kill()  # SIGKILL: the OS releases its locks, and its training run dies with it (PR_SET_PDEATHSIG)
    proc.wait()


# ------------------------------------------------------------------------------------ the lock itself
def test_lock_is_exclusive_shared_for_workers_and_released_with_its_holder(tmp_path):
    target = tmp_path / "out" / "sweep"
    with locks.hold(target, "a.py", "give it another --out_root") as held:
        assert locks.holder(held.path)["pid"] == os.getpid() and not target.exists()
        with pytest.raises(UserError, match=r"^\S+/out/sweep is in use by a\.py \(pid \d+, since .*\); wait for it "
                                            r"to end \(or stop it\), or give it another --out_root$"):
            locks.hold(target, "b.py", "give it another --out_root")
    locks.hold(target, "b.py", "x").release()  # released: free again
    log = tmp_path / "log.yaml"
    with locks.hold(log, "w1", "x", shared=True), locks.hold(log, "w2", "x", shared=True):
        with pytest.raises(UserError, match="in use by w2"):
            locks.hold(log, "sweep", "x")
    with locks.hold(log, "sweep", "x"), pytest.raises(UserError, match="in use by sweep"):
        locks.hold(log, "w1", "x", shared=True)


# ------------------------------------------------------------------------------------ two real processes
def write_sweep(tmp_path, char_data, body: str, name: str = "s") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"preset: debug\ndevice: cpu\ndataset: {char_data}\n" + body)
    return str(path)


def test_second_sweep_runner_on_one_out_root_is_refused_with_the_holders_pid(tmp_path, char_data):
    config = write_sweep(tmp_path, char_data, "max_iters: 100000\n")
    out = tmp_path / "out"
    first = start("optimization_and_search/run_experiments.py", "-c", config, "--out_root", str(out),
                  "--log_dir", str(tmp_path / "logs_a"))
    try:
        wait_for_holder(out, first)
        t0 = time.time()
        r = run_script("optimization_and_search/run_experiments.py", "-c", config, "--out_root", str(out),
                       "--log_dir", str(tmp_path / "logs_b"), timeout=120)
        assert time.time() - t0 < 100
        assert r.returncode == 2, r.stdout + r.stderr
        (line,) = r.stderr.strip().splitlines()
        assert f"pid {first.pid}" in line and "run_experiments.py" in line and "another --out_root" in line
        assert not (tmp_path / "logs_b" / "s.yaml").exists()
    finally:
        stop(first)
    locks.hold(out, "test", "x").release()  # the OS released the killed runner's lock


def test_second_greedy_search_on_one_log_is_refused_with_the_holders_pid(tmp_path, char_data):
    (tmp_path / "base.yaml").write_text(f"dataset: {char_data}\ndevice: cpu\n")
    log = tmp_path / "log.yaml"

    def args(runs: str) -> list[str]:
        return ["optimization_and_search/hyperparam_search.py", "--baseline", str(tmp_path / "base.yaml"),
                "--preset", "debug", "--param", "n_layer", "1", "--steps", "1", "--log", str(log),
                "--out_root", str(tmp_path / runs), "--", "--max_iters", "100000"]
    first = start(*args("runs_a"))
    try:
        wait_for_holder(log, first)
        r = run_script(*args("runs_b"), timeout=120)
        assert r.returncode == 2, r.stdout + r.stderr
        (line,) = r.stderr.strip().splitlines()
        assert f"pid {first.pid}" in line and str(log) in line and "another --name or --log" in line
        assert not (tmp_path / "runs_b").exists()
    finally:
        stop(first)


def test_optuna_workers_share_one_study_and_its_log(tmp_path, char_data):
    optuna = pytest.importorskip("optuna")
    space = tmp_path / "shared.yaml"
    space.write_text(yaml.safe_dump({
        "fixed": {"preset": "debug", "max_iters": 4, "eval_interval": 2, "dataset": str(char_data), "device": "cpu"},
        "params": {"n_layer": {"int": [1, 2]}}}))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(storage=storage, study_name="shared")  # the tables exist before two workers open them
    cmd = ["optimization_and_search/optuna_search.py", "-c", str(space), "--n_trials", "2", "--storage", storage,
           "--out_root", str(tmp_path / "out"), "--log_dir", str(tmp_path / "logs")]
    errs = [open(tmp_path / f"worker_{i}.err", "w") for i in range(2)]
    workers = [start(*cmd, stderr=errs[0]), start(*cmd, "--seed", "1", stderr=errs[1])]
    try:
        codes = [w.wait(timeout=300) for w in workers]
        assert codes == [0, 0], "".join((tmp_path / f"worker_{i}.err").read_text()[-2000:] for i in range(2))
    finally:
        for w, f in zip(workers, errs):
            if w.poll() is None:
                stop(w)
            f.close()
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    assert 2 <= len(trials) <= 3  # each worker stops once the study holds --n_trials (not 2 x 2 trials)
    docs = list(yaml.safe_load_all((tmp_path / "logs" / "shared.yaml").read_text()))
    assert sorted(d["name"] for d in docs) == sorted(f"trial_{t.number}" for t in trials)
    assert all(d["status"] == "completed" for d in docs)
    saved = yaml.safe_load((tmp_path / "out" / "shared" / "best_trials.yaml").read_text())
    assert saved["trials"][0]["trial"] in {t.number for t in trials}
    assert locks.holder(locks.lock_file(tmp_path / "logs" / "shared.yaml"))["program"] == "optuna_search.py"


def test_holder_reads_the_first_note_of_shared_holders_that_wrote_together(tmp_path):
    path = tmp_path / ".x.lock"
    path.write_text('{"pid": 1, "program": "a.py"}\n{"pid": 2, "program": "b.py"}\n')  # two workers, one race
    assert locks.holder(path) == {"pid": 1, "program": "a.py"}
    path.write_text("not json")
    assert locks.holder(path) == {}


def test_a_workers_trial_is_never_taken_for_stale_before_it_records_its_pid():
    optuna = pytest.importorskip("optuna")
    from optimization_and_search import optuna_workers
    study = optuna.create_study()
    trial = study.ask()  # another worker's trial, the moment before its objective records the pid
    assert optuna_workers.recover(study, grace_period=60, log=lambda _: None) == []
    # however old: a worker whose owner cannot be checked is left alone (it was failed after 60 s, and its
    # worker then crashed with "Cannot tell a FAIL trial")
    assert optuna_workers.recover(study, grace_period=0, log=lambda _: None) == []
    assert study.trials[trial.number].state == optuna.trial.TrialState.RUNNING


# ------------------------------------------------------------------------------------ names
@pytest.mark.parametrize("name", ["..", ".", "a/b", "../x", ".hidden", "/tmp/x"])
def test_names_that_leave_out_are_refused(tmp_path, char_data, name):
    config = write_sweep(tmp_path, char_data, "n_layer: 1\n")
    with pytest.raises(UserError, match=r"--name .* must be a plain folder name"):
        run_experiments.main(["-c", config, "--name", name, "--dry_run", "--out_root", str(tmp_path / "o")])
    with pytest.raises(UserError, match=r"search name \(--name\) .* must be a plain folder name"):
        hs.spec_from_args(["--preset", "debug", "--param", "n_layer", "1", "--name", name])
    from optimization_and_search import optuna_search
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"fixed": {"preset": "debug"}, "params": {"n_layer": {"int": [1, 2]}}}))
    with pytest.raises(UserError, match=r"--study_name .* must be a plain folder name"):
        optuna_search.main(["-c", str(space), "--study_name", name, "--dry_run"])
    assert not (ROOT / "exploration_logs" / f"{name}.yaml").exists()


def test_name_error_is_one_line_on_the_command_line(tmp_path, char_data):
    config = write_sweep(tmp_path, char_data, "n_layer: 1\n")
    r = run_script("optimization_and_search/run_experiments.py", "-c", config, "--name", "..", "--dry_run")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: --name '..' must be a plain folder name (letters, digits, '.', '_', '-'; no '/', not starting "
        "with '.'): it names the run folder and the log; choose another"]
