"""Run a sweep: every run of an explorations/ file as its own `python train.py`, N at a time, resumable.

    python optimization_and_search/run_experiments.py -c explorations/softmax_cpu.yaml --dry_run
    python optimization_and_search/run_experiments.py -c explorations/softmax_cpu.yaml --jobs 2 --csv softmax.csv
    python optimization_and_search/run_experiments.py -c explorations/gqa_gpu.yaml --jobs 4 --set max_iters=200
    python optimization_and_search/run_experiments.py -c explorations/softmax_cpu.yaml --seeds 3 --csv_configs s.csv

Each run trains in <out_root>/<run name> (default out/<sweep name>/<run name>) with its output in train.log
there, started by launch.py with its own environment (a GPU, a share of the CPU threads). One YAML document
per attempt at a run (results.py) is appended atomically to exploration_logs/<sweep name>.yaml (name, status,
exit_code, out_dir, times, settings, config.json, summary.json; failed runs also the last 40 lines of their
log); a run's result is its last attempt (results.latest_by_name). With seeds (the file's `seeds:`, or
--seeds N / --seeds A B C, which wins) each configuration runs once per seed, each seed's run a run of its
own (`<configuration>_seed-<seed>`); the results table and --csv_configs give each configuration's mean,
sample standard deviation, min and max over its seeds (results.aggregate_by_config). Re-running the same command skips
completed runs, resumes or restarts interrupted ones and leaves failed ones alone unless --retry_failed;
killing the runner (even with SIGKILL) loses no finished result and leaves no training process behind.
One runner per log and per --out_root (locks.py: a second one stops at once, naming the first one's pid).
Plot the log with analysis/plot_sweep.py.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING


import yaml

from errors import ArgumentParser, UserError, run_cli
from io_utils import atomic_write_json
from optimization_and_search import executors, launch, locks
from optimization_and_search.results import (aggregate_by_config, append_log, latest_by_name, load_log, log_entry, now,
                                             write_config_csv, write_csv)
from run_dir import CKPT_LAST, CONFIG, METRICS, SUMMARY, RunDir

if TYPE_CHECKING:
    from optimization_and_search.sweep_config import Sweep

PROG = "optimization_and_search/run_experiments.py"
RUN_MARKER = "sweep_run.json"  # written into each run dir as it starts: the settings it was started with


# ------------------------------------------------------------------------------------------ helpers
def last_iter(metrics: Path) -> int | None:
    """The step of the last complete record of metrics.jsonl (read from its end)."""
    try:
        with open(metrics, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["iter"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def fmt_loss(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def visible_gpus() -> list[str]:
    """GPU ids to spread runs over: CUDA_VISIBLE_DEVICES' entries, else 0..count-1; none without CUDA."""
    try:
        import torch
        if not torch.cuda.is_available():
            return []
        count = torch.cuda.device_count()
    except Exception:
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:
        ids = [x.strip() for x in env.split(",") if x.strip()]
        return ids[:count] if count else ids
    return [str(i) for i in range(count)]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------------------ runs
@dataclass
class Task:
    name: str
    settings: dict
    out_dir: Path
    state: str = "pending"  # pending, running, completed, failed, interrupted, done (earlier), skipped (failed earlier)
    resume: bool = False
    run: launch.Launch | None = None
    gpu: str | None = None
    started: float | None = None
    started_at: str | None = None
    duration: float | None = None
    best_val_loss: float | None = None
    iter: int | None = None
    max_iters: int | None = None
    first_seen: tuple | None = None  # (time, step) when progress was first read: the pace is measured from it
    exit_code: int | None = None
    note: str = ""


def plan(sweep: Sweep, out_root: Path, logged: dict[str, dict], retry_failed: bool) -> list[Task]:
    """A task per run, with what to do about it given the log and the run directories."""
    tasks = []
    for run in sweep.runs:
        t = Task(run.name, run.settings, out_root / run.name)
        doc = logged.get(run.name)
        same = doc is not None and doc.get("settings") == run.settings
        if same and doc.get("status") == "completed":
            t.state, t.best_val_loss = "done", (doc.get("summary") or {}).get("best_val_loss")
        elif same and doc.get("status") == "failed" and not retry_failed:
            t.state, t.exit_code = "skipped", doc.get("exit_code")
            t.note = "failed earlier (--retry_failed runs it again)"
        else:
            run_dir = RunDir(t.out_dir)
            marker = run_dir.read_json_or_none(RUN_MARKER) or {}
            summary = run_dir.read_json_or_none(SUMMARY) or {}
            if marker.get("settings") == run.settings:
                if summary.get("status") == "completed" and not (same and doc.get("status") == "failed"):
                    t.state, t.note = "finished", "finished, but its result was not in the log"
                    t.started_at = marker.get("started_at")
                elif run_dir.file(CKPT_LAST).exists() and not (same and doc.get("status") == "failed"):
                    t.resume, t.note = True, "interrupted: resumes from its last checkpoint"
            if doc is not None and not same and t.note == "":
                t.note = "settings changed since it was logged: runs again"
        tasks.append(t)
    return tasks


class Runner:
    def __init__(self, sweep: Sweep, tasks: list[Task], log_path: Path, jobs: int, python: str, console,
                 threads: int | None = None, submitit=None):
        self.sweep, self.tasks, self.log_path, self.jobs, self.python = sweep, tasks, log_path, jobs, python
        self.submitit = submitit  # (executors.SubmititConfig, its submitit executor), or None: subprocesses here
        # every job's --threads (unless its settings give one): the cores shared out, for any job count
        self.threads = threads or max(1, cpu_count() // jobs)
        self.console = console
        self.live = None
        self.gpus = visible_gpus()
        self.gpu_load = {g: 0 for g in self.gpus}
        self.todo = [t for t in tasks if t.state == "pending"]
        self.finished: list[Task] = []
        self._last_poll = 0.0

    # ---- process handling
    def env_for(self, task: Task) -> dict:
        """The job's own environment variables (launch adds the runner's): a GPU, a share of the CPU threads."""
        env = {}
        if self.gpus:
            task.gpu = min(self.gpus, key=lambda g: self.gpu_load[g])
            self.gpu_load[task.gpu] += 1
            env["CUDA_VISIBLE_DEVICES"] = task.gpu
        if "OMP_NUM_THREADS" not in os.environ:  # N processes share the cores, no oversubscription
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        return env

    def start(self, task: Task):
        settings = task.settings if task.settings.get("threads") else {**task.settings, "threads": self.threads}
        task.run = launch.start(settings, task.out_dir, resume=task.resume, python=self.python, env=self.env_for(task))
        task.run.settings = dict(task.settings)  # the log records the sweep's settings; --threads is the runner's
        task.started, task.started_at, task.state = task.run.started, task.run.started_at, "running"
        # after the start, which cleared a fresh run's stale summary: a marker never vouches for an old result
        atomic_write_json(task.out_dir / RUN_MARKER, {"settings": task.settings, "started_at": task.started_at})
        self.say(f"started {task.name}" + (" (resuming)" if task.resume else "")
                 + (f" on GPU {task.gpu}" if task.gpu is not None else ""))

    def submit(self, tasks: list[Task]):
        """Submit the tasks as submitit jobs (one array), each with the threads of its job's CPUs."""
        cfg, executor = self.submitit
        runs, fresh = [], []
        for t in tasks:  # a job a killed runner submitted and that still runs: wait for it, never start a twin
            marker = RunDir(t.out_dir).read_json_or_none(RUN_MARKER) or {}
            job = marker.get("job_id") and marker.get("settings") == t.settings and \
                executors.attach(cfg, marker["job_id"], t.settings, t.out_dir)
            if job:
                t.run, t.started, t.started_at, t.state = job, job.started, marker.get("started_at"), "running"
                self.say(f"{t.name}: its job {job.job_id} still runs; waiting for it")
            else:
                fresh.append(t)
        tasks = fresh
        for t in tasks:
            threads = t.settings.get("threads") or cfg.cpus_per_run
            runs.append(({**t.settings, **({"threads": threads} if threads else {})}, t.out_dir, t.resume, {}))
        for task, run in zip(tasks, executors.submit(executor, runs)):
            task.run = run
            task.run.settings = dict(task.settings)
            task.started, task.started_at, task.state = run.started, run.started_at, "running"
            atomic_write_json(task.out_dir / RUN_MARKER, {"settings": task.settings, "started_at": task.started_at,
                                                          "job_id": run.job_id})
            self.say(f"submitted {task.name} as job {run.job_id} ({cfg.cluster})" + (" (resuming)" if task.resume else ""))

    def release(self, task: Task):
        if task.gpu is not None:
            self.gpu_load[task.gpu] -= 1

    def finish(self, task: Task, interrupted: bool = False):
        """Record a run that ended: completed, failed or interrupted (one atomic append to the log)."""
        self.release(task)
        task.duration = task.run.duration
        self.record(task, task.run.entry(task.name, task.run.status(interrupted)))

    def record_finished(self, task: Task):
        """A run whose summary says completed but whose result never reached the log (the runner was killed)."""
        summary = RunDir(task.out_dir).read_json_or_none(SUMMARY)
        self.record(task, log_entry(task.name, status=launch.run_status(None, summary), exit_code=None,
                                    run_dir=task.out_dir, started_at=task.started_at, finished_at=now(),
                                    settings=task.settings))

    def record(self, task: Task, doc: dict):
        status = doc["status"]
        task.state, task.exit_code = status, doc["exit_code"]
        task.best_val_loss = (doc["summary"] or {}).get("best_val_loss")
        append_log(self.log_path, doc)
        self.finished.append(task)
        if status == "completed":
            self.say(f"completed {task.name}: best val loss {fmt_loss(task.best_val_loss)} in {fmt_time(task.duration)}"
                     f" [{self.progress_text()}]")
        elif status == "failed":
            last = next((line for line in reversed(doc["log_tail"].splitlines()) if line.strip()), "")
            self.say(f"failed {task.name} (exit code {task.exit_code}): {last} [log: {task.out_dir / launch.LOG}]")
        else:
            self.say(f"interrupted {task.name}")

    def run(self):
        for t in self.tasks:
            if t.state == "finished":
                self.record_finished(t)
        queue = deque(self.todo)
        running: list[Task] = []
        try:
            self.start_display()
            if self.submitit is not None and queue:  # all at once: the cluster schedules them
                running = list(queue)
                queue.clear()
                self.submit(running)
            while queue or running:
                while queue and len(running) < self.jobs:
                    task = queue.popleft()
                    self.start(task)
                    running.append(task)
                for task in list(running):
                    if task.run.poll() is not None:
                        running.remove(task)
                        self.finish(task)
                self.refresh()
                time.sleep(0.2)
        except KeyboardInterrupt:
            for task in running:  # all of them asked first: they stop in parallel
                task.run.terminate()
            for task in running:
                task.run.stop()
                self.finish(task, interrupted=True)
            raise
        finally:
            self.stop_display()

    # ---- display
    def progress_text(self) -> str:
        done = sum(t.state in ("completed", "done", "finished") for t in self.tasks)
        failed = sum(t.state in ("failed", "skipped") for t in self.tasks)
        eta = self.eta()
        return (f"{done}/{len(self.tasks)} done" + (f", {failed} failed" if failed else "")
                + (f", ETA {fmt_time(eta)}" if eta is not None else ""))

    def run_eta(self, task: Task) -> float | None:
        """From the pace since the first step was seen (start-up and model building excluded)."""
        if task.state != "running" or task.first_seen is None or not task.max_iters:
            return None
        t_first, it_first = task.first_seen
        if task.iter is None or task.iter <= it_first:
            return None
        return max(0.0, (time.time() - t_first) / (task.iter - it_first) * (task.max_iters - task.iter))

    def eta(self) -> float | None:
        pending = [t for t in self.tasks if t.state == "pending"]
        running = [t for t in self.tasks if t.state == "running"]
        durations = [t.duration for t in self.finished if t.duration and t.state == "completed"]
        if not pending and not running:
            return None
        mean = sum(durations) / len(durations) if durations else None
        work = 0.0
        for t in running:
            e = self.run_eta(t)
            if e is None:
                if mean is None:
                    return None
                e = max(0.0, mean - (time.time() - t.started))
            work += e
        if pending:
            if mean is None:
                return None
            work += len(pending) * mean
        return work / max(1, min(self.jobs, len(pending) + len(running)))

    def poll_progress(self):
        if time.time() - self._last_poll < 1.0:
            return
        self._last_poll = time.time()
        for t in self.tasks:
            if t.state != "running":
                continue
            run_dir = RunDir(t.out_dir)
            summary = run_dir.read_json_or_none(SUMMARY)
            if summary:
                t.best_val_loss = summary.get("best_val_loss")
            if t.max_iters is None:
                config = run_dir.read_json_or_none(CONFIG)
                if config:
                    t.max_iters = (config.get("train") or {}).get("max_iters")
            t.iter = last_iter(run_dir.file(METRICS))
            if t.iter is not None and t.first_seen is None:
                t.first_seen = (time.time(), t.iter)

    def table(self):
        from rich.table import Table
        rows = self.tasks
        if len(rows) > 25:  # the running ones, the latest finished, the next pending
            running = [t for t in rows if t.state == "running"]
            pending = [t for t in rows if t.state == "pending"][:5]
            rows = running + self.finished[-(18 - min(18, len(running))):][::-1] + pending
        table = Table(title=f"sweep {self.sweep.name}: {len(self.tasks)} runs, {self.jobs} at a time",
                      caption=self.progress_text())
        for col, justify in (("run", "left"), ("status", "left"), ("step", "right"), ("best val", "right"),
                             ("time", "right"), ("ETA", "right")):
            table.add_column(col, justify=justify)
        colours = {"running": "cyan", "completed": "green", "done": "green", "finished": "green", "failed": "red",
                   "skipped": "red", "interrupted": "yellow"}
        for t in rows:
            elapsed = t.duration if t.state != "running" else time.time() - t.started
            step = f"{t.iter or 0}/{t.max_iters}" if t.state == "running" and t.max_iters else "-"
            status = {"done": "done earlier", "skipped": "failed earlier", "finished": "completed"}.get(t.state, t.state)
            table.add_row(t.name, f"[{colours.get(t.state, 'white')}]{status}", step, fmt_loss(t.best_val_loss),
                          fmt_time(elapsed), fmt_time(self.run_eta(t)))
        return table

    def start_display(self):
        if self.console.is_terminal:
            from rich.live import Live
            self.live = Live(self.table(), console=self.console, refresh_per_second=2, transient=False)
            self.live.start()

    def refresh(self):
        self.poll_progress()
        if self.live is not None:
            self.live.update(self.table())

    def stop_display(self):
        if self.live is not None:
            self.live.update(self.table())
            self.live.stop()
            self.live = None

    def say(self, text: str):
        line = f"[{datetime.now().strftime('%H:%M:%S')}] {text}"
        if self.live is not None:  # on a terminal: above the live table
            self.live.console.print(line, highlight=False, markup=False, soft_wrap=True)
        else:  # plain lines for logs and pipes
            print(line, flush=True)


# ------------------------------------------------------------------------------------------ tables
def run_count(sweep: Sweep) -> str:
    """`12 runs`, or `4 configurations x 3 seeds = 12 runs`."""
    if not sweep.seeds:
        return f"{len(sweep.runs)} runs"
    return f"{sweep.configs} configurations x {len(sweep.seeds)} seeds = {len(sweep.runs)} runs"


def dry_run_table(sweep: Sweep, tasks: list[Task], log_path: Path):
    from rich.table import Table
    fixed = ", ".join(f"{k}={v}" for k, v in sweep.fixed.items())
    caption = "; ".join(([f"every run: {fixed}"] if fixed else [])
                        + ([f"seeds: {', '.join(map(str, sweep.seeds))}"] if sweep.seeds else []))
    table = Table(title=f"sweep {sweep.name}: {run_count(sweep)} (log: {log_path})", caption=caption or None)
    table.add_column("#", justify="right")
    table.add_column("run")
    for k in sweep.varied:
        table.add_column(k)
    if sweep.seeds:
        table.add_column("seed", justify="right")
    table.add_column("status")
    status = {"pending": "to run", "done": "done", "skipped": "failed (skipped)", "finished": "finished (to log)"}
    for i, (t, run) in enumerate(zip(tasks, sweep.runs), 1):
        values = [str(t.settings[k]) if k in t.settings else "" for k in sweep.varied]
        state = status.get(t.state, t.state) + (" (resume)" if t.resume else "")
        table.add_row(str(i), t.name, *values, *([str(run.seed)] if sweep.seeds else []), state)
    return table


def results_table(sweep: Sweep, docs: dict[str, dict]):
    """One row per configuration of the sweep as it now stands: its completed runs out of all, the mean
    best val loss with its sample standard deviation, min and max over the seeds (results.aggregate_by_config)."""
    from rich.table import Table
    current = [docs[r.name] for r in sweep.runs if r.name in docs]
    keys = ("best_val_loss", "num_params", "tokens_per_s", "wall_time_s")
    stats = {k: aggregate_by_config(current, k) for k in keys}  # the same configurations, in order
    seeds = f" (mean ± sd over {len(sweep.seeds)} seeds)" if sweep.seeds else ""
    table = Table(title=f"sweep {sweep.name}: results{seeds}")
    columns = ["configuration" if sweep.seeds else "run", "runs", "best val",
               *(["± sd", "min", "max"] if seeds else []), "params", "tok/s", "wall"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("run", "configuration") else "right")
    order = sorted(range(len(stats["best_val_loss"])),
                   key=lambda i: (stats["best_val_loss"][i]["mean"] is None, stats["best_val_loss"][i]["mean"] or 0.0))
    for i in order:
        loss, params, tps, wall = (stats[k][i] for k in keys)
        total = loss["n"] + loss["failed"] + loss["missing"]
        runs = f"{loss['n']}/{total}" + (f" ({loss['failed']} failed)" if loss["failed"] else "")
        spread = [fmt_loss(loss["std"]), fmt_loss(loss["min"]), fmt_loss(loss["max"])] if seeds else []
        table.add_row(loss["name"], runs, fmt_loss(loss["mean"]), *spread,
                      f"{params['mean'] / 1e6:.2f}M" if params["mean"] else "-",
                      f"{tps['mean']:,.0f}" if tps["mean"] else "-", fmt_time(wall["mean"]))
    return table


def parse_set(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set takes KEY=VALUE (e.g. --set max_iters=200), got '{item}'")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = text
    return out


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict:
    p = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", required=True, help="sweep file (YAML or JSON), e.g. explorations/softmax_cpu.yaml")
    p.add_argument("--name", help="sweep name: the log's and the out folder's name (default: the file's stem)")
    p.add_argument("--out_root", help="folder of the run directories (default: out/<sweep name>)")
    p.add_argument("--log_dir", default="exploration_logs", help="folder of the result log <sweep name>.yaml")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (spread over the visible GPUs, else CPU processes)")
    p.add_argument("--threads", type=int, help="CPU threads per run (train.py --threads; default: the cores divided "
                   "by --jobs); a run's own threads setting wins")
    p.add_argument("--dry_run", action="store_true", help="print the run list and exit")
    p.add_argument("--retry_failed", action="store_true", help="run again the runs that failed earlier")
    p.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="train every configuration once per seed: one number is a count (3: seeds 1337, 1338, "
                        "1339, from train.py's default seed), several are the seeds; replaces the file's seeds:")
    p.add_argument("--csv", help="write the log's latest result per run as a flat table (settings + summary)")
    p.add_argument("--csv_configs", help="write one row per configuration: runs, failed, seeds, the settings, then "
                   "the mean, sd, min and max over the seeds of every numeric summary key")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="a setting for every run, on top of the file (not in run names); repeatable")
    p.add_argument("--python", default=sys.executable, help="interpreter that runs train.py")
    executors.add_arguments(p)
    args = p.parse_args(argv)
    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    if shutil.which(args.python) is None:
        raise UserError(f"--python {args.python}: no such interpreter")
    name = launch.check_name(args.name or Path(args.config).stem,
                             "--name" if args.name else f"sweep name (from {args.config}; see --name)")
    from optimization_and_search.sweep_config import load_sweep  # imports torch: only when running a sweep
    seeds = None if args.seeds is None else args.seeds[0] if len(args.seeds) == 1 else args.seeds
    sweep = load_sweep(args.config, name, parse_set(args.set), seeds)
    for w in sweep.warnings:
        print(f"warning: {w}", file=sys.stderr)
    out_root = Path(args.out_root) if args.out_root else Path("out") / name
    log_path = Path(args.log_dir) / f"{name}.yaml"

    from rich.console import Console
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    with contextlib.ExitStack() as held:
        if not args.dry_run:  # before the log is read: the plan stays true while this runner runs
            held.enter_context(locks.hold(log_path, PROG, "give this sweep another --name or --log_dir"))
            held.enter_context(locks.hold(out_root, PROG, "give this sweep another --out_root"))
        return run_sweep(args, sweep, out_root, log_path, console)


def run_sweep(args, sweep: Sweep, out_root: Path, log_path: Path, console) -> dict:
    """Plan the sweep against its log and run folders, run what is left, print and export the results."""
    name = sweep.name
    logged = latest_by_name(load_log(log_path))
    tasks = plan(sweep, out_root, logged, args.retry_failed)
    if args.dry_run:
        console.print(dry_run_table(sweep, tasks, log_path))
        return {"sweep": sweep, "tasks": tasks, "log": log_path, "ran": []}

    with launch.sigterm_as_interrupt():
        for t in tasks:
            if t.note:
                print(f"{t.name}: {t.note}", flush=True)
        cfg = executors.config_from(args, sweep.submitit, out_root)
        submitit = None if cfg is None else (cfg, executors.build(cfg, name))
        runner = Runner(sweep, tasks, log_path, args.jobs, args.python, console, args.threads, submitit)
        todo = [t.name for t in runner.todo]
        if not todo and not any(t.state == "finished" for t in tasks):
            print(f"nothing to run: all {len(tasks)} runs of {name} are in {log_path}"
                  + ("" if args.retry_failed else " (failed ones run again with --retry_failed)"), flush=True)
        runner.run()
    docs = latest_by_name(load_log(log_path))
    console.print(results_table(sweep, docs))
    if args.csv:
        write_csv(args.csv, list(docs.values()))
        print(f"wrote {args.csv}", flush=True)
    if args.csv_configs:
        write_config_csv(args.csv_configs, list(docs.values()))
        print(f"wrote {args.csv_configs}", flush=True)
    failed = [t.name for t in tasks if t.state in ("failed", "skipped")]
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}; see log_tail in {log_path}", file=sys.stderr)
    print(f"log: {log_path}", flush=True)
    return {"sweep": sweep, "tasks": tasks, "log": log_path, "ran": todo, "results": docs}


if __name__ == "__main__":
    sys.exit(run_cli(main))
