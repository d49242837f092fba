"""Which checkpoints of a train run to trace with.

- "all": every complete checkpoint, step 0 (the base model) included, in step order.
- "ftrace": FTRACE's three checkpoints spaced uniformly in inverse perplexity, among the fine-tuned
  checkpoints (step > 0). A checkpoint's inverse perplexity is exp(-train_loss), train_loss being
  the mean training loss recorded in its state.json (over the steps since the previous checkpoint:
  no extra evaluation pass). Targets are 3 evenly spaced values from the lowest to the highest
  inverse perplexity (both ends included); each target, in turn from the lowest, takes the
  not-yet-taken checkpoint whose inverse perplexity is nearest (ties: the earlier step). The result
  is returned in step order. With 3 or fewer fine-tuned checkpoints, all of them are returned.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np

from ftrace.train.checkpoints import checkpoint_dirs, read_state
from ftrace.train.errors import TrainError

FTRACE_COUNT = 3


def select_checkpoints(train_dir: Path | str, which: Literal["all", "ftrace"] = "all") -> list[Path]:
    dirs = checkpoint_dirs(train_dir)
    if not dirs:
        raise TrainError(f"{train_dir}: no complete checkpoint (run ftrace train first)")
    if which == "all":
        return dirs
    if which != "ftrace":
        raise TrainError(f"--checkpoints {which}: choose all or ftrace")
    tuned = [(d, read_state(d) or {}) for d in dirs]
    tuned = [(d, s) for d, s in tuned if s.get("step", 0) > 0]
    if len(tuned) <= FTRACE_COUNT:
        return [d for d, _ in tuned]
    missing = [d.name for d, s in tuned if s.get("train_loss") is None]
    if missing:
        raise TrainError(f"{train_dir}: {missing[0]} records no train_loss; cannot space by perplexity")
    inv = [math.exp(-s["train_loss"]) for _, s in tuned]
    taken: list[int] = []
    for target in np.linspace(min(inv), max(inv), FTRACE_COUNT):
        free = [i for i in range(len(tuned)) if i not in taken]
        taken.append(min(free, key=lambda i: (abs(inv[i] - target), i)))
    return [tuned[i][0] for i in sorted(taken)]
