"""A prepared data set read back: finding its folder, checking its meta.json, and serving batches.

    from data.dataset import TokenData, load_meta, resolve_data_dir
    meta = load_meta(resolve_data_dir("shakespeare_char"))      # checked against train.bin / val.bin
    data = TokenData(meta, batch_size=12, block_size=64, device=torch.device("cpu"))
    x, y = data.batch("train", torch.Generator().manual_seed(0))   # (B, T) inputs and next-token targets

Training draws batches through the `Batches` protocol, which both loaders implement: `TokenData`
(random windows of a token file, pre-training) and `data.sft.SFTData` (fine-tuning conversations).
data/prepare.py writes the folders this module reads.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from errors import UserError

DATA_ROOT = Path(__file__).resolve().parent
EMBEDDED_DATASETS = ("shakespeare_char", "shakespeare")  # folders with their own prepare.py
SPLITS = ("train", "val")
META = "meta.json"  # a prepared folder's description (tokenizer, sizes); a run keeps a copy (run_dir.META)


@runtime_checkable
class Batches(Protocol):
    """What the trainer needs of a data source. `batch` draws with the caller's generator alone, so a
    resumed run (which restores the generator) sees the same batches as an uninterrupted one."""

    eval_splits: tuple[str, ...]  # the splits an evaluation reads: ("train", "val"), or ("train",) without validation

    def batch(self, split: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y): (B, T) input ids and targets on the loader's device; a target of -1 is not trained."""
        ...


def resolve_data_dir(dataset: str) -> Path:
    """--dataset: a path that exists as given, else a folder under data/."""
    p = Path(dataset)
    return p if p.is_dir() else DATA_ROOT / dataset


def prepare_command(data_dir: str | Path) -> str:
    """The command that (re)creates `data_dir`: its own prepare.py for the embedded sets, else the generic one."""
    data_dir = Path(data_dir)
    script = data_dir / "prepare.py"
    if script.is_file():
        return f"python {script}"
    embedded = DATA_ROOT / data_dir.name / "prepare.py"
    if data_dir.name in EMBEDDED_DATASETS and embedded.is_file():
        return f"python {_shown(embedded)} --out_dir {data_dir}"
    return f"python data/prepare.py --input YOUR_TEXT --out_dir {data_dir}"


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it is below it (shorter to read and to copy)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load_meta(data_dir: str | Path) -> dict:
    """meta.json of a prepared folder, after checking train.bin and val.bin match it; adds "data_dir".
    The ids are checked against a model's vocabulary by check_token_ids, once that is known."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data directory {data_dir} not found; prepare it with: {prepare_command(data_dir)}")
    meta_path = data_dir / META
    if not meta_path.is_file():
        raise UserError(f"{meta_path} not found (data set not prepared, or prepare was interrupted); "
                        f"prepare it with: {prepare_command(data_dir)}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{meta_path} cannot be read as JSON ({e}); re-run: {prepare_command(data_dir)}") from None
    needed = ("tokenizer", "vocab_size", "dtype", "train_tokens", "val_tokens")
    missing = [k for k in needed if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise UserError(f"{meta_path} lacks {', '.join(missing)}; re-run: {prepare_command(data_dir)}")
    if meta["dtype"] not in ("uint16", "uint32"):
        raise UserError(f"{meta_path} has dtype '{meta['dtype']}', expected uint16 or uint32; "
                        f"re-run: {prepare_command(data_dir)}")
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in SPLITS:
        path = data_dir / f"{split}.bin"
        if not path.is_file():
            raise UserError(f"{path} not found; re-run: {prepare_command(data_dir)}")
        size = path.stat().st_size
        expected = meta[f"{split}_tokens"]
        if size % itemsize or size // itemsize != expected:
            raise UserError(f"meta.json disagrees with {path.name} ({size / itemsize:g} {meta['dtype']} tokens "
                            f"in the file vs {expected} in meta.json); re-run prepare: {prepare_command(data_dir)}")
        if expected == 0:
            raise UserError(f"{path} holds no tokens; re-run prepare with more text: {prepare_command(data_dir)}")
    return {**meta, "data_dir": str(data_dir)}


def check_token_ids(meta: dict, vocab_size: int) -> None:
    """Every token id of the data set `meta` describes (load_meta's) is below the model's `vocab_size`;
    otherwise a one-line UserError (an id past the embedding would fail deep inside training).

    The largest id comes from meta.json's "max_token_id" (data/prepare.py records it); a data set
    prepared before that key existed is scanned instead: a max over train.bin and val.bin through
    np.memmap, in chunks, at disk speed. The scan is not cached (the folder is only read, never
    written); re-running prepare records the key."""
    data_dir = Path(meta["data_dir"])
    recorded = meta.get("max_token_id")
    if isinstance(recorded, int) and not isinstance(recorded, bool):
        found = {"train.bin and val.bin": recorded}
    else:
        found = {f"{split}.bin": max_token_id(data_dir / f"{split}.bin", meta["dtype"]) for split in SPLITS}
    for where, max_id in found.items():
        if max_id >= vocab_size:
            raise UserError(f"{data_dir} holds token id {max_id} in {where}, but the model's vocabulary has "
                            f"{vocab_size} ids (0..{vocab_size - 1}); the data was prepared with another "
                            f"tokenizer or is damaged: re-run {prepare_command(data_dir)}")


def max_token_id(path: str | Path, dtype: str, chunk: int = 1 << 24) -> int:
    """The largest id in a token file (-1 when empty), read `chunk` ids at a time."""
    data = np.memmap(path, dtype=np.dtype(dtype), mode="r")
    return max((int(data[i:i + chunk].max()) for i in range(0, len(data), chunk)), default=-1)



# ----------------------------------------------------------------------------- batches
class TokenData:
    """Random (B, T) windows from train.bin / val.bin, reading through a fresh np.memmap per batch
    (a long-lived memmap grows the process's memory as pages are touched; nanoGPT does the same)."""

    eval_splits = SPLITS

    def __init__(self, meta: dict, batch_size: int, block_size: int, device: torch.device):
        self.meta, self.batch_size, self.block_size, self.device = meta, batch_size, block_size, device
        self.dir = Path(meta["data_dir"])
        self.dtype = np.dtype(meta["dtype"])
        for split in SPLITS:
            n = meta[f"{split}_tokens"]
            if n <= block_size + 1:
                raise UserError(f"--block_size {block_size} needs more than {block_size + 1} tokens, but the "
                                f"{split} split of {self.dir} has {n}; lower --block_size or prepare more data")

    def batch(self, split: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        data = np.memmap(self.dir / f"{split}.bin", dtype=self.dtype, mode="r")
        ix = torch.randint(len(data) - self.block_size - 1, (self.batch_size,), generator=generator).tolist()
        x = torch.from_numpy(np.stack([data[i:i + self.block_size].astype(np.int64) for i in ix]))
        y = torch.from_numpy(np.stack([data[i + 1:i + 1 + self.block_size].astype(np.int64) for i in ix]))
        if self.device.type == "cuda":  # pinned host memory lets the copy overlap with compute
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)
