"""train.py end to end on CPU: schedule, learning, run-directory contents, exact resume (also after
SIGKILL), early stopping and limits, DDP with gloo, and every bad input a user can cause."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from errors import UserError
from train_args import TrainConfig

from conftest import ROOT, read_metrics, run_script

SUMMARY_KEYS = {"status", "best_val_loss", "best_iter", "final_train_loss", "iters", "tokens", "num_params",
                "iter_time_ms", "tokens_per_s", "mfu", "peak_memory_bytes", "wall_time_s"}


def run(char_data, out_dir, *flags):
    return train.main(["--preset", "debug", "--dataset", str(char_data), "--out_dir", str(out_dir),
                       "--device", "cpu", *flags])


def train_losses(out_dir) -> dict[int, float]:
    return {r["iter"]: r["loss"] for r in read_metrics(out_dir) if r["type"] == "train"}


# ------------------------------------------------------------------------ schedule

def test_lr_schedule_warmup_then_cosine_then_floor():
    tc = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110, max_iters=200)
    assert train.get_lr(0, tc) == pytest.approx(1 / 11)
    assert train.get_lr(9, tc) == pytest.approx(10 / 11)
    assert train.get_lr(10, tc) == pytest.approx(1.0)  # peak right after warmup
    assert train.get_lr(60, tc) == pytest.approx(0.55)  # halfway: min + (max - min) / 2
    assert train.get_lr(110, tc) == pytest.approx(0.1)
    assert train.get_lr(150, tc) == pytest.approx(0.1)
    lrs = [train.get_lr(i, tc) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone decay
    assert train.get_lr(60, TrainConfig(learning_rate=0.3, decay_lr=False)) == 0.3
    # defaults: decay to max_iters, min_lr = lr / 10
    tc = TrainConfig(learning_rate=1e-3, warmup_iters=0, max_iters=100)
    assert train.get_lr(100, tc) == pytest.approx(1e-4)


def test_schedule_really_drives_the_optimizer(char_data, tmp_path):
    run(char_data, tmp_path / "r", "--max_iters", "12", "--warmup_iters", "4", "--log_interval", "1")
    logged = {r["iter"]: r["lr"] for r in read_metrics(tmp_path / "r") if r["type"] == "train"}
    tc = TrainConfig(**json.loads((tmp_path / "r" / "config.json").read_text())["train"])
    assert logged == {it: pytest.approx(train.get_lr(it - 1, tc)) for it in range(1, 13)}
    assert len(set(logged.values())) == 12


# ------------------------------------------------------------------------ a run and its files

def test_training_reduces_loss_and_writes_the_run_directory(char_data, tmp_path):
    out = tmp_path / "run"
    summary = run(char_data, out, "--max_iters", "60", "--eval_interval", "20", "--learning_rate", "3e-3")
    evals = [r for r in read_metrics(out) if r["type"] == "eval"]
    assert [r["iter"] for r in evals] == [0, 20, 40, 60]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5

    assert SUMMARY_KEYS <= set(summary)
    assert summary["status"] == "completed" and summary["stop_reason"] == "max_iters"
    assert summary["iters"] == 60 and summary["tokens"] == 60 * 4 * 32
    assert summary["best_val_loss"] == pytest.approx(min(r["val_loss"] for r in evals))
    assert summary["tokens_per_s"] > 0 and summary["peak_memory_bytes"] > 0
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))

    config = json.loads((out / "config.json").read_text())
    assert config["model"]["n_layer"] == 2 and config["train"]["max_iters"] == 60
    assert config["model"]["vocab_size"] == json.loads((out / "meta.json").read_text())["vocab_size"]
    for name in ("ckpt_best.pt", "ckpt_last.pt"):
        ckpt = torch.load(out / name, weights_only=True)
        assert {"model_config", "train_config", "model", "optimizer", "iter_num", "best_val_loss", "rng"} <= set(ckpt)
    assert torch.load(out / "ckpt_last.pt", weights_only=True)["iter_num"] == 60
    assert not list(out.glob(".*.tmp"))  # no leftovers of atomic writes


def test_gradient_accumulation_equals_one_big_batch(char_data, tmp_path):
    """Two micro-batches of 2 sequences take the same optimiser step as one batch of those 4."""
    from data.dataset import load_meta
    from gpt_conf import GPTConfig

    meta = load_meta(char_data)
    cfg = GPTConfig(vocab_size=meta["vocab_size"], n_layer=2, n_head=2, n_embd=32, block_size=16)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, meta["vocab_size"], (4, 17), generator=gen)
    batches = {1: [(x[:, :-1], x[:, 1:])], 2: [(x[:2, :-1], x[:2, 1:]), (x[2:, :-1], x[2:, 1:])]}
    params, losses = {}, {}
    for accum, bs in ((1, 4), (2, 2)):
        tc = TrainConfig(batch_size=bs, gradient_accumulation_steps=accum, device="cpu", out_dir=str(tmp_path))
        trainer = train.Trainer(cfg, tc, meta, train.Distributed("cpu"))
        feed = iter(batches[accum])
        trainer.data.batch = lambda split, g: next(feed)
        losses[accum] = trainer.train_step().item()
        params[accum] = [p.detach().clone() for p in trainer.model.parameters()]
    assert losses[1] == pytest.approx(losses[2], rel=1e-6)
    for a, b in zip(params[1], params[2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    s = run(char_data, tmp_path / "a", "--max_iters", "3", "--batch_size", "2", "--gradient_accumulation_steps", "4")
    assert s["tokens"] == 3 * 2 * 4 * 32


# ------------------------------------------------------------------------ resume

RESUME_FLAGS = ["--eval_interval", "5", "--log_interval", "1", "--lr_decay_iters", "20", "--dropout", "0.1"]


def test_resume_reproduces_the_uninterrupted_run_exactly(char_data, tmp_path):
    full = run(char_data, tmp_path / "full", "--max_iters", "20", *RESUME_FLAGS)
    run(char_data, tmp_path / "part", "--max_iters", "10", *RESUME_FLAGS)
    resumed = train.main(["--out_dir", str(tmp_path / "part"), "--init_from", "resume", "--max_iters", "20",
                          "--dataset", str(char_data)])
    a, b = train_losses(tmp_path / "full"), train_losses(tmp_path / "part")
    assert sorted(b) == list(range(1, 21))  # every step logged once
    assert [a[i] for i in range(1, 21)] == [b[i] for i in range(1, 21)]  # bit-for-bit
    assert resumed["best_val_loss"] == full["best_val_loss"]
    assert resumed["iters"] == 20


def test_resume_after_sigkill(char_data, tmp_path):
    """A run killed with SIGKILL resumes from its last checkpoint and ends exactly where an
    uninterrupted run ends."""
    flags = ["--preset", "debug", "--dataset", str(char_data), "--device", "cpu", "--max_iters", "400",
             "--eval_interval", "10", "--log_interval", "1", "--n_embd", "64", "--batch_size", "8"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "train.py", *flags, "--out_dir", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 120
    while time.time() < deadline:
        evals = [r for r in read_metrics(out) if r["type"] == "eval"] if (out / "metrics.jsonl").exists() else []
        if evals and evals[-1]["iter"] >= 20:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(out / "ckpt_last.pt", weights_only=True)["iter_num"]
    assert 10 <= killed_at < 400, "the run must be killed mid-way for this test to mean anything"
    assert json.loads((out / "summary.json").read_text())["status"] == "running"

    r = run_script("train.py", "--out_dir", str(out), "--init_from", "resume", "--dataset", str(char_data))
    assert r.returncode == 0, r.stderr
    run_script("train.py", *flags, "--out_dir", str(tmp_path / "ref"))
    a, b = train_losses(tmp_path / "ref"), train_losses(out)
    assert sorted(b) == list(range(1, 401))
    assert all(a[i] == b[i] for i in range(1, 401))
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


# ------------------------------------------------------------------------ stopping

def test_threads_setting_is_applied_and_recorded(char_data, tmp_path):
    before = torch.get_num_threads()
    try:
        summary = run(char_data, tmp_path / "t", "--max_iters", "2", "--threads", "1")
        assert summary["threads"] == 1 and torch.get_num_threads() == 1
        assert json.loads((tmp_path / "t" / "config.json").read_text())["train"]["threads"] == 1
    finally:
        torch.set_num_threads(before)
    summary = run(char_data, tmp_path / "d", "--max_iters", "2")
    assert summary["threads"] == before  # unset: torch's own count, recorded
    with pytest.raises(UserError, match="--threads must be at least 1"):
        run(char_data, tmp_path / "z", "--threads", "0")


def test_early_stopping_with_patience(char_data, tmp_path):
    # a learning rate this large makes the loss worse after step 0, so no evaluation improves on it
    s = run(char_data, tmp_path / "p", "--max_iters", "100", "--eval_interval", "5", "--patience", "2",
            "--learning_rate", "5", "--no-decay_lr", "--grad_clip", "0")
    assert s["stop_reason"] == "patience"
    assert s["iters"] == 10 and s["best_iter"] == 0
    assert [r["iter"] for r in read_metrics(tmp_path / "p") if r["type"] == "eval"] == [0, 5, 10]  # once each


def test_token_and_time_limits(char_data, tmp_path):
    s = run(char_data, tmp_path / "t", "--max_iters", "100", "--max_tokens", str(7 * 4 * 32))
    assert s["stop_reason"] == "max_tokens" and s["iters"] == 7
    s = run(char_data, tmp_path / "s", "--max_iters", "100000", "--max_seconds", "1.5")
    assert s["stop_reason"] == "max_seconds" and 0 < s["iters"] < 100000
    assert torch.load(tmp_path / "s" / "ckpt_last.pt", weights_only=True)["iter_num"] == s["iters"]


# ------------------------------------------------------------------------ distributed

def test_ddp_two_processes_with_gloo(char_data, tmp_path):
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "train.py", "--preset", "debug", "--dataset", str(char_data), "--device", "cpu",
                        "--out_dir", str(out), "--max_iters", "6", "--eval_interval", "3",
                        "--gradient_accumulation_steps", "2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["iters"] == 6
    assert summary["tokens"] == 6 * 4 * 32 * 2  # two processes, one micro-batch each per step
    assert r.stdout.count("step 6:") == 1  # only rank 0 reports
    ckpt = torch.load(out / "ckpt_last.pt", weights_only=True)
    data_states = ckpt["rng"]["data"]
    assert len(data_states) == 2 and not torch.equal(data_states[0], data_states[1])


# ------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("flags,message", [
    (["--softmax_variant_attn", "consmx"], "unknown softmax 'consmx'; did you mean 'consmax'?"),
    (["--n_layr", "3"], "unknown flag '--n_layr'; did you mean '--n_layer'?"),
    (["--n_embd", "30", "--n_head", "4"], "--n_embd 30 is not divisible by --n_head 4"),
    (["--n_kv_head", "3"], "--n_head 2 is not divisible by --n_kv_head 3"),
    (["--block_size", "100000"], "--block_size 100000 needs more than"),
    (["--dataset", "no_such_set"], "prepare it with: python data/prepare.py"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be at least 1"),
    (["--learning_rate", "-1"], "--learning_rate must be positive"),
    (["--dtype", "bf16"], "did you mean 'bfloat16'?"),
    (["--init_from", "resume"], "no checkpoint at"),
    (["--vocab_size", "10"], "--vocab_size 10 is smaller than the data set's vocabulary"),
])
def test_bad_input_is_one_clear_error(char_data, tmp_path, flags, message):
    with pytest.raises(UserError) as e:
        run(char_data, tmp_path / "bad", *flags)
    assert message in str(e.value)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "bad").exists()  # nothing written


def test_config_file_unknown_key_and_bad_value(char_data, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("n_layer: 3\nlearning_rat: 0.1\n")
    with pytest.raises(UserError, match="unknown setting 'learning_rat'; did you mean 'learning_rate'"):
        run(char_data, tmp_path / "bad", "--config", str(cfg))
    cfg.write_text("n_layer: three\n")
    with pytest.raises(UserError, match="'n_layer' must be int"):
        run(char_data, tmp_path / "bad", "--config", str(cfg))


def test_missing_or_inconsistent_meta(char_data, tmp_path):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(char_data, data)
    with open(data / "val.bin", "ab") as f:
        f.write(b"\0")  # one byte more than meta.json says
    with pytest.raises(UserError, match="meta.json disagrees with val.bin"):
        run(data, tmp_path / "bad")
    (data / "meta.json").unlink()
    with pytest.raises(UserError, match="meta.json not found"):
        run(data, tmp_path / "bad")


def test_existing_run_is_never_overwritten(char_data, tmp_path):
    out = tmp_path / "run"
    run(char_data, out, "--max_iters", "4", "--eval_interval", "2")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UserError, match="already holds a run; continue it with --init_from resume"):
        run(char_data, out, "--max_iters", "4")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    run(char_data, out, "--max_iters", "2", "--overwrite")
    assert json.loads((out / "summary.json").read_text())["iters"] == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_checkpoint_on_resume(char_data, tmp_path, damage):
    out = tmp_path / "run"
    run(char_data, out, "--max_iters", "4", "--eval_interval", "2")
    ckpt = out / "ckpt_last.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a checkpoint" * 10)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UserError, match="ckpt_last.pt is corrupt or truncated"):
        train.main(["--out_dir", str(out), "--init_from", "resume", "--dataset", str(char_data)])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_model_flags_cannot_change_on_resume(char_data, tmp_path):
    out = tmp_path / "run"
    run(char_data, out, "--max_iters", "2")
    with pytest.raises(UserError, match="--n_layer 3 differs from the checkpoint's 2"):
        train.main(["--out_dir", str(out), "--init_from", "resume", "--n_layer", "3", "--dataset", str(char_data)])


def test_cli_error_is_one_line_without_traceback(char_data, tmp_path):
    r = run_script("train.py", "--dataset", str(char_data), "--out_dir", str(tmp_path / "x"),
                   "--softmax_variant_attn", "consmx")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: ")
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="torch.compile on CPU needs a C compiler")
def test_compiled_training_matches_eager(char_data, tmp_path):
    eager = run(char_data, tmp_path / "eager", "--max_iters", "4", "--log_interval", "1")
    compiled = run(char_data, tmp_path / "compiled", "--max_iters", "4", "--log_interval", "1", "--compile")
    a, b = train_losses(tmp_path / "eager"), train_losses(tmp_path / "compiled")
    assert a.keys() == b.keys()
    for i in a:
        assert b[i] == pytest.approx(a[i], abs=1e-4)
    assert compiled["best_val_loss"] == pytest.approx(eager["best_val_loss"], abs=1e-4)
    # the checkpoint holds the plain module's names, so sample.py and resume work without compiling
    keys = torch.load(tmp_path / "compiled" / "ckpt_last.pt", weights_only=True)["model"].keys()
    assert not any(k.startswith("_orig_mod") for k in keys)
