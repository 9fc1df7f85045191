"""Where a result came from: the code's git commit (and whether the tree had uncommitted changes), the
software versions, the device, the thread count and fingerprints of the data files.

train.py records `provenance(...)` in every summary.json, and so in every sweep and search log entry
that carries the summary. Data files are fingerprinted with SHA-256: the whole file up to
FULL_HASH_BYTES, above that the file size and SAMPLE_BLOCKS blocks of BLOCK_BYTES spread evenly over it
(a 17 GB train.bin is not read whole at every start; a changed byte between the blocks goes unseen,
but a re-tokenised or truncated file does not).
"""
from __future__ import annotations

import hashlib
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent
FULL_HASH_BYTES = 256 * 2 ** 20
SAMPLE_BLOCKS, BLOCK_BYTES = 64, 2 ** 20


@lru_cache(maxsize=None)
def git_state(root: str = str(ROOT)) -> dict:
    """{"commit": sha or None, "dirty": bool or None} of the repository holding the code."""
    def git(*args) -> str | None:
        try:
            out = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def versions() -> dict:
    """Python, torch, Triton (None when not installed) and numpy versions."""
    import numpy
    import torch
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"python": platform.python_version(), "torch": torch.__version__, "triton": triton_version,
            "numpy": numpy.__version__}


def device_name(device) -> str:
    """The GPU's name for CUDA devices, the CPU model otherwise."""
    import torch
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint(path: Path) -> str:
    """SHA-256 of the file (module docstring: sampled above FULL_HASH_BYTES), as 'sha256:<hex>' or
    'sha256-sampled:<hex>'."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            for chunk in iter(lambda: f.read(2 ** 20), b""):
                h.update(chunk)
            return f"sha256:{h.hexdigest()}"
        h.update(str(size).encode())
        for i in range(SAMPLE_BLOCKS):
            f.seek(i * (size - BLOCK_BYTES) // (SAMPLE_BLOCKS - 1))
            h.update(f.read(BLOCK_BYTES))
    return f"sha256-sampled:{h.hexdigest()}"


def data_fingerprints(data_dir: str | Path, names=("train.bin", "val.bin", "meta.json")) -> dict:
    """{file name: fingerprint} of a prepared data set's files that exist."""
    data_dir = Path(data_dir)
    return {n: fingerprint(data_dir / n) for n in names if (data_dir / n).is_file()}


def provenance(device, threads: int, data_dir: str | Path | None) -> dict:
    """Everything above in one JSON-serialisable dict (summary.json's "provenance")."""
    return {"git": git_state(), **versions(), "device_name": device_name(device), "threads": threads,
            "data": data_fingerprints(data_dir) if data_dir else {}}
