"""Kill-and-resume soak: a tiny debug run is SIGKILLed 20 times at random moments (during set-up,
steps, evaluations and checkpoint writes), each time followed by `--init_from resume` (or a fresh
start with --overwrite when it died before its first checkpoint); the end result must equal an
uninterrupted run's: the same metrics.jsonl losses bit for bit (CPU), no temporary or lock files
left, and ckpt_best.pt holding the best step summary.json names.

Each run is a fork of one helper process that imported train.py once (the helper does no torch work
itself, so forking it is safe), so 20 kills take seconds rather than 20 interpreter start-ups.
Marked slow; CI runs it (about half a minute on 2 CPU cores).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch

import run_dir

from conftest import ROOT, read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")]

KILLS = 20

# reads one job per line {"argv", "kill_after", "kill_at_lines", "metrics", "lock", "log"}; forks a child
# that trains and SIGKILLs it once the run's metrics.jsonl holds kill_at_lines lines (progress, not wall
# time: the kills land mid-run however loaded the machine is) or, without that, kill_after seconds after
# it took the run's lock (the lock file names its pid); unless it ended first. Answers {"exit": code or
# "killed"}
HELPER = r"""
import json, os, signal, sys, time
import train
import rich.console, rich.progress, torch._dynamo  # what each run imports lazily (the optimiser: dynamo, 2 s)
from errors import run_cli
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1), os.dup2(fd, 2)
        os._exit(run_cli(train.main, job["argv"]))
    deadline = None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)
            break
        if job.get("kill_at_lines"):
            try:
                with open(job["metrics"], "rb") as f:
                    due = f.read().count(b"\n") >= job["kill_at_lines"]
            except OSError:
                due = False
        elif deadline is None:
            try:
                holder = open(job["lock"]).read().strip()
            except OSError:
                holder = ""
            if holder == str(pid):
                deadline = time.time() + job["kill_after"]
            due = False
        else:
            due = time.time() >= deadline
        if due:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            print(json.dumps({"exit": "killed"}), flush=True)
            break
        time.sleep(0.002)
"""

TIMING = {"iter_time_ms", "tokens_per_s", "mfu", "wall_time_s"}  # differ between runs by nature


def comparable(out) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(out)]


def test_twenty_sigkills_and_resumes_end_where_an_uninterrupted_run_ends(char_data, tmp_path):
    flags = ["--preset", "debug", "--dataset", str(char_data), "--device", "cpu", "--threads", "1",
             "--max_iters", "300", "--eval_interval", "2", "--log_interval", "1", "--eval_iters", "1"]
    out, ref, log = tmp_path / "soak", tmp_path / "ref", tmp_path / "runs.log"
    helper = subprocess.Popen([sys.executable, "-c", HELPER], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})

    def launch(argv: list[str], kill_after: float, kill_at_lines: int = 0):
        job = {"argv": argv, "kill_after": kill_after, "kill_at_lines": kill_at_lines, "log": str(log),
               "metrics": str(out / run_dir.METRICS), "lock": str(out / run_dir.LOCK)}
        helper.stdin.write(json.dumps(job) + "\n")
        helper.stdin.flush()
        return json.loads(helper.stdout.readline())["exit"]

    try:
        rng = random.Random(12)
        kills = resumes = 0
        for _ in range(KILLS):
            if (out / run_dir.CKPT_LAST).exists():
                resumes += 1
                argv = ["--out_dir", str(out), "--init_from", "resume", "--dataset", str(char_data)]
            else:  # killed before its first checkpoint (or never started): start over
                argv = [*flags, "--out_dir", str(out), "--overwrite"]
            lines = len((out / run_dir.METRICS).read_bytes().splitlines()) if (out / run_dir.METRICS).exists() else 0
            # mostly mid-training (1-12 records further: steps, evaluations, checkpoint writes); one in
            # five during start-up, by time
            by_progress = rng.random() < 0.8
            result = launch(argv, rng.uniform(0.0, 0.3), lines + rng.randint(1, 12) if by_progress else 0)
            assert result in ("killed", 0), log.read_text()[-3000:]
            kills += result == "killed"
        print(f"{kills} kills, {resumes} resumes, killed at step "
              f"{torch.load(out / run_dir.CKPT_LAST, weights_only=True)['iter_num']} the last time")
        assert kills >= KILLS - 2 and resumes >= KILLS // 2, "the runs must be killed mid-way to mean anything"
        assert launch(["--out_dir", str(out), "--init_from", "resume", "--dataset", str(char_data)], 300) == 0, \
            log.read_text()[-3000:]
        assert launch([*flags, "--out_dir", str(ref)], 300) == 0, log.read_text()[-3000:]
    finally:
        helper.stdin.close()
        helper.wait(timeout=60)

    assert comparable(out) == comparable(ref)  # every step once, the same losses and learning rates
    assert [r["iter"] for r in read_metrics(out) if r["type"] == "train"] == list(range(1, 301))
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name == run_dir.LOCK]
    summary = json.loads((out / run_dir.SUMMARY).read_text())
    best = torch.load(out / run_dir.CKPT_BEST, weights_only=True)
    assert summary["status"] == "completed" and summary["iters"] == 300
    assert (best["iter_num"], best["best_val_loss"]) == (summary["best_iter"], summary["best_val_loss"])
    assert summary["best_val_loss"] == json.loads((ref / run_dir.SUMMARY).read_text())["best_val_loss"]
