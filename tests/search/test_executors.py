"""optimization_and_search/executors.py: sweeps through submitit (its debug and local clusters; no SLURM
cluster needed), the sbatch script the SLURM path writes, and a preempted job requeued and resumed from
its checkpoint."""
from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from errors import UserError
from optimization_and_search import executors
from optimization_and_search.results import load_log
from optimization_and_search.run_experiments import main

submitit = pytest.importorskip("submitit")


def write_sweep(tmp_path, char_data, body: str, name: str = "s") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"preset: debug\nmax_iters: 4\neval_interval: 2\ndevice: cpu\ndataset: {char_data}\n" + body)
    return str(path)


def sweep_args(tmp_path, config: str, *extra: str) -> list[str]:
    return ["-c", config, "--out_root", str(tmp_path / "out"), "--log_dir", str(tmp_path / "logs"), *extra]


def flags(**kw):
    base = {k: None for k in executors.KEYS}
    base.update(executor=None, submitit_folder=None)
    base.update(kw)
    return SimpleNamespace(**base)


def test_config_precedence_and_errors(tmp_path):
    assert executors.config_from(flags()) is None  # the local executor
    cfg = executors.config_from(flags(partition="gpu"), {"partition": "cpu", "time": 30, "gpus_per_run": 1}, tmp_path)
    assert (cfg.cluster, cfg.partition, cfg.time, cfg.gpus_per_run) == ("slurm", "gpu", 30, 1)  # flags win
    assert cfg.folder == str(tmp_path / "submitit")
    with pytest.raises(UserError, match="did you mean 'partition'"):
        executors.config_from(flags(), {"partiton": "gpu"})
    with pytest.raises(UserError, match="--partition only apply to --executor submitit"):
        executors.config_from(flags(executor="local", partition="gpu"))
    with pytest.raises(UserError, match="did you mean 'slurm'"):
        executors.config_from(flags(executor="submitit", cluster="slrum"))
    with pytest.raises(UserError, match="time must be a whole number"):
        executors.config_from(flags(executor="submitit"), {"time": 0})


def test_slurm_submission_is_one_array_with_the_parameters_asked_for(tmp_path, monkeypatch):
    """No SLURM cluster: a stand-in `sbatch` on PATH keeps the script submitit writes and answers a job id."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, body in (("sbatch", f'for a in "$@"; do last="$a"; done\ncp "$last" {tmp_path}/submitted.sh\n'
                                  'echo "Submitted batch job 4242"\n'), ("srun", "exit 0\n")):
        tool = bindir / name
        tool.write_text("#!/bin/sh\n" + body)
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    cfg = executors.SubmititConfig(cluster="slurm", folder=str(tmp_path / "jobs"), partition="gpu", time=90,
                                   gpus_per_run=1, cpus_per_run=8, mem_gb=32, array_parallelism=2, account="proj",
                                   setup=["module load cuda"])
    runs = [({"preset": "debug", "n_layer": n}, tmp_path / "out" / f"nl-{n}", False, {}) for n in (1, 2, 3)]
    handles = executors.submit(executors.build(cfg, "mysweep"), runs)
    assert [h.job_id for h in handles] == ["4242_0", "4242_1", "4242_2"]
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB", "#SBATCH --array=0-2%2", "#SBATCH --account=proj",
                 "#SBATCH --job-name=mysweep", "#SBATCH --signal=USR2@", "module load cuda", "export PYTHONPATH="):
        assert line in script, line
    assert "submitit.core._submit" in script
    assert handles[0].argv[:2] == ["--preset", "debug"] and "--overwrite" in handles[0].argv


@pytest.mark.slow
def test_a_sweep_through_submitit_logs_resumes_and_retries_as_the_local_executor(tmp_path, char_data):
    config = write_sweep(tmp_path, char_data, "block_size: [32, 1000000]\n")  # larger than the data: fails
    res = main(sweep_args(tmp_path, config, "--executor", "submitit", "--cluster", "debug"))
    docs = {d["name"]: d for d in load_log(res["log"])}
    assert {n: d["status"] for n, d in docs.items()} == {"bs-32": "completed", "bs-1000000": "failed"}
    ok, bad = docs["bs-32"], docs["bs-1000000"]
    assert ok["exit_code"] == 0 and ok["summary"]["status"] == "completed" and ok["config"]["model"]["block_size"] == 32
    assert bad["exit_code"] == 2 and bad["log_tail"]
    marker = json.loads((tmp_path / "out" / "bs-32" / "sweep_run.json").read_text())
    assert marker["job_id"].startswith("DEBUG_")
    again = main(sweep_args(tmp_path, config, "--executor", "submitit", "--cluster", "debug"))
    assert again["ran"] == []  # the completed run is done, the failed one left alone
    retried = main(sweep_args(tmp_path, config, "--executor", "submitit", "--cluster", "debug", "--retry_failed"))
    assert retried["ran"] == ["bs-1000000"]
    assert [d["status"] for d in load_log(res["log"])] == ["completed", "failed", "failed"]


def job_process(folder: Path) -> int:
    """The pid of the submitit job process (not its controller) running from `folder`."""
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in cmd and str(folder).encode() in cmd:
            return int(proc.name)
    raise AssertionError(f"no submitit job process for {folder}")


@pytest.mark.slow
def test_a_preempted_job_is_requeued_and_resumes_from_its_checkpoint(tmp_path, char_data):
    cfg = executors.SubmititConfig(cluster="local", folder=str(tmp_path / "jobs"))
    run_dir = tmp_path / "run"
    settings = {"preset": "debug", "max_iters": 60, "eval_interval": 5, "dataset": str(char_data), "device": "cpu",
                "threads": 1}
    (handle,) = executors.submit(executors.build(cfg, "preempt"), [(settings, run_dir, False, {})])
    end = time.time() + 600
    while not (run_dir / "ckpt_last.pt").exists():  # the run has a checkpoint: preempt it
        assert time.time() < end and handle.poll() is None, (run_dir / "train.log").read_text()[-2000:]
        time.sleep(0.2)
    os.kill(job_process(tmp_path / "jobs"), signal.SIGUSR2)  # what SLURM sends before a preemption or time limit
    assert handle.wait(timeout=900) == 0, (run_dir / "train.log").read_text()[-3000:]
    log = (run_dir / "train.log").read_text()
    commands = [line for line in log.splitlines() if line.startswith("$ ")]
    assert len(commands) == 2 and "--overwrite" in commands[0] and "--init_from resume" in commands[1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["iters"] == 60
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    assert metrics[-1]["iter"] == 60
    assert yaml.safe_load((run_dir / "config.json").read_text())["train"]["max_iters"] == 60


@pytest.mark.slow
def test_a_rerun_after_the_runner_was_killed_waits_for_its_job_instead_of_starting_a_twin(tmp_path, char_data, capsys):
    """Jobs outlive a killed runner (on SLURM, and on submitit's local cluster): the rerun adopts the job
    its run marker names and logs its result, as the local executor's rerun logs its resumed run."""
    import subprocess
    import sys

    from conftest import ROOT
    config = tmp_path / "orphan.yaml"
    config.write_text(f"preset: debug\nmax_iters: 150\neval_interval: 5\nthreads: 1\ndevice: cpu\ndataset: {char_data}\n")
    config = str(config)
    cmd = [sys.executable, "optimization_and_search/run_experiments.py",
           *sweep_args(tmp_path, config, "--executor", "submitit", "--cluster", "local")]
    runner = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "out" / "run"
    end = time.time() + 600
    while not (run_dir / "ckpt_last.pt").exists():
        assert time.time() < end and runner.poll() is None
        time.sleep(0.2)
    runner.kill()
    runner.wait()
    job_id = json.loads((run_dir / "sweep_run.json").read_text())["job_id"]
    assert executors.pid_alive(int(job_id))  # the job goes on without its runner
    res = main(sweep_args(tmp_path, config, "--executor", "submitit", "--cluster", "local"))
    assert f"its job {job_id} still runs; waiting for it" in capsys.readouterr().out
    (doc,) = load_log(res["log"])
    assert doc["status"] == "completed" and doc["summary"]["iters"] == 150
    commands = [line for line in (run_dir / "train.log").read_text().splitlines() if line.startswith("$ ")]
    assert len(commands) == 1  # trained once, by the job the first runner submitted
