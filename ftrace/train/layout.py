"""The train output directory, and what makes it resumable.

    run.json         what the run is (identity: config, base model, corpus) and how far it got
    run.lock         held (flock) while a process trains here: two at once are refused
    loss.jsonl       one line per step: {"step", "epoch", "loss", "lr"} (see losslog.py)
    loss.png         the loss curve with the checkpoints marked (see plot.py)
    step-N/          a complete checkpoint (see checkpoints.py)
    step-N.tmp-PID/  a checkpoint being written; left over by a killed run, removed on resume

A directory holding anything else is not a train run and is refused, as is a run whose identity
differs from the one asked for (the error names every difference; nothing is touched).
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ftrace.plumbing import write_atomic
from ftrace.train.errors import TrainError

RUN = "run.json"
LOCK = "run.lock"
LOSS = "loss.jsonl"
PLOT = "loss.png"
STEP_RE = re.compile(r"step-(\d+)")
FORMAT = 1


def write_json(path: Path, obj: Any) -> None:
    """Write-then-rename, so a reader never sees half a file."""
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def _foreign(entry: str) -> bool:
    base = re.sub(r"\.tmp-\d+$", "", entry)  # a file or checkpoint being written
    return not (base in (RUN, LOCK, LOSS, PLOT) or STEP_RE.fullmatch(base))


def read_run(out: Path) -> dict[str, Any] | None:
    """run.json of an existing run; None for a missing or empty directory; refuses anything else."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise TrainError(f"{out}: exists and is not a directory")
    entries = sorted(p.name for p in out.iterdir() if p.name != LOCK)
    if not entries:  # empty, or a run killed before it wrote run.json
        return None
    foreign = [e for e in entries if _foreign(e)]
    if foreign or RUN not in entries:
        what = f"holds {foreign[0]!r}" if foreign else "has no run.json"
        raise TrainError(f"{out}: not an ftrace train run ({what}); choose an empty or new directory")
    try:
        run = json.loads((out / RUN).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise TrainError(f"{out}/{RUN}: unreadable; not an ftrace train run") from None
    if not isinstance(run, dict) or run.get("format") != FORMAT or "identity" not in run:
        raise TrainError(f"{out}/{RUN}: not an ftrace train run (format {FORMAT})")
    return run


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def check_identity(out: Path, recorded: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Refuse when any value in `wanted` differs from the run's (keys absent from `wanted` are not
    compared, so a cheap check can run before the model is loaded)."""
    have, want = _flatten(recorded), _flatten(wanted)
    diffs = [f"{k}: run has {have.get(k)!r}, asked for {v!r}" for k, v in want.items() if have.get(k) != v]
    if diffs:
        raise TrainError(f"{out}: holds a different train run ({'; '.join(diffs)}); "
                         "use another output directory or delete this one")


def remove_partial(out: Path) -> list[str]:
    """Delete half-written checkpoints and files (never read); returns their names."""
    gone = []
    for p in sorted(out.iterdir()):
        if ".tmp-" in p.name:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            gone.append(p.name)
    return gone


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold run.lock for the duration; a second trainer in the same directory is refused."""
    with open(out / LOCK, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainError(f"{out}: another ftrace train is running here") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
