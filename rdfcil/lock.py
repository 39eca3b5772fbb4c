"""One writer per run folder: an OS file lock held for the whole run.

``engine.run`` takes the lock of its folder before it reads or writes the folder and holds it
until the run returns or fails. The lock is ``filelock``'s fcntl lock on a hidden file beside
the folder (``<parent>/.<name>.lock``, so that a refused config never creates the folder); the
holder writes its pid into ``<parent>/.<name>.lock.pid`` after acquiring, which is what a second
process names in its one-line error. The OS drops an fcntl lock when its process dies, so a
run killed with SIGKILL never blocks the next one (its stale pid file is overwritten).
Under ``torchrun`` only rank 0 takes the lock (the other ranks never write the folder).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import RdfcilError


def lock_paths(folder: str | Path) -> tuple[Path, Path]:
    """``(lock file, pid file)`` of a run folder."""
    folder = Path(folder).absolute()
    lock = folder.parent / f".{folder.name}.lock"
    return lock, lock.with_name(lock.name + ".pid")


def holder(folder: str | Path) -> str:
    """The pid written by the process holding the folder's lock, or 'unknown'."""
    try:
        return lock_paths(folder)[1].read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextmanager
def folder_lock(folder: str | Path, enabled: bool = True):
    """Hold the lock of ``folder`` for the block; refuse at once if another process holds it."""
    if not enabled:
        yield
        return
    lock_file, pid_file = lock_paths(folder)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file, timeout=0, is_singleton=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RdfcilError(f"run folder '{folder}' is in use by process {holder(folder)} (lock {lock_file}); "
                          "wait for it to finish or stop it") from None
    try:
        pid_file.write_text(f"{os.getpid()}\n")
        yield
    finally:
        pid_file.unlink(missing_ok=True)
        lock.release(force=True)


def rank_zero() -> bool:
    """True outside ``torchrun`` and on its rank 0."""
    return os.environ.get("RANK", "0") == "0"
