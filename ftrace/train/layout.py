"""Writing the train output directory (its layout, as readers see it: ftrace.runs.layout): one trainer at a
time (run.lock), atomic JSON, partial checkpoints removed on resume, and a run whose identity differs from the
one asked for refused (the error names every difference; nothing is touched)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ftrace.plumbing import describe_differences, differences, recover_dir, try_lock, write_atomic
from ftrace.runs.errors import TrainError
from ftrace.runs.layout import LOCK, RESUME


def write_json(path: Path, obj: Any) -> None:
    """Write-then-rename, so a reader never sees half a file."""
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def check_identity(out: Path, recorded: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Refuse when any value in `wanted` differs from the run's (keys absent from `wanted` are not
    compared, so a cheap check can run before the model is loaded)."""
    diffs = differences({k: recorded.get(k) for k in wanted}, wanted, "run")
    if diffs:
        raise TrainError(f"{out}: holds a different train run ({describe_differences(diffs)}); "
                         "use another output directory or delete this one")


def remove_partial(out: Path) -> list[str]:
    """Delete half-written checkpoints and files (never read), and put back a resume/ a kill left renamed aside
    (`recover_dir`); returns the names deleted."""
    gone = recover_dir(out / RESUME)
    for p in sorted(out.iterdir()):
        if ".tmp-" in p.name:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            gone.append(p.name)
    return gone


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold run.lock for the duration; a second trainer in the same directory is refused. The file is removed
    (still locked) when the holder is done, so none is left behind: a process that locked a file removed meanwhile
    takes the new one instead (the inode check)."""
    path = out / LOCK
    while True:
        f = open(path, "a")
        if not try_lock(f.fileno(), fcntl.LOCK_EX):
            f.close()
            raise TrainError(f"{out}: another ftrace train is running here")
        if path.exists() and os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
            break
        f.close()  # the holder before us removed it after we opened it: lock the one there now
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        f.close()  # releases the lock
