"""Crash-safe file I/O for run directories: atomic writes and checked checkpoint loading.

Every file a run writes goes to a temporary file in the same directory, is flushed to disk, and is
then renamed over the target (`os.replace` is atomic), so a run killed at any moment leaves either
the old file or the new one, never half of one. A writer killed mid-write leaves its temporary file,
`.NAME.PID.XXXXXXXX.tmp`; `remove_stale_temp_files` removes those whose writer is dead.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

from errors import UserError


TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")  # .NAME.PID.XXXXXXXX.tmp


def is_temp_file(path: Path | str) -> bool:
    """The name is that of an atomic write's temporary file."""
    return TEMP_NAME.match(Path(path).name) is not None


def pid_alive(pid: int) -> bool:
    """A process with this pid exists on this machine (a reused pid counts as alive: the safe side)."""
    if os.name == "nt":  # os.kill there terminates the process rather than probing it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temp_files(folder: Path | str) -> int:
    """Remove the temporary files in `folder` left by writers that were killed (their pid is not
    alive); a live writer's are kept. Returns how many were removed. Writers on another machine
    sharing the folder cannot be told apart: call it while holding the folder's lock."""
    folder = Path(folder)
    removed = 0
    for path in folder.iterdir() if folder.is_dir() else ():
        m = TEMP_NAME.match(path.name)
        if m and path.is_file() and not pid_alive(int(m["pid"])):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _atomic_write(path: Path | str, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name beside the target (TEMP_NAME); open(.., "xb") keeps the usual umask (mkstemp's files are 0600)
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
    except Exception as e:  # truncated zip, not a torch file, pickled code or objects, ...
        text = str(e)
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if refused:  # a well-formed pickle of something other than tensors and plain containers
            raise UserError(f"checkpoint {path} contains code or objects ({refused[1][:80]}) that this project never writes "
                            "in a checkpoint, so it will not load it; use a checkpoint written by train.py") from None
        raise UserError(f"checkpoint {path} is corrupt or truncated ({_first_sentence(text, e)}); delete it, or use "
                        "the other checkpoint (ckpt_best.pt / ckpt_last.pt) of the run") from None
    missing = [k for k in ("model_config", "model") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"{path} is not a ppa-gpt checkpoint (missing {', '.join(missing)})")
    return ckpt


def _first_sentence(text: str, e: Exception, limit: int = 120) -> str:
    """The gist of an exception's message: its first sentence, cut at a word if long."""
    if "Weights only load failed" in text:  # torch's advice about weights_only, not about the file
        m = re.search(r"(Unsupported operand \S+|WeightsUnpickler error: [^\n]+)", text)
        return f"not a torch checkpoint: {m[1].strip() if m else 'unreadable pickle data'}"
    first = re.split(r"(?<=[.!?])\s|\n", text.strip(), maxsplit=1)[0].rstrip(".") if text.strip() else ""
    if not first:
        return type(e).__name__
    return first if len(first) <= limit else first[:limit].rsplit(" ", 1)[0] + " ..."


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
