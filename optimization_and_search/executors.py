"""Where a driver's training runs execute: here (subprocesses, launch.py) or as submitit jobs (SLURM).

    python optimization_and_search/run_experiments.py -c explorations/softmax_cpu.yaml \\
        --executor submitit --cluster slurm --partition gpu --time 120 --gpus_per_run 1 --array_parallelism 16
    python optimization_and_search/hyperparam_search.py --spec hp_searches/greedy_cpu_params.yaml \\
        --executor submitit --cluster slurm --partition cpu --time 30 --cpus_per_run 8

    from optimization_and_search import executors
    ex = executors.build(executors.SubmititConfig(cluster="local", folder="out/x/submitit"), "x")
    [run] = executors.submit(ex, [({"preset": "debug"}, "out/x/a", False, {})])   # a launch.Launch-like handle
    run.poll(); run.wait(); run.entry("a")

`--executor local` (the default) is what the drivers always did: `python train.py` subprocesses on this
machine (launch.start). `--executor submitit` makes each run one job of the `submitit` package, on one of
its clusters (`--cluster`): `slurm` (sbatch; the SLURM parameters below), `local` (submitit's own
subprocesses on this machine, with its requeue machinery: what the tests run), or `debug` (in this
process, one run at a time, for stepping through a job). A job is a TrainJob: the same `python train.py
...` command line, run dir and train.log as a local run (launch.run inside the job), returning the exit
code. The runs of one driver step are submitted together; with more than one on SLURM they form one job
array (`--array_parallelism` runs at once).

Preemption and time limits: SLURM (and submitit's local cluster) signal the job before killing it;
submitit then calls TrainJob.checkpoint, which requeues the job as `--init_from resume` when the run has
a checkpoint (ckpt_last.pt), so the run continues from its last checkpoint instead of starting over
(at most `--max_requeues` times). The driver sees one run that took longer.

SLURM parameters come from flags or, for a sweep, from the sweep file's `submitit:` mapping (flags win):
cluster, partition, time (minutes per job), gpus_per_run, cpus_per_run, mem_gb, array_parallelism,
account, qos, constraint, setup (shell lines run before the job, e.g. `module load cuda`),
max_requeues. The job files (sbatch script, pickles, stdout/stderr) go to `--submitit_folder`
(default: <out_root>/submitit). The drivers' YAML log, resume after a kill and --retry_failed are the
same whichever the executor: the log records each run when its job ends.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from errors import UserError, unknown_name_message
from optimization_and_search import launch
from run_dir import CKPT_LAST, RunDir

EXECUTORS = ("local", "submitit")
CLUSTERS = ("slurm", "local", "debug")
POLL_S = 1.0


@dataclass
class SubmititConfig:
    """submitit's job parameters (see the module docstring); None: submitit's or SLURM's default."""
    cluster: str = "slurm"
    folder: str | None = None
    partition: str | None = None
    time: int = 60  # minutes per job
    gpus_per_run: int | None = None
    cpus_per_run: int | None = None
    mem_gb: float | None = None
    array_parallelism: int = 256
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: list = field(default_factory=list)
    max_requeues: int = 3

    def __post_init__(self):
        if self.cluster not in CLUSTERS:
            raise UserError(unknown_name_message("submitit cluster", str(self.cluster), CLUSTERS))
        for name in ("time", "gpus_per_run", "cpus_per_run", "array_parallelism"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "gpus_per_run" else 1)):
                raise UserError(f"submitit {name} must be a whole number of at least "
                                f"{0 if name == 'gpus_per_run' else 1}, got {v!r}")
        if isinstance(self.setup, str):
            self.setup = [self.setup]
        if not isinstance(self.setup, list) or not all(isinstance(s, str) for s in self.setup):
            raise UserError(f"submitit setup must be a list of shell lines, got {self.setup!r}")


KEYS = tuple(f.name for f in fields(SubmititConfig))


def add_arguments(parser) -> None:
    """The executor flags of a driver (an argparse group)."""
    g = parser.add_argument_group("execution (where the runs train)")
    g.add_argument("--executor", choices=EXECUTORS, default=None,
                   help="local: train.py subprocesses here (default); submitit: one submitit job per run")
    g.add_argument("--cluster", choices=CLUSTERS, default=None,
                   help="submitit's cluster: slurm (sbatch, default), local (its subprocesses here), debug (in process)")
    g.add_argument("--submitit_folder", help="job scripts and logs (default <out_root>/submitit)")
    g.add_argument("--partition", help="SLURM partition")
    g.add_argument("--time", type=int, help="minutes per job (default 60); a run past it is requeued and resumed")
    g.add_argument("--gpus_per_run", type=int, help="GPUs per job")
    g.add_argument("--cpus_per_run", type=int, help="CPUs per job")
    g.add_argument("--mem_gb", type=float, help="memory per job, GB")
    g.add_argument("--array_parallelism", type=int, help="jobs of one array running at once (default 256)")
    g.add_argument("--account", help="SLURM account")
    g.add_argument("--qos", help="SLURM quality of service")
    g.add_argument("--constraint", help="SLURM node constraint")
    g.add_argument("--setup", action="append", metavar="LINE", help="a shell line run before each job (repeatable)")
    g.add_argument("--max_requeues", type=int, help="requeues of a preempted or timed-out job (default 3)")


def config_from(args, section: dict | None = None, default_folder: str | Path | None = None) -> SubmititConfig | None:
    """The submitit parameters of a driver (flags > the file's `submitit:` section > defaults), or None for
    the local executor. A `submitit:` section selects the submitit executor unless --executor local."""
    section = dict(section or {})
    for key in section:
        if key not in KEYS or key == "folder":
            raise UserError("submitit: " + unknown_name_message("key", str(key), [k for k in KEYS if k != "folder"]))
    executor = args.executor or ("submitit" if section else "local")
    flags = {k: getattr(args, k) for k in KEYS if k not in ("folder",) and getattr(args, k, None) is not None}
    if executor == "local":
        used = [f"--{k}" for k in flags]
        if used:
            raise UserError(f"{', '.join(used)} only apply to --executor submitit")
        return None
    values = {**section, **flags}
    folder = args.submitit_folder or (Path(default_folder) / "submitit" if default_folder else "submitit")
    return SubmititConfig(folder=str(folder), **values)


def build(cfg: SubmititConfig, name: str):
    """A submitit executor with the config's parameters."""
    try:
        import submitit
    except ImportError:
        raise UserError("--executor submitit needs the submitit package: pip install 'ppa-gpt[search]'") from None
    try:
        ex = submitit.AutoExecutor(folder=cfg.folder, cluster=cfg.cluster, slurm_max_num_timeout=cfg.max_requeues)
    except RuntimeError as e:  # no srun: not a SLURM machine
        raise UserError(f"--cluster {cfg.cluster}: {e} (try the runs here first with --cluster local or debug)") from None
    params = {"name": name, "timeout_min": cfg.time, "tasks_per_node": 1, "nodes": 1}
    if cfg.gpus_per_run is not None:
        params["gpus_per_node"] = cfg.gpus_per_run
    if cfg.cpus_per_run is not None:
        params["cpus_per_task"] = cfg.cpus_per_run
    if cfg.mem_gb is not None:
        params["mem_gb"] = cfg.mem_gb
    if cfg.cluster == "slurm":
        root = str(launch.ROOT)  # the job unpickles TrainJob: this checkout must be importable there
        params.update(slurm_array_parallelism=cfg.array_parallelism,
                      slurm_setup=[*cfg.setup, f'export PYTHONPATH="{root}${{PYTHONPATH:+:$PYTHONPATH}}"'],
                      **{f"slurm_{k}": getattr(cfg, k) for k in ("partition", "account", "qos", "constraint")
                         if getattr(cfg, k) is not None})
    elif cfg.cluster == "local" and cfg.setup:
        params["local_setup"] = list(cfg.setup)
    ex.update_parameters(**params)
    return ex


# ------------------------------------------------------------------------------------ the job
class TrainJob:
    """One training run as a submitit job: launch.run in the job (train.py in a subprocess, output to the
    run's train.log); returns train.py's exit code. checkpoint() is submitit's requeue hook."""

    def __init__(self, settings: dict, run_dir: str, resume: bool = False, env: dict | None = None):
        self.settings, self.run_dir, self.resume, self.env = dict(settings), str(run_dir), resume, dict(env or {})

    def __call__(self) -> int:
        return launch.run(self.settings, self.run_dir, resume=self.resume, python=sys.executable, env=self.env).exit_code

    def checkpoint(self, *args, **kwargs):
        """Preempted or out of time: run again, from the last checkpoint when there is one."""
        from submitit.helpers import DelayedSubmission
        resume = RunDir(self.run_dir).file(CKPT_LAST).exists()
        return DelayedSubmission(TrainJob(self.settings, self.run_dir, resume, self.env))


class JobLaunch(launch.Launch):
    """launch.Launch for a run that is a submitit job: poll, wait, terminate (scancel) and stop."""
    job = None

    @property
    def job_id(self) -> str | None:
        return None if self.job is None else str(self.job.job_id)

    def poll(self) -> int | None:
        if self.exit_code is not None or self.finished_at is not None:
            return self.exit_code
        if not self.job.done():
            return None
        try:
            rc = int(self.job.result())
        except Exception as e:  # noqa: BLE001 - the job died (cancelled, out of memory, node lost): a failed run
            rc = 1
            with open(self.log_path, "a") as f:
                f.write(f"\nsubmitit job {self.job_id} failed: {str(e).strip().splitlines()[-1] if str(e).strip() else e}\n")
        return self._ended(rc)

    def wait(self, timeout: float | None = None) -> int:
        end = None if timeout is None else time.time() + timeout
        while self.poll() is None:
            if end is not None and time.time() > end:
                import subprocess
                raise subprocess.TimeoutExpired(f"job {self.job_id}", timeout)
            time.sleep(POLL_S)
        return self.exit_code

    def terminate(self) -> None:
        if self.finished_at is None:
            try:
                self.job.cancel(check=False)
            except Exception:  # noqa: BLE001 - already gone
                pass

    def stop(self, grace: float = launch.STOP_GRACE_S) -> int | None:
        """Cancel the job and give it `grace` seconds to end; its exit code (None: it did not say)."""
        self.terminate()
        end = time.time() + grace
        while time.time() < end:
            if self.job.state.upper() not in ("RUNNING", "PENDING", "REQUEUED", "QUEUED", "CONFIGURING", "COMPLETING"):
                break
            time.sleep(0.2)
        self._ended(-15)
        return self.exit_code


LIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
        "REQUEUE_FED")  # SLURM states of a job that will still write its run directory


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def attach(cfg: SubmititConfig, job_id: str, settings: dict, run_dir: str | Path) -> JobLaunch | None:
    """The handle of a job that a driver killed meanwhile submitted, while the job still runs (SLURM: its
    sacct state; submitit's local cluster: its controller's pid), so that a resumed driver waits for it
    instead of starting the run a second time beside it; None once it has ended."""
    import submitit
    if cfg.cluster == "slurm":
        job = submitit.SlurmJob(folder=cfg.folder, job_id=str(job_id))
        if job.state.upper().split(" ")[0] not in LIVE:
            return None
    elif cfg.cluster == "local" and str(job_id).isdigit() and pid_alive(int(job_id)):
        job = _OrphanLocalJob(cfg.folder, str(job_id))
    else:
        return None
    run = RunDir(run_dir)
    handle = JobLaunch(dict(settings), run, launch.train_argv(settings, run.path, True))
    handle.job = job
    return handle


def _orphan_local_job_class():
    from submitit.local.local import LocalJob

    class OrphanLocalJob(LocalJob):
        """A local-cluster job whose driver died: followed by its controller's pid."""

        def done(self, force_check: bool = False) -> bool:
            return not pid_alive(int(self.job_id))

        @property
        def state(self) -> str:
            return "RUNNING" if pid_alive(int(self.job_id)) else "FINISHED"

        def cancel(self, check: bool = True) -> None:
            import signal
            if pid_alive(int(self.job_id)):
                os.kill(int(self.job_id), signal.SIGINT)
    return OrphanLocalJob


def _OrphanLocalJob(folder, job_id):  # noqa: N802 - a class made on first use (submitit is optional)
    return _orphan_local_job_class()(folder, job_id)


def submit(executor, runs: list[tuple[dict, str | Path, bool, dict]]) -> list[JobLaunch]:
    """Submit (settings, run_dir, resume, env) runs as jobs (one array when there are several) and return
    their handles at once. The run directory is prepared here (launch's fresh-start clean-up); the job
    writes the log's command line."""
    jobs, handles = [], []
    for settings, run_dir, resume, env in runs:
        run = RunDir(run_dir)
        run.path.mkdir(parents=True, exist_ok=True)
        handles.append(JobLaunch(dict(settings), run, launch.train_argv(settings, run.path, resume)))
    with _importable():
        if len(runs) > 1:
            with executor.batch():
                for settings, run_dir, resume, env in runs:
                    jobs.append(executor.submit(TrainJob(settings, str(run_dir), resume, env)))
        else:
            jobs = [executor.submit(TrainJob(settings, str(run_dir), resume, env)) for settings, run_dir, resume, env in runs]
    for handle, job in zip(handles, jobs):
        handle.job = job
    return handles


class _importable:
    """PYTHONPATH holds this checkout while jobs are submitted: submitit's local jobs inherit the
    environment and unpickle TrainJob from it (SLURM jobs get an export line in their script)."""

    def __enter__(self):
        self.old = os.environ.get("PYTHONPATH")
        parts = [p for p in (self.old or "").split(os.pathsep) if p]
        if str(launch.ROOT) not in parts:
            os.environ["PYTHONPATH"] = os.pathsep.join([str(launch.ROOT), *parts])

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = self.old


# ------------------------------------------------------------------------------------ many evaluations
def evaluate_all(evaluate, calls: list[tuple[dict, int]], jobs: int, on_result) -> None:
    """evaluate(settings, seed) for every call, `jobs` at a time, and on_result(index, result, error) in
    this thread as each ends, in whatever order they end (the caller keeps its records in its own order).

    An evaluator with `start_many(calls) -> handles` and `finish(handle) -> result` (the greedy search's
    TrainEvaluator) has its runs started from this thread (launch's parent-death signal is tied to the
    thread that starts a process) and polled; with `all_at_once` (submitit: the cluster schedules them)
    every run is started at once, as one array. Any other callable runs in a pool of `jobs` threads.
    Ctrl-C (or SIGTERM through launch.sigterm_as_interrupt) stops the started runs, then propagates."""
    if not calls:
        return
    if jobs <= 1 and not getattr(evaluate, "all_at_once", False):
        for i, (settings, seed) in enumerate(calls):
            try:
                result, error = evaluate(settings, seed), None
            except Exception as e:  # noqa: BLE001 - the caller records a failed run
                result, error = None, e
            on_result(i, result, error)
        return
    if not hasattr(evaluate, "start_many"):
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(evaluate, settings, seed): i for i, (settings, seed) in enumerate(calls)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    error = f.exception()
                    on_result(futures[f], None if error else f.result(), error)
        return
    todo = list(range(len(calls)))
    running: dict[int, object] = {}
    try:
        while todo or running:
            slots = len(todo) if evaluate.all_at_once else jobs - len(running)
            if slots > 0 and todo:
                batch, todo = todo[:slots], todo[slots:]
                running.update(zip(batch, evaluate.start_many([calls[i] for i in batch])))
            for i, handle in list(running.items()):
                if handle.poll() is None:
                    continue
                del running[i]
                try:
                    result, error = evaluate.finish(handle), None
                except Exception as e:  # noqa: BLE001
                    result, error = None, e
                on_result(i, result, error)
            time.sleep(0.2)
    except BaseException:
        for handle in running.values():  # all asked first: they stop in parallel
            handle.terminate()
        for handle in running.values():
            handle.stop()
        raise
