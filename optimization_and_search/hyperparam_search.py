"""Greedy efficiency-per-cost search: grow a model one change at a time, each time adopting the change
that buys the most improvement of the objective per unit of added cost.

    python optimization_and_search/hyperparam_search.py --baseline hp_searches/cpu_baseline.yaml \\
        --param n_layer 1 --param n_embd 32 --multiples 2 --steps 4 --seeds 2 --cost params
    python optimization_and_search/hyperparam_search.py --spec hp_searches/greedy_cpu_params.yaml --steps 6
    python optimization_and_search/hyperparam_search.py --spec hp_searches/greedy_demo_tiny.yaml -- --max_iters 50
    python analysis/plot_search.py hp_search_logs/greedy_cpu_params.yaml --out search.png

Each step starts from a baseline (measured in step 1 and after an iteration-budget raise, otherwise the
candidate adopted in the step before) and builds the candidates `base + m * increment`, m = 1..K, for
every parameter. A candidate that fails validation (n_embd not divisible by n_head, ...) is recorded as
skipped with the reason and not run. Every other candidate trains once per seed (`--seed` differs) and
its objective and cost are averaged over the seeds. Then, with improvement = baseline objective -
candidate objective (the objective is minimised) and added cost = candidate cost - baseline cost:

* a candidate that improves (by more than --min_improvement) without costing more *dominates*; the
  dominating candidate with the largest improvement is adopted outright;
* otherwise the improving candidate with the highest improvement / added cost is adopted;
* a candidate that is worse or equal is never adopted, whatever its cost.

The candidates and this rule are pure functions in greedy_rule.py; this file holds the spec, the step
loop, the log and the CLI.

The search stops when no candidate improves (stop reason `no_improvement`; with `--on_plateau
raise_iters` the iteration budget is multiplied by --iters_factor instead and the search goes on), when
the step budget is spent (`max_steps`), or when the baseline itself fails (`baseline_failed`).

Growing n_layer duplicates the last layer's settings in every per-layer list (*_layerlist) the
baseline sets: the list is first written out per layer, cycling as the model does, then its last entry
is repeated for each new layer (a shrinking n_layer cuts the list).

Every run is `python train.py FLAGS` in a subprocess (or `train.main` in this process with
--in_process, or a submitit job with --executor submitit: executors.py), started by launch.py, in
out_root/step_<i>/<candidate>/seed_<s>, with its output in train.log there; a killed search takes its
training runs with it. A step's candidates x seeds are independent: `--jobs N` trains N of them at once
(--executor submitit: all of them, as one job array), and each result is recorded as its run ends; the
candidates are ranked once all of them have ended, in their listed order, so the decisions are those of
the one-at-a-time order whatever order the runs end in. (The baseline, when a step measures one, trains
first: if it fails, no candidate runs.) The log (--log, default
hp_search_logs/<name>.yaml) is one YAML file rewritten atomically after every run: the
search's settings, every step with its baseline, every candidate with its per-seed results, averages,
improvement, added cost, efficiency and verdict, the adopted change, the stop reason and timestamps.
Re-running the same command resumes from it without re-running finished candidate/seed pairs (a run
the kill interrupted is started over in its directory). One search per log and per out_root (locks.py).

From Python, `run_search(spec, evaluate)` takes any `evaluate(settings, seed) -> {"objective": float,
"cost": float, ...}` (settings: the flat train.py settings of the run, `seed` and `out_dir` included).

Length: the spec (validation, file and flags), the step loop with its log, and the printing belong to
one CLI; the method itself is in greedy_rule.py and the execution in executors.py.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import train_args
from errors import ArgumentParser, UserError, run_cli, unknown_name_message
from io_utils import atomic_write_bytes, read_data_file
from optimization_and_search import executors, launch, locks
from optimization_and_search.greedy_rule import (ON_PLATEAU, aggregate, base_value, build_candidates, final_model,
                                                 finite, raise_iters, rank_candidates, step_outcome, trajectory)
from optimization_and_search.results import now, plain, read_yaml_file
from run_dir import format_summary_value, numeric_summary_keys

PROG = "hyperparam_search.py"
# cost names -> summary.json keys; any other numeric summary key may be named directly
COSTS = {"params": "num_params", "macs": "macs_per_token", "iter_latency": "iter_time_ms",
         "peak_memory": "peak_memory_bytes", "energy": "energy_pj_per_token_decode",
         "latency": "latency_us_per_token_decode", "area": "area_mm2"}
SPEC_KEYS = ("name", "baseline", "preset", "overrides", "params", "multiples", "steps", "seeds", "seed0",
             "cost", "objective", "on_plateau", "iters_factor", "min_improvement", "in_process", "log",
             "out_root", "retry_failed", "jobs", "submitit")


# ------------------------------------------------------------------------------------- the spec
@dataclass
class SearchSpec:
    """What to search. `baseline` holds flat train.py settings (preset, file and overrides resolved)."""
    name: str
    baseline: dict
    params: dict  # setting -> increment
    multiples: int = 1
    steps: int = 3
    seeds: list = field(default_factory=lambda: [1337])
    cost: str = "params"
    objective: str = "best_val_loss"
    on_plateau: str = "stop"
    iters_factor: float = 2.0
    min_improvement: float = 0.0
    log: str | None = None
    out_root: str | None = None
    in_process: bool = False
    retry_failed: bool = False
    source: str | None = None  # where the baseline came from (for the log)
    jobs: int = 1  # runs at once (candidates x seeds of a step)
    submitit: dict | None = None  # the spec file's submitit job parameters (executors.py)

    def __post_init__(self):
        if self.log is None:
            self.log = str(Path("hp_search_logs") / f"{self.name}.yaml")
        if self.out_root is None:
            self.out_root = str(Path("out") / "hp_search" / self.name)

    @property
    def cost_key(self) -> str:
        return COSTS.get(self.cost, self.cost)

    def identity(self) -> dict:
        """What a resumed search must share with the one that wrote the log."""
        return plain({"baseline": self.baseline, "params": self.params, "multiples": self.multiples,
                      "seeds": self.seeds, "objective": self.objective, "cost": self.cost})

    def to_dict(self) -> dict:
        return plain({k: getattr(self, k) for k in (
            "name", "source", "params", "multiples", "steps", "seeds", "cost", "objective", "on_plateau",
            "iters_factor", "min_improvement", "in_process", "retry_failed", "out_root", "log")}
            | {"cost_key": self.cost_key, "baseline": self.baseline})


def validate_spec(spec: SearchSpec) -> SearchSpec:
    """Check everything before anything runs; numbers of float settings become floats."""
    launch.check_name(spec.name, "search name (--name)")
    if not spec.params:
        raise UserError("no parameters to grow; give at least one --param NAME INCREMENT")
    for key, value in spec.baseline.items():
        spec.baseline[key] = train_args.check(key, value)
    for key in launch.driver_owned(seed=True):  # the search sets these per run
        spec.baseline.pop(key, None)
    problem = train_args.settings_problem(spec.baseline)
    if problem:
        raise UserError(f"the baseline settings are invalid: {problem}")
    params = {}
    for name, inc in spec.params.items():
        typ = train_args.setting(name).type
        if typ not in (int, float):
            raise UserError(f"--param {name}: only int and float settings can grow, {name} is "
                            f"{'a list' if typ is list else typ.__name__}")
        if isinstance(inc, bool) or not isinstance(inc, (int, float)):
            raise UserError(f"--param {name}: the increment must be a number, got {inc!r}")
        if typ is int and not isinstance(inc, int):
            if not float(inc).is_integer():
                raise UserError(f"--param {name}: {name} is an integer setting, so its increment must be one, got {inc}")
            inc = int(inc)
        if typ is float:
            inc = float(inc)
        if inc == 0 or not math.isfinite(inc):
            raise UserError(f"--param {name}: the increment must be a non-zero finite number, got {inc}")
        if base_value(spec.baseline, name) is None:
            raise UserError(f"--param {name}: the baseline has no value for {name} (its default is empty); "
                            "set it in the baseline")
        params[name] = inc
    spec.params = params
    for name in ("multiples", "steps", "jobs"):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"--{name} must be a whole number of at least 1, got {value!r}")
    if not spec.seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in spec.seeds):
        raise UserError(f"seeds must be a non-empty list of integers, got {spec.seeds!r}")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise UserError(f"seeds must differ, got {spec.seeds}")
    spec.seeds = list(spec.seeds)
    numeric = numeric_summary_keys()
    if spec.cost not in COSTS and spec.cost not in numeric:
        raise UserError(unknown_name_message("cost", spec.cost, [*COSTS, *numeric]))
    if spec.objective not in numeric:
        raise UserError(unknown_name_message("objective (a summary.json key)", spec.objective, numeric))
    if spec.on_plateau not in ON_PLATEAU:
        raise UserError(unknown_name_message("--on_plateau", spec.on_plateau, ON_PLATEAU))
    if not isinstance(spec.iters_factor, (int, float)) or isinstance(spec.iters_factor, bool) or spec.iters_factor <= 1:
        raise UserError(f"--iters_factor must be a number above 1, got {spec.iters_factor!r}")
    spec.iters_factor = float(spec.iters_factor)
    if not isinstance(spec.min_improvement, (int, float)) or spec.min_improvement < 0:
        raise UserError(f"--min_improvement must be a number >= 0, got {spec.min_improvement!r}")
    spec.min_improvement = float(spec.min_improvement)
    return spec


# ---------------------------------------------------------------------------- train evaluator
class RunFailed(RuntimeError):
    """A training run that did not give a usable result."""


class TrainEvaluator:
    """evaluate(settings, seed) for real runs: train.py in a subprocess (or train.main in this process, or a
    submitit job), then the objective and cost read from the run's summary.json. start_many / finish let
    executors.evaluate_all run several at once."""

    def __init__(self, objective: str = "best_val_loss", cost_key: str = "num_params", in_process: bool = False,
                 python: str = sys.executable, submitit=None):
        self.objective, self.cost_key, self.in_process, self.python = objective, cost_key, in_process, python
        self.submitit = submitit  # (executors.SubmititConfig, its executor) or None
        self.all_at_once = submitit is not None

    @staticmethod
    def run_settings(settings: dict, seed: int) -> tuple[dict, Path]:
        # the run directory belongs to the search: a killed run is started over (launch: --overwrite)
        return {**{k: v for k, v in settings.items() if k != "out_dir"}, "seed": seed}, Path(settings["out_dir"])

    def start_many(self, calls: list[tuple[dict, int]]) -> list:
        runs = [self.run_settings(settings, seed) for settings, seed in calls]
        if self.submitit is not None:
            return executors.submit(self.submitit[1], [(s, d, False, {}) for s, d in runs])
        return [launch.start(s, d, python=self.python) for s, d in runs]

    def __call__(self, settings: dict, seed: int) -> dict:
        if self.in_process:
            return self.finish(launch.run_in_process(*self.run_settings(settings, seed)))
        (run,) = self.start_many([(settings, seed)])
        try:
            run.wait()
        except BaseException:
            run.stop()
            raise
        return self.finish(run)

    def finish(self, run) -> dict:
        out_dir = run.run_dir.path
        if run.exit_code != 0:
            last = run.log_tail(1).strip() or "no output"
            raise RunFailed(f"train.py exited with status {run.exit_code}: {last}")
        summary = run.summary()
        if summary is None:
            raise RunFailed(f"no readable summary.json in {out_dir}")
        if summary.get("status") != "completed":
            raise RunFailed(f"the run did not complete (status {summary.get('status')!r})")
        result = {"out_dir": str(out_dir), "wall_s": round(run.duration or 0.0, 2), "summary": summary}
        for role, key in (("objective", self.objective), ("cost", self.cost_key)):
            value = summary.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RunFailed(f"summary.json has no number for {key} (the {role}): {value!r}")
            result[role] = value
        return result


# ---------------------------------------------------------------------------------- the search
def load_log(path: Path) -> dict | None:
    if not path.exists():
        return None
    log = read_yaml_file(path, "search log")  # damage: a one-line error saying where
    if not isinstance(log, dict) or not isinstance(log.get("steps"), list) or "identity" not in log:
        raise UserError(f"{path} is not a hyperparam_search log; choose another --log")
    return log


class GreedySearch:
    def __init__(self, spec: SearchSpec, evaluate=None, console=None, overwrite: bool = False):
        self.spec = spec
        self.evaluate = evaluate or TrainEvaluator(spec.objective, spec.cost_key, spec.in_process)
        self.console = console or _console()
        self.path = Path(spec.log)
        old = None if overwrite else load_log(self.path)
        identity = spec.identity()
        if old is not None and old["identity"] != identity:
            differs = [k for k in identity if old["identity"].get(k) != identity[k]]
            raise UserError(f"{self.path} holds a different search (it differs in: {', '.join(differs)}); "
                            "pass --overwrite to start it over, or choose another --name or --log")
        if old is None:
            self.log = {"name": spec.name, "status": "running", "stop_reason": None, "started_at": now(),
                        "updated_at": now(), "finished_at": None, "search": spec.to_dict(), "identity": identity,
                        "final": None, "steps": []}
        else:
            self.log = old
            self.log["search"] = spec.to_dict()  # the step budget, plateau policy, ... may have changed
            if self.log["status"] == "finished" and self.log["stop_reason"] in ("max_steps", "baseline_failed"):
                self.log.update(status="running", stop_reason=None, finished_at=None)
            if self.spec.retry_failed:
                for step in self.log["steps"]:
                    if step.get("outcome") == "baseline_failed":
                        step.update(finished_at=None, outcome=None)
            self.console.print(f"resuming {spec.name} from {self.path} ({len(self.log['steps'])} step(s) recorded)")

    # -- persistence
    def save(self):
        self.log["updated_at"] = now()
        text = yaml.safe_dump(plain(self.log), sort_keys=False, allow_unicode=True, width=120)
        atomic_write_bytes(self.path, text.encode())

    # -- the loop
    def run(self) -> dict:
        log, spec = self.log, self.spec
        if log["status"] == "finished":
            self.console.print(trajectory_table(log, spec))
            self.console.print(f"search {spec.name} already finished ({log['stop_reason']}); log in {self.path}",
                               highlight=False)
        while log["status"] != "finished":
            steps = log["steps"]
            if steps and steps[-1].get("finished_at") is None:
                step = steps[-1]
            elif steps and steps[-1]["outcome"] in ("no_improvement", "baseline_failed"):
                self._stop(steps[-1]["outcome"])
                break
            elif len(steps) >= spec.steps:
                self._stop("max_steps")
                break
            else:
                step = self._new_step(steps[-1] if steps else None)
                steps.append(step)
                self.save()
            self._run_step(step)
        return log

    def _new_step(self, prev: dict | None) -> dict:
        index = 1 if prev is None else prev["index"] + 1
        if prev is None:
            baseline = {"settings": dict(self.spec.baseline), "source": "measured", "runs": []}
        elif prev["outcome"] == "adopted":
            chosen = next(c for c in prev["candidates"] if c["name"] == prev["chosen"])
            baseline = {k: copy.deepcopy(chosen[k]) for k in ("settings", "runs", "status", "objective", "cost", "objective_std")
                        if k in chosen}
            baseline["source"] = f"step {prev['index']}: {chosen['name']}"
        else:  # raise_iters
            baseline = {"settings": raise_iters(prev["baseline"]["settings"], self.spec.iters_factor),
                        "source": "measured", "runs": []}
        baseline["settings"] = dict(baseline["settings"])
        return {"index": index, "started_at": now(), "finished_at": None, "baseline": baseline,
                "candidates": build_candidates(baseline["settings"], self.spec.params, self.spec.multiples),
                "chosen": None, "change": None, "outcome": None}

    def _run_step(self, step: dict):
        spec, b = self.spec, step["baseline"]
        self.console.print(f"[bold]step {step['index']}[/bold] (baseline: {b['source']}; "
                           f"{sum(c['status'] != 'skipped' for c in step['candidates'])} candidates x "
                           f"{len(spec.seeds)} seed(s))", highlight=False)
        self._measure(step, [(b, "baseline")])
        if b["status"] != "completed":
            step.update(outcome="baseline_failed", finished_at=now())
            self.console.print(f"[red]the baseline failed ({b.get('reason')}); stopping[/red]")
            self.save()
            return
        self._measure(step, [(c, c["name"]) for c in step["candidates"] if c["status"] != "skipped"], baseline=b)
        chosen = rank_candidates(b, step["candidates"], spec.min_improvement)
        step["outcome"] = step_outcome(chosen, spec.on_plateau)
        if step["outcome"] == "adopted":
            step.update(chosen=chosen["name"], change=chosen["change"])
        elif step["outcome"] == "raise_iters":
            raised = raise_iters(b["settings"], spec.iters_factor)
            step["change"] = {k: v for k, v in raised.items() if b["settings"].get(k) != v}
        step["finished_at"] = now()
        self.save()
        self.console.print(step_table(step, spec))
        what = {"adopted": f"adopt {chosen['name'] if chosen else ''}",
                "raise_iters": f"no candidate improves: raise the iteration budget ({fmt_change(step['change'])})",
                "no_improvement": "no candidate improves"}[step["outcome"]]
        self.console.print(f"step {step['index']}: {what}", highlight=False)

    def _measure(self, step: dict, entries: list[tuple[dict, str]], baseline: dict | None = None):
        """Train every (entry, seed) run the entries lack, --jobs at a time (or all as submitit jobs), and
        record each one as it ends. Each entry keeps its runs in seed order and the candidates keep their
        order, so the step's decision does not depend on which run ends first."""
        spec = self.spec
        calls, where = [], []
        for entry, label in entries:
            keep = [r for r in entry["runs"] if r["status"] == "completed"
                    or (r["status"] == "failed" and not spec.retry_failed)]
            entry["runs"] = [r for r in keep if r["seed"] in spec.seeds]
            done = {r["seed"] for r in entry["runs"]}
            for seed in spec.seeds:
                if seed in done:
                    continue
                run_dir = Path(spec.out_root) / f"step_{step['index']}" / label / f"seed_{seed}"
                calls.append(({**entry["settings"], "seed": seed, "out_dir": str(run_dir)}, seed))
                where.append((entry, label, {"seed": seed, "status": None, "out_dir": str(run_dir),
                                             "started_at": now()}, time.time()))

        def record(i: int, result: dict | None, error: Exception | None):
            entry, label, rec, t0 = where[i]
            try:
                if error is not None:
                    raise error
                result = dict(result)
                for key in ("objective", "cost"):
                    value = result.get(key)
                    if not finite(value):
                        raise RunFailed(f"the {key} is not a finite number: {value!r}")
                    result[key] = float(value)
                rec.update(result, status="completed")
                msg = f"{spec.objective} {result['objective']:.4f}, {spec.cost} {fmt_num(spec.cost, result['cost'])}"
            except Exception as e:  # noqa: BLE001 - a failed run is recorded, the search goes on
                text = str(e).strip().splitlines()
                rec.update(status="failed", error=(text[0] if text else type(e).__name__)[:500])
                msg = f"[red]failed[/red]: {rec['error']}"
            rec["finished_at"] = now()
            entry["runs"].append(rec)
            entry["runs"].sort(key=lambda r: spec.seeds.index(r["seed"]))
            aggregate(entry, spec.seeds)
            if baseline is not None and len(entry["runs"]) == len(spec.seeds):
                rank_candidates(baseline, [entry], spec.min_improvement)  # fill improvement etc. as results arrive
            self.save()
            self.console.print(f"  step {step['index']} {label} seed {rec['seed']}: {msg} ({time.time() - t0:.1f}s)",
                               highlight=False)

        executors.evaluate_all(self.evaluate, calls, spec.jobs, record)
        for entry, _ in entries:
            aggregate(entry, spec.seeds)

    def _stop(self, reason: str):
        log = self.log
        final = final_model(log)
        if final is not None:
            initial = self.spec.baseline
            log["final"] = {"settings": final["settings"], "objective": final.get("objective"),
                            "cost": final.get("cost"),
                            "change": {k: v for k, v in final["settings"].items() if initial.get(k) != v}}
        log.update(status="finished", stop_reason=reason, finished_at=now())
        self.save()
        self.console.print(trajectory_table(log, self.spec))
        self.console.print(f"search {self.spec.name} stopped: {reason}; log in {self.path}", highlight=False)


def run_search(spec: SearchSpec, evaluate=None, console=None, overwrite: bool = False) -> dict:
    """Validate the spec and run (or resume) the search, holding its log and run folder (locks.py: a
    second search on either is refused at once); returns the log."""
    validate_spec(spec)
    with locks.hold(spec.log, PROG, "give this search another --name or --log"), \
            locks.hold(spec.out_root, PROG, "give this search another --out_root"):
        return GreedySearch(spec, evaluate, console, overwrite).run()


# ---------------------------------------------------------------------------------- printing
def _console():
    from rich.console import Console
    console = Console()
    return console if console.is_terminal else Console(width=200)


def fmt_num(cost: str, value) -> str:
    return format_summary_value(COSTS.get(cost, cost), value)


def fmt_change(change: dict | None) -> str:
    if not change:
        return "-"
    return ", ".join(f"{k}={' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in change.items())


def step_table(step: dict, spec: SearchSpec):
    from rich.table import Table
    table = Table(title=f"step {step['index']}: {spec.objective} (lower is better) vs {spec.cost}")
    for col in ("candidate", "status", spec.objective, "Δ objective", spec.cost, "Δ cost", "efficiency", "verdict"):
        table.add_column(col, justify="left" if col in ("candidate", "status", "verdict") else "right")
    b = step["baseline"]
    std = f" ± {b['objective_std']:.4f}" if b.get("objective_std") else ""
    table.add_row("baseline", b.get("status", "-"), f"{b['objective']:.4f}{std}" if "objective" in b else "-", "",
                  fmt_num(spec.cost, b.get("cost")), "", "", b["source"])
    for c in step["candidates"]:
        if c["status"] != "completed":
            table.add_row(c["name"], c["status"], "", "", "", "", "", (c.get("reason") or "")[:80])
            continue
        std = f" ± {c['objective_std']:.4f}" if c.get("objective_std") else ""
        eff = "inf" if c.get("verdict") == "dominates" else (f"{c['efficiency']:.3g}" if c.get("efficiency") else "")
        style = "bold green" if c.get("chosen") else None
        table.add_row(c["name"], c["status"], f"{c['objective']:.4f}{std}", f"{-c['improvement']:+.4f}",
                      fmt_num(spec.cost, c["cost"]), f"{'+' if c['added_cost'] >= 0 else '-'}"
                      f"{fmt_num(spec.cost, abs(c['added_cost']))}", eff,
                      c.get("verdict", "") + (" <- adopted" if c.get("chosen") else ""), style=style)
    return table


def trajectory_table(log: dict, spec: SearchSpec):
    from rich.table import Table
    table = Table(title=f"search {log['name']}: the adopted path")
    for col in ("step", "change", spec.objective, spec.cost):
        table.add_column(col, justify="left" if col == "change" else "right")
    for p in trajectory(log):
        table.add_row(str(p["step"]), p["label"], f"{p['objective']:.4f}", fmt_num(spec.cost, p["cost"]))
    return table


# --------------------------------------------------------------------------------------- CLI
def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, allow_abbrev=False,
                       description="Greedy efficiency-per-cost search over train.py settings. train.py flags "
                                   "after `--` apply on top of the baseline.",
                       epilog="Options left out take the --spec file's values, then the defaults shown.")
    p.add_argument("--spec", "-c", help="search-spec YAML (baseline, params, multiples, ...); flags override it")
    p.add_argument("--baseline", help="YAML/JSON file of train.py settings to start from")
    p.add_argument("--preset", help="train.py preset under the baseline file (debug, cpu, gpt2)")
    p.add_argument("--param", nargs=2, action="append", metavar=("NAME", "INCREMENT"),
                   help="a setting to grow and its increment (repeat for more; replaces the spec's params)")
    p.add_argument("--multiples", "-K", type=int, help="candidates per parameter per step: base + m * increment, m = 1..K (default 1)")
    p.add_argument("--steps", type=int, help="step budget (default 3)")
    p.add_argument("--seeds", type=int, help="seeds per candidate (default 1)")
    p.add_argument("--seed0", type=int, help="first seed (default: the baseline's seed, else 1337)")
    p.add_argument("--cost", help=f"cost to pay: {', '.join(COSTS)} or a numeric summary.json key (default params)")
    p.add_argument("--objective", help="numeric summary.json key to minimise (default best_val_loss)")
    p.add_argument("--on_plateau", choices=ON_PLATEAU, help="when nothing improves: stop, or raise the iteration budget (default stop)")
    p.add_argument("--iters_factor", type=float, help="raise_iters multiplies max_iters (and lr_decay_iters) by this (default 2)")
    p.add_argument("--min_improvement", type=float, help="improvements up to this are treated as none (default 0)")
    p.add_argument("--name", help="search name (default: the spec's, else the spec or baseline file name)")
    p.add_argument("--log", help="the search log (default hp_search_logs/<name>.yaml)")
    p.add_argument("--out_root", help="run directories (default out/hp_search/<name>)")
    p.add_argument("--in_process", action="store_true", default=None, help="train in this process (train.main) instead of subprocesses")
    p.add_argument("--jobs", type=int, help="runs at once: a step's candidates x seeds train concurrently (default 1)")
    p.add_argument("--retry_failed", action="store_true", default=None, help="re-run recorded failed runs on resume")
    p.add_argument("--overwrite", action="store_true", help="discard the existing log (whatever search it holds) and start over")
    p.add_argument("--dry_run", action="store_true", help="print the baseline and the first step's candidates, run nothing")
    executors.add_arguments(p)
    return p


def parse_increment(text: str, what: str):
    """An increment typed on the command line: an int when it reads as one, else a float (an increment is
    not a value of its setting, so validate_spec checks it, not the settings schema)."""
    for typ in (int, float):
        try:
            return typ(text)
        except ValueError:
            pass
    raise UserError(f"{what}: '{text}' is not a number")


def load_spec_file(path: str) -> tuple[dict, Path]:
    p = Path(path)
    data = read_data_file(p, "search spec")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"search spec {path} must hold a mapping, got {type(data).__name__}")
    for key in data:
        if key not in SPEC_KEYS:
            raise UserError(f"search spec {path}: {unknown_name_message('key', str(key), SPEC_KEYS)}")
    return data, p


def spec_from_args(argv: list[str]) -> tuple[SearchSpec, argparse.Namespace]:
    if "--" in argv:
        i = argv.index("--")
        argv, train_flags = argv[:i], argv[i + 1:]
    else:
        train_flags = []
    args = build_parser().parse_args(argv)
    data, spec_path = load_spec_file(args.spec) if args.spec else ({}, None)

    def pick(name, default=None):
        value = getattr(args, name, None)
        return value if value is not None else data.get(name, default)

    # the baseline settings: preset < baseline file (or mapping) < spec overrides < flags after --
    settings, source = {}, []
    preset = pick("preset")
    if preset is not None:
        settings.update(train_args.PRESETS[train_args.check_launch_arg("preset", preset)])
        source.append(f"preset {preset}")
    baseline = args.baseline if args.baseline is not None else data.get("baseline")
    baseline_path = None
    if isinstance(baseline, dict):
        try:
            settings.update({k: train_args.check(k, v) for k, v in baseline.items()})
        except UserError as e:
            raise UserError(f"search spec {spec_path}: baseline: {e}") from None
        source.append(f"{spec_path} (baseline mapping)")
    elif baseline is not None:
        baseline_path = Path(str(baseline))
        if args.baseline is None and spec_path is not None and not baseline_path.is_absolute() \
                and (spec_path.parent / baseline_path).is_file():
            baseline_path = spec_path.parent / baseline_path  # relative to the spec file first
        settings.update(train_args.load_config_file(str(baseline_path)))
        source.append(str(baseline_path))
    elif not preset:
        raise UserError("no baseline: give --baseline FILE (train.py settings), --preset, or a --spec that names one")
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise UserError(f"search spec {spec_path}: overrides must be a mapping of train.py settings")
    try:
        settings.update({k: train_args.check(k, v) for k, v in overrides.items()})
    except UserError as e:
        raise UserError(f"search spec {spec_path}: overrides: {e}") from None
    if train_flags:
        parsed = train_args.parse_args(train_flags)
        settings.update({**parsed.model, **parsed.train})
        source.append("flags " + " ".join(train_flags))

    if args.param:
        params = {name: parse_increment(inc, f"--param {name}") for name, inc in args.param}
    else:
        params = data.get("params") or {}
        if not isinstance(params, dict):
            raise UserError(f"search spec {spec_path}: params must be a mapping of setting: increment")
    seed0 = pick("seed0", settings.get("seed", train_args.setting("seed").default))
    seeds = args.seeds if args.seeds is not None else data.get("seeds", 1)
    if isinstance(seeds, list):
        if args.seed0 is not None:
            seeds = [args.seed0 + i for i in range(len(seeds))]
    elif isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
        seeds = [seed0 + i for i in range(seeds)]
    else:
        raise UserError(f"seeds must be a count of at least 1 or a list of integers, got {seeds!r}")
    name = pick("name") or (spec_path.stem if spec_path else baseline_path.stem if baseline_path else "search")
    spec = SearchSpec(
        name=str(name), baseline=settings, params=params, multiples=pick("multiples", 1), steps=pick("steps", 3),
        seeds=seeds, cost=str(pick("cost", "params")), objective=str(pick("objective", "best_val_loss")),
        on_plateau=str(pick("on_plateau", "stop")), iters_factor=pick("iters_factor", 2.0),
        min_improvement=pick("min_improvement", 0.0), log=pick("log"), out_root=pick("out_root"),
        in_process=bool(pick("in_process", False)), retry_failed=bool(pick("retry_failed", False)),
        jobs=pick("jobs", 1), submitit=data.get("submitit"),
        source=" < ".join(source))
    return validate_spec(spec), args


def main(argv: list[str] | None = None, evaluate=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    spec, args = spec_from_args(argv)
    console = _console()
    if spec.in_process and spec.cost_key == "peak_memory_bytes":
        console.print("[yellow]warning: --in_process measures CPU peak memory as this process's high-water mark, "
                      "which carries over between runs; use subprocesses for peak_memory on CPU[/yellow]")
    if args.dry_run:
        from rich.table import Table
        cands = build_candidates(spec.baseline, spec.params, spec.multiples)
        table = Table(title=f"search {spec.name}: step 1 candidates (baseline: {spec.source})")
        for col in ("candidate", "change", "status"):
            table.add_column(col)
        for c in cands:
            table.add_row(c["name"], fmt_change(c["change"]), c["status"] + (f": {c['reason']}" if c.get("reason") else ""))
        console.print(table)
        n = (1 + sum(c["status"] != "skipped" for c in cands)) * len(spec.seeds)
        console.print(f"baseline: {fmt_change(spec.baseline)}\nstep 1 would train {n} run(s); "
                      f"log {spec.log}, runs under {spec.out_root}", highlight=False)
        return {"spec": spec.to_dict(), "candidates": cands}
    cfg = executors.config_from(args, spec.submitit, spec.out_root)
    if spec.in_process and (cfg is not None or spec.jobs > 1):
        raise UserError("--in_process trains one run at a time in this process; drop it to use --jobs or "
                        "--executor submitit")
    if evaluate is None and cfg is not None:
        evaluate = TrainEvaluator(spec.objective, spec.cost_key, submitit=(cfg, executors.build(cfg, spec.name)))
    with launch.sigterm_as_interrupt():  # `kill` stops the current training runs too
        return run_search(spec, evaluate, console, overwrite=args.overwrite)


if __name__ == "__main__":
    sys.exit(run_cli(main))
