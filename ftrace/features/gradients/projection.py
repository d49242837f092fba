"""Seeded projection matrices of a block (docs/gradients.md, "Blocks, sizes and projections").

Factored (LoGra): P_r (R x k_r) and P_c (C x k_c), k_r * k_c = dim with k_r as close to sqrt(dim)
as divisors allow, the larger factor on the larger side, and no side given more numbers than it
has. Dense: one (R*C x k) matrix, for small layers (the reference path). Entries are N(0, 1/k) per
matrix, from a generator seeded by sha256(seed, parameter name, side): the same in every process.
Rows (embedding lookups; a block no lookup uses is factored beside them): no matrix mixes the rows; the gradient's
nonzero rows (the example's own tokens) are kept in a sparse vector of R x k numbers, each row's C columns as they
are (k = C: exact) or projected by a seeded (C x k) Gaussian; "rows" holds a weight per row (ones), so the
optimizer's rank-1 correction folds in as elsewhere.
Sketch (TensorSketch, Pham & Pagh 2013): per side a CountSketch, a bucket in [0, k) and a sign for
each row (R) and each column (C); entry (i, j) of G goes to bucket (h_r(i) + h_c(j)) mod k with sign
s_r(i) s_c(j). Its inner products are unbiased with an error of the order of 1/sqrt(k) of the norms,
as a dense projection's, where the factored one's error on a rank-1 gradient is about 1/sqrt(k_r) times
the other side's cosine (docs/gradients.md).
"""

from __future__ import annotations

import hashlib
import math
from typing import get_args

import torch

from ftrace.config import BLOCK_DIM, Projection
from ftrace.features.gradients.blocks import Block, GradientError

PROJECTIONS = get_args(Projection)
DENSE_MAX_ELEMENTS = 1 << 27  # 512 MB of float32 for one dense projection matrix


def gaussian(seed: int, name: str, side: str, rows: int, cols: int) -> torch.Tensor:
    """A (rows x cols) N(0, 1/cols) matrix that depends only on (seed, name, side)."""
    digest = hashlib.sha256(f"ftrace-grad/{seed}/{name}/{side}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return torch.randn(rows, cols, generator=gen, dtype=torch.float32) / math.sqrt(cols)


def count_sketch(seed: int, name: str, side: str, rows: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(signs, buckets): a +-1 float and a bucket in [0, k) for each of `rows`, from (seed, name, side)."""
    digest = hashlib.sha256(f"ftrace-grad/{seed}/{name}/{side}/sketch".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    buckets = torch.randint(0, k, (rows,), generator=gen)
    signs = torch.randint(0, 2, (rows,), generator=gen).float().mul_(2).sub_(1)
    return signs, buckets


def _factor(k: int) -> tuple[int, int]:
    a = math.isqrt(k)
    while k % a:
        a -= 1
    return a, k // a


def assign_projection(block: Block, dim: int, seed: int, kind: str, device: torch.device,
                      block_dim: int | None = None) -> None:
    """Give the block its kind, factors, size and (uncorrected) projection matrices. The rows projection keeps an
    embedding lookup's rows (`dim` numbers a row); a block no lookup uses (an MLP's Linear) beside it is factored
    to `block_dim` numbers (default BLOCK_DIM), a dense part of the sparse vector."""
    R, C = block.shape
    if kind not in PROJECTIONS:
        raise GradientError(f"gradient projection {kind!r}: one of {', '.join(PROJECTIONS)}")
    if kind == "rows" and not block.tied and not any(u.kind == "embedding" for u in block.uses):
        kind, dim = "factored", block_dim or BLOCK_DIM
    block.kind = kind
    if kind == "sketch":
        block.factors, block.size = (min(dim, R * C), 1), min(dim, R * C)
        block.mats = {m: t.to(device) for m, t in seeded_matrices(block, seed).items()}
        return
    if kind == "rows":
        if any(u.kind != "embedding" for u in block.uses):  # a tied weight's head term, dense over the vocabulary
            other = next(u.module_name for u in block.uses if u.kind != "embedding")
            raise GradientError(f"--tracin-projection rows keeps an embedding lookup's rows; {block.name} is also "
                                f"used by {other}, not a lookup: give --tracin-tied input for the lookup's term")
        k = min(dim, C)
        block.factors, block.size = (R, k), R * k
        block.mats = {m: t.to(device) for m, t in seeded_matrices(block, seed).items()}
        return
    if kind == "dense":
        k = min(dim, R * C)
        if R * C * k > DENSE_MAX_ELEMENTS:
            raise GradientError(f"gradient projection 'dense' would need a {R * C} x {k} matrix for "
                                f"{block.name}; use projection 'sketch' or 'factored', or a smaller dim")
        block.factors, block.size = (k, 1), k
        block.mats = {"dense": gaussian(seed, block.name, "dense", R * C, k).to(device)}
        return
    small, large = _factor(dim)
    kr, kc = (large, small) if R >= C else (small, large)
    if kr > R:  # a side never gets more numbers than it has; the other side may then get more
        kr, kc = R, min(C, dim // R)
    if kc > C:
        kc, kr = C, min(R, dim // C)
    block.factors, block.size = (kr, kc), kr * kc
    block.mats = {"rows": gaussian(seed, block.name, "rows", R, kr).to(device),
                  "cols": gaussian(seed, block.name, "cols", C, kc).to(device)}


def seeded_matrices(block: Block, seed: int) -> dict[str, torch.Tensor]:
    """The block's seeded matrices before any optimizer correction (for references and tests), by its kind:
    {"rows", "cols"} (factored: Gaussian factors; sketch: signs, with buckets "rows_at", "cols_at")
    or {"dense"}."""
    kind = block.kind
    if kind == "sketch":
        (rows, rows_at), (cols, cols_at) = (count_sketch(seed, block.name, side, n, block.size)
                                            for side, n in zip(("rows", "cols"), block.shape, strict=True))
        return {"rows": rows, "rows_at": rows_at, "cols": cols, "cols_at": cols_at}
    if kind == "dense":
        return {"dense": gaussian(seed, block.name, "dense", block.shape[0] * block.shape[1], block.size)}
    if kind == "rows":  # a weight per row (ones: the optimizer's correction divides them) and the columns kept
        R, C = block.shape  # as they are or projected where fewer numbers a row are asked for
        k = block.factors[1]
        return {"rows": torch.ones(R), "cols": torch.eye(C) if k >= C else gaussian(seed, block.name, "cols", C, k)}
    return {"rows": gaussian(seed, block.name, "rows", block.shape[0], block.factors[0]),
            "cols": gaussian(seed, block.name, "cols", block.shape[1], block.factors[1])}
