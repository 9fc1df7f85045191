"""optimization_and_search/launch.py: a run in a subprocess and in this process give the same log entry, a
failing run's entry carries its log tail, a resumed run continues, an interrupted driver stops its run,
and a driver killed with SIGKILL takes its training run with it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from errors import UserError
from optimization_and_search import launch

ENTRY_KEYS = {"name", "status", "exit_code", "out_dir", "started_at", "finished_at", "settings", "config", "summary"}


def tiny(char_data, **kw) -> dict:
    return {"preset": "debug", "dataset": str(char_data), "device": "cpu", "max_iters": 4, "eval_interval": 2, **kw}


def summary_of(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_subprocess_run_succeeds_and_its_entry_has_the_summary(char_data, tmp_path):
    run = launch.start(tiny(char_data), tmp_path / "run")
    assert run.pid is not None and run.poll() in (None, 0)
    assert run.wait(timeout=120) == 0 and run.poll() == 0 and run.duration > 0
    doc = run.entry("r")
    assert set(doc) == ENTRY_KEYS
    assert doc["name"] == "r" and doc["status"] == "completed" and doc["exit_code"] == 0
    assert doc["out_dir"] == str(tmp_path / "run") and doc["settings"] == tiny(char_data)
    assert doc["summary"] == summary_of(tmp_path / "run") and doc["summary"]["iters"] == 4
    assert doc["config"]["train"]["max_iters"] == 4 and doc["config"]["train"]["out_dir"] == str(tmp_path / "run")
    assert doc["started_at"] <= doc["finished_at"]
    first = (tmp_path / "run" / "train.log").read_text().splitlines()[0]
    assert first.startswith(f"$ {sys.executable} ") and first.endswith(f"--out_dir {tmp_path / 'run'} --overwrite")
    assert "--preset debug" in first


def test_failing_run_gives_status_failed_with_the_log_tail(char_data, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed"}))  # a previous run's result
    run = launch.run(tiny(char_data, block_size=1_000_000), run_dir)  # larger than the data set
    assert run.exit_code == 2 and run.status() == "failed"
    doc = run.entry("bad")
    assert set(doc) == ENTRY_KEYS | {"log_tail"}
    assert doc["status"] == "failed" and doc["exit_code"] == 2 and doc["summary"] is None and doc["config"] is None
    assert "--block_size 1000000 needs more than" in doc["log_tail"]
    assert len(doc["log_tail"].splitlines()) <= launch.LOG_TAIL_LINES


def test_in_process_gives_the_same_entry_and_a_resume_continues(char_data, tmp_path, capsys):
    calls = []
    run = launch.run_in_process(tiny(char_data), tmp_path / "a", on_eval=lambda it, losses: calls.append(it) or False)
    assert run.exit_code == 0 and calls == [0, 2, 4]
    doc = run.entry("a")
    assert set(doc) == ENTRY_KEYS and doc["status"] == "completed" and doc["exit_code"] == 0
    assert doc["summary"] == summary_of(tmp_path / "a") and doc["config"]["train"]["max_iters"] == 4
    assert "iter" not in capsys.readouterr().out  # train.py's output went to the run's log
    assert "train.main" in (tmp_path / "a" / "train.log").read_text().splitlines()[0]
    # the same run resumed in a subprocess: it continues from its checkpoint, its log grows
    more = launch.run(tiny(char_data, max_iters=6), tmp_path / "a", resume=True)
    assert more.status() == "completed" and more.summary()["iters"] == 6
    assert set(more.entry("a")) == set(doc)
    log = (tmp_path / "a" / "train.log").read_text()
    assert [line.endswith("--init_from resume") for line in log.splitlines() if line.startswith("$ ")] == [False, True]
    # a failure in this process is what python train.py would report
    bad = launch.run_in_process(tiny(char_data, block_size=1_000_000), tmp_path / "b")
    assert bad.exit_code == 2 and bad.status() == "failed"
    assert "error: --block_size 1000000 needs more than" in bad.entry("b")["log_tail"]


def test_an_interrupted_blocking_run_stops_its_child(char_data, tmp_path, monkeypatch):
    started = []
    real_start, real_wait = launch.start, launch.Launch.wait

    def wait(self, timeout=None):
        if timeout is None:
            raise KeyboardInterrupt  # Ctrl-C (or SIGTERM through sigterm_as_interrupt) while the driver waits
        return real_wait(self, timeout)

    monkeypatch.setattr(launch, "start", lambda *a, **kw: started.append(real_start(*a, **kw)) or started[-1])
    monkeypatch.setattr(launch.Launch, "wait", wait)
    with pytest.raises(KeyboardInterrupt):
        launch.run(tiny(char_data, max_iters=10**6), tmp_path / "long")
    (run,) = started
    assert run.proc.returncode == -signal.SIGTERM and run.exit_code == -signal.SIGTERM
    assert run.status(interrupted=True) == "interrupted" and run.entry("long", "interrupted")["status"] == "interrupted"


def test_sigterm_becomes_keyboard_interrupt_in_the_driver():
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with launch.sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is previous


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a dead child waits as a zombie until it is reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


DRIVER = """
import json, sys, time
from optimization_and_search import launch
run = launch.start(json.loads(sys.argv[1]), sys.argv[2])
print(run.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux")
def test_sigkill_of_the_driver_kills_its_training_run(char_data, tmp_path):
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(tiny(char_data, max_iters=10**6)),
                               str(tmp_path / "long")], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    child = int(driver.stdout.readline())
    try:
        assert _alive(child)
        driver.kill()  # SIGKILL: no handler of the driver runs
        driver.wait()
        deadline = time.time() + 5
        while _alive(child) and time.time() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_driver_owned_keys_and_unknown_keys_are_refused():
    assert set(launch.driver_owned()) == {"out_dir", "init_from", "overwrite", "list_variants"}
    assert set(launch.driver_owned(seed=True)) == {"out_dir", "init_from", "overwrite", "list_variants", "seed"}
    with pytest.raises(UserError, match="^f.yaml: 'init_from' cannot be set in a sweep: every run starts"):
        launch.check_key("init_from", "f.yaml")
    with pytest.raises(UserError, match="'list_variants' cannot be set in a search: it is not a training setting"):
        launch.check_key("list_variants", driver="search")
    with pytest.raises(UserError, match="unknown setting 'max_iter' .*did you mean 'max_iters'"):
        launch.check_key("max_iter")
    with pytest.raises(UserError, match="did you mean 'named_groups'"):
        launch.check_key("named_group", near=("named_groups",))
    launch.check_key("preset")
    launch.check_key("seed")  # only the greedy search owns the seed
    assert launch.train_argv({"max_iters": 3, "preset": "debug", "max_seconds": None}, "o", resume=True) == [
        "--preset", "debug", "--max_iters", "3", "--out_dir", "o", "--init_from", "resume"]
