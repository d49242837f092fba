"""Adam's second-moment correction: gradients divided elementwise by S = sqrt(v) + eps.

The state is a torch file with an Adam/AdamW `state_dict()` (entries mapped to
`model.parameters()` by position; shapes must match) or a dict {parameter name: exp_avg_sq}; eps
comes from the optimizer's param group, else 1e-8. Dense projection divides exactly. Factored
projection uses the rank-1 (Adafactor-style) approximation S ~= a b^T, a = row means of S,
b = column means of S / mean(S), folded into the projection matrices (P_r / a, P_c / b; the sketch's
signs likewise): free at run time, exact when S is rank-1.
"""

from __future__ import annotations

import hashlib

import torch

from ftrace.features.gradients.blocks import Block, GradientError


def load_optimizer_state(path: str, model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], float]:
    """{parameter name: exp_avg_sq} and eps from an Adam/AdamW state_dict or a plain name dict."""
    where = f"optimizer_state {path}"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GradientError(f"{where}: no such file") from None
    except Exception as e:
        raise GradientError(f"{where}: not a torch-saved optimizer state ({type(e).__name__})") from None
    params = dict(model.named_parameters())
    names = list(params)
    if isinstance(obj, dict) and "state" in obj and "param_groups" in obj:
        out: dict[str, torch.Tensor] = {}
        eps = 1e-8
        indices = [i for g in obj["param_groups"] for i in g.get("params", [])]
        for g in obj["param_groups"]:
            eps = float(g.get("eps", eps))
        if len(indices) != len(names):
            raise GradientError(f"{where}: holds {len(indices)} parameters, the model has {len(names)}; "
                                "save a dict {parameter name: exp_avg_sq} instead")
        for pos, idx in enumerate(indices):
            entry = obj["state"].get(idx)
            if entry is None or "exp_avg_sq" not in entry:
                continue
            v = entry["exp_avg_sq"]
            if tuple(v.shape) != tuple(params[names[pos]].shape):
                raise GradientError(f"{where}: entry {idx} has shape {tuple(v.shape)} but parameter "
                                    f"{names[pos]} has {tuple(params[names[pos]].shape)}; save a dict "
                                    "{parameter name: exp_avg_sq} instead")
            out[names[pos]] = v
        return out, eps
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {str(k): v for k, v in obj.items()}, 1e-8
    raise GradientError(f"{where}: expected an Adam state_dict or a dict of parameter name -> exp_avg_sq")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def divisor(v: torch.Tensor, eps: float, floor: float = 0.0) -> torch.Tensor:
    """S = sqrt(v) + eps (+ floor x the mean of sqrt(v)), in float64."""
    root = v.to(torch.float64).clamp(min=0).sqrt()
    return root + eps + floor * root.mean()


def rank1(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """S ~= a c^T: a = S's row means, c = its column means / its mean."""
    return S.mean(1), S.mean(0) / S.mean()


def apply_optimizer_state(blocks: list[Block], path: str, model: torch.nn.Module, device: torch.device,
                          floor: float = 0.0) -> dict:
    """Fold the correction into each block by its projection kind; returns its description for the spec."""
    state, eps = load_optimizer_state(path, model)
    for b in blocks:
        v = state.get(b.name)
        if v is None:  # also accept any alias of a tied weight
            v = next((state[u.module_name + ".weight"] for u in b.uses if u.module_name + ".weight" in state), None)
        if v is None:
            raise GradientError(f"optimizer_state {path}: no exp_avg_sq for {b.name}")
        if tuple(v.shape) != b.shape:
            raise GradientError(f"optimizer_state {path}: {b.name} has shape {tuple(v.shape)}, "
                                f"the model's is {b.shape}")
        S = divisor(v, eps, floor)
        if b.kind == "dense":  # the whole S divides the gradient before the projection
            b.scale = S.to(torch.float32).to(device)
        else:
            for side, by in zip(("rows", "cols"), rank1(S), strict=True):  # per row of P or sketch sign, or row weight
                m = b.mats[side]
                b.mats[side] = (m.double().cpu() / by.reshape(-1, *[1] * (m.dim() - 1))).float().to(device)
    exact = all(b.kind == "dense" for b in blocks)
    out = {"path": str(path), "sha256": _sha256(path), "eps": eps, "divide_by": "sqrt(exp_avg_sq) + eps",
           "approximation": "exact" if exact else "rank-1: row means x column means / mean"}
    if floor:
        out["divide_by"] = "sqrt(exp_avg_sq) + eps + floor * mean(sqrt(exp_avg_sq)) of the block"
        out["floor"] = floor
    return out
