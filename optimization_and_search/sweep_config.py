"""Sweep files: a YAML or JSON description of a family of train.py runs, expanded into a checked run list.

    from optimization_and_search import launch
    from optimization_and_search.sweep_config import load_sweep
    sweep = load_sweep("explorations/softmax_cpu.yaml")
    for run in sweep.runs:
        print(run.name, run.settings, launch.train_argv(run.settings))

The format (explorations/README.md has one example per construct):

- `key: value` or `key: [v1, v2, ...]`: every key is a train.py argument (a GPTConfig or TrainConfig field,
  or `preset` / `config`); the runs are the cartesian product of the lists (a scalar is a one-value list).
  `{range: {start: 1, end: 4, step: 1}}` stands for the values start, start + step, ... up to end inclusive.
  A per-layer list setting (`*_layerlist`) takes a list of names as one value, a list of lists as several.
- `common_group: {key: value}`: fixed settings of every run, never part of run names.
- `parameter_groups: [{...}, {...}]`: each group is merged with the settings around it (the group wins on the
  same key) and expanded; the run list is the union over the groups. A group may hold every construct of
  this list except the two top-level ones (`common_group`, `named_groups`), including its own groups.
- `named_groups: {name: {...}}` (top level) defines bundles referenced by name: `use: [a, b]` merges them in
  (a static bundle of single values, or a variation bundle with lists), `alternates: [a, b]` makes one branch
  per bundle (the union), `alternates: [[a, b], [c, d]]` the product of several such choices.
- `conditionals: [{when: {key: value}, set: {...}}]`: `set` (any group body) applies only to the runs whose
  settings match every `when` pair (a list of values matches any of them).
- `seeds: [1337, 1338, 1339]` or `seeds: 3` (top level; a count starts at train.py's default seed, 1337,
  which no preset changes): every configuration the rest of the file expands to trains once per seed, as
  runs named `<configuration>_seed-<seed>`, the first seed for every configuration, then the second, ...
  (an interrupted sweep has every configuration once before any twice). `seed` itself may then not be
  set, and without `seeds:` it may not vary (runs that differ only in their seed are one configuration:
  results.config_key).

- `submitit: {partition: gpu, time: 120, gpus_per_run: 1, ...}` (top level): the job parameters when the
  sweep runs as submitit jobs (executors.py checks them; run_experiments.py flags win).

Within one group the order is: the settings around it, its own settings, `use` (in order), `alternates`,
`parameter_groups`, then `conditionals`; a later one wins on the same key.

Every key is checked against train.py's arguments (an unknown key names the closest one; the settings the
runner sets itself, launch.DRIVER_OWNED, are refused), every value
against the argument's type and choices (registry names included), each run's combination of settings as
train.py would check it, and the run names (built from the settings that differ between runs) for
duplicates, before anything runs.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import train_args
from errors import UserError, closest
from io_utils import read_data_file
from optimization_and_search import launch
from optimization_and_search.results import SEED, seed_run_name

LEVEL_KEYS = ("use", "alternates", "parameter_groups", "conditionals")
TOP_KEYS = ("common_group", "named_groups", "seeds", "submitit")
MAX_NAME = 80
MAX_SEED_COUNT = 100  # `seeds: 1337` is surely one seed meant as a list, not 1337 runs per configuration
_MISSING = object()


@dataclass
class Run:
    name: str
    settings: dict  # flat train.py settings (what the run passes), checked and normalised
    config: str = ""  # the configuration's name (the run's name without its seed part)
    seed: int | None = None  # the sweep's seed for this run (None: the sweep has no `seeds:`)


@dataclass
class Sweep:
    name: str
    runs: list[Run]
    varied: list[str]          # keys whose values differ between configurations (they make up the names)
    fixed: dict                # settings equal in every run (common_group included)
    warnings: list[str] = field(default_factory=list)
    seeds: list[int] | None = None  # each configuration runs once per seed (None: once, no seed part)
    configs: int = 0           # configurations (runs / seeds)
    submitit: dict | None = None  # the file's `submitit:` job parameters (executors.py checks them)


# ------------------------------------------------------------------------------------------ values
def _loc(where: str) -> str:
    return f"{where}: " if where else ""


def seed_list(raw, where: str = "seeds") -> list[int]:
    """`seeds:` as the list of seeds: a count N (train.py's default seed and the N - 1 after it) or a
    list of distinct integers."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 1:
            raise UserError(f"{where}: a count of seeds must be at least 1, got {raw}")
        if raw > MAX_SEED_COUNT:
            raise UserError(f"{where}: {raw} is a count of seeds (runs per configuration), and more than "
                            f"{MAX_SEED_COUNT} is surely a mistake; to train with seed {raw}, list it: [{raw}]")
        seed0 = train_args.setting(SEED).default
        return [seed0 + i for i in range(raw)]
    if isinstance(raw, list) and raw and all(isinstance(v, int) and not isinstance(v, bool) for v in raw):
        if len(set(raw)) != len(raw):
            raise UserError(f"{where}: the seeds must differ, got {raw}")
        return [train_args.check(SEED, v, where) for v in raw]
    raise UserError(f"{where} takes a count (3: seeds 1337, 1338, 1339) or a list of distinct integers "
                    f"([1, 2, 3]), got {raw!r}")


def check_key(key, where: str = "") -> None:
    """A sweep key must be a train.py argument the runner does not own (the file's own keywords are
    suggested too when a key is misspelt)."""
    launch.check_key(key, where, driver="sweep", near=(*LEVEL_KEYS, *TOP_KEYS))


def range_values(spec, where: str = "") -> list:
    """{start, end, step}: start, start + step, ... while not past end (end inclusive); ints stay ints."""
    if not isinstance(spec, dict):
        raise UserError(f"{_loc(where)}range needs a mapping {{start, end, step}}, got {spec!r}")
    unknown = set(spec) - {"start", "end", "step"}
    if unknown or not {"start", "end"} <= set(spec):
        raise UserError(f"{_loc(where)}range takes start, end and step (step defaults to 1), got "
                        f"{', '.join(map(str, spec)) or 'nothing'}")
    start, end, step = spec["start"], spec["end"], spec.get("step", 1)
    for n, v in (("start", start), ("end", end), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UserError(f"{_loc(where)}range {n} must be a number, got {v!r}")
    if step == 0 or (end - start) / step < 0:
        raise UserError(f"{_loc(where)}range from {start} by {step} never reaches {end}")
    count = math.floor((end - start) / step + 1e-9) + 1
    if count > 10_000:
        raise UserError(f"{_loc(where)}range gives {count} values; more than 10,000 is surely a mistake")
    if all(isinstance(v, int) for v in (start, end, step)):
        return [start + i * step for i in range(count)]
    return [round(start + i * step, 12) for i in range(count)]


def values_of(key: str, raw, where: str = "") -> list:
    """The checked list of values a sweep entry `key: raw` stands for."""
    check_key(key, where)
    spec = None if key in train_args.LAUNCH_ARGS else train_args.setting(key)
    # a list of registry names is one value; bit widths (--act_bits_<site>) sweep like numbers, and a
    # list of lists gives several per-layer values
    is_list_setting = spec is not None and spec.type is list and not spec.site_bits
    if isinstance(raw, dict):
        if set(raw) == {"range"}:
            return [train_args.check_launch_arg(key, v, where) for v in range_values(raw["range"], f"{where}.range")]
        raise UserError(f"{_loc(where)}'{key}' takes a value, a list of values or {{range: {{start, end, step}}}}; "
                        f"got a mapping with {', '.join(map(str, raw))}")
    if not isinstance(raw, list):
        return [train_args.check_launch_arg(key, raw, where)]
    if spec is not None and spec.site_bits and raw and all(isinstance(v, list) for v in raw):
        return [train_args.check_launch_arg(key, v, where) for v in raw]
    if is_list_setting:  # a list of names is one value; a list of lists is several
        if all(isinstance(v, list) for v in raw):
            return [train_args.check_launch_arg(key, v, where) for v in raw]
        if not any(isinstance(v, (list, dict)) for v in raw):
            return [train_args.check_launch_arg(key, raw, where)] if raw else []
        raise UserError(f"{_loc(where)}'{key}' takes a list of names (one value) or a list of such lists")
    out = []
    for v in raw:
        if isinstance(v, dict) and set(v) == {"range"}:
            out.extend(train_args.check_launch_arg(key, x, where) for x in range_values(v["range"], f"{where}.range"))
        elif isinstance(v, (list, dict)):
            raise UserError(f"{_loc(where)}'{key}': a list of values cannot hold {type(v).__name__}s ({v!r})")
        else:
            out.append(train_args.check_launch_arg(key, v, where))
    return out


# ---------------------------------------------------------------------------------------- expansion
def _product(runs: list[dict], axes: list[tuple[str, list]]) -> list[dict]:
    """Each run times every combination of the axes (first axis slowest); later keys win."""
    for key, values in axes:
        runs = [{**r, key: v} for r in runs for v in values]
    return runs


class _Expander:
    def __init__(self, named: dict):
        self.named = named
        self.stack: list[str] = []
        self.used: set[str] = set()
        self.empty: list[str] = []  # where an empty list of values made runs vanish

    def level(self, body, runs: list[dict], where: str) -> list[dict]:
        if not isinstance(body, dict):
            raise UserError(f"{_loc(where)}a group must be a mapping of settings, got {type(body).__name__}")
        axes = []
        for key, raw in body.items():
            if key in LEVEL_KEYS:
                continue
            if key in TOP_KEYS:
                raise UserError(f"{_loc(where)}'{key}' belongs at the top of the sweep file, not inside a group")
            values = values_of(key, raw, f"{where}.{key}" if where else key)
            if not values:
                self.empty.append(f"{where}.{key}" if where else key)
            axes.append((key, values))
        runs = _product(runs, axes)
        prefix = f"{where}." if where else ""
        for name in self._names(body.get("use"), f"{prefix}use"):
            runs = self.group(name, runs, f"{prefix}use")
        alternates = body.get("alternates")
        if alternates is not None:
            if not isinstance(alternates, list) or not alternates:
                raise UserError(f"{prefix}alternates: give a list of named groups (or a list of such lists)")
            choice_sets = alternates if all(isinstance(a, list) for a in alternates) else [alternates]
            for i, names in enumerate(choice_sets):
                w = f"{prefix}alternates" + (f"[{i}]" if len(choice_sets) > 1 else "")
                names = self._names(names, w)
                if not names:
                    raise UserError(f"{w}: an empty list of alternates gives no runs")
                runs = [r for name in names for r in self.group(name, runs, w)]
        groups = body.get("parameter_groups")
        if groups is not None:
            if not isinstance(groups, list):
                raise UserError(f"{prefix}parameter_groups must be a list of groups, got {type(groups).__name__}")
            if not groups:
                self.empty.append(f"{prefix}parameter_groups")
            runs = [r for i, g in enumerate(groups) for r in self.level(g, runs, f"{prefix}parameter_groups[{i}]")]
        conditionals = body.get("conditionals")
        if conditionals is not None:
            if not isinstance(conditionals, list):
                conditionals = [conditionals]
            for i, cond in enumerate(conditionals):
                runs = self.conditional(cond, runs, f"{prefix}conditionals[{i}]")
        return runs

    def _names(self, names, where: str) -> list[str]:
        if names is None:
            return []
        names = names if isinstance(names, list) else [names]
        for n in names:
            if not isinstance(n, str):
                raise UserError(f"{where}: named groups are referenced by name, got {n!r}")
        return names

    def group(self, name: str, runs: list[dict], where: str) -> list[dict]:
        if name not in self.named:
            guess = closest(name, self.named)
            valid = ", ".join(self.named) or "none; define them under named_groups at the top"
            raise UserError(f"{where}: unknown named group '{name}'" + (f"; did you mean '{guess}'?" if guess else ";")
                            + f" defined: {valid}")
        if name in self.stack:
            raise UserError(f"{where}: named group '{name}' uses itself ({' -> '.join([*self.stack, name])})")
        self.used.add(name)
        self.stack.append(name)
        try:
            return self.level(self.named[name], runs, f"named_groups.{name}")
        finally:
            self.stack.pop()

    def conditional(self, cond, runs: list[dict], where: str) -> list[dict]:
        if not isinstance(cond, dict) or set(cond) != {"when", "set"}:
            got = ", ".join(map(str, cond)) if isinstance(cond, dict) else type(cond).__name__
            raise UserError(f"{where}: a conditional is {{when: {{key: value, ...}}, set: {{...}}}}, got {got}")
        when = cond["when"]
        if not isinstance(when, dict) or not when:
            raise UserError(f"{where}.when: give one or more 'key: value' pairs to match")
        tests = {}
        for key, raw in when.items():
            tests[key] = values_of(key, raw, f"{where}.when.{key}")
            if not any(key in r for r in runs):
                raise UserError(f"{where}.when: '{key}' is not set by any run it applies to; a condition can only "
                                "test settings the sweep sets (add it to the sweep, or fix the key)")
        self.level(cond["set"], [{}], f"{where}.set")  # checked even when no run matches
        out = []
        for r in runs:
            if all(key in r and r[key] in vals for key, vals in tests.items()):
                out.extend(self.level(cond["set"], [r], f"{where}.set"))
            else:
                out.append(r)
        return out


def expand(raw, overrides: dict | None = None) -> tuple[list[dict], dict, list[str]]:
    """(run settings in order, hidden settings (common_group and overrides), warnings); no names yet."""
    if not isinstance(raw, dict):
        raise UserError(f"a sweep file holds a mapping of settings and groups, got {type(raw).__name__}")
    named = raw.get("named_groups") or {}
    if not isinstance(named, dict):
        raise UserError("named_groups must map each group name to a mapping of settings")
    common_raw = raw.get("common_group") or {}
    if not isinstance(common_raw, dict):
        raise UserError("common_group must be a mapping of fixed settings")
    common = {}
    for key, value in common_raw.items():
        values = values_of(key, value, f"common_group.{key}")
        if len(values) != 1:
            raise UserError(f"common_group.{key}: common_group holds one fixed value per setting, got "
                            f"{len(values)}; move '{key}' out of common_group to vary it")
        common[key] = values[0]
    ex = _Expander(named)
    body = {k: v for k, v in raw.items() if k not in TOP_KEYS}
    runs = ex.level(body, [{}], "")
    clash = [k for k in common if any(k in r for r in runs)]
    if clash:
        raise UserError(f"'{clash[0]}' is in common_group and also set elsewhere in the sweep; keep it in one place")
    if not runs:
        hint = f" ({', '.join(ex.empty)} {'has' if len(ex.empty) == 1 else 'have'} no values)" if ex.empty else ""
        raise UserError(f"the sweep expands to zero runs{hint}")
    checked_overrides = {}
    for key, value in (overrides or {}).items():
        check_key(key, f"--set {key}")
        checked_overrides[key] = train_args.check_launch_arg(key, value, f"--set {key}")
    runs = [{**common, **r, **checked_overrides} for r in runs]
    warnings = [f"named group '{n}' is defined but never used" for n in named if n not in ex.used]
    return runs, {**common, **checked_overrides}, warnings


# -------------------------------------------------------------------------------------------- names
def _canon(value) -> str:
    return "<missing>" if value is _MISSING else json.dumps(value, sort_keys=True)


def abbreviate(key: str, level: int = 0) -> str:
    """softmax_variant_attn -> sva (level 0), softmaxva (1), softmax_variant_attn (2); one-word keys stay whole."""
    parts = [p for p in key.split("_") if p]
    if len(parts) < 2 or level >= 2:
        return key
    return "".join(p[0] for p in parts) if level == 0 else parts[0] + "".join(p[0] for p in parts[1:])


def short_keys(keys: list[str]) -> dict[str, str]:
    """Unique abbreviations: keys whose short forms collide (with each other or a full key) get longer ones."""
    level = {k: 0 for k in keys}
    while True:
        short = {k: abbreviate(k, level[k]) for k in keys}
        clash = {k for k in keys if short[k] != k
                 and (sum(s == short[k] for s in short.values()) > 1 or short[k] in keys)}
        if not clash:
            return short
        for k in clash:
            level[k] += 1


def value_label(key: str, value) -> str:
    """A short, filesystem-safe rendering of one value."""
    if value is None:
        text = "none"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:g}" if float(f"{value:g}") == value else repr(value)
    elif isinstance(value, list):
        text = "+".join(value_label(key, v) for v in value)
    elif key in ("config", "dataset"):
        text = Path(str(value)).stem or str(value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "-", text)


def varied_keys(runs: list[dict], hidden=()) -> list[str]:
    keys = list(dict.fromkeys(k for r in runs for k in r))
    return [k for k in keys if k not in hidden and len({_canon(r.get(k, _MISSING)) for r in runs}) > 1]


def run_names(runs: list[dict], hidden=()) -> list[str]:
    """`sva-consmax_nkh-2`: the settings that differ between runs, abbreviated, in the order they appear;
    deterministic; names longer than 80 characters are cut and end in a hash of the whole name."""
    varied = varied_keys(runs, hidden)
    short = short_keys(varied)
    names = []
    for r in runs:
        name = "_".join(f"{short[k]}-{value_label(k, r[k])}" for k in varied if k in r) or "run"
        if len(name) > MAX_NAME:
            name = name[:MAX_NAME - 9].rstrip("_-.") + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
        names.append(name)
    return names


# ---------------------------------------------------------------------------------------- train.py
def check_run(settings: dict) -> None:
    """Check a run's combination of settings the way train.py does before it trains (shapes that do not
    divide, bad ranges, ...), preset and config file merged in; the data set is not opened."""
    from gpt_conf import GPTConfig
    s = train_args.parse_args(launch.train_argv(settings))
    GPTConfig(**s.model)
    train_args.TrainConfig(**s.train)


# ------------------------------------------------------------------------------------------ loading
def read_sweep_file(path: str | Path):
    return read_data_file(path, "sweep file", " (sweeps live in explorations/)")


def check_seeds(runs: list[dict], seeds: list[int] | None, where: str) -> None:
    """`seed` is the sweep's to set when it has seeds, and may not vary without them."""
    values = list(dict.fromkeys(json.dumps(r.get(SEED)) for r in runs))
    if seeds is not None and any(SEED in r for r in runs):
        shown = ", ".join(v for v in values if v != "null")
        raise UserError(f"the sweep sets 'seed' ({shown}) and {where} gives the seeds; drop 'seed' and list "
                        "every seed you want in seeds: [...]")
    if seeds is None and len(values) > 1:
        shown = ", ".join(v for v in values if v != "null")
        raise UserError(f"'seed' varies between the runs ({shown}); give the seeds as the top-level "
                        f"seeds: [{shown}] instead, so that the runs of one configuration are grouped "
                        "(means and spread over the seeds)")


def build_sweep(raw, name: str, overrides: dict | None = None, seeds=None) -> Sweep:
    """Expand and check a parsed sweep file: every key, value and run, names unique; each configuration
    once per seed (`seeds`: the file's `seeds:`, or the runner's --seeds, which wins)."""
    runs, hidden, warnings = expand(raw, overrides)
    where = "--seeds" if seeds is not None else "seeds:"
    raw_seeds = seeds if seeds is not None else raw.get("seeds")
    seeds = None if raw_seeds is None else seed_list(raw_seeds, where.rstrip(":"))
    check_seeds(runs, seeds, where)
    names = run_names(runs, hidden)
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            j = seen[n]
            if _canon(runs[i]) == _canon(runs[j]):
                raise UserError(f"the sweep holds the same run twice (runs {j + 1} and {i + 1}, '{n}': "
                                f"{runs[i]}); remove one of the groups that produce it")
            raise UserError(f"runs {j + 1} and {i + 1} get the same name '{n}'; make the values that tell "
                            "them apart differ after being made filesystem-safe")
        seen[n] = i
    for n, r in zip(names, runs):
        try:
            check_run(r)
        except UserError as e:
            raise UserError(f"run '{n}': {e}") from None
    varied = varied_keys(runs, hidden)
    fixed = {k: v for k, v in runs[0].items() if k not in varied}
    if seeds is None:
        out = [Run(n, r, n) for n, r in zip(names, runs)]
    else:  # the first seed for every configuration, then the second, ...
        out = [Run(seed_run_name(n, s), {**r, SEED: s}, n, s) for s in seeds for n, r in zip(names, runs)]
    return Sweep(name=name, runs=out, varied=varied, fixed=fixed, warnings=warnings, seeds=seeds,
                 configs=len(runs))


def load_sweep(path: str | Path, name: str | None = None, overrides: dict | None = None, seeds=None) -> Sweep:
    """Read, expand and check a sweep file; its name defaults to the file's stem. `seeds` (a count or
    a list) replaces the file's `seeds:`."""
    raw = read_sweep_file(path)
    try:
        sweep = build_sweep(raw, name or Path(path).stem, overrides, seeds)
        section = raw.get("submitit") if isinstance(raw, dict) else None
        if section is not None and not isinstance(section, dict):
            raise UserError("submitit: must be a mapping of job parameters (partition, time, gpus_per_run, ...)")
        sweep.submitit = section
        return sweep
    except UserError as e:
        raise UserError(f"sweep file {path}: {e}") from None
