"""Optuna studies shared by many workers: the storage, stale trials, and one trial budget for all workers.

    from optimization_and_search import optuna_workers as ow
    storage = ow.open_storage("sqlite:///out/optuna/s/study.db", heartbeat_interval=60, grace_period=120)
    storage = ow.open_storage("journal:/shared/optuna/s/journal.log")           # a shared file system only
    storage = ow.open_storage("postgresql+psycopg2://user@db-host/optuna")       # many machines
    ow.recover(study, grace_period=120)        # stale trials -> failed, logged "interrupted", retried once
    ow.budget_state(study, n_trials)           # counted, running, ... : may this worker start another trial?

Storages (`--storage` of optuna_search.py):
- `sqlite:///PATH`: one machine. Workers opening a new database together serialise the table creation
  on a lock file beside it (without it, two workers raced to `CREATE TABLE` and one died with
  `table ... already exists`).
- `journal:PATH`: Optuna's JournalStorage on a JournalFileBackend: an append-only file, for clusters
  whose machines share only a file system (NFS, Lustre). optuna-dashboard reads the same file.
- any other SQLAlchemy URL, e.g. `postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB` (psycopg2-binary,
  in the `search` extra) or `postgresql+psycopg://...` (psycopg 3): many machines. A table creation
  that loses a race to another worker is retried.

Stale trials (a worker killed by SIGKILL, a node lost, a job preempted leave their trial RUNNING):
- RDB storages (SQLite, PostgreSQL, ...) use Optuna's own heartbeat: each running trial records a
  heartbeat every `heartbeat_interval` seconds; a RUNNING trial whose last heartbeat is older than
  `grace_period` is failed by the next worker that starts a trial (optuna.storages.fail_stale_trials),
  and Optuna's RetryFailedTrialCallback (max_retry=1) queues its parameters again.
- Every storage (the journal has no heartbeat): a RUNNING trial is taken for stale only when its owner
  is known to be gone: the trial is older than `grace_period`, it recorded the pid and host of its
  worker, the host is this one, and that pid no longer exists. A trial younger than the grace period
  (its worker records the pid just after Optuna creates it) or whose owner cannot be checked (no pid
  yet, another machine) is never marked failed. (The first version failed the fresh trial of a worker
  that had not yet recorded its pid, and that worker then crashed with `Cannot tell a FAIL trial`.)
A stale trial is FAIL in the study and "interrupted" in the log (a study user attribute
`interrupted:<number>`, one key per trial, so that two workers marking two trials lose neither); it
does not count towards the budget; its retry does.

The budget (`n_trials`, for all workers together): the trials that count are the finished ones
(completed, pruned, failed) that were not interrupted. A worker starts a trial only while the counted
plus the running trials are below the budget, and a trial that nevertheless finds `n_trials` counted or
running trials numbered before it (two workers asked in the same instant) ends at once, unrun, as a
`surplus` trial (FAIL in the study, left out of the log and the counts). Trial numbers are unique and
assigned in creation order by every storage, so all workers agree on which trials fit. A worker whose
budget is taken by trials still running elsewhere waits for them while one of them may still turn out
stale (a heartbeat storage, or a trial of this host), so a retry is never left without a worker.
"""
from __future__ import annotations

import os
import random
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from errors import UserError
from optimization_and_search import locks

JOURNAL = "journal:"
HEARTBEAT_INTERVAL_S = 60  # Optuna's heartbeat period (RDB storages); 0 turns it off
GRACE_PERIOD_S = 120       # a trial is not taken for stale before it is this old (and its heartbeat too)
INTERRUPTED = "interrupted:"   # study user attribute per interrupted trial
SURPLUS = "surplus"            # trial user attribute: started beyond the budget, ended unrun
CREATE_TRIES = 6


# ------------------------------------------------------------------------------------ storages
def storage_kind(url: str) -> str:
    """journal, sqlite, or rdb (any other SQLAlchemy URL)."""
    if url.startswith(JOURNAL):
        return "journal"
    return "sqlite" if url.startswith("sqlite:") else "rdb"


def journal_path(url: str) -> Path:
    text = url[len(JOURNAL):]
    if text.startswith("//"):  # journal:///abs/path, as an URL would read
        text = text[2:]
    if not text:
        raise UserError(f"--storage {url}: name the journal file, e.g. journal:out/optuna/STUDY/journal.log")
    return Path(text)


def sqlite_path(url: str) -> Path | None:
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
    return Path(path) if path not in ("", ":memory:") else None


def _lost_creation_race(e: Exception) -> bool:
    text = str(e).lower()
    return any(s in text for s in ("already exists", "duplicate", "unique constraint", "database is locked"))


def open_storage(url: str, heartbeat_interval: int = HEARTBEAT_INTERVAL_S, grace_period: int = GRACE_PERIOD_S,
                 on_stale=None):
    """The Optuna storage of `url` (see the module docstring). RDB storages get the heartbeat (unless
    heartbeat_interval is 0) and `on_stale(study, trial)` for their stale trials."""
    import optuna
    kind = storage_kind(url)
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend
        path = journal_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    heartbeat = dict(heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                     heartbeat_stale_trial_callback=on_stale) if heartbeat_interval else {}
    import sqlalchemy.exc
    path = sqlite_path(url) if kind == "sqlite" else None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    import warnings
    for attempt in range(CREATE_TRIES):
        try:
            with warnings.catch_warnings():  # "heartbeat_interval is an experimental feature" (since Optuna 2.9)
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                if path is None:
                    return optuna.storages.RDBStorage(url, **heartbeat)
                with locks.writing(path):  # workers on one machine create the tables one at a time
                    return optuna.storages.RDBStorage(url, **heartbeat)
        except ImportError as e:
            raise UserError(f"--storage {url}: the database driver is missing ({e.__cause__ or e}); install it "
                            "(PostgreSQL: psycopg2-binary, in pip install 'ppa-gpt[search]', or psycopg[binary] "
                            "with postgresql+psycopg://...)") from None
        except sqlalchemy.exc.ArgumentError as e:
            raise UserError(f"--storage {url}: not a storage URL ({e}); use sqlite:///PATH, journal:PATH or "
                            "postgresql+psycopg2://USER@HOST/DB") from None
        except sqlalchemy.exc.DBAPIError as e:
            if attempt + 1 < CREATE_TRIES and _lost_creation_race(e):
                time.sleep(0.2 + random.random())  # another worker is creating the same tables
                continue
            first = str(e.orig if getattr(e, "orig", None) is not None else e).strip().splitlines()
            raise UserError(f"--storage {url}: cannot open the database: {first[0] if first else type(e).__name__}"
                            ) from None
    raise AssertionError("unreachable")


def has_heartbeat(study) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled
    return is_heartbeat_enabled(study._storage)


# ------------------------------------------------------------------------------------ interrupted trials
def interrupted(study) -> set[int]:
    """Numbers of the trials a stopped worker left unfinished (the list attribute of studies written
    before this module, and one `interrupted:<n>` key per trial since)."""
    attrs = study.user_attrs
    out = set(attrs.get("interrupted_trials", []))
    out.update(int(k[len(INTERRUPTED):]) for k in attrs if k.startswith(INTERRUPTED))
    return out


def mark_interrupted(study, number: int) -> None:
    study.set_user_attr(f"{INTERRUPTED}{number}", True)


def retry_of(trial) -> int | None:
    """The trial this one retries (ours: user attribute retry_of; Optuna's RetryFailedTrialCallback: a
    system attribute)."""
    if "retry_of" in trial.user_attrs:
        return trial.user_attrs["retry_of"]
    return trial.system_attrs.get("failed_trial")


def retry_callback():
    """Optuna's callback that queues a stale trial's parameters again, once (a retry of a retry is not
    retried). Optuna 4.9 renamed RetryFailedTrialCallback to RetryHeartbeatStaleTrialCallback."""
    import warnings

    import optuna
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    with warnings.catch_warnings():  # "experimental (supported from v2.8.0)"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls(max_retry=1)


class StaleTrial:
    """Optuna's heartbeat-stale callback: the trial is logged interrupted, then retried once."""

    def __init__(self, log=print):
        self.log, self.retry = log, retry_callback()

    def __call__(self, study, trial) -> None:
        mark_interrupted(study, trial.number)
        self.retry(study, trial)
        self.log(f"trial {trial.number} stopped sending its heartbeat (its worker died): marked interrupted"
                 + ("" if retry_of(trial) is not None else ", its parameters queued again"))


# ------------------------------------------------------------------------------------ stale trials
def owner_gone(trial, grace_period: float, now: datetime | None = None) -> bool:
    """Whether a RUNNING trial's worker is known to have stopped (see the module docstring): never for a
    trial younger than the grace period or whose owner cannot be checked from here."""
    start = trial.datetime_start
    if start is None:
        return False
    now = now or datetime.now(start.tzinfo)
    if (now - start).total_seconds() < grace_period:
        return False
    pid, host = trial.user_attrs.get("pid"), trial.user_attrs.get("host")
    if pid is None or host != socket.gethostname():
        return False
    if pid == os.getpid():
        return True  # this process runs no trial while it recovers: an earlier call left it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def recover(study, grace_period: float = GRACE_PERIOD_S, log=print) -> list[int]:
    """Fail the stale trials (Optuna's heartbeat where the storage has one, and the owner rule), log them
    interrupted and queue each one's parameters once more; the numbers this worker failed."""
    import warnings

    import optuna
    from optuna.trial import TrialState
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if has_heartbeat(study):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # runs StaleTrial on each trial it fails
    failed = [n for n in before if n not in {t.number for t in study.get_trials(deepcopy=False,
                                                                                 states=(TrialState.RUNNING,))}]
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not owner_gone(t, grace_period):
            continue
        try:  # another worker may fail it first: only one of them marks and retries it
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        mark_interrupted(study, t.number)
        again = retry_of(t) is None and bool(t.params)
        if again:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        log(f"trial {t.number} was left running by a stopped process: marked interrupted"
            + (", its parameters queued again" if again else ""))
        failed.append(t.number)
    return sorted(failed)


# ------------------------------------------------------------------------------------ the budget
def surplus(trial) -> bool:
    return bool(trial.user_attrs.get(SURPLUS))


def counted_trials(study) -> list:
    """Trials that count towards the budget: completed, pruned and failed, not interrupted nor surplus."""
    from optuna.trial import TrialState
    left_out = interrupted(study)
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in study.get_trials(deepcopy=False, states=done) if t.number not in left_out and not surplus(t)]


@dataclass
class Budget:
    n_trials: int
    counted: int
    running: list  # the RUNNING trials (other workers')

    @property
    def full(self) -> bool:
        return self.counted + len(self.running) >= self.n_trials

    @property
    def done(self) -> bool:
        return self.counted >= self.n_trials


def budget_state(study, n_trials: int) -> Budget:
    from optuna.trial import TrialState
    return Budget(n_trials, len(counted_trials(study)), study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def fits(study, trial, n_trials: int) -> bool:
    """Whether `trial` (just created) is within the budget: fewer than n_trials trials numbered before it
    count or still run (see the module docstring)."""
    from optuna.trial import TrialState
    left_out = interrupted(study)
    ahead = 0
    for t in study.get_trials(deepcopy=False):
        if t.number >= trial.number or t.number in left_out or surplus(t):
            continue
        if t.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            ahead += 1
    return ahead < n_trials


def may_turn_stale(study, budget: Budget) -> bool:
    """Whether a trial running elsewhere could still be found stale by this worker, so that waiting for
    it can free a slot: any of them with a heartbeat, else those of this host."""
    return has_heartbeat(study) or any(t.user_attrs.get("host") in (None, socket.gethostname())
                                       for t in budget.running)
