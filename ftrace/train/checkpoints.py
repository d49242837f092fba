"""Checkpoint directories: written atomically (read, and listed in step order: ftrace.runs.checkpoints).

A checkpoint `step-N/` holds
    config.json, model.safetensors, tokenizer files  (save_pretrained: `load_model("…/step-N")` works)
    exp_avg_sq.pt  {parameter name: second moment shaped like the parameter} (see optim.py); step 0
                   has none (a fresh optimizer has no moments; its state.json says so)
    state.json     {"step", "epoch", "train_loss", "lr", "optimizer", "second_moments", "complete"} (and "facts",
                   the learning curve, with --eval-facts: ftrace.train.facts):
                   train_loss = mean training loss of the steps since the previous checkpoint,
                   lr = learning rate of the last of those steps (both null at step 0)
    trainer.pt     optimizer and scheduler state_dicts, step and RNG states, for resuming; only
                   in the latest checkpoint (removed from older ones once a newer one is complete).
                   The optimizer's exp_avg_sq tensors are not stored twice: those equal to exp_avg_sq.pt's
                   are left out, listed under "exp_avg_sq_from" ({state index: [parameter name, dtype]}),
                   and `load_trainer` puts them back (bit for bit: float32 holds every value of the dtype)

It is written into `step-N.tmp-PID/`, state.json last, then renamed: a `step-N/` is always complete.

Between checkpoints, `--save-every N` keeps `resume/` (the same files but exp_avg_sq.pt, trainer.pt whole, state.json
{"step", "complete"}): a long run stopped between two checkpoints resumes from there, not from the last checkpoint.
It is replaced atomically (ftrace.plumbing.replacing_dir) and removed once the next checkpoint is complete.

Disk: `CheckpointSizes` estimates a checkpoint's files from the model's parameters and the dtype, and
`check_disk` prints what a run's checkpoints will take and refuses one whose file system lacks the room,
before training starts (SmolLM2-135M in float32 with AdamW: 0.54 GB of weights, 0.54 GB of second moments
and 0.54 GB of resume state, so `--checkpoints 3` needs about 4.8 GB).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ftrace.plumbing import replacing_dir
from ftrace.runs.checkpoints import checkpoint_dirs
from ftrace.runs.errors import TrainError
from ftrace.runs.layout import MOMENTS, RESUME, SHARED, STATE, TRAINER, checkpoint_name
from ftrace.train.layout import write_json


def _without_moments(trainer: dict[str, Any], names: list[str] | None,
                     moments: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    """`trainer` with the optimizer's exp_avg_sq tensors that `moments` holds exactly left out (`names`: the
    parameter name of each optimizer state index), and which ones under SHARED."""
    if not moments or names is None:
        return trainer
    state, shared = {}, {}
    for i, s in trainer["optimizer"]["state"].items():
        v, name = s.get("exp_avg_sq"), names[i]
        if isinstance(v, torch.Tensor) and name in moments and torch.equal(v.to("cpu", torch.float32), moments[name]):
            s = {k: x for k, x in s.items() if k != "exp_avg_sq"}
            shared[i] = [name, str(v.dtype).removeprefix("torch.")]
        state[i] = s
    return {**trainer, "optimizer": {**trainer["optimizer"], "state": state}, SHARED: shared}


def write_checkpoint(out: Path, step: int, model: Any, tokenizer: Any, state: dict[str, Any],
                     moments: dict[str, torch.Tensor] | None, trainer: dict[str, Any],
                     names: list[str] | None = None) -> Path:
    """Write checkpoint `step-N`; `names`: the parameter name of each optimizer state index (with it, the
    second moments in `moments` are not saved again in trainer.pt)."""
    final = out / checkpoint_name(step)
    if final.exists():
        raise TrainError(f"{final}: already exists; this run directory was changed by someone else")
    with replacing_dir(final) as tmp:  # step-N.tmp-PID/, removed on resume if a killed run left it
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if moments is not None:
            torch.save(moments, tmp / MOMENTS)
        torch.save(_without_moments(trainer, names, moments), tmp / TRAINER)
        write_json(tmp / STATE, {**state, "second_moments": MOMENTS if moments is not None else None,
                                 "complete": True})
    for older in checkpoint_dirs(out):  # only the latest needs the (large) resume state
        if older != final:
            (older / TRAINER).unlink(missing_ok=True)
    shutil.rmtree(out / RESUME, ignore_errors=True)  # older than this checkpoint now
    return final


def write_resume(out: Path, step: int, model: Any, tokenizer: Any, trainer: dict[str, Any]) -> Path:
    """Replace `resume/` with the state after `step` (a step between checkpoints)."""
    with replacing_dir(out / RESUME) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save(trainer, tmp / TRAINER)
        write_json(tmp / STATE, {"step": step, "complete": True})
    return out / RESUME


# --- disk ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckpointSizes:
    """Bytes of a checkpoint's files, estimated from the parameters (tokenizer and config files aside)."""

    weights: int  # model.safetensors, in the training dtype
    moments: int  # exp_avg_sq.pt: float32, one per trainable parameter (none at step 0)
    resume: int  # trainer.pt: the optimizer state besides the second moments, in the latest checkpoint only

    @classmethod
    def of(cls, model: torch.nn.Module, dtype: torch.dtype, optimizer: str) -> CheckpointSizes:
        itemsize = torch.empty((), dtype=dtype).element_size()
        params = list(model.parameters())  # a tied weight once, as saved
        trainable = [p for p in params if p.requires_grad]
        if optimizer == "adamw":  # exp_avg, in the weights' dtype
            resume = itemsize * sum(p.numel() for p in trainable)
        else:  # adafactor: no first moment; float32 row and column factors of each matrix
            resume = 4 * sum(math.prod(p.shape[:-1]) + math.prod(p.shape[:-2]) * p.shape[-1]
                             for p in trainable if p.dim() >= 2)
        return cls(weights=itemsize * sum(p.numel() for p in params),
                   moments=4 * sum(p.numel() for p in trainable), resume=resume)

    def needed(self, steps: list[int], save_every: bool = False) -> int:
        """The room checkpoints at `steps` need: their files, plus two resume states (a checkpoint's is removed
        only once the next one is complete), and with `save_every` two of resume/ (one while it is replaced)."""
        if not steps:
            return 0
        between = 2 * (self.weights + self.resume + self.moments) if save_every else 0
        return sum(self.weights + (self.moments if s > 0 else 0) for s in steps) + 2 * self.resume + between


def size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def check_disk(out: Path, sizes: CheckpointSizes, steps: list[int], save_every: int = 0) -> str:
    """One line saying how much disk the checkpoints at `steps` (those still to write) need in `out` and how much
    its file system has free; TrainError, in one line, when that is not enough."""
    needed = sizes.needed(steps, save_every > 0)
    where = next(p for p in (out, *out.parents) if p.exists())  # `out` itself may not exist yet
    free = shutil.disk_usage(where).free
    what = (f"{len(steps)} checkpoint{'s' * (len(steps) != 1)} (steps {', '.join(map(str, steps))}) of "
            f"{size(sizes.weights)} weights + {size(sizes.moments)} second moments after step 0, and "
            f"{size(sizes.resume)} resume state in the latest"
            + (f", and resume/ every {save_every} steps" if save_every else ""))
    if needed > free:
        raise TrainError(f"{out}: needs about {size(needed)} of disk for {what}, and only {size(free)} is free "
                         "there; free some space, choose another --out, save fewer --checkpoints"
                         + (", or give --save-every 0" if save_every else ""))
    return f"disk: about {size(needed)} in {out} for {what}; {size(free)} free"
