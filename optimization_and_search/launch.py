"""Launching a training run from a driver (the sweep runner, the greedy search, the Optuna search).

    from optimization_and_search import launch
    run = launch.start({"preset": "debug", "max_iters": 6}, "out/x")        # python train.py ..., returns at once
    run.poll(); run.wait(); run.entry("x")                                   # -> the exploration-log document
    run = launch.run(settings, "out/y")                                      # start + wait (terminates on Ctrl-C)
    run = launch.run_in_process(settings, "out/z", on_eval=hook)             # train.main(argv, on_eval=hook)

A run is described by flat train.py settings (and `preset`/`config`, train_args.LAUNCH_ARGS) and a run
directory the driver owns. Its command line is `train_argv`: the settings as flags
(train_args.settings_to_argv), then `--out_dir DIR` and `--overwrite` for a fresh start (the directory
belongs to the driver; stale summary.json and config.json are removed first, so a run that dies early
cannot be mistaken for the previous one) or `--init_from resume` to continue from its ckpt_last.pt.
Its output, whichever the mode, goes to DIR/train.log.

Subprocess mode (`start`, `run`): `python train.py FLAGS`, stdin closed, the driver's environment plus
the job's own `env` (GPU, thread counts). In-process mode (`run_in_process`): `train.main(argv,
on_eval=...)` in this process with stdout and stderr sent to the log; a UserError gives exit code 2
and any other exception 1 (its traceback in the log), as `python train.py` would; gc and the CUDA
cache are cleaned up afterwards so the next run starts with free memory.

The driver dying: on Linux each child asks the kernel for SIGKILL when its parent dies
(PR_SET_PDEATHSIG), so even a driver killed with SIGKILL leaves no orphan training process. SIGKILL
rather than SIGTERM: the child must stop before the resumed driver reuses its directory, and SIGTERM
may be caught, ignored or delayed by whatever runs inside train.py; nothing is lost that a resume
needs, because checkpoints and summaries are written atomically (a resumed sweep continues from the
last ckpt_last.pt, a resumed search starts the run over). An orderly stop (Ctrl-C, or SIGTERM turned
into KeyboardInterrupt by `sigterm_as_interrupt`) terminates the children first: SIGTERM, then SIGKILL
after a grace period.

The settings a driver owns (DRIVER_OWNED, and `seed` where the driver sets it) are declared here with
the reason. `check_key` refuses them (and any name that is not a train.py argument) in sweep files and
search spaces; the Optuna search refuses them among its train.py flags; the greedy search drops them
from its baseline (a train.py config file, which may well name an out_dir). `check_name` keeps a
sweep's, search's or study's name one plain folder name, so its folder stays under out/.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from errors import UserError, closest
from optimization_and_search.results import log_entry, now
from run_dir import CONFIG, SUMMARY, RunDir

ROOT = Path(__file__).resolve().parent.parent
TRAIN_PY = ROOT / "train.py"
LOG = "train.log"        # the run's output, written by the launcher (run_dir.py names train.py's own files)
LOG_TAIL_LINES = 40      # what a failed run's log entry keeps
STOP_GRACE_S = 15.0      # SIGTERM -> SIGKILL

# Settings a driver sets for every run itself; a sweep file, search space or search flag may not.
DRIVER_OWNED = {
    "out_dir": "each run gets its own directory under the driver's --out_root",
    "init_from": "every run starts from scratch (the sweep runner resumes an interrupted run itself)",
    "overwrite": "the driver starts every new run over in its own out_dir",
    "list_variants": "it is not a training setting",
}
# ... and the seed, in a driver that sets it per run (the greedy search trains every candidate per seed)
SEED_OWNED = {"seed": "the search trains every candidate once per seed (--seeds, --seed0)"}


def driver_owned(seed: bool = False) -> dict[str, str]:
    """name -> why the driver sets it; with `seed` for a driver that sets the seed per run."""
    return {**DRIVER_OWNED, **(SEED_OWNED if seed else {})}


def check_key(key, where: str = "", driver: str = "sweep", near=()) -> None:
    """A key a user may set for a run: a train.py argument (a setting or a LAUNCH_ARGS name) that the
    driver does not own. `near`: further names the closest-match hint may suggest (a file's own keys)."""
    import train_args  # here: importing this module does not import torch
    at = f"{where}: " if where else ""
    if not isinstance(key, str):
        raise UserError(f"{at}setting names must be strings, got {key!r}")
    if key in DRIVER_OWNED:
        raise UserError(f"{at}'{key}' cannot be set in a {driver}: {DRIVER_OWNED[key]}")
    if key in train_args.schema() or key in train_args.LAUNCH_ARGS:
        return
    guess = closest(key, [*train_args.schema(), *train_args.LAUNCH_ARGS, *near])
    hint = f"; did you mean '{guess}'?" if guess else ""
    raise UserError(f"{at}unknown setting '{key}' (not a train.py argument){hint} (python train.py --help lists them)")


NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def check_name(name, flag: str) -> str:
    """A name a driver makes a folder and a log file of (a sweep, a search, a study): one plain path
    component (letters, digits, '.', '_', '-', not starting with '.'), so out/<name> stays inside out/."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UserError(f"{flag} {name!r} must be a plain folder name (letters, digits, '.', '_', '-'; no '/', "
                        "not starting with '.'): it names the run folder and the log; choose another")
    return name


def train_argv(settings: dict, out_dir: str | Path | None = None, resume: bool = False) -> list[str]:
    """train.py's arguments for a run: LAUNCH_ARGS first (the logged command reads preset-first), then the
    settings (None: left out, train.py's default applies); with out_dir, the driver's own flags."""
    import train_args
    first = {k: settings[k] for k in train_args.LAUNCH_ARGS if settings.get(k) is not None}
    rest = {k: v for k, v in settings.items() if k not in train_args.LAUNCH_ARGS}
    argv = train_args.settings_to_argv(first) + train_args.settings_to_argv(rest)
    if out_dir is not None:
        argv += ["--out_dir", str(out_dir), *(["--init_from", "resume"] if resume else ["--overwrite"])]
    return argv


def log_tail(path: str | Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log (read from its last 64 KiB: logs can be long)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def run_status(exit_code: int | None, summary: dict | None, interrupted: bool = False) -> str:
    """completed (train.py's summary says so, and it exited 0 or was not watched), else interrupted
    (the driver stopped it) or failed."""
    if (summary or {}).get("status") == "completed" and exit_code in (0, None):
        return "completed"
    return "interrupted" if interrupted else "failed"


# ------------------------------------------------------------------------------------ the handle
@dataclass
class Launch:
    """A training run a driver started: poll, wait, terminate; then its status, summary and log entry."""
    settings: dict
    run_dir: RunDir
    argv: list[str]
    started: float = field(default_factory=time.time)
    started_at: str = field(default_factory=now)
    proc: subprocess.Popen | None = None
    exit_code: int | None = None
    finished_at: str | None = None
    duration: float | None = None

    @property
    def log_path(self) -> Path:
        return self.run_dir.file(LOG)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _ended(self, rc: int | None) -> int | None:
        if rc is not None and self.finished_at is None:
            self.exit_code, self.finished_at, self.duration = rc, now(), time.time() - self.started
        return rc

    def poll(self) -> int | None:
        """The exit code once the run has ended, else None."""
        return self._ended(self.proc.poll()) if self.proc is not None else self.exit_code

    def wait(self, timeout: float | None = None) -> int:
        """Block until the run ends (subprocess.TimeoutExpired after `timeout` seconds)."""
        return self._ended(self.proc.wait(timeout)) if self.proc is not None else self.exit_code

    def terminate(self) -> None:
        """Ask the run to stop (SIGTERM); `stop` waits for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def stop(self, grace: float = STOP_GRACE_S) -> int:
        """SIGTERM, then SIGKILL if the run has not ended within `grace` seconds; the exit code."""
        self.terminate()
        try:
            return self.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.wait()

    def summary(self) -> dict | None:
        return self.run_dir.read_json_or_none(SUMMARY)

    def status(self, interrupted: bool = False) -> str:
        return run_status(self.exit_code, self.summary(), interrupted)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)

    def entry(self, name: str, status: str | None = None) -> dict:
        """The exploration-log document of this (finished) run."""
        status = status or self.status()
        return log_entry(name, status=status, exit_code=self.exit_code, run_dir=self.run_dir.path,
                         started_at=self.started_at, finished_at=self.finished_at or now(), settings=self.settings,
                         log_tail=self.log_tail() if status == "failed" else None)


def _prepare(settings: dict, run_dir: str | Path, resume: bool, command: str) -> tuple[Launch, object]:
    """The handle and the opened log of a run about to start (a fresh start clears the stale results);
    the log opens with the command (`python train.py ...`, or train.main for a run in this process)."""
    run = RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    if not resume:
        for stale in (SUMMARY, CONFIG):
            run.file(stale).unlink(missing_ok=True)
    handle = Launch(dict(settings), run, train_argv(settings, run.path, resume))
    log = handle.log_path
    # a resumed run appends to its log; a line the killed run left unfinished is ended first
    torn = resume and log.exists() and log.stat().st_size and not log.read_bytes().endswith(b"\n")
    f = open(log, "a" if resume else "w")
    f.write(("\n" if torn else "") + f"$ {command} {' '.join(handle.argv)}\n")
    f.flush()
    return handle, f


# ------------------------------------------------------------------------------------ subprocesses
PR_SET_PDEATHSIG = 1  # linux/prctl.h
_libc = None


def _die_with_parent():
    """preexec_fn (Linux): SIGKILL this child when its parent dies (see the module docstring)."""
    global _libc
    if _libc is None:  # loaded in the parent: dlopen between fork and exec is not safe
        import ctypes
        try:
            _libc = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:
            _libc = False
    parent = os.getpid()

    def preexec():
        if _libc:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl: the signal would never come
            os.kill(os.getpid(), signal.SIGKILL)
    return preexec


def start(settings: dict, run_dir: str | Path, *, resume: bool = False, python: str = sys.executable,
          env: dict | None = None) -> Launch:
    """Start `python train.py` for the run and return at once. `env`: variables on top of the driver's
    (CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS, ... of this job)."""
    handle, log = _prepare(settings, run_dir, resume, f"{python} {TRAIN_PY}")
    with log:  # the child holds its own copy of the file
        # PR_SET_PDEATHSIG fires when the *thread* that forked exits: start runs from the driver's main thread
        handle.proc = subprocess.Popen(
            [python, str(TRAIN_PY), *handle.argv], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            preexec_fn=_die_with_parent() if sys.platform.startswith("linux") else None)
    return handle


def run(settings: dict, run_dir: str | Path, *, in_process: bool = False, resume: bool = False, on_eval=None,
        python: str = sys.executable, env: dict | None = None) -> Launch:
    """Train the run to its end (a subprocess unless in_process) and return the finished handle. An
    exception here (Ctrl-C, SIGTERM through sigterm_as_interrupt) stops the run before it propagates."""
    if in_process:
        return run_in_process(settings, run_dir, resume=resume, on_eval=on_eval)
    if on_eval is not None:
        raise ValueError("on_eval needs in_process=True (the hook runs in this process)")
    handle = start(settings, run_dir, resume=resume, python=python, env=env)
    try:
        handle.wait()
    except BaseException:
        handle.stop()
        raise
    return handle


# ------------------------------------------------------------------------------------ in this process
def run_in_process(settings: dict, run_dir: str | Path, *, resume: bool = False, on_eval=None) -> Launch:
    """`train.main(argv, on_eval=on_eval)` here, its output in the run's train.log; the exit code is
    what `python train.py` would give (0, 2 for a UserError, 1 for any other exception). Ctrl-C
    propagates (after the clean-up)."""
    import gc

    import torch

    import train
    handle, log = _prepare(settings, run_dir, resume, f"(in process {os.getpid()}) train.main")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()  # the run's own peak, not the previous run's
    try:
        with log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                train.main(handle.argv, on_eval=on_eval)
                rc = 0
            except UserError as e:
                print(f"error: {e}", file=log)
                rc = 2
            except Exception:  # noqa: BLE001 - a failed run is recorded; the driver goes on
                traceback.print_exc(file=log)
                rc = 1
            except KeyboardInterrupt:
                print("interrupted", file=log)
                raise
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    handle._ended(rc)
    return handle


# ------------------------------------------------------------------------------------ the driver's signals
def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM to the driver raises KeyboardInterrupt, so `kill PID` stops the runs it started (each
    driver's KeyboardInterrupt path terminates its children and records what it must) instead of leaving
    them to the death signal. Only in the main thread (where Python delivers signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
