"""Reading a train run's checkpoints (their files are named in ftrace.runs.layout; ftrace.train.checkpoints writes
them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ftrace.runs.errors import TrainError
from ftrace.runs.layout import MOMENTS, SHARED, STATE, STEP_RE, TRAINER


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


def load_trainer(ckpt: Path) -> dict[str, Any]:
    """trainer.pt with the full optimizer state (the second moments it shares with exp_avg_sq.pt put back)."""
    try:
        trainer = torch.load(ckpt / TRAINER, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainError(f"{ckpt}: the latest checkpoint has no {TRAINER}; cannot resume") from None
    shared = trainer.pop(SHARED, None)
    if shared:
        try:
            moments = torch.load(ckpt / MOMENTS, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise TrainError(f"{ckpt}: has no {MOMENTS}, which holds part of its {TRAINER}; cannot resume") from None
        for i, (name, dtype) in shared.items():  # float32 copies of float32/bfloat16/float16 tensors: cast back exactly
            trainer["optimizer"]["state"][i]["exp_avg_sq"] = moments[name].to(getattr(torch, dtype))
    return trainer
