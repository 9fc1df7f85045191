"""The exploration log: one YAML document per attempt at a training run (a run interrupted and then
resumed has two), written by the sweep runner and the Optuna search, read by analysis/plot_sweep.py.

    from optimization_and_search.results import latest_by_name, load_log
    docs = latest_by_name(load_log("exploration_logs/softmax_cpu.yaml"))   # the result of each run

`latest_by_name` is the one rule for which attempt is a run's result (its last); `load_log` keeps the
readable documents of a damaged log and says where the others are (document number, byte offset).

A document (built by `log_entry`, the one place its keys are spelled):

    name, status (completed | failed | interrupted, and pruned for Optuna trials), exit_code, out_dir,
    started_at, finished_at, settings (what the run was launched with), config (its config.json),
    summary (its summary.json), log_tail (failed runs: the end of train.log)

A driver adds its own keys after these (the Optuna search: `optuna`). The log file grows by one
document at a time (`append_log`) or is rewritten whole (`write_log`), always atomically, so a driver
killed at any moment leaves the previous log or the new one. This module does not import torch.

Seeds and spread. A *configuration* is a run's settings without its `seed` (`config_key`, the one
definition): a sweep with `seeds:` (or an Optuna study with --seeds) trains each configuration once per
seed, as runs named `<configuration>_seed-<seed>` (`seed_run_name`, `config_name`). `aggregate_by_config`
is the one owner of the statistics over seeds, read by the runner's results table and --csv_configs,
analysis/plot_sweep.py and analysis/compare.py (`spread` is its arithmetic, which the greedy search's
mean over seeds shares):

    for c in aggregate_by_config(load_log("exploration_logs/softmax_cpu.yaml"), "best_val_loss"):
        print(c["name"], c["n"], c["mean"], c["std"], c["min"], c["max"], c["seeds"], c["failed"])
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import sys
from datetime import datetime
from pathlib import Path

import yaml

from errors import UserError
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


DOC_START = re.compile(rb"(?m)^---[ \t]*\r?$")  # how dump_doc starts a document


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def split_documents(data: bytes) -> list[tuple[int, bytes]]:
    """(byte offset, bytes) of each document of a multi-document YAML file, cut at its `---` lines (a
    block scalar's lines are indented, so a `---` line always starts a document)."""
    starts = [m.start() for m in DOC_START.finditer(data)]
    if not starts or (starts[0] > 0 and data[:starts[0]].strip()):
        starts = [0, *starts]  # text before the first marker is a document of its own
    return [(a, data[a:b]) for a, b in zip(starts, starts[1:] + [len(data)])]


def line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def yaml_error_where(e: yaml.YAMLError) -> str:
    """`mapping values are not allowed here, line 3 column 7` from a YAML error."""
    mark = getattr(e, "problem_mark", None)
    what = getattr(e, "problem", None) or type(e).__name__
    return f"{what}, line {mark.line + 1} column {mark.column + 1}" if mark is not None else what


def load_log(path: str | Path, warn=_warn) -> list[dict]:
    """Every document of a result log, in order. A document that is not UTF-8 or not YAML (torn by a
    crash or a hand edit) is skipped with one line to `warn` (stderr) giving its number and byte offset;
    the readable ones are kept. Documents without a `name` are left out."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    try:
        docs = list(yaml.safe_load_all(data.decode()))
    except (UnicodeDecodeError, yaml.YAMLError):  # document by document, keeping the readable ones
        docs = []
        for number, (offset, chunk) in enumerate(split_documents(data), 1):
            at = f"{path}: document {number} (byte {offset}, line {line_of(data, offset)})"
            try:
                text = chunk.decode()
            except UnicodeDecodeError as e:
                warn(f"{at} is not UTF-8 (byte {offset + e.start}); skipped")
                continue
            try:
                docs.append(yaml.safe_load(text))
            except yaml.YAMLError as e:
                warn(f"{at} is not valid YAML ({yaml_error_where(e)} of the document); skipped")
    return [d for d in docs if isinstance(d, dict) and isinstance(d.get("name"), str)]


def read_yaml_file(path: str | Path, what: str):
    """A single-document YAML file; not UTF-8 or not YAML is a one-line UserError saying where."""
    path = Path(path)
    try:
        data = path.read_bytes()
        return yaml.safe_load(data.decode())
    except FileNotFoundError:
        raise UserError(f"{what} {path} not found") from None
    except OSError as e:
        raise UserError(f"{what} {path} cannot be read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 (byte {e.start}, line {line_of(data, e.start)}); "
                        "repair it or move it away") from None
    except yaml.YAMLError as e:
        raise UserError(f"{what} {path} is not valid YAML ({yaml_error_where(e)}); repair it or move it away") from None


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
    """The one rule for "the result of a run" in a log with one document per attempt (interrupted,
    failed, completed): the run's last attempt in the file, which is the run as it now stands (a sweep
    runner only tries a run again when it did not complete or its settings changed). Every reader uses
    it: the runner's plan and results table, the CSV, analysis/plot_sweep.py. In order of first attempt."""
    out: dict[str, dict] = {}
    for d in docs:
        out[d["name"]] = d
    return out


# ------------------------------------------------------------------------------------ as a table
def flat_rows(docs: list[dict]) -> tuple[list[str], list[dict]]:
    """One row per document: name, configuration (config_name), status, exit_code, out_dir, the
    settings, then the summary keys (a summary key that is also a setting, like dtype, becomes
    summary_<key>)."""
    settings_keys = list(dict.fromkeys(k for d in docs for k in (d.get("settings") or {})))
    summary_keys = list(dict.fromkeys(k for d in docs for k in (d.get("summary") or {})))
    summary_cols = {k: f"summary_{k}" if k in settings_keys or k in ("name", "configuration", "status") else k
                    for k in summary_keys}
    head = ["name", "configuration", "status", "exit_code", "out_dir", "started_at", "finished_at"]
    rows = []
    for d in docs:
        row = {k: d.get(k) for k in head}
        row["configuration"] = config_name(d["name"], d.get("settings"))
        for k, v in (d.get("settings") or {}).items():
            row[k] = " ".join(map(str, v)) if isinstance(v, list) else v
        for k, v in (d.get("summary") or {}).items():
            row[summary_cols[k]] = v
        rows.append(row)
    return head + settings_keys + list(summary_cols.values()), rows


def write_csv(path: str | Path, docs: list[dict]) -> None:
    """`flat_rows` as a CSV file (written atomically); give it `latest_by_name(...).values()`."""
    columns, rows = flat_rows(docs)
    _write_csv(path, columns, rows)


def _write_csv(path: str | Path, columns: list[str], rows: list[dict]) -> None:
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=columns)
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode())


# ------------------------------------------------------------------------------------ configurations
SEED = "seed"  # the setting a configuration is repeated over


def config_key(settings: dict | None) -> str:
    """The configuration a run belongs to: its settings without the seed, as canonical JSON. Runs with
    the same key are one configuration trained with different seeds (a log written before seeds were
    part of sweeps has no seed in its settings: each run is its own configuration)."""
    return json.dumps({k: v for k, v in (settings or {}).items() if k != SEED}, sort_keys=True, default=str)


def seed_run_name(config: str, seed: int) -> str:
    """The name of one seed's run of a configuration: `sva-softmax` -> `sva-softmax_seed-1337`."""
    return f"{config}_seed-{seed}"


def config_name(name: str, settings: dict | None) -> str:
    """A run's configuration name: its name without the `seed-<its seed>` part (`sva-softmax_seed-1337`
    -> `sva-softmax`; also an older sweep that varied `seed` as a key, `seed-1_sva-softmax`)."""
    seed = (settings or {}).get(SEED)
    if seed is None:
        return name
    stripped = re.sub(rf"(^|_)seed-{re.escape(str(seed))}(?=_|$)", "", name).strip("_")
    return stripped or name


def number(value) -> float | None:
    """A finite int or float as a float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def metric_of(doc: dict, key: str):
    """A key of a run's summary, else its settings, else its resolved config (model, then train)."""
    config = doc.get("config") or {}
    for section in (doc.get("summary"), doc.get("settings"), config.get("model"), config.get("train")):
        if isinstance(section, dict) and key in section:
            return section[key]
    return None


def spread(values) -> dict:
    """n, mean, std (the sample standard deviation, n - 1 in the denominator; None below 2 values),
    min and max of some numbers (None for all but n when there are none)."""
    vals = [float(v) for v in values]
    n = len(vals)
    return {"n": n, "mean": statistics.fmean(vals) if n else None,
            "std": statistics.stdev(vals) if n > 1 else None,
            "min": min(vals) if n else None, "max": max(vals) if n else None}


def run_seed(doc: dict):
    """The seed a run trained with: its `seed` setting, else the one its config.json records (train.py's
    default or its preset's), else None."""
    seed = (doc.get("settings") or {}).get(SEED)
    return seed if seed is not None else ((doc.get("config") or {}).get("train") or {}).get(SEED)


def aggregate_by_config(docs, key: str = "best_val_loss") -> list[dict]:
    """The statistics of `key` (metric_of: a summary key, else a setting or config value) per
    configuration, over the runs' last attempts (latest_by_name), in order of first appearance:

        key, name (config_name), settings (without the seed), n, mean, std (n - 1; None for n < 2),
        min, max, seeds and values (the runs counted, in seed order), runs (their names),
        failed (runs that did not complete: failed, interrupted, pruned; left out),
        missing (completed runs without a finite `key`; left out)

    A configuration none of whose runs counts is still listed (n 0, mean None). A seed (run_seed) counts
    once: two runs of one configuration with the same seed (an Optuna study that sampled the same
    parameters again, a run renamed by an edit of the sweep file) are one measurement, the later run's."""
    out: dict[str, dict] = {}
    for d in latest_by_name(list(docs)).values():
        settings = d.get("settings") or {}
        c = out.setdefault(config_key(settings), {
            "key": key, "name": config_name(d["name"], settings),
            "settings": {k: v for k, v in settings.items() if k != SEED},
            "seeds": [], "values": [], "runs": [], "failed": 0, "missing": 0})
        value, seed = number(metric_of(d, key)), run_seed(d)
        if d.get("status") != "completed":
            c["failed"] += 1
        elif value is None:
            c["missing"] += 1
        elif seed is not None and seed in c["seeds"]:  # the same configuration and seed again: the later run
            i = c["seeds"].index(seed)
            c["values"][i], c["runs"][i] = value, d["name"]
        else:
            c["seeds"].append(seed)
            c["values"].append(value)
            c["runs"].append(d["name"])
    for c in out.values():  # in seed order (a log holds runs in the order they ended)
        order = sorted(range(len(c["seeds"])), key=lambda i: (not isinstance(c["seeds"][i], int),
                                                              c["seeds"][i] if isinstance(c["seeds"][i], int) else 0))
        for k in ("seeds", "values", "runs"):
            c[k] = [c[k][i] for i in order]
    return [{**c, **spread(c["values"])} for c in out.values()]


def config_rows(docs) -> tuple[list[str], list[dict]]:
    """One row per configuration: configuration (its name), runs (completed), failed, seeds, the settings (without the
    seed), then <key>_mean, <key>_std, <key>_min, <key>_max for every numeric summary key."""
    docs = list(latest_by_name(list(docs)).values())
    keys = list(dict.fromkeys(k for d in docs for k, v in (d.get("summary") or {}).items()
                              if number(v) is not None))
    settings_keys = list(dict.fromkeys(k for d in docs for k in (d.get("settings") or {}) if k != SEED))
    stats = {k: aggregate_by_config(docs, k) for k in keys}  # the same configurations, in the same order
    base = stats[keys[0]] if keys else aggregate_by_config(docs)
    rows = []
    for i, c in enumerate(base):
        row = {"configuration": c["name"], "runs": c["n"] + c["missing"], "failed": c["failed"],
               "seeds": " ".join(str(s) for s in c["seeds"] if s is not None)}
        for k, v in c["settings"].items():
            row[k] = " ".join(map(str, v)) if isinstance(v, list) else v
        for k in keys:
            s = stats[k][i]
            row.update({f"{k}_{stat}": s[stat] for stat in ("mean", "std", "min", "max")})
        rows.append(row)
    columns = ["configuration", "runs", "failed", "seeds", *settings_keys,
               *(f"{k}_{stat}" for k in keys for stat in ("mean", "std", "min", "max"))]
    return columns, rows


def write_config_csv(path: str | Path, docs) -> None:
    """`config_rows` as a CSV file (written atomically): one row per configuration."""
    columns, rows = config_rows(docs)
    _write_csv(path, columns, rows)
