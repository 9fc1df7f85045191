"""The exploration log: one YAML document per finished training run, written by the sweep runner and the
Optuna search, read by analysis/plot_sweep.py (and anything else, with `yaml.safe_load_all`).

    from optimization_and_search.results import latest_by_name, load_log
    docs = latest_by_name(load_log("exploration_logs/softmax_cpu.yaml"))   # the latest document per run

A document (built by `log_entry`, the one place its keys are spelled):

    name, status (completed | failed | interrupted, and pruned for Optuna trials), exit_code, out_dir,
    started_at, finished_at, settings (what the run was launched with), config (its config.json),
    summary (its summary.json), log_tail (failed runs: the end of train.log)

A driver adds its own keys after these (the Optuna search: `optuna`). The log file grows by one
document at a time (`append_log`) or is rewritten whole (`write_log`), always atomically, so a driver
killed at any moment leaves the previous log or the new one. This module does not import torch.
"""
from __future__ import annotations

import csv
import re
import sys
from datetime import datetime
from pathlib import Path

import yaml

from io_utils import atomic_write_bytes
from run_dir import CONFIG, SUMMARY, RunDir

# a failed run whose train.py said nothing wrong: said in its log_tail so the reader is not left guessing
NO_SUMMARY_NOTE = "(train.py exited 0 but its summary.json is missing or not completed)"


def now() -> str:
    """The local time with its UTC offset, to the second: the drivers' timestamps."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def plain(obj):
    """A copy made of YAML-safe plain types (dict with str keys, list, str, int, float, bool, None)."""
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, int) else k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    try:
        return obj.item() if hasattr(obj, "item") else float(obj)  # numpy / torch scalars
    except (TypeError, ValueError):
        return str(obj)


# ------------------------------------------------------------------------------------ one entry
def log_entry(name: str, *, status: str, exit_code: int | None, run_dir: str | Path | None,
              started_at: str | None, finished_at: str | None, settings: dict, log_tail: str | None = None,
              summary: dict | None = None) -> dict:
    """The document for a finished run. config.json and summary.json are read from the run directory
    (None when missing); `summary` is used instead when given (a driver that kept it). A failed run
    carries `log_tail`."""
    run = RunDir(run_dir) if run_dir else None
    if summary is None and run is not None:
        summary = run.read_json_or_none(SUMMARY)
    doc = {"name": name, "status": status, "exit_code": exit_code, "out_dir": str(run.path) if run else "",
           "started_at": started_at, "finished_at": finished_at, "settings": settings,
           "config": run.read_json_or_none(CONFIG) if run else None, "summary": summary}
    if status == "failed":
        doc["log_tail"] = (log_tail or "") + (f"\n{NO_SUMMARY_NOTE}" if exit_code == 0 else "")
    return doc


# ------------------------------------------------------------------------------------ the log file
class _Dumper(yaml.SafeDumper):
    pass


def _str_representer(dumper, value: str):
    style = "|" if "\n" in value else None  # a log tail reads as the lines it was
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def dump_doc(doc: dict) -> str:
    return "---\n" + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120,
                               allow_unicode=True)


def load_log(path: str | Path) -> list[dict]:
    """Every document of a result log, in order; a torn or unreadable document is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text()
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError:  # parse document by document, keeping the readable ones
        docs = []
        for chunk in re.split(r"(?m)^---[ \t]*$", text):
            try:
                docs.append(yaml.safe_load(chunk))
            except yaml.YAMLError:
                print(f"warning: skipping an unreadable document in {path}", file=sys.stderr)
    return [d for d in docs if isinstance(d, dict) and "name" in d]


def append_log(path: str | Path, doc: dict) -> None:
    """Add one document: the whole new file is written beside the old one, then renamed over it."""
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    atomic_write_bytes(path, old + dump_doc(doc).encode())


def write_log(path: str | Path, docs: list[dict]) -> None:
    """Replace the log with these documents (a driver that regenerates its log from its own store)."""
    atomic_write_bytes(path, "".join(dump_doc(plain(d)) for d in docs).encode())


def latest_by_name(docs: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for d in docs:
        out[d["name"]] = d
    return out


# ------------------------------------------------------------------------------------ as a table
def flat_rows(docs: list[dict]) -> tuple[list[str], list[dict]]:
    """One row per document: name, status, exit_code, out_dir, the settings, then the summary keys (a
    summary key that is also a setting, like dtype, becomes summary_<key>)."""
    settings_keys = list(dict.fromkeys(k for d in docs for k in (d.get("settings") or {})))
    summary_keys = list(dict.fromkeys(k for d in docs for k in (d.get("summary") or {})))
    summary_cols = {k: f"summary_{k}" if k in settings_keys or k in ("name", "status") else k for k in summary_keys}
    head = ["name", "status", "exit_code", "out_dir", "started_at", "finished_at"]
    rows = []
    for d in docs:
        row = {k: d.get(k) for k in head}
        for k, v in (d.get("settings") or {}).items():
            row[k] = " ".join(map(str, v)) if isinstance(v, list) else v
        for k, v in (d.get("summary") or {}).items():
            row[summary_cols[k]] = v
        rows.append(row)
    return head + settings_keys + list(summary_cols.values()), rows


def write_csv(path: str | Path, docs: list[dict]) -> None:
    columns, rows = flat_rows(docs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
