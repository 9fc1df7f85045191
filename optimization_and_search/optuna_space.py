"""Optuna search spaces: the YAML file of fixed train.py settings and searched parameters, checked in
full before a study starts, and the Optuna distributions it stands for (optuna_search.py runs them).

    from optimization_and_search.optuna_space import load_space
    space = load_space("hp_searches/optuna_cpu.yaml", extra={"max_iters": 50})   # extra: flags after --
    [p.describe() for p in space.params]

    fixed:                      # settings of every trial (also `preset: NAME`, `config: FILE`)
      preset: cpu
      max_iters: 300
    params:
      softmax_variant_attn: {choices: [softmax, consmax, relumax]}      # categorical
      n_layer: {int: [2, 6]}                                            # int range (step: s, log: true)
      learning_rate: {float: [1.0e-4, 3.0e-3], log: true}               # float range (log: true, step: s)

Every key must be a train.py setting the search does not own (launch.check_key), every value and
bound passes the settings schema (train_args.check); a per-layer list is one categorical choice
(Optuna's choices are scalars, so it is shown as its names joined by spaces).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import train_args
from errors import UserError, closest, unknown_name_message
from io_utils import read_data_file
from optimization_and_search import launch

ROOT = Path(__file__).resolve().parent.parent
SPACE_KEYS = ("fixed", "params")
PARAM_KINDS = ("choices", "int", "float")
PARAM_OPTIONS = {"choices": (), "int": ("step", "log"), "float": ("step", "log")}


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
            return d.CategoricalDistribution([choice_label(c) for c in self.choices])
        if self.kind == "int":
            return d.IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return d.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial):
        if self.kind == "choices":
            labels = [choice_label(c) for c in self.choices]
            return self.choices[labels.index(trial.suggest_categorical(self.name, labels))]
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        if self.kind == "choices":
            return ", ".join(str(choice_label(c)) for c in self.choices)
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


def choice_label(value) -> str | int | float | bool | None:
    """Optuna's categorical choices are scalars: a per-layer list becomes its names joined by spaces."""
    return " ".join(map(str, value)) if isinstance(value, list) else value


def _check_key(name: str, where: str, allow_extra: bool) -> None:
    """A train.py setting the search does not own; preset and config only under fixed."""
    if name in train_args.LAUNCH_ARGS and not allow_extra:
        raise UserError(f"{where}: '{name}' cannot be searched; fix it under 'fixed:'")
    launch.check_key(name, where, driver="search")


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
    typ = train_args.setting(name).type
    if kind == "choices":
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: choices must be a non-empty list, got {choices!r}")
        checked = [train_args.check(name, c, f"{where}: choice {c!r}") for c in choices]
        labels = [choice_label(c) for c in checked]
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
    for b in bounds:  # a string is parsed by the setting's check (YAML reads 1e-4, without a dot, as one)
        if isinstance(b, bool) or not isinstance(b, (int, float, str)) or (kind == "int" and isinstance(b, float)):
            raise UserError(f"{where}: {kind} bounds must be {'integers' if kind == 'int' else 'numbers'}, got {b!r}")
    low, high = (train_args.check(name, b, f"{where}: bound {b!r}") for b in bounds)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{where}: log must be true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        step = train_args.check(name, step, f"{where}: step {step!r}") if isinstance(step, str) else step
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
        fixed[name] = train_args.check_launch_arg(name, value, f"{source}: fixed.{name}")
    if "config" in fixed:  # merge the file in (its own keys checked by train_args), fixed keys on top
        path = Path(fixed.pop("config"))
        if not path.is_absolute() and not path.exists() and (ROOT / path).exists():
            path = ROOT / path
        loaded = train_args.load_config_file(str(path))
        for name in loaded:
            if name in launch.DRIVER_OWNED:
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
        if name in launch.DRIVER_OWNED:
            raise UserError(f"--{name} cannot be given to a search: {launch.DRIVER_OWNED[name]}")
    return out
