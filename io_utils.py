"""Crash-safe file I/O for run directories: atomic writes and checked checkpoint loading.

Every file a run writes goes to a temporary file in the same directory, is flushed to disk, and is
then renamed over the target (`os.replace` is atomic), so a run killed at any moment leaves either
the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from errors import UserError


def _atomic_write(path: Path | str, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name beside the target; open(.., "xb") keeps the usual umask (mkstemp's files are 0600)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: Path | str, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_torch_save(path: Path | str, obj) -> None:
    import torch  # here, not at the top: data preparation uses this module without torch
    _atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: Path | str, map_location="cpu") -> dict:
    """torch.load with weights_only=True; a missing, truncated or foreign file is a UserError."""
    import torch
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; train one first (python train.py --out_dir {path.parent})")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, unexpected pickled types, ...
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path} is corrupt or truncated ({reason}); "
                        "delete it, or use the other checkpoint (ckpt_best.pt / ckpt_last.pt) of the run") from None
    missing = [k for k in ("model_config", "model") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"{path} is not a ppa-gpt checkpoint (missing {', '.join(missing)})")
    return ckpt


def read_data_file(path: Path | str, what: str = "file", hint: str = ""):
    """Parse a YAML (or, by suffix, JSON) file with yaml.safe_load / json.loads; a missing or
    unparsable file is a one-line UserError: '<what> <path> not found<hint>' / 'cannot be parsed'."""
    import yaml  # here: runs and data preparation use this module without YAML
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} not found{hint}")
    try:
        text = path.read_text()
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{what} {path} cannot be parsed ({first})") from None


def read_json(path: Path | str, what: str = "file") -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{what} {path} not found") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{what} {path} cannot be read as JSON ({e}); re-create it") from None
