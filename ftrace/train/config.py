"""`TrainConfig`: the settings of one fine-tuning run, validated up front.

A bad value raises `TrainError` (one line naming the CLI option) rather than pydantic's multi-line
report: the validator below runs before pydantic's own checks and raises directly.

Everything except `device` is part of a run's identity: resuming or re-running an output directory
with any other value is refused (`device` only says where to compute; a run may resume elsewhere,
but only the same device gives bit-identical weights).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, model_validator

from ftrace import FtraceError
from ftrace.model.loading import DEFAULT_MODEL

OPTIMIZERS = ("adamw", "adafactor")
LOSSES = ("sentence", "object")
DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


class TrainError(FtraceError):
    pass


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not a silent default

    model: str = DEFAULT_MODEL  # what load_model loads: the built-in default, an HF id or a path
    optimizer: Literal["adamw", "adafactor"] = "adamw"
    lr: float = 2e-4  # peak learning rate (Adafactor: fixed, no relative step or parameter scaling)
    weight_decay: float = 0.0
    warmup: int = 0  # steps of linear warmup from 0; then linear decay to 0 at the last step
    epochs: int = 2  # at least 1: a run takes at least one step
    max_steps: int | None = None  # stop after this many steps at the latest (a cap on `epochs`)
    batch_size: int = 16
    seed: int = 0
    checkpoints: int = 3  # fine-tuned checkpoints, evenly spaced, the last at the final step
    loss: Literal["sentence", "object"] = "sentence"
    max_length: int = 256  # tokens per example; longer sentences are truncated
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:N, mps

    @model_validator(mode="before")
    @classmethod
    def _one_line_errors(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        choices = {"optimizer": OPTIMIZERS, "loss": LOSSES}
        for key, allowed in choices.items():
            if key in data and data[key] not in allowed:
                raise TrainError(f"--{key} {data[key]}: choose one of {', '.join(allowed)}")
        device = data.get("device", "auto")
        if not isinstance(device, str) or not DEVICE_RE.fullmatch(device):
            raise TrainError(f"--device {device}: choose auto, cpu, cuda, cuda:N or mps")
        minimum = {"epochs": 1, "max_steps": 1, "batch_size": 1, "checkpoints": 1, "max_length": 2,
                   "warmup": 0, "lr": 0, "weight_decay": 0, "seed": 0}
        for key, low in minimum.items():
            value = data.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < low:
                raise TrainError(f"--{key.replace('_', '-')} {value}: must be at least {low}")
        return data

    def identity(self) -> dict[str, Any]:
        """What must match for a run directory to be resumed (see the module docstring)."""
        return self.model_dump(exclude={"device"})


def resolve_device(name: str) -> torch.device:
    """'auto' = the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"--device {name}: no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise TrainError("--device mps: no MPS device is available")
    return torch.device(name)
