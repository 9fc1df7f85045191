"""The run directory: its file names, reading a run back, and the summary.json schema.

Every module that reads or writes a run goes through here, so a file name is spelled once.

    RUN/config.json      resolved settings {"model": asdict(GPTConfig), "train": asdict(TrainConfig)}
    RUN/meta.json        the tokenizer description (the data set's meta.json without its path)
    RUN/metrics.jsonl    one JSON record per log and eval step (train_log.py)
    RUN/summary.json     the run's numbers, keys declared in SUMMARY_FIELDS below
    RUN/cost.json        the analytic cost per component (variations/cost.py)
    RUN/activation_stats.jsonl  activation statistics (--activation_stats_interval; schema: activation_stats.py)
    RUN/ckpt_last.pt     the latest state: model, optimiser, RNG, counters (resume reads it)
    RUN/ckpt_best.pt     the state at the best validation loss (sampling reads it by default)
    RUN/tensorboard/     TensorBoard scalars (--tensorboard)
    RUN/.ppa_gpt.lock    exists while a training process holds the folder (DirLock; removed on release)

A folder is a run when it carries the project's marker: a config.json holding a JSON object with a
"model" and a "train" object (train_args.resolved_dict), which train.py writes before anything else
of a run. A new run starts only in a missing or empty folder, unless --overwrite, which replaces the
project's own files (OWN_FILES, tensorboard/) and leaves every other file alone (`RunDir.check_new`).
One training process at a time holds a run directory (`RunDir.lock`, an OS file lock: `DirLock`).

    from run_dir import RunDir, load_run
    model, tokenizer, ckpt = load_run("out/quickstart")        # best checkpoint, else the last one
    RunDir("out/quickstart").read_summary()["best_val_loss"]
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from errors import UserError
from io_utils import atomic_torch_save, atomic_write_json, is_temp_file, load_checkpoint, read_json, \
    remove_stale_temp_files

try:
    import fcntl  # POSIX (Linux, macOS, BSD)
except ImportError:  # Windows
    fcntl = None

CONFIG = "config.json"
META = "meta.json"  # the data set's description (data.dataset.META), copied into the run
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
COST = "cost.json"
ACTIVATION_STATS = "activation_stats.jsonl"
CKPT_LAST = "ckpt_last.pt"
CKPT_BEST = "ckpt_best.pt"
TENSORBOARD = "tensorboard"
CHECKPOINTS = {"best": CKPT_BEST, "last": CKPT_LAST}  # --ckpt NAME -> file
CHECKPOINT_CHOICES = tuple(CHECKPOINTS)
LOCK = ".ppa_gpt.lock"
# the files of a training run's results, cleared when a new run starts in the folder (--overwrite)
RESULT_FILES = (METRICS, SUMMARY, CKPT_BEST, CKPT_LAST, ACTIVATION_STATS)
# every file a run writes (and tensorboard/): what --overwrite replaces; other files are the user's
OWN_FILES = (CONFIG, META, COST, *RESULT_FILES)


# ---------------------------------------------------------------------------------------- summary.json
@dataclass(frozen=True)
class SummaryField:
    name: str
    numeric: bool  # a number (or null) a search may optimise or a sweep may plot
    help: str


SUMMARY_FIELDS: tuple[SummaryField, ...] = (
    SummaryField("status", False, "running (written at each evaluation), completed, or failed (see error)"),
    SummaryField("stop_reason", False, "max_iters, max_seconds, max_tokens, patience or pruned; when failed: "
                 "nan_loss (the loss became nan or inf) or error"),
    SummaryField("error", False, "why a failed run stopped, in one line (null unless status is failed)"),
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
    SummaryField("eval_tokens", True, "tokens each evaluation scores per split (eval_iters x batch_size x block_size "
                 "x processes), the same fixed windows for every --seed"),
    SummaryField("provenance", False, "what produced the result: git commit and dirty flag, Python/torch/Triton/numpy "
                 "versions, device name, threads, fingerprints of the data files (provenance.py)"),
)


def cost_summary_keys() -> list[str]:
    """The analytic cost keys of summary.json (variations/cost.per_token_summary): macs_per_token, ..."""
    from variations.cost import COUNTS
    return [*(f"{c}_per_token" for c in COUNTS if c != "params"), "cost_params"]


def ppa_summary_keys(numeric: bool = False) -> list[str]:
    """The PPA estimate's keys of summary.json (ppa/estimate.py: SUMMARY_KEYS numeric, SUMMARY_TEXT not)."""
    from ppa.estimate import SUMMARY_KEYS, SUMMARY_TEXT
    return [*SUMMARY_KEYS] + ([] if numeric else [*SUMMARY_TEXT])


def summary_keys() -> list[str]:
    """Every key summary.json holds, in order."""
    return [f.name for f in SUMMARY_FIELDS] + cost_summary_keys() + ppa_summary_keys()


def numeric_summary_keys() -> list[str]:
    """The numeric keys: what a search may optimise, a sweep log may plot, a greedy search may pay."""
    return [f.name for f in SUMMARY_FIELDS if f.numeric] + cost_summary_keys() + ppa_summary_keys(numeric=True)


def format_summary_value(key: str, value) -> str:
    """A summary.json value for a table, in its unit: 1.5 MiB, 2.31 ms, 4.2 uJ, 85 us, 0.123 mm^2, 1.235M."""
    if value is None:
        return "-"
    if key == "peak_memory_bytes":
        return f"{value / 2**20:,.1f} MiB"
    if key == "iter_time_ms":
        return f"{value:.2f} ms"
    if key.endswith("_mm2"):
        return f"{value:.4g} mm^2"
    if "_pj_" in key or "_us_" in key:
        from ppa.report import si
        return si(value, "pJ" if "_pj_" in key else "us")
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= div:
            return f"{value / div:.3f}{unit}"
    return f"{value:.4g}"


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
        """The folder carries the project's marker: config.json with "model" and "train" sections."""
        try:
            config = read_json(self.file(CONFIG))
        except UserError:
            return False
        return isinstance(config, dict) and all(isinstance(config.get(k), dict) for k in ("model", "train"))

    def own_files(self) -> list[str]:
        """The project's files present here (tensorboard/ with its slash): what --overwrite replaces."""
        present = [n for n in OWN_FILES if self.file(n).exists()]
        if self.file(TENSORBOARD).is_dir():
            present.append(TENSORBOARD + "/")
        return present

    def contents(self) -> list[str]:
        """Names in the folder, less the lock file and atomic writes' temporary files (they hold nothing)."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.name != LOCK and not is_temp_file(p))

    def check_new(self, overwrite: bool) -> None:
        """A new run may start here (train.py checks before writing anything, and again under the lock):
        the folder can be written, and is missing or empty, or --overwrite says to replace the run's
        own files. A run without ckpt_last.pt (deleted, as our message about a corrupt one advises) is
        refused too: its surviving ckpt_best.pt is never replaced silently."""
        check_writable_folder(self.path, "--out_dir")
        if overwrite:
            return
        if self.holds_run():
            raise UserError(f"{self.path} already holds a run; continue it with --init_from resume, start over "
                            "with --overwrite, or choose another --out_dir")
        if self.is_run():
            raise UserError(f"{self.path} holds a run without {CKPT_LAST} (deleted, or the run ended before its first "
                            f"checkpoint), so it cannot be resumed; start over with --overwrite (replaces its "
                            f"{', '.join(self.own_files())}), or choose another --out_dir")
        others = self.contents()
        if others:
            shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            raise UserError(f"--out_dir {self.path} holds files that are not a ppa-gpt run ({shown}); choose another "
                            "--out_dir, or pass --overwrite to write the run beside them (they are left alone)")

    def lock(self) -> DirLock:
        """The training process's exclusive hold on this folder: `with run.lock(): ...`."""
        return DirLock(self.path, "training run")

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
    def _write(self, name: str, write) -> None:
        try:
            write(self.file(name))
        except OSError as e:
            error = disk_full_error(e, self.file(name))
            if error is None:
                raise
            raise error from None

    def write_config(self, config: dict) -> None:
        self._write(CONFIG, lambda path: atomic_write_json(path, config))

    def write_meta(self, meta: dict) -> None:
        self._write(META, lambda path: atomic_write_json(path, {k: v for k, v in meta.items() if k != "data_dir"}))

    def write_summary(self, summary: dict) -> None:
        summary = check_summary(summary)
        self._write(SUMMARY, lambda path: atomic_write_json(path, summary))

    def write_cost(self, cost: dict) -> None:
        self._write(COST, lambda path: atomic_write_json(path, cost))

    def save_checkpoint(self, state: dict, best: bool) -> None:
        """ckpt_best.pt when this is the best evaluation so far, then ckpt_last.pt. Best first: a run
        killed between the two resumes from the previous ckpt_last.pt and repeats the evaluation that
        wrote ckpt_best.pt; the other order would leave a ckpt_last.pt (and the summary after it)
        naming a best step that ckpt_best.pt does not hold, and nothing would repair it."""
        if best:
            self._write(CKPT_BEST, lambda path: atomic_torch_save(path, state))
        self._write(CKPT_LAST, lambda path: atomic_torch_save(path, state))

    def clear_results(self) -> None:
        """A new run in this folder (--overwrite): remove the previous run's results and cost (the
        config and tokenizer are rewritten at once); files that are not the project's stay."""
        import shutil
        for name in (*RESULT_FILES, COST):
            self.file(name).unlink(missing_ok=True)
        shutil.rmtree(self.file(TENSORBOARD), ignore_errors=True)

    def remove_stale_temp_files(self) -> int:
        """Remove the temporary files of atomic writes whose writer was killed (never a live one's);
        how many. Call it holding the lock."""
        return remove_stale_temp_files(self.path)


def disk_full_error(e: OSError, path: str | Path) -> UserError | None:
    """The one-line error of a write that found the disk (or the quota) full; None for other errors."""
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return UserError(f"no space left on device writing {path}; free space and resume with --init_from resume")
    return None


def check_writable_folder(path: str | Path, flag: str) -> None:
    """`path` is a folder this process can write, or could create: a one-line UserError otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; choose another {flag}")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the folder that would hold the new ones
    if not existing.is_dir():
        raise UserError(f"{flag} {path} cannot be created: {existing} is a file; choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path} cannot be written ({existing} is not writable by this user); "
                        f"choose another {flag}")


# ---------------------------------------------------------------------------------------- the lock
class DirLock:
    """An exclusive lock on a folder, held by one process at a time through the file LOCK inside it.

        with DirLock("out/run", "training run"):   # a UserError at once if another process holds it
            ...
        lock = DirLock(folder, "sweep").acquire(); ...; lock.release()
        DirLock(folder).holder()                   # the holder's pid, else None

    The OS lock (fcntl.flock on POSIX; msvcrt.locking on Windows, which has no flock: untested there)
    is released by the OS when the process ends, however it ends (SIGKILL included), so a crashed
    holder never leaves the folder locked. It is advisory: it guards against our own processes, which
    all take it. flock locks belong to an open file, so a second DirLock on the same folder is refused
    in the same process too (a driver must not hold a run directory's lock while train.main trains
    there). Acquiring creates the folder; releasing removes the lock file, and the folder if acquiring
    created it and nothing else was written. Lock files on network file systems are as good as the
    file system's flock.
    """

    def __init__(self, path: str | Path, what: str = "process", name: str = LOCK):
        self.path, self.what = Path(path), what
        self.file = self.path / name
        self._fd: int | None = None
        self._created = False

    def __repr__(self) -> str:
        return f"DirLock({str(self.path)!r}, {self.what!r})"

    def holder(self) -> int | None:
        """The pid the lock file names (the holder's, while it is held), else None."""
        try:
            return int(self.file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def acquire(self) -> DirLock:
        if self._fd is not None:
            raise RuntimeError(f"{self!r} is already held")
        self._created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    _lock_file(fd)
                except OSError:  # held by another process
                    os.close(fd)
                    holder = self.holder()
                    raise UserError(f"{self.path} is in use by another {self.what} (pid {holder or 'unknown'}); "
                                    "wait for it to end or stop it, or choose another folder") from None
                try:  # the previous holder may have removed the file between our open and our lock
                    if os.path.samestat(os.fstat(fd), os.stat(self.file)):
                        break
                except FileNotFoundError:
                    pass
                os.close(fd)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except PermissionError as e:
            raise UserError(f"cannot lock {self.path} ({e.strerror}); choose a folder you can write to") from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if os.name != "nt":  # removed while held: a process that opened it meanwhile sees the swap (acquire)
                self.file.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # releases the OS lock
            self._fd = None
        if self._created:
            try:
                self.path.rmdir()  # only if empty: a run that failed before writing leaves no folder
            except OSError:
                pass

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _lock_file(fd: int) -> None:
    """Lock an open file exclusively without waiting (OSError when another process holds it)."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:
        import msvcrt
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)


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
