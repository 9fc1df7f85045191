"""Driver locks: one driver at a time per run folder (--out_root) and per log, held by the OS.

    from optimization_and_search import locks
    with locks.hold("out/softmax_cpu", "run_experiments.py", "give it another --out_root"):  # refuses if held
        ...
    with locks.hold(log, "optuna_search.py", "give it another --log_dir", shared=True):  # Optuna workers share
        with locks.writing(log):                                              # one writer at a time (waits)
            write_log(log, docs)

A lock is `fcntl.flock` on a file beside its target (`.<name>.lock` beside `out/softmax_cpu` or
`exploration_logs/softmax_cpu.yaml`; the target need not exist yet), held for the life of the process:
the kernel releases it when the process ends, however it ends (SIGKILL, a crash), so a stale lock never
blocks a resume. The holder writes its pid, program and start time into the file; a refused driver names
them in its one-line error. The file is never deleted (deleting it would let two processes lock two
different files of one name). Without fcntl (Windows) the locks are no-ops.

`hold` is exclusive (the sweep runner, the greedy search) unless `shared` (Optuna workers, which share a
study on purpose, hold their log shared so that no sweep or greedy search can write it meanwhile).
`writing` is a short, blocking, exclusive lock around one rewrite of a file that several processes
rewrite. This is independent of run_dir.py's lock on a single run directory.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from errors import UserError
from optimization_and_search.results import now

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None


def lock_file(target: str | Path, suffix: str = "lock") -> Path:
    """The lock file of a file or folder: `.<name>.<suffix>` beside it (symlinks resolved)."""
    target = Path(target).resolve()
    return target.parent / f".{target.name}.{suffix}"


def holder(path: str | Path) -> dict:
    """What the holder of a lock wrote into its lock file ({} when unknown). Shared holders (Optuna
    workers) starting together can each append their note between the other's truncate and write
    (the file is opened for appending), so the file may hold several lines: the first one is read."""
    try:
        first = next((line for line in Path(path).read_text().splitlines() if line.strip()), "")
        data = json.loads(first)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class DriverLock:
    """An flock on the lock file of `target`, taken without waiting; `program` (this driver) is written
    into the file, `hint` (what to do instead: "give it another --out_root") ends the refusal."""

    def __init__(self, target: str | Path, program: str, hint: str, shared: bool = False):
        self.target, self.program, self.hint, self.shared = Path(target), program, hint, shared
        self.path = lock_file(target)
        self.file = None

    def acquire(self) -> DriverLock:
        if fcntl is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # not "w": that would wipe the holder's pid before we know we hold it
        try:
            fcntl.flock(f, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise UserError(self.refusal()) from None
        f.seek(0)
        f.truncate()  # shared holders: the latest one's note
        f.write(json.dumps({"pid": os.getpid(), "program": self.program, "since": now()}) + "\n")
        f.flush()
        self.file = f
        return self

    def refusal(self) -> str:
        info = {}
        for _ in range(20):  # the holder writes its note just after it takes the lock
            info = holder(self.path)
            if info:
                break
            time.sleep(0.02)
        who = (f"{info.get('program', 'another driver')} (pid {info.get('pid', '?')}, since {info.get('since', '?')})"
               if info else "another driver (pid unknown)")
        return f"{self.target} is in use by {who}; wait for it to end (or stop it), or {self.hint}"

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing the descriptor releases the flock
            self.file = None

    def __enter__(self) -> DriverLock:
        return self if self.file is not None else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def hold(target: str | Path, program: str, hint: str, shared: bool = False) -> DriverLock:
    """Take the driver lock of `target` now (a UserError naming the holder's pid if another process has
    it); release it with `.release()` or use it as a context manager."""
    return DriverLock(target, program, hint, shared).acquire()


@contextlib.contextmanager
def writing(target: str | Path):
    """Wait for, then hold, the exclusive write lock of `target` (a separate file from `hold`'s)."""
    if fcntl is None:
        yield
        return
    path = lock_file(target, "write.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
