"""Optuna search over train.py settings: a search-space YAML, one or more objectives from summary.json,
pruning on the intermediate val losses, SQLite storage (a killed study resumes), and an exploration log.

    python optimization_and_search/optuna_search.py -c hp_searches/optuna_cpu.yaml --n_trials 20
    python optimization_and_search/optuna_search.py -c hp_searches/optuna_cpu_pareto.yaml --n_trials 30 \\
        --objectives best_val_loss macs_per_token
    python optimization_and_search/optuna_search.py -c SPACE.yaml --n_trials 8 -- --max_iters 200   # train.py flags

The search-space file (every key a train.py setting, validated before the study starts):

    fixed:                      # settings of every trial (also `preset: NAME`, `config: FILE`)
      preset: cpu
      max_iters: 300
    params:
      softmax_variant_attn: {choices: [softmax, consmax, relumax]}      # categorical
      n_layer: {int: [2, 6]}                                            # int range (step: s, log: true)
      learning_rate: {float: [1.0e-4, 3.0e-3], log: true}               # float range (log: true, step: s)

Trials run in this process (`train.main(argv, on_eval=...)`), each in out_root/<study>/trial_<n>.
Single objective (default `best_val_loss`, minimised): TPE sampler, and a median pruner fed with every
evaluation's val loss stops unpromising trials early (status "pruned"). Several objectives
(`--objectives best_val_loss macs_per_token`, any numeric summary.json keys): NSGA-II, no pruning
(Optuna does not prune multi-objective studies), and the Pareto front printed and saved.

The study lives in `--storage` (default sqlite:///out_root/<study>/study.db) under `--study_name`
(default: the search-space file's name); running the same command again continues it up to
`--n_trials` finished trials in total. Trials a killed process left "running" are marked failed,
logged as "interrupted", and their parameters are tried once more. One process per study at a time.

Every finished trial is one document of `exploration_logs/<study>.yaml` (the exploration-log shape:
name, status completed|failed|pruned|interrupted, exit_code, out_dir, started_at, finished_at,
settings, config, summary, log_tail for failures, and `optuna`: trial number, params, objective
values, intermediate val losses, whether it is on the best/Pareto set), rewritten atomically after
each trial; `analysis/plot_sweep.py` reads it like any sweep log.
"""
from __future__ import annotations

import argparse
import functools
import gc
import math
import os
import socket
import sys
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python optimization_and_search/optuna_search.py` from anywhere
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

import train_args  # noqa: E402
from errors import ArgumentParser, UserError, closest, run_cli, unknown_name_message  # noqa: E402
from io_utils import atomic_write_bytes, read_data_file  # noqa: E402

SPACE_KEYS = ("fixed", "params")
PARAM_KINDS = ("choices", "int", "float")
PARAM_OPTIONS = {"choices": (), "int": ("step", "log"), "float": ("step", "log")}
EXTRA_FIXED = ("preset", "config")  # train.py flags that are not settings but may be fixed
RESERVED = {"out_dir": "each trial runs in out_root/<study>/trial_<n>",
            "init_from": "trials always start from scratch", "overwrite": "set by the search"}
# summary.json keys an objective may name (numeric); the cost keys come from variations/cost.py
SUMMARY_KEYS = ("best_val_loss", "final_val_loss", "final_train_loss", "best_iter", "iters", "tokens",
                "num_params", "iter_time_ms", "tokens_per_s", "mfu", "peak_memory_bytes", "wall_time_s")
MAXIMIZE = ("tokens_per_s", "mfu")  # objectives maximised unless --directions says otherwise


def summary_keys() -> list[str]:
    from variations.cost import COUNTS
    return [*SUMMARY_KEYS, *(f"{c}_per_token" for c in COUNTS if c != "params"), "cost_params"]


# ------------------------------------------------------------------------------------ search space
@dataclass
class Param:
    """One searched setting: categorical (`choices`) or a range (`low`..`high`, int or float)."""
    name: str
    kind: str                      # choices | int | float
    choices: list = field(default_factory=list)
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False

    def distribution(self):
        """The matching optuna distribution (which checks bounds, step and log)."""
        import optuna.distributions as d
        if self.kind == "choices":
            return d.CategoricalDistribution([_choice_label(c) for c in self.choices])
        if self.kind == "int":
            return d.IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return d.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial):
        if self.kind == "choices":
            labels = [_choice_label(c) for c in self.choices]
            return self.choices[labels.index(trial.suggest_categorical(self.name, labels))]
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        if self.kind == "choices":
            return ", ".join(str(_choice_label(c)) for c in self.choices)
        extra = (f", step {self.step}" if self.step else "") + (", log" if self.log else "")
        return f"{self.kind} [{self.low}, {self.high}]{extra}"


@dataclass
class SearchSpace:
    fixed: dict        # train.py settings of every trial, `preset` included (config files merged in)
    params: list[Param]

    def trial_settings(self, values: dict) -> dict:
        return {**self.fixed, **values}

    def to_dict(self) -> dict:
        return {"fixed": self.fixed, "params": {p.name: p.describe() for p in self.params}}


def _choice_label(value) -> str | int | float | bool | None:
    """Optuna's categorical choices are scalars: a per-layer list becomes its names joined by spaces."""
    return " ".join(value) if isinstance(value, list) else value


@functools.lru_cache(maxsize=None)
def _specs() -> dict:
    return train_args.schema()


def _setting_type(name: str):
    return _specs()[name].type


def _number(value, typ):
    """YAML reads `1e-4` as a string (it wants `1.0e-4`): accept numbers written either way."""
    if isinstance(value, str):
        try:
            return typ(value)
        except ValueError:
            pass
    return value


def check_value(name: str, value, where: str):
    """`value` for setting `name` as train.py would accept it (types, choices, registry names)."""
    return train_args.check_launch_arg(name, value, where)


def _check_key(name: str, where: str, allow_extra: bool) -> None:
    if name in EXTRA_FIXED and not allow_extra:
        raise UserError(f"{where}: '{name}' cannot be searched; fix it under 'fixed:'")
    valid = [*_specs(), *(EXTRA_FIXED if allow_extra else ())]
    if name not in valid:
        raise UserError(f"{where}: {unknown_name_message('train.py setting', name, valid).split(' valid:')[0]} "
                        "(python train.py --help lists every setting)")
    if name in RESERVED:
        raise UserError(f"{where}: '{name}' cannot be set in a search ({RESERVED[name]})")


def parse_param(name: str, spec, where: str) -> Param:
    _check_key(name, where, allow_extra=False)
    if not isinstance(spec, dict):
        raise UserError(f"{where}: expected a mapping such as {{choices: [a, b]}}, {{int: [low, high]}} or "
                        f"{{float: [low, high], log: true}}, got {spec!r}")
    kinds = [k for k in PARAM_KINDS if k in spec]
    if len(kinds) != 1:
        unknown = [k for k in spec if k not in PARAM_KINDS and k not in ("step", "log")]
        if unknown:
            guess = closest(str(unknown[0]), [*PARAM_KINDS, "step", "log"])
            hint = f"; did you mean '{guess}'?" if guess else ""
            raise UserError(f"{where}: unknown key '{unknown[0]}'{hint} valid: choices, int, float, step, log")
        raise UserError(f"{where}: give exactly one of choices, int, float (got {', '.join(kinds) or 'none'})")
    kind = kinds[0]
    for key in spec:
        if key != kind and key not in PARAM_OPTIONS[kind]:
            valid = [kind, *PARAM_OPTIONS[kind]]
            raise UserError(f"{where}: {unknown_name_message(f'key for a {kind} parameter', str(key), valid)}")
    typ = _setting_type(name)
    if kind == "choices":
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: choices must be a non-empty list, got {choices!r}")
        checked = [check_value(name, c, f"{where}: choice {c!r}") for c in choices]
        labels = [_choice_label(c) for c in checked]
        if len(set(map(str, labels))) != len(labels):
            raise UserError(f"{where}: choices repeat a value ({', '.join(map(str, labels))})")
        return Param(name, kind, choices=checked)
    num = int if kind == "int" else float
    if typ is not num:
        raise UserError(f"{where}: '{name}' is a {getattr(typ, '__name__', typ)} setting; "
                        f"{'use choices' if typ in (str, bool, list) else f'use {typ.__name__}: [low, high]'} "
                        f"instead of a {kind} range")
    bounds = spec[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise UserError(f"{where}: {kind} needs [low, high], got {bounds!r}")
    low, high = (_number(b, num) for b in bounds)
    for b in (low, high):
        if isinstance(b, bool) or not isinstance(b, (int, float)) or (kind == "int" and not isinstance(b, int)):
            raise UserError(f"{where}: {kind} bounds must be {'integers' if kind == 'int' else 'numbers'}, got {b!r}")
        check_value(name, num(b), f"{where}: bound {b!r}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{where}: log must be true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        step = _number(step, num)
        if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0 or \
                (kind == "int" and not isinstance(step, int)):
            raise UserError(f"{where}: step must be a positive {'integer' if kind == 'int' else 'number'}, got {step!r}")
    param = Param(name, kind, low=num(low), high=num(high), step=num(step) if step is not None else None, log=log)
    if param.low > param.high:
        raise UserError(f"{where}: low {param.low} is above high {param.high}")
    if log and param.low <= 0:
        raise UserError(f"{where}: a log range needs low > 0, got {param.low}")
    if log and step not in (None, 1):
        raise UserError(f"{where}: step and log cannot be combined (Optuna samples a log range without a step)")
    try:
        param.distribution()
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None
    return param


def parse_space(data, source: str = "search space", extra: dict | None = None) -> SearchSpace:
    """A SearchSpace from the YAML mapping {fixed: {...}, params: {...}}; `extra` (train.py flags given
    on the command line) overrides `fixed`. Every key and value is checked here."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping with 'fixed:' and 'params:', got {type(data).__name__}")
    for key in data:
        if key not in SPACE_KEYS:
            raise UserError(f"{source}: {unknown_name_message('top-level key', str(key), SPACE_KEYS)}")
    fixed_in, params_in = data.get("fixed") or {}, data.get("params") or {}
    for what, value in (("fixed", fixed_in), ("params", params_in)):
        if not isinstance(value, dict):
            raise UserError(f"{source}: '{what}' must be a mapping of setting: value, got {type(value).__name__}")
    if not params_in:
        raise UserError(f"{source}: 'params' is empty; give at least one setting to search")
    fixed: dict = {}
    for name, value in fixed_in.items():
        _check_key(str(name), f"{source}: fixed.{name}", allow_extra=True)
        fixed[name] = check_value(name, value, f"{source}: fixed.{name}")
    if "config" in fixed:  # merge the file in (its own keys checked by train_args), fixed keys on top
        path = Path(fixed.pop("config"))
        if not path.is_absolute() and not path.exists() and (ROOT / path).exists():
            path = ROOT / path
        loaded = train_args.load_config_file(str(path))
        for name in loaded:
            if name in RESERVED:
                raise UserError(f"{source}: config file {path} sets '{name}', which a search sets itself")
        fixed = {**loaded, **fixed}
    fixed.update(extra or {})
    params = [parse_param(str(name), spec, f"{source}: params.{name}") for name, spec in params_in.items()]
    for p in params:
        if p.name in fixed:
            where = "the command line" if extra and p.name in extra else "fixed"
            raise UserError(f"{source}: '{p.name}' is both searched (params) and fixed ({where}); keep one")
    return SearchSpace(fixed=fixed, params=params)


def load_space(path: str, extra: dict | None = None) -> SearchSpace:
    p = Path(path)
    data = read_data_file(p, "search-space file")
    return parse_space(data, str(path), extra)


def parse_train_flags(flags: list[str]) -> dict:
    """train.py flags given after `--`, checked by train.py's own parser, as settings."""
    if not flags:
        return {}
    ns = vars(train_args.build_parser().parse_args(flags))
    if ns.pop("list_variants", False):
        raise UserError("--list_variants is not a training setting")
    out = {}
    config = ns.pop("config", None)
    if ns.get("preset") is None:
        ns.pop("preset", None)
    if config:
        out.update(train_args.load_config_file(config))
    out.update(ns)
    for name in out:
        if name in RESERVED:
            raise UserError(f"--{name} cannot be given to a search ({RESERVED[name]})")
    return out


# ------------------------------------------------------------------------------------ objectives
def check_objectives(objectives: list[str], directions: list[str] | None) -> list[str]:
    valid = summary_keys()
    for key in objectives:
        if key not in valid:
            raise UserError(unknown_name_message("objective (summary.json key)", key, valid))
    if len(set(objectives)) != len(objectives):
        raise UserError(f"--objectives repeats a key: {' '.join(objectives)}")
    if directions is None:
        return ["maximize" if k in MAXIMIZE else "minimize" for k in objectives]
    if len(directions) != len(objectives):
        raise UserError(f"--directions needs one direction per objective ({len(objectives)}), got {len(directions)}")
    return list(directions)


# ------------------------------------------------------------------------------------ study
def make_sampler(name: str, seed: int, multi: bool, population_size: int | None = None):
    import optuna
    if name == "auto":
        name = "nsga2" if multi else "tpe"
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, **({"population_size": population_size}
                                                            if population_size else {}))
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(args):
    """MedianPruner for a single objective (unless --pruner none); multi-objective studies never prune."""
    import optuna
    if args.pruner == "none" or len(args.objectives) > 1:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=args.n_startup_trials, n_warmup_steps=args.n_warmup_steps)


def default_storage(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'study.db').resolve()}"


def _prepare_storage(url: str) -> str:
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if str(path) not in ("", ":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)
    return url


def _alive(trial) -> bool:
    """Whether a RUNNING trial's process still runs (on this host); a trial without a pid is stale."""
    pid, host = trial.user_attrs.get("pid"), trial.user_attrs.get("host")
    if pid is None:
        return False
    if host != socket.gethostname():
        return True  # another machine's worker: leave it alone
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_stale(study, log=print) -> list[int]:
    """Mark trials a killed process left RUNNING as failed (and interrupted); try each one's
    parameters once more (a retry of a retry is not retried)."""
    from optuna.trial import TrialState
    stale = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if not _alive(t)]
    if not stale:
        return []
    interrupted = list(study.user_attrs.get("interrupted_trials", []))
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        interrupted.append(t.number)
        if "retry_of" not in t.user_attrs and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        log(f"trial {t.number} was left running by a stopped process: marked interrupted"
            + (", its parameters queued again" if "retry_of" not in t.user_attrs and t.params else ""))
    study.set_user_attr("interrupted_trials", sorted(set(interrupted)))
    return [t.number for t in stale]


def counted_trials(study) -> list:
    """Trials that count towards --n_trials: completed, pruned, and failed (not interrupted)."""
    from optuna.trial import TrialState
    interrupted = set(study.user_attrs.get("interrupted_trials", []))
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in study.get_trials(deepcopy=False, states=done) if t.number not in interrupted]


# ------------------------------------------------------------------------------------ one trial
class Objective:
    """Trains one trial in this process and returns its objective values from the summary."""

    def __init__(self, space: SearchSpace, objectives: list[str], study_dir: Path, prune: bool, log=print):
        self.space, self.objectives, self.study_dir, self.prune, self.log = space, objectives, study_dir, prune, log

    def trial_dir(self, number: int) -> Path:
        return self.study_dir / f"trial_{number}"

    def argv(self, settings: dict, out_dir: Path) -> list[str]:
        """train.py arguments: --preset, then the settings as a config file (exact types, None kept)."""
        settings = dict(settings)
        argv = ["--preset", settings.pop("preset")] if "preset" in settings else []
        cfg = out_dir / "search_settings.yaml"
        atomic_write_bytes(cfg, yaml.safe_dump(settings, sort_keys=False).encode())
        return [*argv, "--config", str(cfg), "--out_dir", str(out_dir), "--overwrite"]

    def __call__(self, trial):
        import optuna

        import train
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        values = {p.name: p.suggest(trial) for p in self.space.params}
        settings = self.space.trial_settings(values)
        out_dir = self.trial_dir(trial.number)
        trial.set_user_attr("settings", settings)
        trial.set_user_attr("out_dir", str(out_dir))
        self.log(f"trial {trial.number}: " + ", ".join(f"{k}={_choice_label(v)}" for k, v in values.items())
                 + f" -> {out_dir}")

        def on_eval(iter_num: int, losses: dict) -> bool:
            trial.report(losses["val"], iter_num)
            return trial.should_prune()

        try:
            summary = train.main(self.argv(settings, out_dir), on_eval=on_eval if self.prune else None)
        except KeyboardInterrupt:
            study = trial.study
            study.set_user_attr("interrupted_trials",
                                sorted({*study.user_attrs.get("interrupted_trials", []), trial.number}))
            if "retry_of" not in trial.user_attrs:
                study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise
        except Exception as e:
            trial.set_user_attr("exit_code", 2 if isinstance(e, UserError) else 1)
            tail = f"error: {e}" if isinstance(e, UserError) else traceback.format_exc()
            trial.set_user_attr("log_tail", tail[-4000:])
            raise
        finally:
            gc.collect()
            _empty_cuda_cache()
        trial.set_user_attr("summary", summary)
        if summary.get("stop_reason") == "pruned":
            raise optuna.TrialPruned(f"pruned at step {summary.get('iters')}")
        out = []
        for key in self.objectives:
            v = summary.get(key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                msg = f"error: summary.json has no finite '{key}' (got {v!r}); the trial cannot be scored"
                trial.set_user_attr("exit_code", 1)
                trial.set_user_attr("log_tail", msg)
                raise RuntimeError(msg)
            out.append(float(v))
        return out[0] if len(out) == 1 else out


def _empty_cuda_cache():
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


# ------------------------------------------------------------------------------------ export
def _iso(dt: datetime | None) -> str | None:
    return dt.astimezone().isoformat(timespec="seconds") if dt is not None else None


def _read_json(path: Path) -> dict:
    import json
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def trial_status(trial, interrupted: set) -> str | None:
    from optuna.trial import TrialState
    if trial.number in interrupted:
        return "interrupted"
    return {TrialState.COMPLETE: "completed", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}.get(trial.state)


def best_numbers(study) -> set[int]:
    from optuna.trial import TrialState
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return set()
    return {t.number for t in study.best_trials}


def export_documents(study, objectives: list[str]) -> list[dict]:
    """One exploration-log document per finished trial, in trial order."""
    interrupted = set(study.user_attrs.get("interrupted_trials", []))
    best = best_numbers(study)
    docs = []
    for t in study.get_trials(deepcopy=False):
        status = trial_status(t, interrupted)
        if status is None:
            continue  # running or waiting
        out_dir = t.user_attrs.get("out_dir", "")
        summary = t.user_attrs.get("summary") or (_read_json(Path(out_dir) / "summary.json") if out_dir else {})
        config = _read_json(Path(out_dir) / "config.json") if out_dir else {}
        exit_code = {"completed": 0, "pruned": 0, "interrupted": None}.get(status, t.user_attrs.get("exit_code", 1))
        doc = {"name": f"trial_{t.number}", "status": status, "exit_code": exit_code, "out_dir": out_dir,
               "started_at": _iso(t.datetime_start), "finished_at": _iso(t.datetime_complete),
               "settings": t.user_attrs.get("settings", {}), "config": config, "summary": summary}
        if status == "failed":
            doc["log_tail"] = t.user_attrs.get("log_tail", "")
        doc["optuna"] = {
            "study": study.study_name, "trial": t.number,
            "params": {k: _plain(v) for k, v in t.params.items()},
            "objectives": list(objectives),
            "values": [float(v) for v in t.values] if t.values is not None and status == "completed" else None,
            "intermediate_values": {int(k): float(v) for k, v in sorted(t.intermediate_values.items())},
            "best": t.number in best,
            **({"retry_of": t.user_attrs["retry_of"]} if "retry_of" in t.user_attrs else {}),
        }
        docs.append(doc)
    return docs


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def write_log(path: Path, docs: list[dict]) -> None:
    text = yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False) if docs else ""
    atomic_write_bytes(path, text.encode())


def best_rows(study, objectives: list[str]) -> list[dict]:
    rows = []
    for t in sorted(study.best_trials, key=lambda t: t.values) if best_numbers(study) else []:
        rows.append({"trial": t.number, "values": dict(zip(objectives, map(float, t.values))),
                     "params": {k: _plain(v) for k, v in t.params.items()},
                     "out_dir": t.user_attrs.get("out_dir")})
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def print_results(console, study, space: SearchSpace, objectives: list[str], directions: list[str]) -> None:
    from rich.table import Table
    multi = len(objectives) > 1
    rows = best_rows(study, objectives)
    title = (f"Pareto front of study '{study.study_name}' ({len(rows)} trial(s); "
             + ", ".join(f"{d} {k}" for k, d in zip(objectives, directions)) + ")") if multi else \
        f"best trial of study '{study.study_name}' ({directions[0]} {objectives[0]})"
    table = Table(title=title)
    table.add_column("trial", justify="right")
    for k in objectives:
        table.add_column(k, justify="right")
    for p in space.params:
        table.add_column(p.name)
    table.add_column("out_dir")
    for r in rows:
        table.add_row(str(r["trial"]), *(_fmt(r["values"][k]) for k in objectives),
                      *(_fmt(r["params"].get(p.name, "")) for p in space.params), str(r["out_dir"]))
    interrupted = set(study.user_attrs.get("interrupted_trials", []))
    statuses = [trial_status(t, interrupted) for t in study.get_trials(deepcopy=False)]
    console.print(table)
    console.print(", ".join(f"{statuses.count(s)} {s}" for s in ("completed", "pruned", "failed", "interrupted"))
                  + " trial(s)", highlight=False)


def print_space(console, space: SearchSpace, study_name: str) -> None:
    from rich.table import Table
    table = Table(title=f"search space of study '{study_name}'")
    table.add_column("setting")
    table.add_column("searched over")
    for p in space.params:
        table.add_row(p.name, p.describe())
    for k, v in space.fixed.items():
        table.add_row(k, f"fixed: {_choice_label(v)}")
    console.print(table)


# ------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="optuna_search.py", allow_abbrev=False,
                       description="Optuna search over train.py settings; train.py flags after `--` apply to every trial.")
    p.add_argument("-c", "--space", required=True, help="search-space YAML (fixed: settings, params: ranges/choices)")
    p.add_argument("--n_trials", type=int, default=20, help="finished trials the study should hold in total (default 20)")
    p.add_argument("--objectives", nargs="+", default=["best_val_loss"], metavar="KEY",
                   help="summary.json keys to optimise (default best_val_loss; two or more: multi-objective)")
    p.add_argument("--directions", nargs="+", choices=("minimize", "maximize"), default=None,
                   help="one per objective (default minimize, maximize for tokens_per_s and mfu)")
    p.add_argument("--study_name", help="default: the search-space file's name")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///OUT_ROOT/STUDY/study.db)")
    p.add_argument("--out_root", default="out/optuna", help="trial run dirs go to OUT_ROOT/STUDY/trial_N")
    p.add_argument("--log_dir", default="exploration_logs", help="the YAML log goes to LOG_DIR/STUDY.yaml")
    p.add_argument("--sampler", choices=("auto", "tpe", "nsga2", "random"), default="auto",
                   help="auto: TPE for one objective, NSGA-II for several")
    p.add_argument("--population_size", type=int, default=None, help="NSGA-II population (default Optuna's 50)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (a resumed study offsets it by its trial count)")
    p.add_argument("--pruner", choices=("median", "none"), default="median",
                   help="median: stop a trial whose val loss is worse than the median of earlier trials at the "
                        "same step (single objective only)")
    p.add_argument("--n_startup_trials", type=int, default=5, help="MedianPruner: trials before pruning starts")
    p.add_argument("--n_warmup_steps", type=int, default=1,
                   help="MedianPruner: no pruning at evaluations before this step (default 1: never at step 0)")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    p.add_argument("--dry_run", action="store_true", help="check the search space, print it, and exit")
    return p


def main(argv: list[str] | None = None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_flags: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, train_flags = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise UserError("run optuna_search.py as one process, not under torchrun: it trains its trials in-process, "
                        "one after another")
    if args.n_trials < 1:
        raise UserError(f"--n_trials must be at least 1, got {args.n_trials}")
    directions = check_objectives(args.objectives, args.directions)
    space = load_space(args.space, parse_train_flags(train_flags))
    study_name = args.study_name or Path(args.space).stem
    study_dir = Path(args.out_root) / study_name
    log_path = Path(args.log_dir) / f"{study_name}.yaml"
    multi = len(args.objectives) > 1

    from rich.console import Console
    console = Console() if Console().is_terminal else Console(width=160)
    print_space(console, space, study_name)
    if args.dry_run:
        return None

    import optuna
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines say what happened
    storage = _prepare_storage(args.storage or default_storage(study_dir))
    pruner = make_pruner(args)
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, directions=directions,
                                    pruner=pruner, load_if_exists=True)
    except (ImportError, ValueError) as e:  # a bad URL, a missing driver
        raise UserError(f"--storage {storage}: {e}") from None
    stored = study.user_attrs.get("objectives")
    if stored is None:
        study.set_user_attr("objectives", list(args.objectives))
        study.set_user_attr("directions", directions)
        study.set_user_attr("space", yaml.safe_dump(space.to_dict(), sort_keys=True))
    elif stored != list(args.objectives) or study.user_attrs.get("directions") != directions:
        raise UserError(f"study '{study_name}' in {storage} optimises {' '.join(stored)} "
                        f"({' '.join(study.user_attrs.get('directions', []))}); give the same --objectives "
                        "and --directions, or a new --study_name")
    elif study.user_attrs.get("space") != yaml.safe_dump(space.to_dict(), sort_keys=True):
        console.print(f"[yellow]warning:[/yellow] the search space or fixed settings differ from those study "
                      f"'{study_name}' started with; earlier trials are not directly comparable")
    study.sampler = make_sampler(args.sampler, args.seed + len(study.trials), multi, args.population_size)

    def log(text: str) -> None:
        console.print(text, highlight=False, markup=False)

    def export(*_):
        write_log(log_path, export_documents(study, args.objectives))

    recover_stale(study, log)
    done = len(counted_trials(study))
    remaining = args.n_trials - done
    log(f"study '{study_name}' ({storage}): {done} finished trial(s), running {max(remaining, 0)} more "
        f"(pruner: {type(study.pruner).__name__}, sampler: {type(study.sampler).__name__})")
    objective = Objective(space, args.objectives, study_dir, prune=not multi and args.pruner != "none", log=log)

    def report(study, trial):
        status = trial_status(trial, set(study.user_attrs.get("interrupted_trials", [])))
        values = (", ".join(f"{k} {_fmt(v)}" for k, v in zip(args.objectives, trial.values))
                  if trial.values is not None and status == "completed" else trial.user_attrs.get("log_tail", ""))
        if status == "pruned":
            values = f"at step {max(trial.intermediate_values, default=0)}"
        log(f"trial {trial.number} {status}: {values.strip().splitlines()[-1] if values.strip() else ''}")
        export()

    try:
        if remaining > 0:
            study.optimize(objective, n_trials=remaining, timeout=args.timeout, catch=(Exception,),
                           callbacks=[report], gc_after_trial=False)
    finally:
        export()
    rows = best_rows(study, args.objectives)
    atomic_write_bytes(study_dir / "best_trials.yaml",
                       yaml.safe_dump({"study": study_name, "objectives": list(args.objectives),
                                       "directions": directions, "trials": rows}, sort_keys=False).encode())
    print_results(console, study, space, args.objectives, directions)
    log(f"log: {log_path}; {'Pareto front' if multi else 'best trial'}: {study_dir / 'best_trials.yaml'}")
    return {"study_name": study_name, "storage": storage, "log": str(log_path), "study_dir": str(study_dir),
            "best_trials": rows, "trials": export_documents(study, args.objectives)}


if __name__ == "__main__":
    sys.exit(run_cli(main))
