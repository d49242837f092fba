"""TrackStar whitening: each per-block-normalised projected gradient u is mapped to
(R + lambda I)^-1/2 u, R = mean(u u^T) over a calibration sample of training examples,
lambda = damping * trace(R) / k, and re-normalised (so dot products stay means of per-block
cosines). R is per block (block-diagonal over the whole vector); with one block it is TrackStar's
full R."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ftrace.features.gradients.blocks import Block, GradientError

WHITEN_MAX = 8192  # largest block whose k x k whitening matrix we keep


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-30)


def whitener(block: Block) -> torch.Tensor:
    if block.whitener is None:
        raise GradientError(f"gradient whiten: block {block.name} has no fitted whitening")
    return block.whitener


def check_whitenable(blocks: list[Block]) -> None:
    big = [b for b in blocks if b.size > WHITEN_MAX]
    if big:
        raise GradientError(f"gradient whiten: block {big[0].name} has {big[0].size} numbers and whitening keeps "
                            f"a k x k matrix per block (at most {WHITEN_MAX}); lower dim")


def fit_whiteners(blocks: list[Block], projected: Iterable[list[torch.Tensor]], damping: float,
                  device: torch.device) -> dict:
    """Set each block's whitener from batches of per-block raw projected gradients; returns the
    description recorded in the state."""
    if damping <= 0:
        raise GradientError(f"whitening damping {damping}: must be positive")
    sums = [torch.zeros(b.size, b.size, dtype=torch.float64) for b in blocks]
    n = 0
    for per_block in projected:
        for s, p in zip(sums, per_block, strict=True):
            u = unit(p).double().cpu()
            s += u.T @ u
        n += len(per_block[0])
    if n == 0:
        raise GradientError("whitening: the calibration sample is empty")
    for s, b in zip(sums, blocks, strict=True):
        R = s / n
        lam = damping * float(torch.trace(R)) / b.size
        evals, evecs = torch.linalg.eigh(R)
        W = (evecs * (evals.clamp(min=0) + lam).rsqrt()) @ evecs.T
        b.whitener = W.float().to(device)
    return {"damping": damping, "samples": n, "scope": "per block", "lambda": "damping * trace(R) / k"}
