"""The run directory: its file names, reading a run back, and the summary.json schema.

Every module that reads or writes a run goes through here, so a file name is spelled once.

    RUN/config.json      resolved settings {"model": asdict(GPTConfig), "train": asdict(TrainConfig)}
    RUN/meta.json        the tokenizer description (the data set's meta.json without its path)
    RUN/metrics.jsonl    one JSON record per log and eval step (train_log.py)
    RUN/summary.json     the run's numbers, keys declared in SUMMARY_FIELDS below
    RUN/cost.json        the analytic cost per component (variations/cost.py)
    RUN/ckpt_last.pt     the latest state: model, optimiser, RNG, counters (resume reads it)
    RUN/ckpt_best.pt     the state at the best validation loss (sampling reads it by default)
    RUN/tensorboard/     TensorBoard scalars (--tensorboard)

    from run_dir import RunDir, load_run
    model, tokenizer, ckpt = load_run("out/quickstart")        # best checkpoint, else the last one
    RunDir("out/quickstart").read_summary()["best_val_loss"]
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from errors import UserError
from io_utils import atomic_torch_save, atomic_write_json, load_checkpoint, read_json

CONFIG = "config.json"
META = "meta.json"  # the data set's description (data.dataset.META), copied into the run
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
COST = "cost.json"
CKPT_LAST = "ckpt_last.pt"
CKPT_BEST = "ckpt_best.pt"
TENSORBOARD = "tensorboard"
CHECKPOINTS = {"best": CKPT_BEST, "last": CKPT_LAST}  # --ckpt NAME -> file
CHECKPOINT_CHOICES = tuple(CHECKPOINTS)
# the files of a training run's results, cleared when a new run starts in the folder (--overwrite)
RESULT_FILES = (METRICS, SUMMARY, CKPT_BEST, CKPT_LAST)


# ---------------------------------------------------------------------------------------- summary.json
@dataclass(frozen=True)
class SummaryField:
    name: str
    numeric: bool  # a number (or null) a search may optimise or a sweep may plot
    help: str


SUMMARY_FIELDS: tuple[SummaryField, ...] = (
    SummaryField("status", False, "running (written at each evaluation) or completed"),
    SummaryField("stop_reason", False, "max_iters, max_seconds, max_tokens, patience or pruned"),
    SummaryField("best_val_loss", True, "lowest validation loss of any evaluation (nats/token)"),
    SummaryField("best_iter", True, "the step of best_val_loss (the step ckpt_best.pt holds)"),
    SummaryField("final_val_loss", True, "validation loss of the last evaluation"),
    SummaryField("final_train_loss", True, "training loss of the last optimiser step"),
    SummaryField("iters", True, "optimiser steps taken"),
    SummaryField("tokens", True, "training tokens seen (steps x tokens per step)"),
    SummaryField("num_params", True, "parameters, the tied embedding/head counted once"),
    SummaryField("iter_time_ms", True, "mean time of an optimiser step (this process's first step excluded)"),
    SummaryField("tokens_per_s", True, "training throughput"),
    SummaryField("mfu", True, "model FLOPs utilisation, when the device's peak is known"),
    SummaryField("peak_memory_bytes", True, "device (CUDA, MPS) or process (CPU) memory high-water mark"),
    SummaryField("wall_time_s", True, "wall time, summed over resumes"),
    SummaryField("device", False, "the device trained on"),
    SummaryField("dtype", False, "the autocast dtype"),
    SummaryField("world_size", True, "processes (torchrun)"),
    SummaryField("threads", True, "torch's intra-op CPU threads during the run (--threads, else torch's default)"),
    SummaryField("sft", False, "losses are on completion tokens only (supervised fine-tuning)"),
    SummaryField("softmax_kernel", False, "the attention normaliser's backend: triton or torch"),
    SummaryField("learned_constants", False, "final values of the learned scalars of normalisers, activations and "
                 "position encodings (ConSmax beta/gamma, per head for consmax_v2, PReLU slope, ...) by parameter name"),
)


def cost_summary_keys() -> list[str]:
    """The analytic cost keys of summary.json (variations/cost.per_token_summary): macs_per_token, ..."""
    from variations.cost import COUNTS
    return [*(f"{c}_per_token" for c in COUNTS if c != "params"), "cost_params"]


def summary_keys() -> list[str]:
    """Every key summary.json holds, in order."""
    return [f.name for f in SUMMARY_FIELDS] + cost_summary_keys()


def numeric_summary_keys() -> list[str]:
    """The numeric keys: what a search may optimise, a sweep log may plot, a greedy search may pay."""
    return [f.name for f in SUMMARY_FIELDS if f.numeric] + cost_summary_keys()


def check_summary(summary: dict) -> dict:
    """The summary with exactly the declared keys (a writer's check: a key not declared here is a bug)."""
    keys = summary_keys()
    extra, missing = set(summary) - set(keys), set(keys) - set(summary)
    if extra or missing:
        raise KeyError(f"summary keys differ from run_dir.SUMMARY_FIELDS: extra {sorted(extra)}, "
                       f"missing {sorted(missing)}")
    return {k: summary[k] for k in keys}


# ---------------------------------------------------------------------------------------- the folder
class RunDir:
    """One run's folder: paths of its files, reading and (atomically) writing them."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    # -- what is there
    def holds_run(self) -> bool:
        """A run has been trained here (its resumable checkpoint exists)."""
        return self.file(CKPT_LAST).exists()

    def is_run(self) -> bool:
        """Anything a run leaves: a summary or a checkpoint."""
        return any(self.file(n).exists() for n in (SUMMARY, CKPT_LAST, CKPT_BEST))

    def checkpoint_path(self, which: str = "best") -> Path:
        """ckpt_<which>.pt; 'best' falls back to ckpt_last.pt while no best checkpoint exists."""
        if which not in CHECKPOINTS:
            raise UserError(f"unknown checkpoint '{which}'; valid: {', '.join(CHECKPOINT_CHOICES)}")
        path = self.file(CHECKPOINTS[which])
        if which == "best" and not path.exists() and self.file(CKPT_LAST).exists():
            return self.file(CKPT_LAST)
        return path

    def latest_checkpoint_path(self) -> Path | None:
        """ckpt_last.pt, else ckpt_best.pt, else None: the latest iteration and best loss a folder holds."""
        for name in (CKPT_LAST, CKPT_BEST):
            if self.file(name).exists():
                return self.file(name)
        return None

    # -- reading
    def load_checkpoint(self, which: str = "best", map_location="cpu") -> dict:
        return load_checkpoint(self.checkpoint_path(which), map_location=map_location)

    def read_config(self) -> dict:
        return read_json(self.file(CONFIG), "run configuration")

    def read_meta(self) -> dict:
        return read_json(self.file(META), "tokenizer description")

    def read_summary(self) -> dict:
        return read_json(self.file(SUMMARY), "run summary")

    def read_json_or_none(self, name: str) -> dict | None:
        """A JSON file of the run, or None when it is missing or unreadable (tables of many runs)."""
        try:
            return read_json(self.file(name))
        except UserError:
            return None

    # -- writing (atomic: a killed run leaves the old file or the new one)
    def write_config(self, config: dict) -> None:
        atomic_write_json(self.file(CONFIG), config)

    def write_meta(self, meta: dict) -> None:
        atomic_write_json(self.file(META), {k: v for k, v in meta.items() if k != "data_dir"})

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.file(SUMMARY), check_summary(summary))

    def write_cost(self, cost: dict) -> None:
        atomic_write_json(self.file(COST), cost)

    def save_checkpoint(self, state: dict, best: bool) -> None:
        """ckpt_last.pt, and ckpt_best.pt when this is the best evaluation so far."""
        atomic_torch_save(self.file(CKPT_LAST), state)
        if best:
            atomic_torch_save(self.file(CKPT_BEST), state)

    def clear_results(self) -> None:
        """A new run in this folder (--overwrite): remove the previous run's results."""
        import shutil
        for name in RESULT_FILES:
            self.file(name).unlink(missing_ok=True)
        shutil.rmtree(self.file(TENSORBOARD), ignore_errors=True)


def resolve_checkpoint(path: str | Path, which: str = "best", what: str = "") -> Path:
    """A checkpoint file as given, or a run directory's checkpoint (best, else last)."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        return RunDir(p).checkpoint_path(which)
    raise UserError(f"{what or path} does not exist; give a run directory or a checkpoint file ({CKPT_BEST})")


# ---------------------------------------------------------------------------------------- loading a run
class LoadedRun(NamedTuple):
    model: object      # model.GPT in eval mode
    tokenizer: object  # data.tokenizer.Tokenizer
    ckpt: dict


def load_run(path: str | Path, which: str = "best", device="cpu") -> LoadedRun:
    """(model in eval mode on device, tokenizer, checkpoint dict) of a run directory: the model is
    rebuilt from the checkpoint alone, the tokenizer from the run's meta.json."""
    from data.tokenizer import load_tokenizer  # here: the search drivers read summaries without torch
    from model import GPT
    run = RunDir(path)
    if not run.path.is_dir():
        raise UserError(f"run directory {run.path} not found; train one with: python train.py --out_dir {run.path}")
    ckpt = run.load_checkpoint(which)
    model = GPT.from_checkpoint(ckpt).to(device).eval()
    tokenizer = load_tokenizer(run.read_meta())
    if tokenizer.vocab_size > model.config.vocab_size:
        raise UserError(f"{run.file(META)} describes {tokenizer.vocab_size} tokens but the model has "
                        f"{model.config.vocab_size}; the run directory mixes two runs")
    return LoadedRun(model, tokenizer, ckpt)
