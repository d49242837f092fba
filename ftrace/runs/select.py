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
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np

from ftrace.config import ExampleLoss
from ftrace.config.vectors import selected_steps
from ftrace.runs.checkpoints import checkpoint_dirs, read_state
from ftrace.runs.errors import TrainError
from ftrace.runs.layout import MOMENTS, read_run

FTRACE_COUNT = 3


def select_checkpoints(train_dir: Path | str, which: str = "all") -> list[Path]:
    dirs = checkpoint_dirs(train_dir)
    if not dirs:
        raise TrainError(f"{train_dir}: no complete checkpoint (run ftrace train first)")
    if which == "all":
        return dirs
    if which != "ftrace":
        raise TrainError(f"--checkpoint-select {which}: choose all or ftrace")
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


@dataclass
class TracedRun:
    """What an index built from a train run uses: gradients at `checkpoints` (each with its own
    second moments), answers and embeddings from `final`, the learned slices from `base`; `example_loss` is the
    loss the run trained on (the index's gradients take it unless told otherwise)."""

    train_dir: Path
    final: Path
    checkpoints: list[Path]
    moments: list[Path | None]  # exp_avg_sq.pt per checkpoint (None: none saved)
    base: str
    base_fingerprint: str
    example_loss: ExampleLoss


def traced_run(train_dir: Path | str, which: str = "ftrace") -> TracedRun:
    """The checkpoints of a complete train run to trace with: fine-tuned ones (step > 0), or with
    "base" step 0 alone (the model before fine-tuning, which traced best in results/train; it has no
    optimizer state), or the checkpoints at the steps `which` names. Paths are absolute, so the index
    works from any directory."""
    train_dir = Path(train_dir).resolve()
    run = read_run(train_dir)
    if run is None or not run.get("complete"):
        raise TrainError(f"--train-run {train_dir}: no complete ftrace train run there (run or resume "
                         "`ftrace train` first)")
    at = {step: d for d in checkpoint_dirs(train_dir)  # step -> checkpoint
          if (step := (read_state(d) or {}).get("step")) is not None}
    tuned = [d for step, d in at.items() if step > 0]
    if not tuned:
        raise TrainError(f"--train-run {train_dir}: the run has no fine-tuned checkpoint")
    try:
        steps = selected_steps(which)
    except ValueError as e:
        raise TrainError(f"--checkpoint-select {which!r}: {e}") from None
    if steps is not None:
        missing = [s for s in steps if s not in at]
        if missing:
            raise TrainError(f"--checkpoint-select {which}: the run has no checkpoint at step {missing[0]} "
                             f"(it has {', '.join(str(s) for s in sorted(at))})")
        picked = [at[s] for s in steps]
    elif which == "base":
        picked = [at[0]] if 0 in at else []
    elif which == "final":
        picked = tuned[-1:]
    else:
        picked = [d for d in select_checkpoints(train_dir, which) if d in tuned]
    moments = [d / MOMENTS if (d / MOMENTS).exists() else None for d in picked]
    loss = run["identity"]["config"].get("example_loss")
    if loss not in get_args(ExampleLoss):
        raise TrainError(f"--train-run {train_dir}: run.json names no known example loss ({loss!r})")
    return TracedRun(train_dir, tuned[-1], picked, moments, run["model"]["name"], run["model"]["fingerprint"],
                     loss)
