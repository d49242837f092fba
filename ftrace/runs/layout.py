"""What `ftrace train` writes in its output directory, as readers see it: run.json and its migration.

    run.json         what the run is (identity: config, base model, corpus) and how far it got
    run.lock         held (flock) while a process trains here: two at once are refused; removed when it stops
    loss.jsonl       one line per step: {"step", "epoch", "loss", "lr"}
    loss.png         the loss curve with the checkpoints marked
    config.json      the run's record: `ftrace train --config OUT/config.json` runs it again (ftrace.runrecord)
    step-N/          a complete checkpoint (checkpoints.py): the model's files (save_pretrained), state.json,
                     trainer.pt (optimizer and scheduler) and exp_avg_sq.pt (Adam's second moments, by name)
    step-N.tmp-PID/  a checkpoint being written; left over by a killed run, removed on resume (as are
                     resume.tmp-PID/, and resume.old-PID/: the one being replaced, put back if resume/ is missing)
    resume/          with --save-every: the weights, trainer.pt and state.json of a step between checkpoints, to
                     resume from (not a checkpoint to trace); replaced atomically, removed at the next checkpoint

A directory holding anything else is not a train run and is refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ftrace.runrecord import RECORD
from ftrace.runs.errors import TrainError

RUN = "run.json"
LOCK = "run.lock"
LOSS = "loss.jsonl"
PLOT = "loss.png"
STEP_RE = re.compile(r"step-(\d+)")
FORMAT = 1  # run.json's
# in a checkpoint
STATE = "state.json"
MOMENTS = "exp_avg_sq.pt"
TRAINER = "trainer.pt"
RESUME = "resume"  # the run's resume state between checkpoints (a directory in the run)
SHARED = "exp_avg_sq_from"  # trainer.pt: {optimizer state index: [name, dtype]} of the moments left to MOMENTS


def checkpoint_name(step: int) -> str:
    return f"step-{step}"


def checkpoint_step(path: Path) -> int:
    m = STEP_RE.fullmatch(path.name)
    if m is None:
        raise TrainError(f"{path}: not a checkpoint (step-N)")
    return int(m.group(1))


def _foreign(entry: str) -> bool:
    base = re.sub(r"\.(tmp|old)-\d+$", "", entry)  # a file or directory being written or replaced
    return not (base in (RUN, LOCK, LOSS, PLOT, RECORD, RESUME) or STEP_RE.fullmatch(base))


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
    return migrate_run(run)


RENAMED = {"loss": "example_loss", "max_length": "max_tokens"}  # config fields of runs written before the renames


def migrate_run(run: dict[str, Any]) -> dict[str, Any]:
    """run.json as the current code reads it: the one place that knows older runs' spellings."""
    for config in (run["identity"].get("config", {}), run.get("config", {})):
        for old, new in RENAMED.items():
            if old in config:
                config[new] = config.pop(old)
        config.setdefault("dtype", "float32")  # runs from before --dtype trained in float32
        config.setdefault("checkpoint_at", None)  # and before --checkpoint-at, --eval-facts and --autocast
        config.setdefault("eval_facts", 0)
        config.setdefault("autocast", None)
    return run
