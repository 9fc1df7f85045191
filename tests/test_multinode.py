"""Two torchrun "nodes" on loopback (--nnodes 2 --nproc_per_node 1, c10d rendezvous), as on a cluster of
two machines: training and exact resume with DDP and with FSDP, and a run-directory refusal that only
rank 0 can see stops every rank at once instead of leaving the other node waiting."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT

FLAGS = ["--preset", "debug", "--device", "cpu", "--eval_interval", "3", "--log_interval", "1", "--lr_decay_iters", "6",
         "--gradient_accumulation_steps", "2", "--dropout", "0.1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(*args: str, timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """train.py on two torchrun agents that meet at a c10d rendezvous on 127.0.0.1 (one process each)."""
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", f"test{port}",
           "--max_restarts", "0", "train.py", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    nodes = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    out = []
    try:
        for p in nodes:
            stdout, stderr = p.communicate(timeout=timeout)
            out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    return out


def train_losses(run_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return {r["iter"]: r["loss"] for r in rows if r["type"] == "train"}


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_nodes_train_and_resume_exactly(char_data, tmp_path, fsdp):
    extra = ["--fsdp"] if fsdp else []
    data = ["--dataset", str(char_data)]
    full, part = tmp_path / "full", tmp_path / "part"
    for r in two_nodes(*FLAGS, *data, *extra, "--out_dir", str(full), "--max_iters", "6"):
        assert r.returncode == 0, r.stderr[-3000:]
    for r in two_nodes(*FLAGS, *data, *extra, "--out_dir", str(part), "--max_iters", "3"):
        assert r.returncode == 0, r.stderr[-3000:]
    for r in two_nodes("--out_dir", str(part), "--init_from", "resume", "--max_iters", "6", *data):
        assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((full / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["iters"] == 6
    a, b = train_losses(full), train_losses(part)
    assert sorted(b) == list(range(1, 7))
    # bit for bit: every rank resumes its own dropout generator (before, all took rank 0's, and the second
    # step after the resume was 3e-6 off, the third 5e-5)
    assert [a[i] for i in range(1, 7)] == [b[i] for i in range(1, 7)]
    assert len(set(b.values())) == 6  # it trained
    assert json.loads((part / "summary.json").read_text())["best_val_loss"] == summary["best_val_loss"]


@pytest.mark.slow
def test_a_refusal_only_rank_0_sees_stops_every_rank_at_once(char_data, tmp_path):
    """Another training process holds the run directory: rank 0 cannot take its lock, and the rank on the
    other node, which never looks at the lock, stops with rank 0's error instead of waiting for it."""
    from run_dir import RunDir
    out = tmp_path / "run"
    with RunDir(out).lock():  # a run already trains here (this process holds its lock)
        start = time.time()
        results = two_nodes(*FLAGS, "--dataset", str(char_data), "--out_dir", str(out), "--max_iters", "4", timeout=300)
    assert time.time() - start < 240  # not a collective's timeout
    assert all(r.returncode != 0 for r in results)
    errors = [r.stderr for r in results]
    assert sum(f"{out} is in use by another training run (pid {os.getpid()})" in e for e in errors) == 2, errors
    assert sum("(rank 0)" in e for e in errors) == 1  # the other node says whose refusal it is
    assert not (out / "summary.json").exists()
