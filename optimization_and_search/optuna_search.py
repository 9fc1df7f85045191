"""Optuna search over train.py settings: a search-space YAML, one or more objectives from summary.json,
pruning on the intermediate val losses, SQLite storage (a killed study resumes), and an exploration log.

    python optimization_and_search/optuna_search.py -c hp_searches/optuna_cpu.yaml --n_trials 20
    python optimization_and_search/optuna_search.py -c hp_searches/optuna_cpu_pareto.yaml --n_trials 30 \\
        --objectives best_val_loss macs_per_token
    python optimization_and_search/optuna_search.py -c SPACE.yaml --n_trials 8 -- --max_iters 200   # train.py flags
    python optimization_and_search/optuna_search.py -c hp_searches/optuna_cpu.yaml --n_trials 10 --seeds 3

The search-space file (`fixed:` settings of every trial and searched `params:`, every key a train.py
setting, validated before the study starts) is described, with an example, in optuna_space.py.

Trials run in this process (launch.run_in_process: `train.main(argv, on_eval=...)`, which pruning needs),
each in out_root/<study>/trial_<n> with its output in train.log there. The trial's settings reach train.py
as flags, as in every driver (a `null` under fixed: is left out, so the preset's value or train.py's
default applies).
Single objective (default `best_val_loss`, minimised): TPE sampler, and a median pruner fed with every
evaluation's val loss stops unpromising trials early (status "pruned"). Several objectives
(`--objectives best_val_loss macs_per_token`, any numeric summary.json keys): NSGA-II, no pruning
(Optuna does not prune multi-objective studies), and the Pareto front printed and saved.

Seeds: with `--seeds N` (N > 1) every trial trains its configuration once per seed (train.py's default
seed 1337 and the N - 1 after it; the space may then not set `seed`) in trial_<n>/seed_<s>, and Optuna
gets each objective's mean over the seeds (results.spread, as the sweep runner and the greedy search
average). One failed seed fails the trial. Pruning watches the first seed's run only: every trial's
first seed is the same, so the pruner compares like with like. Each seed's run is a document of the log
(`trial_<n>_seed-<s>`), so results.aggregate_by_config, plot_sweep.py and compare.py see one
configuration per trial with its spread. (`--seed` is the sampler's seed, not a training seed.)

The study lives in `--storage` (default sqlite:///out_root/<study>/study.db; `journal:PATH` for a journal
file on a shared file system; `postgresql+psycopg2://USER:PASSWORD@HOST/DB` for many machines) under
`--study_name` (default: the search-space file's name); running the same command again continues it
up to `--n_trials` counted trials in total. Several processes (workers) may run one study at once, on
one machine or many (a shared --storage): the budget is the study's, so N workers started with
`--n_trials 9` run 9 trials in all, never more, and each stops once the rest of the budget is taken.
Trials a killed worker left "running" are found by Optuna's heartbeat (RDB storages: no heartbeat for
--grace_period seconds) or, on any storage, by their worker's pid being gone from this host; they are
marked failed, logged as "interrupted", and their parameters are tried once more. A trial whose owner
cannot be checked is never marked failed. optuna_workers.py holds the storages, these rules and the budget.

Every finished trial is one document of `exploration_logs/<study>.yaml` (the exploration-log shape of
results.py: name, status completed|failed|pruned|interrupted, exit_code, out_dir, started_at, finished_at,
settings, config, summary, log_tail for failures, and `optuna`: trial number, params, objective
values, intermediate val losses, whether it is on the best/Pareto set), rewritten atomically after
each trial from the study, by one worker at a time (locks.writing: the last rewrite read the study
last). The workers hold the log shared (locks.hold), so a sweep runner or greedy search given the same
log is refused while they run, and the other way round. `analysis/plot_sweep.py` reads it like any sweep log.
"""
from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml

import train_args
from errors import ArgumentParser, UserError, run_cli, unknown_name_message
from io_utils import atomic_write_bytes
from optimization_and_search import launch, locks
from optimization_and_search import optuna_workers as workers
from optimization_and_search.optuna_space import SearchSpace, choice_label, load_space, parse_train_flags
from optimization_and_search.results import SEED, log_entry, plain, seed_run_name, spread, write_log
from run_dir import numeric_summary_keys

PROG = "optuna_search.py"
MAXIMIZE = ("tokens_per_s", "mfu")  # objectives maximised unless --directions says otherwise


# ------------------------------------------------------------------------------------ objectives
def check_objectives(objectives: list[str], directions: list[str] | None) -> list[str]:
    valid = numeric_summary_keys()
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


# ------------------------------------------------------------------------------------ one trial
class Surplus(RuntimeError):
    """A trial created beyond the study's budget (optuna_workers.fits): ended at once, left out of the log."""


class Objective:
    """Trains one trial in this process (once per seed with `seeds`) and returns its objective values
    from the summary (their means over the seeds)."""

    def __init__(self, space: SearchSpace, objectives: list[str], study_dir: Path, prune: bool, log=print,
                 seeds: list[int] | None = None, n_trials: int | None = None):
        self.space, self.objectives, self.study_dir, self.prune, self.log = space, objectives, study_dir, prune, log
        self.seeds, self.n_trials = seeds, n_trials

    def trial_dir(self, number: int) -> Path:
        return self.study_dir / f"trial_{number}"

    def __call__(self, trial):
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        if self.n_trials is not None and not workers.fits(trial.study, trial, self.n_trials):
            trial.set_user_attr(workers.SURPLUS, True)  # another worker took the last slot in the same instant
            raise Surplus(f"trial {trial.number} is beyond the budget of {self.n_trials} trials: not run")
        values = {p.name: p.suggest(trial) for p in self.space.params}
        settings = self.space.trial_settings(values)
        out_dir = self.trial_dir(trial.number)
        trial.set_user_attr("settings", settings)
        trial.set_user_attr("out_dir", str(out_dir))
        self.log(f"trial {trial.number}: " + ", ".join(f"{k}={choice_label(v)}" for k, v in values.items())
                 + f" -> {out_dir}")

        def on_eval(iter_num: int, losses: dict) -> bool:
            trial.report(losses["val"], iter_num)
            return trial.should_prune()

        try:
            if not self.seeds:
                return self.train(trial, settings, out_dir, on_eval if self.prune else None, None)
            values, seed_runs = [], []
            for i, seed in enumerate(self.seeds):  # pruning watches the first seed, the same in every trial
                values.append(self.train(trial, {**settings, SEED: seed}, out_dir / f"seed_{seed}",
                                         on_eval if self.prune and i == 0 else None, seed_runs))
            means = [spread(v[k] for v in values)["mean"] for k in range(len(self.objectives))]
            return means[0] if len(means) == 1 else means
        except KeyboardInterrupt:
            study = trial.study
            workers.mark_interrupted(study, trial.number)
            if workers.retry_of(study._storage.get_trial(trial._trial_id)) is None:
                study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise

    def train(self, trial, settings: dict, out_dir: Path, on_eval, seed_runs: list | None):
        """One training run and its objective values (a float for one objective). Without seeds its
        summary, exit code and log tail are the trial's attributes; with seeds, one record per seed in
        the trial's `seed_runs`. A failed run raises RuntimeError, a pruned one TrialPruned."""
        import optuna
        run = launch.run_in_process(settings, out_dir, on_eval=on_eval)
        summary = run.summary() or {}
        record = {"seed": settings.get(SEED), "settings": settings, "out_dir": str(out_dir),
                  "started_at": run.started_at, "finished_at": run.finished_at, "exit_code": run.exit_code,
                  "status": "completed", "summary": summary}

        def keep(**attrs):
            for k, v in attrs.items():  # a failure's exit code and log tail are the trial's too (report prints it)
                if k != "status" and (seed_runs is None or k in ("exit_code", "log_tail")):
                    trial.set_user_attr(k, v)
            if seed_runs is not None:
                record.update(attrs)
                seed_runs.append(record)
                trial.set_user_attr("seed_runs", seed_runs)

        if run.exit_code != 0 or summary.get("status") != "completed":
            tail = run.log_tail()
            keep(exit_code=run.exit_code, log_tail=tail, status="failed")
            raise RuntimeError(next((line for line in reversed(tail.splitlines()) if line.strip()), "failed"))
        if summary.get("stop_reason") == "pruned":
            keep(summary=summary, status="pruned")
            raise optuna.TrialPruned(f"pruned at step {summary.get('iters')}")
        out = []
        for key in self.objectives:
            v = summary.get(key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                msg = f"error: summary.json has no finite '{key}' (got {v!r}); the trial cannot be scored"
                keep(summary=summary, exit_code=1, log_tail=msg, status="failed")
                raise RuntimeError(msg)
            out.append(float(v))
        keep(summary=summary)
        if seed_runs is not None:
            self.log(f"trial {trial.number} seed {record['seed']}: "
                     + ", ".join(f"{k} {_fmt(v)}" for k, v in zip(self.objectives, out)))
        return out if seed_runs is not None else out[0] if len(out) == 1 else out


# ------------------------------------------------------------------------------------ export
def _iso(dt: datetime | None) -> str | None:
    return dt.astimezone().isoformat(timespec="seconds") if dt is not None else None


def trial_status(trial, interrupted: set) -> str | None:
    from optuna.trial import TrialState
    if workers.surplus(trial):
        return None
    if trial.number in interrupted:
        return "interrupted"
    return {TrialState.COMPLETE: "completed", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}.get(trial.state)


def best_numbers(study) -> set[int]:
    from optuna.trial import TrialState
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return set()
    return {t.number for t in study.best_trials}


def export_documents(study, objectives: list[str]) -> list[dict]:
    """One exploration-log document per finished trial, in trial order; with seeds, one per seed's run
    (`trial_<n>_seed-<s>`, its own status; all of them interrupted when the trial was)."""
    interrupted = workers.interrupted(study)
    best = best_numbers(study)
    docs = []
    for t in study.get_trials(deepcopy=False):
        status = trial_status(t, interrupted)
        if status is None:
            continue  # running or waiting
        info = {"study": study.study_name, "trial": t.number, "params": plain(t.params),
                "objectives": list(objectives),
                "values": [float(v) for v in t.values] if t.values is not None and status == "completed" else None,
                "intermediate_values": {int(k): float(v) for k, v in sorted(t.intermediate_values.items())},
                "best": t.number in best,
                **({"retry_of": workers.retry_of(t)} if workers.retry_of(t) is not None else {})}
        seed_runs = t.user_attrs.get("seed_runs")
        if seed_runs is None:
            runs = [(f"trial_{t.number}", status, {**t.user_attrs, "started_at": _iso(t.datetime_start),
                                                   "finished_at": _iso(t.datetime_complete)})]
        else:
            runs = [(seed_run_name(f"trial_{t.number}", r["seed"]), "interrupted" if status == "interrupted"
                     else r["status"], r) for r in seed_runs]
        for i, (name, run_status, r) in enumerate(runs):
            exit_code = {"completed": 0, "pruned": 0, "interrupted": None}.get(run_status, r.get("exit_code", 1))
            doc = log_entry(name, status=run_status, exit_code=exit_code, run_dir=r.get("out_dir"),
                            started_at=r.get("started_at"), finished_at=r.get("finished_at"),
                            settings=r.get("settings", {}), summary=r.get("summary"), log_tail=r.get("log_tail", ""))
            # this log has always held {} (not null) for a file the trial never wrote
            doc.update(config=doc["config"] or {}, summary=doc["summary"] or {})
            doc["optuna"] = info if seed_runs is None else {
                **info, "seed": r["seed"], "intermediate_values": info["intermediate_values"] if i == 0 else {}}
            docs.append(doc)
    return docs


def best_rows(study, objectives: list[str]) -> list[dict]:
    rows = []
    for t in sorted(study.best_trials, key=lambda t: t.values) if best_numbers(study) else []:
        rows.append({"trial": t.number, "values": dict(zip(objectives, map(float, t.values))),
                     "params": plain(t.params),
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
    interrupted = workers.interrupted(study)
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
        table.add_row(k, f"fixed: {choice_label(v)}")
    console.print(table)


# ------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, allow_abbrev=False,
                       description="Optuna search over train.py settings; train.py flags after `--` apply to every trial.")
    p.add_argument("-c", "--space", required=True, help="search-space YAML (fixed: settings, params: ranges/choices)")
    p.add_argument("--n_trials", type=int, default=20, help="finished trials the study should hold in total (default 20)")
    p.add_argument("--objectives", nargs="+", default=["best_val_loss"], metavar="KEY",
                   help="summary.json keys to optimise (default best_val_loss; two or more: multi-objective)")
    p.add_argument("--directions", nargs="+", choices=("minimize", "maximize"), default=None,
                   help="one per objective (default minimize, maximize for tokens_per_s and mfu)")
    p.add_argument("--study_name", help="default: the search-space file's name")
    p.add_argument("--storage", help="where the study lives (default sqlite:///OUT_ROOT/STUDY/study.db): sqlite:///PATH "
                   "(one machine), journal:PATH (a journal file on a shared file system), or an RDB URL such as "
                   "postgresql+psycopg2://USER:PASSWORD@HOST/DB (many machines)")
    p.add_argument("--heartbeat_interval", type=int, default=workers.HEARTBEAT_INTERVAL_S,
                   help="RDB storages: seconds between a running trial's heartbeats (Optuna's heartbeat; default "
                        f"{workers.HEARTBEAT_INTERVAL_S}; 0: off)")
    p.add_argument("--grace_period", type=int, default=workers.GRACE_PERIOD_S,
                   help="a running trial is taken for stale (its worker killed) only after this many seconds without "
                        f"a heartbeat, or of age when its dead pid shows it (default {workers.GRACE_PERIOD_S})")
    p.add_argument("--out_root", default="out/optuna", help="trial run dirs go to OUT_ROOT/STUDY/trial_N")
    p.add_argument("--log_dir", default="exploration_logs", help="the YAML log goes to LOG_DIR/STUDY.yaml")
    p.add_argument("--sampler", choices=("auto", "tpe", "nsga2", "random"), default="auto",
                   help="auto: TPE for one objective, NSGA-II for several")
    p.add_argument("--population_size", type=int, default=None, help="NSGA-II population (default Optuna's 50)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (a resumed study offsets it by its trial count)")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per trial: each trial's configuration trains "
                   "once per seed (1337, 1338, ...) and Optuna gets the mean over them (default 1: one run)")
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
    if args.heartbeat_interval < 0 or args.grace_period < 1:
        raise UserError(f"--heartbeat_interval must be >= 0 and --grace_period >= 1, got {args.heartbeat_interval} "
                        f"and {args.grace_period}")
    if args.heartbeat_interval and args.grace_period <= args.heartbeat_interval:
        raise UserError(f"--grace_period ({args.grace_period}s) must exceed --heartbeat_interval "
                        f"({args.heartbeat_interval}s): a live trial would be taken for stale between two heartbeats")
    directions = check_objectives(args.objectives, args.directions)
    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    space = load_space(args.space, parse_train_flags(train_flags))
    if args.seeds > 1 and (SEED in space.fixed or any(p.name == SEED for p in space.params)):
        raise UserError(f"the search space sets 'seed' and --seeds {args.seeds} gives the seeds; drop 'seed' from "
                        "the space (or from the flags after --)")
    study_name = launch.check_name(args.study_name or Path(args.space).stem, "--study_name" if args.study_name
                                   else f"study name (from {args.space}; see --study_name)")
    study_dir = Path(args.out_root) / study_name
    log_path = Path(args.log_dir) / f"{study_name}.yaml"

    from rich.console import Console
    console = Console() if Console().is_terminal else Console(width=160)
    print_space(console, space, study_name)
    if args.dry_run:
        return None

    with locks.hold(log_path, PROG, "give this study another --log_dir or --study_name", shared=True):
        return run_study(args, space, study_name, directions, study_dir, log_path, console)


def run_study(args, space: SearchSpace, study_name: str, directions: list[str], study_dir: Path, log_path: Path,
              console) -> dict:
    """Create or load the study, run this worker's share of the budget, export the log and print the best trials."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines say what happened
    multi = len(args.objectives) > 1

    def log(text: str) -> None:
        console.print(text, highlight=False, markup=False)

    url = args.storage or default_storage(study_dir)
    storage = workers.open_storage(url, args.heartbeat_interval, args.grace_period, workers.StaleTrial(log))
    pruner = make_pruner(args)
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, directions=directions,
                                    pruner=pruner, load_if_exists=True)
    except ValueError as e:  # directions that differ from the stored study's, ...
        raise UserError(f"--storage {url}: {e}") from None
    stored = study.user_attrs.get("objectives")
    if stored is None:  # "objectives" last: a worker starting meanwhile that sees it sees the rest too
        study.set_user_attr("directions", directions)
        study.set_user_attr("space", yaml.safe_dump(space.to_dict(), sort_keys=True))
        study.set_user_attr("seeds", args.seeds)
        study.set_user_attr("objectives", list(args.objectives))
    elif stored != list(args.objectives) or study.user_attrs.get("directions") != directions:
        raise UserError(f"study '{study_name}' in {url} optimises {' '.join(stored)} "
                        f"({' '.join(study.user_attrs.get('directions', []))}); give the same --objectives "
                        "and --directions, or a new --study_name")
    elif study.user_attrs.get("seeds", 1) != args.seeds:  # a mean over other seeds is another objective
        raise UserError(f"study '{study_name}' in {url} averages over {study.user_attrs.get('seeds', 1)} "
                        f"seed(s); give the same --seeds, or a new --study_name")
    elif study.user_attrs.get("space") != yaml.safe_dump(space.to_dict(), sort_keys=True):
        console.print(f"[yellow]warning:[/yellow] the search space or fixed settings differ from those study "
                      f"'{study_name}' started with; earlier trials are not directly comparable")
    study.sampler = make_sampler(args.sampler, args.seed + len(study.trials), multi, args.population_size)

    def export(*_):
        with locks.writing(log_path):  # read the study and write, one worker at a time
            write_log(log_path, export_documents(study, args.objectives))

    workers.recover(study, args.grace_period, log)
    budget = workers.budget_state(study, args.n_trials)
    log(f"study '{study_name}' ({url}): {budget.counted} finished trial(s), {len(budget.running)} running, "
        f"budget {args.n_trials} (pruner: {type(study.pruner).__name__}, sampler: {type(study.sampler).__name__})")
    seed0 = train_args.setting(SEED).default
    seeds = [seed0 + i for i in range(args.seeds)] if args.seeds > 1 else None
    objective = Objective(space, args.objectives, study_dir, prune=not multi and args.pruner != "none", log=log,
                          seeds=seeds, n_trials=args.n_trials)

    def report(study, trial):
        if workers.surplus(trial):
            log(f"trial {trial.number}: beyond the budget (another worker took the last slot); not run")
            return
        status = trial_status(trial, workers.interrupted(study))
        values = (", ".join(f"{k} {_fmt(v)}" for k, v in zip(args.objectives, trial.values))
                  if trial.values is not None and status == "completed" else trial.user_attrs.get("log_tail", ""))
        if status == "pruned":
            values = f"at step {max(trial.intermediate_values, default=0)}"
        log(f"trial {trial.number} {status}: {values.strip().splitlines()[-1] if values.strip() else ''}")
        export()

    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    poll = max(1.0, min(float(args.grace_period) / 2, 10.0))
    try:
        with launch.sigterm_as_interrupt():  # `kill` marks the running trial interrupted, as Ctrl-C does
            while deadline is None or time.monotonic() < deadline:
                workers.recover(study, args.grace_period, log)
                budget = workers.budget_state(study, args.n_trials)
                if budget.done:
                    break
                if budget.full:  # the rest of the budget runs in other workers
                    if not workers.may_turn_stale(study, budget):
                        running = ", ".join(str(t.number) for t in budget.running)
                        log(f"the budget's last trial(s) run in other workers ({running}); this worker stops")
                        break
                    time.sleep(poll)  # one of them may yet be found stale and retried here
                    continue
                study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[report], gc_after_trial=False)
    finally:
        export()
    rows = best_rows(study, args.objectives)
    with locks.writing(study_dir / "best_trials.yaml"):
        atomic_write_bytes(study_dir / "best_trials.yaml",
                           yaml.safe_dump({"study": study_name, "objectives": list(args.objectives),
                                           "directions": directions, "trials": rows}, sort_keys=False).encode())
    print_results(console, study, space, args.objectives, directions)
    log(f"log: {log_path}; {'Pareto front' if multi else 'best trial'}: {study_dir / 'best_trials.yaml'}")
    return {"study_name": study_name, "storage": url, "log": str(log_path), "study_dir": str(study_dir),
            "best_trials": rows, "trials": export_documents(study, args.objectives)}


if __name__ == "__main__":
    sys.exit(run_cli(main))
