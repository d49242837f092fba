"""Checkpoint directories: written atomically, listed in step order.

A checkpoint `step-N/` holds
    config.json, model.safetensors, tokenizer files  (save_pretrained: `load_model("…/step-N")` works)
    exp_avg_sq.pt  {parameter name: second moment shaped like the parameter} (see optim.py); step 0
                   has none (a fresh optimizer has no moments; its state.json says so)
    state.json     {"step", "epoch", "train_loss", "lr", "optimizer", "second_moments", "complete"}:
                   train_loss = mean training loss of the steps since the previous checkpoint,
                   lr = learning rate of the last of those steps (both null at step 0)
    trainer.pt     optimizer and scheduler state_dicts, step and RNG states, for resuming; only
                   in the latest checkpoint (removed from older ones once a newer one is complete)

It is written into `step-N.tmp-PID/`, state.json last, then renamed: a `step-N/` is always complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ftrace.train.errors import TrainError
from ftrace.train.layout import STEP_RE, write_json

STATE = "state.json"
MOMENTS = "exp_avg_sq.pt"
TRAINER = "trainer.pt"


def read_state(ckpt: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((Path(ckpt) / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and state.get("complete") is True else None


def checkpoint_dirs(train_dir: Path | str) -> list[Path]:
    """The complete checkpoints of a train run, in step order (step 0, the base model, first)."""
    train_dir = Path(train_dir)
    if not train_dir.is_dir():
        return []
    found = []
    for p in train_dir.iterdir():
        m = STEP_RE.fullmatch(p.name)
        if m and p.is_dir() and read_state(p) is not None:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def write_checkpoint(out: Path, step: int, model: Any, tokenizer: Any, state: dict[str, Any],
                     moments: dict[str, torch.Tensor] | None, trainer: dict[str, Any]) -> Path:
    final = out / f"step-{step}"
    if final.exists():
        raise TrainError(f"{final}: already exists; this run directory was changed by someone else")
    tmp = out / f"step-{step}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if moments is not None:
        torch.save(moments, tmp / MOMENTS)
    torch.save(trainer, tmp / TRAINER)
    write_json(tmp / STATE, {**state, "second_moments": MOMENTS if moments is not None else None,
                             "complete": True})
    tmp.rename(final)
    for older in checkpoint_dirs(out):  # only the latest needs the (large) resume state
        if older != final:
            (older / TRAINER).unlink(missing_ok=True)
    return final


def load_trainer(ckpt: Path) -> dict[str, Any]:
    try:
        return torch.load(ckpt / TRAINER, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainError(f"{ckpt}: the latest checkpoint has no {TRAINER}; cannot resume") from None
