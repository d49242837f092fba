"""Optimizer, learning-rate schedule, and the second moments saved with each checkpoint.

- adamw: torch.optim.AdamW (betas 0.9/0.999, eps 1e-8) with `weight_decay`.
- adafactor: transformers' Adafactor at the fixed `lr` (relative_step, scale_parameter and
  warmup_init off; its defaults otherwise: no first moment, decay_rate -0.8, clip_threshold 1).
- Schedule (both): `get_linear_schedule_with_warmup`: lr rises linearly from 0 over `warmup` steps,
  then falls linearly to 0 at the last step (with warmup 0 the first step uses the full lr).

`second_moments` returns {parameter name: tensor shaped like the parameter}: AdamW's exp_avg_sq;
for Adafactor's factored (>= 2-D) parameters the full matrix its update divides by,
v = (row / row.mean(-1)) (outer) col  (transformers' `_approx_sq_grad` is rsqrt of exactly this),
and exp_avg_sq for its 1-D parameters. Parameters that never received a gradient have no state and
are left out. Names are `model.named_parameters()`'s (a tied weight appears once); `state_names` maps the
optimizer state_dict's parameter indices to them.
"""

from __future__ import annotations

import torch
from transformers import get_linear_schedule_with_warmup
from transformers.optimization import Adafactor

from ftrace.config import TrainConfig


def make_optimizer(model: torch.nn.Module, config: TrainConfig, total_steps: int):
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        opt = Adafactor(params, lr=config.lr, weight_decay=config.weight_decay, relative_step=False,
                        scale_parameter=False, warmup_init=False)
    return opt, get_linear_schedule_with_warmup(opt, config.warmup, total_steps)


def second_moments(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        state = optimizer.state.get(p)
        if not state:
            continue
        if "exp_avg_sq" in state:
            v = state["exp_avg_sq"]
        elif "exp_avg_sq_row" in state:
            row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
            v = (row / row.mean(dim=-1, keepdim=True)).unsqueeze(-1) * col.unsqueeze(-2)
        else:
            continue
        out[name] = v.detach().to("cpu", torch.float32).clone()
    return out


def state_names(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> list[str]:
    """The parameter name of each index of `optimizer.state_dict()["state"]`, which numbers the parameters of its
    groups in order."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
