"""optimization_and_search/optuna_workers.py: Optuna studies shared by many optuna_search.py workers on
SQLite, a journal file and a real PostgreSQL server (tests/search/conftest.py): the stale-trial rules,
the one budget for all workers, and a worker killed with SIGKILL mid-trial."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from errors import UserError

optuna = pytest.importorskip("optuna")

from optimization_and_search import optuna_workers as ow  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------ the rules
def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def running_trial(study, **attrs):
    trial = study.ask()
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    return study.get_trials(deepcopy=False)[-1]


def test_owner_gone_only_when_its_pid_on_this_host_is_gone_after_the_grace_period():
    study = optuna.create_study()
    host = socket.gethostname()
    later = datetime.now() + timedelta(seconds=10)
    fresh = running_trial(study)  # a worker's trial the moment before it records its pid
    assert not ow.owner_gone(fresh, grace_period=5)
    assert not ow.owner_gone(fresh, grace_period=5, now=later)  # unknown owner: never, however old
    dead = running_trial(study, pid=dead_pid(), host=host)
    assert not ow.owner_gone(dead, grace_period=5)  # younger than the grace period
    assert ow.owner_gone(dead, grace_period=5, now=later)
    elsewhere = running_trial(study, pid=dead_pid(), host=host + "-other")
    assert not ow.owner_gone(elsewhere, grace_period=5, now=later)  # another machine's worker: not checkable
    alive = running_trial(study, pid=os.getppid(), host=host)
    assert not ow.owner_gone(alive, grace_period=5, now=later)


def test_recover_fails_marks_and_retries_a_dead_workers_trial_once(monkeypatch):
    study = optuna.create_study()
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr("pid", dead_pid())
    trial.set_user_attr("host", socket.gethostname())
    fresh = study.ask()  # another worker's, no pid yet
    assert ow.recover(study, grace_period=60, log=lambda _: None) == []  # both younger than the grace period
    assert ow.recover(study, grace_period=0, log=lambda _: None) == [trial.number]
    assert study.trials[trial.number].state == TrialState.FAIL and ow.interrupted(study) == {trial.number}
    assert study.trials[fresh.number].state == TrialState.RUNNING  # unknown owner: left alone
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert retry.system_attrs["fixed_params"] == trial.params and ow.retry_of(retry) == trial.number
    again = study.ask()  # the retry, killed too: not retried a second time
    assert again.number == retry.number
    again.set_user_attr("pid", dead_pid())
    again.set_user_attr("host", socket.gethostname())
    assert ow.recover(study, grace_period=0, log=lambda _: None) == [again.number]
    assert not study.get_trials(states=(TrialState.WAITING,))
    assert ow.interrupted(study) == {trial.number, again.number}
    assert ow.counted_trials(study) == []


def test_budget_counts_finished_and_running_and_a_late_trial_does_not_fit():
    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    first = study.ask()
    budget = ow.budget_state(study, 3)
    assert (budget.counted, len(budget.running), budget.full, budget.done) == (2, 1, True, False)
    late = study.ask()  # two workers asked in the same instant: the later number does not fit
    assert ow.fits(study, first, 3) and not ow.fits(study, late, 3)
    ow.mark_interrupted(study, first.number)  # an interrupted trial frees its slot
    assert ow.fits(study, late, 3)


def test_storage_urls_and_their_errors(tmp_path):
    assert [ow.storage_kind(u) for u in ("journal:x.log", "sqlite:///x.db", "postgresql+psycopg2://u@h/d")] == [
        "journal", "sqlite", "rdb"]
    assert ow.journal_path("journal:///abs/j.log") == Path("/abs/j.log")
    journal = ow.open_storage(f"journal:{tmp_path / 'j' / 'study.log'}")
    assert isinstance(journal, optuna.storages.JournalStorage) and (tmp_path / "j").is_dir()
    sqlite = ow.open_storage(f"sqlite:///{tmp_path / 'db' / 's.db'}", heartbeat_interval=2, grace_period=5)
    assert sqlite.get_heartbeat_interval() == 2
    assert ow.open_storage(f"sqlite:///{tmp_path / 's2.db'}", heartbeat_interval=0).get_heartbeat_interval() is None
    with pytest.raises(UserError, match="name the journal file"):
        ow.open_storage("journal:")
    with pytest.raises(UserError, match="not a storage URL"):
        ow.open_storage("no-such-scheme")
    with pytest.raises(UserError, match="No module named .pymysql.*psycopg2-binary"):
        ow.open_storage("mysql+pymysql://u@localhost/db")  # a driver that is not installed


def test_workers_opening_a_new_sqlite_database_together_all_succeed(tmp_path):
    # before: two workers creating the tables at once died with "table ... already exists"
    code = ("import sys, optuna; from optimization_and_search import optuna_workers as ow; "
            "optuna.create_study(storage=ow.open_storage(sys.argv[1]), study_name='s', load_if_exists=True)")
    url = f"sqlite:///{tmp_path / 'new.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, url], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert all(rc == 0 for rc, _ in results), [err[-500:] for _, err in results]
    assert len(optuna.get_all_study_names(url)) == 1


# ------------------------------------------------------------------------------------ many workers
BUDGET = 5


def start_worker(i: int, space: Path, storage: str, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / f"worker_{i}.out"
    cmd = [sys.executable, "optimization_and_search/optuna_search.py", "-c", str(space), "--n_trials", str(BUDGET),
           "--storage", storage, "--study_name", "shared", "--out_root", str(tmp_path / "out"),
           "--log_dir", str(tmp_path / "logs"), "--seed", str(i), "--pruner", "none",
           "--heartbeat_interval", "1", "--grace_period", "3"]
    with open(out, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    return proc, out


def kill_mid_trial(proc: subprocess.Popen, study, timeout: float = 300) -> int:
    """SIGKILL `proc` once its trial has trained a step; the trial's number."""
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, "the worker to kill ended first"
        for t in study.get_trials(deepcopy=True, states=(TrialState.RUNNING,)):
            metrics = Path(t.user_attrs.get("out_dir", "/nonexistent")) / "metrics.jsonl"
            if t.user_attrs.get("pid") == proc.pid and metrics.exists() and metrics.read_text().strip():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return t.number
        time.sleep(0.05)
    raise AssertionError("the worker to kill never got mid-trial")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["postgresql", "journal"])
def test_three_workers_share_one_budget_and_a_killed_workers_trial_is_retried(kind, tmp_path, char_data, request):
    """3 workers (and a 4th killed with SIGKILL mid-trial) on one new study: no worker crashes, the
    study holds exactly the budget of counted trials, trial numbers are unique, every trial has its run
    directory and log entry, and the killed trial is logged interrupted and retried once."""
    storage = {"postgresql": lambda: request.getfixturevalue("postgres_url"),
               "journal": lambda: f"journal:{tmp_path / 'study' / 'journal.log'}",
               "sqlite": lambda: f"sqlite:///{tmp_path / 'study' / 'study.db'}"}[kind]()
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "fixed": {"preset": "debug", "max_iters": 24, "eval_interval": 12, "dataset": str(char_data),
                  "device": "cpu", "threads": 1},
        "params": {"n_layer": {"int": [1, 2]}, "learning_rate": {"float": [1.0e-4, 1.0e-2], "log": True}}}))
    victim, _ = start_worker(9, space, storage, tmp_path)
    workers = [start_worker(i, space, storage, tmp_path) for i in range(3)]
    try:
        study, end, reader = None, time.time() + 300, None
        while study is None:  # the workers create it
            try:
                reader = reader or ow.open_storage(storage, 0)  # one connection pool for all the polling
                study = optuna.load_study(study_name="shared", storage=reader)
            except (KeyError, UserError):  # no study yet (or the tables are being created)
                assert time.time() < end and all(p.poll() is None for p, _ in workers), \
                    "\n".join(out.read_text()[-2000:] for _, out in workers)
                time.sleep(0.1)
        killed = kill_mid_trial(victim, study)
        codes = [p.wait(timeout=600) for p, _ in workers]
    finally:
        for p, _ in [(victim, None), *workers]:
            if p.poll() is None:
                p.kill()
    outputs = [out.read_text() for _, out in workers]
    assert codes == [0, 0, 0], "\n".join(o[-3000:] for o in outputs)
    assert not any("Traceback" in o for o in outputs)

    trials = optuna.load_study(study_name="shared", storage=reader).trials
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers)  # unique trial numbers
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    real = [t for t in trials if not ow.surplus(t)]
    completed = [t for t in real if t.state == TrialState.COMPLETE]
    assert len(completed) == BUDGET  # exactly the budget, all workers together
    assert [t.number for t in real if t.state != TrialState.COMPLETE] == [killed]  # the killed one only
    (retry,) = [t for t in real if ow.retry_of(t) == killed]
    assert retry.state == TrialState.COMPLETE and retry.params == trials[killed].params
    assert "queued again" in "".join(outputs)

    docs = {d["name"]: d for d in yaml.safe_load_all((tmp_path / "logs" / "shared.yaml").read_text()) if d}
    assert set(docs) == {f"trial_{t.number}" for t in real}  # one log entry per trial, surplus ones left out
    assert docs[f"trial_{killed}"]["status"] == "interrupted"
    for t in completed:
        run_dir = tmp_path / "out" / "shared" / f"trial_{t.number}"
        doc = docs[f"trial_{t.number}"]
        assert doc["status"] == "completed" and Path(doc["out_dir"]) == run_dir
        assert yaml.safe_load((run_dir / "summary.json").read_text())["status"] == "completed"
        assert doc["summary"]["best_val_loss"] == pytest.approx(t.value)
