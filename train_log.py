"""What a training run reports: the terminal, metrics.jsonl, TensorBoard.

`Reporter` prints progress (a rich progress bar on a terminal, plain lines in a log file), appends one
JSON record per log and eval step to out_dir/metrics.jsonl and, with --tensorboard, writes each
record's numbers as scalars and, when the run completes, its settings and final numbers for the HParams
plugin (write_hparams). `truncate_metrics` drops the records of steps after a resumed run's
checkpoint, so the file never holds a step twice. Only rank 0 reports. Used by train.py.
"""
from __future__ import annotations

import json
from pathlib import Path

from errors import UserError
from io_utils import atomic_write_bytes
from run_dir import METRICS, TENSORBOARD


def summary_writer_class():
    """torch's TensorBoard SummaryWriter for --tensorboard; a one-line error without the package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard "
                        "(or pip install 'ppa-gpt[tensorboard]'), or drop --tensorboard") from None
    return SummaryWriter


class Reporter:
    """Progress on the terminal (a rich progress bar on a TTY, plain lines otherwise) and the run's
    metrics.jsonl, and with `tensorboard` each record's numbers as scalars `<type>/<key>` (train/loss,
    eval/val_loss, ...) in out_dir/tensorboard/. Only rank 0 reports."""

    def __init__(self, out_dir: Path, total: int, start: int, enabled: bool, tensorboard: bool = False):
        self.enabled = enabled
        self.metrics_path = out_dir / METRICS
        self.progress = self.writer = None
        if not enabled:
            return
        if tensorboard:  # a resumed run drops the events logged after its checkpoint's step
            self.writer = summary_writer_class()(str(out_dir / TENSORBOARD), purge_step=start + 1 if start else None,
                                                 flush_secs=30)
        from rich.console import Console
        self.console = Console()
        if not self.console.is_terminal:
            self.console = Console(width=160)  # a log file: keep tables whole rather than 80 columns
        else:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=self.console)
            self.task = self.progress.add_task("train", total=total, completed=start, status="")
            self.progress.start()

    def record(self, rec: dict):
        if not self.enabled:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.writer is not None:
            for key, value in rec.items():
                if key != "iter" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{rec['type']}/{key}", value, rec["iter"])

    def line(self, text: str):
        if self.enabled:
            (self.progress.console if self.progress else self.console).print(text, highlight=False, soft_wrap=True)

    def advance(self, it: int, status: str):
        if self.progress is not None:
            self.progress.update(self.task, completed=it, status=status)

    def close(self):
        if self.progress is not None:
            self.progress.stop()
        if self.writer is not None:
            self.writer.close()


HPARAM_METRIC = "summary/"  # the tag prefix of the final numbers the HParams plugin shows per run


def hparam_value(value):
    """A setting as the HParams plugin takes it: numbers, strings and booleans as they are, lists as text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def write_hparams(out_dir: Path, settings: dict, summary: dict, step: int) -> None:
    """The run's settings (the model and training configs, flattened) and its final numbers (every finite
    numeric summary.json key, as scalars `summary/<key>` at the last step) for TensorBoard's HParams
    plugin, in the run's tensorboard/ folder: `tensorboard --logdir out/<sweep>` then compares a whole
    sweep, one row per run. Written when a run completes (again after a resume: the latest wins)."""
    import math

    from torch.utils.tensorboard.summary import hparams
    metrics = {f"{HPARAM_METRIC}{k}": float(v) for k, v in summary.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    exp, start, end = hparams({k: hparam_value(v) for k, v in settings.items() if v is not None}, metrics)
    writer = summary_writer_class()(str(out_dir / TENSORBOARD))
    try:
        for event in (exp, start, end):
            writer.file_writer.add_summary(event)
        for tag, value in metrics.items():
            writer.add_scalar(tag, value, step)
    finally:
        writer.close()


def truncate_metrics(path: Path, last_iter: int):
    """On resume, drop records written after the checkpoint (and any half-written last line)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("iter", 0) <= last_iter:
            kept.append(line)
    atomic_write_bytes(path, ("\n".join(kept) + "\n" if kept else "").encode())
