"""The run directory as a guarded resource (run_dir.py, train.py): which folders a new run may take,
one training process per folder (DirLock), checkpoints consistent after a kill between their writes,
temporary files of killed writers, failed runs recorded as failed, nan/inf losses, and checkpoints
holding code or objects."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import run_dir
import train
from errors import UserError
from run_dir import DirLock, RunDir

from conftest import ROOT, read_metrics, run_script


def run(char_data, out_dir, *flags, **kw):
    return train.main(["--preset", "debug", "--dataset", str(char_data), "--out_dir", str(out_dir),
                       "--device", "cpu", *flags], **kw)


def resume(char_data, out_dir, *flags, **kw):
    return train.main(["--out_dir", str(out_dir), "--init_from", "resume", "--dataset", str(char_data), *flags], **kw)


def snapshot(folder) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def summary_of(out) -> dict:
    return json.loads((out / run_dir.SUMMARY).read_text())


# ------------------------------------------------------------------------ 1. which folders a new run takes

def test_the_marker_is_a_config_with_model_and_train_sections(tmp_path):
    r = RunDir(tmp_path)
    assert not r.is_run()
    (tmp_path / run_dir.CONFIG).write_text('{"lr": 1}')  # someone else's config.json
    assert not r.is_run()
    (tmp_path / run_dir.CONFIG).write_text('{"model": {}, "train": {}}')
    assert r.is_run()


def test_a_folder_of_other_files_is_refused_and_overwrite_leaves_them_alone(char_data, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(UserError, match="holds files that are not a ppa-gpt run \\(notes.txt\\); choose another "
                                        "--out_dir, or pass --overwrite") as e:
        run(char_data, out, "--max_iters", "2")
    assert "\n" not in str(e.value) and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    run(char_data, out, "--max_iters", "2", "--overwrite")
    assert (out / "notes.txt").read_text() == "my notes" and summary_of(out)["status"] == "completed"
    capsys.readouterr()
    run(char_data, out, "--max_iters", "2", "--overwrite")  # over a run: says what it replaces, in one line
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("--overwrite: replacing"))
    assert "ckpt_last.pt" in line and "config.json" in line and "notes.txt" not in line
    assert (out / "notes.txt").read_text() == "my notes"


def test_an_out_dir_that_is_a_file_or_cannot_be_written_is_refused_before_writing(char_data, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(UserError, match="--out_dir .*file.txt is a file, not a folder; choose another --out_dir"):
        run(char_data, f, "--overwrite")
    with pytest.raises(UserError, match="cannot be created: .*file.txt is a file"):
        run(char_data, f / "sub" / "run")
    assert f.read_text() == "x"
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(UserError, match="cannot be written"):
            run(char_data, ro / "run")


def test_deleted_corrupt_ckpt_last_then_training_again_keeps_the_surviving_ckpt_best(char_data, tmp_path):
    """The corrupt-checkpoint message says 'delete it'; a user who does, then runs the same command,
    must not have the surviving ckpt_best.pt (and the run's config and metrics) replaced silently."""
    out = tmp_path / "run"
    run(char_data, out, "--max_iters", "4", "--eval_interval", "2")
    (out / run_dir.CKPT_LAST).write_bytes(b"garbage" * 10)
    with pytest.raises(UserError, match="ckpt_last.pt is corrupt or truncated.*delete it"):
        resume(char_data, out)
    (out / run_dir.CKPT_LAST).unlink()
    before = snapshot(out)
    for again in (lambda: run(char_data, out, "--max_iters", "4"), lambda: resume(char_data, out)):
        with pytest.raises(UserError) as e:
            again()
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="holds a run without ckpt_last.pt .* start over with --overwrite "
                                        "\\(replaces its config.json, .*ckpt_best.pt"):
        run(char_data, out, "--max_iters", "4")
    assert snapshot(out) == before


# ------------------------------------------------------------------------ 2. one process per run directory

def test_dir_lock_is_exclusive_names_the_holder_and_cleans_up(tmp_path):
    folder = tmp_path / "new"
    with DirLock(folder, "sweep") as lock:
        assert lock.holder() == os.getpid() and (folder / run_dir.LOCK).exists()
        with pytest.raises(UserError, match=f"new is in use by another sweep \\(pid {os.getpid()}\\); wait for it"):
            DirLock(folder, "sweep").acquire()  # flock is per open file: refused in the same process too
    assert not folder.exists()  # created by the lock, nothing written: removed again
    folder.mkdir()
    (folder / "kept").write_text("x")
    with DirLock(folder):
        pass
    assert sorted(p.name for p in folder.iterdir()) == ["kept"]


def test_the_os_releases_the_lock_of_a_killed_holder(tmp_path):
    code = "import sys, time; from run_dir import DirLock; DirLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"pid {proc.pid}"):
            DirLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (tmp_path / run_dir.LOCK).exists()  # the killed holder's file stays, unlocked
    with DirLock(tmp_path) as lock:
        assert lock.holder() == os.getpid()


def test_a_second_training_process_on_the_same_run_is_refused_at_once(char_data, tmp_path):
    out = tmp_path / "run"
    flags = ["--preset", "debug", "--dataset", str(char_data), "--device", "cpu", "--max_iters", "100000",
             "--eval_interval", "5", "--out_dir", str(out)]
    first = subprocess.Popen([sys.executable, "train.py", *flags], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.time() + 120
        while not (out / run_dir.CKPT_LAST).exists() and time.time() < deadline:
            time.sleep(0.05)
        config = (out / run_dir.CONFIG).read_bytes()
        for second in (["--overwrite"], ["--init_from", "resume"]):
            t0 = time.time()
            r = run_script("train.py", *flags, *second)
            assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
            assert f"is in use by another training run (pid {first.pid})" in r.stderr
            assert time.time() - t0 < 60  # refused at once, not after waiting
        assert first.poll() is None  # the first run goes on, its files intact
        assert (out / run_dir.CONFIG).read_bytes() == config and (out / run_dir.CKPT_LAST).exists()
        assert summary_of(out)["status"] == "running"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


# ------------------------------------------------------------------------ 3. best before last

class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so the run records nothing (summary stays 'running')."""


def test_a_kill_between_the_best_and_last_checkpoint_writes_leaves_a_consistent_run(char_data, tmp_path, monkeypatch):
    """Killed between the two writes of an improving evaluation (the last one), the run resumes to a
    summary whose best_iter and best_val_loss are what ckpt_best.pt holds."""
    flags = ["--max_iters", "20", "--eval_interval", "5", "--learning_rate", "3e-3"]
    real, writes = run_dir.atomic_torch_save, []

    def killed_after_one_write_at_20(path, state):
        writes.append((path.name, state["iter_num"]))
        if state["iter_num"] == 20 and sum(it == 20 for _, it in writes) == 2:
            raise Killed
        real(path, state)

    monkeypatch.setattr(run_dir, "atomic_torch_save", killed_after_one_write_at_20)
    with pytest.raises(Killed):
        run(char_data, tmp_path / "r", *flags)
    assert [name for name, it in writes if it == 20] == ["ckpt_best.pt", "ckpt_last.pt"]  # best first
    monkeypatch.setattr(run_dir, "atomic_torch_save", real)
    summary = resume(char_data, tmp_path / "r")
    best = torch.load(tmp_path / "r" / run_dir.CKPT_BEST, weights_only=True)
    assert summary["status"] == "completed" and summary["best_iter"] == 20
    assert (best["iter_num"], best["best_val_loss"]) == (summary["best_iter"], summary["best_val_loss"])
    assert summary == summary_of(tmp_path / "r")


# ------------------------------------------------------------------------ 4. temporary files of killed writers

def test_stale_temp_files_of_dead_writers_are_removed_at_start_and_live_ones_kept(char_data, tmp_path, capsys):
    out = tmp_path / "run"
    run(char_data, out, "--max_iters", "2")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = out / f".ckpt_last.pt.{int(dead.stdout)}.deadbeef.tmp"
    live = out / f".summary.json.{os.getpid()}.cafebabe.tmp"
    stale.write_bytes(b"half a checkpoint")
    live.write_bytes(b"being written")
    capsys.readouterr()
    resume(char_data, out, "--max_iters", "4")
    assert "removed 1 temporary file(s) left by killed writes" in capsys.readouterr().out
    assert not stale.exists() and live.exists()


# ------------------------------------------------------------------------ 5. failures are recorded

def test_disk_full_mid_run_is_one_line_keeps_the_checkpoint_and_records_failed(char_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run(char_data, out, "--max_iters", "4", "--eval_interval", "2")
    real = run_dir.atomic_torch_save

    def full_disk(path, state):
        if state["iter_num"] >= 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, state)

    monkeypatch.setattr(run_dir, "atomic_torch_save", full_disk)
    with pytest.raises(UserError, match="^no space left on device writing .*ckpt_(best|last).pt; free space and "
                                        "resume with --init_from resume$"):
        resume(char_data, out, "--max_iters", "8")
    assert torch.load(out / run_dir.CKPT_LAST, weights_only=True)["iter_num"] == 4  # the previous one, intact
    s = summary_of(out)
    assert s["status"] == "failed" and s["stop_reason"] == "error" and s["error"].startswith("no space left")
    monkeypatch.setattr(run_dir, "atomic_torch_save", real)
    assert resume(char_data, out, "--max_iters", "8")["status"] == "completed"
    assert summary_of(out)["error"] is None


def test_a_user_error_mid_run_records_failed(char_data, tmp_path):
    def on_eval(it, losses):
        if it == 4:
            raise UserError("the pruner's store is unreachable; start it again")
        return False

    with pytest.raises(UserError, match="pruner's store"):
        run(char_data, tmp_path / "r", "--max_iters", "8", "--eval_interval", "2", on_eval=on_eval)
    s = summary_of(tmp_path / "r")
    assert (s["status"], s["stop_reason"], s["error"]) == ("failed", "error",
                                                            "the pruner's store is unreachable; start it again")


# ------------------------------------------------------------------------ 6. nan / inf losses

def nan_after(step: int, monkeypatch):
    real = train.Trainer.train_step

    def train_step(self):
        loss = real(self)
        return loss * float("nan") if self.iter_num >= step else loss

    monkeypatch.setattr(train.Trainer, "train_step", train_step)


def test_a_nan_loss_stops_the_run_as_failed(char_data, tmp_path, monkeypatch):
    nan_after(5, monkeypatch)
    with pytest.raises(UserError, match="^the training loss is nan at step 5: training diverged; lower "
                                        "--learning_rate .* or pass --allow_nonfinite_loss$"):
        run(char_data, tmp_path / "r", "--max_iters", "10", "--eval_interval", "4")
    s = summary_of(tmp_path / "r")
    assert (s["status"], s["stop_reason"], s["iters"]) == ("failed", "nan_loss", 5)
    assert torch.load(tmp_path / "r" / run_dir.CKPT_LAST, weights_only=True)["iter_num"] == 4
    assert [r["iter"] for r in read_metrics(tmp_path / "r") if r["type"] == "train"] == [1, 2, 3, 4]


def test_allow_nonfinite_loss_keeps_training(char_data, tmp_path, monkeypatch):
    nan_after(5, monkeypatch)
    s = run(char_data, tmp_path / "r", "--max_iters", "10", "--eval_interval", "4", "--allow_nonfinite_loss")
    assert s["status"] == "completed" and s["iters"] == 10


def test_an_infinite_learning_rate_does_not_end_completed(char_data, tmp_path):
    out = tmp_path / "inf"
    r = run_script("train.py", "--preset", "debug", "--dataset", str(char_data), "--device", "cpu",
                   "--out_dir", str(out), "--learning_rate", "inf", "--max_iters", "6")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    if (out / run_dir.SUMMARY).exists():  # (a settings check may refuse inf before the run starts)
        assert summary_of(out)["status"] == "failed" and summary_of(out)["stop_reason"] == "nan_loss"


# ------------------------------------------------------------------------ 7. checkpoints holding code or objects

class Payload:
    """A class instance: what a pickle of code or objects looks like to torch.load(weights_only=True)."""


def test_a_checkpoint_with_code_or_objects_is_refused_plainly(tmp_path):
    from io_utils import load_checkpoint
    path = tmp_path / "ckpt.pt"
    torch.save({"model_config": {}, "model": Payload()}, path)
    with pytest.raises(UserError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert "contains code or objects" in msg and "this project never writes" in msg and "will not load" in msg
    assert "Payload" in msg and "weights_only" not in msg and "corrupt" not in msg and "\n" not in msg
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="is corrupt or truncated \\(PytorchStreamReader failed reading zip archive: "
                                        "failed finding central directory\\); delete it"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(UserError, match="is corrupt or truncated \\(not a torch checkpoint"):
        load_checkpoint(path)
