"""Which weight matrices are gradient blocks.

`layers` patterns (fnmatch over `model.named_modules()` names) select nn.Linear, nn.Embedding or
transformers Conv1D modules; each distinct weight TENSOR is one block, named by its first name in
`model.named_parameters()`, with every module that uses it (a tied LM head shares the embedding's
block). Biases are never blocks.

Tied weights: a block is `tied` when its weight is used by an Embedding AND by another module (the
LM head of SmolLM2, GPT-2, ...). Its true gradient is the sum of one term per use:
G = G_input + G_output, G_input = sum_t onehot(x_t) dL/de_t^T (the lookup: rows of the example's
tokens only) and G_output = sum_t dL/dz_t h_t^T ((softmax - onehot) h^T: dense over the
vocabulary). `tied` "both" keeps every use (G), "input" only the Embedding uses (G_input: the
gradient an untied input embedding would get), "output" only the others (G_output: an untied LM
head's). Filtering the uses is exact: each use's hooks add its own term and nothing else. The
projection matrices depend on the block name only, so projected(input) + projected(output) =
projected(both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal, cast

import torch

from ftrace import FtraceError

Kind = Literal["linear", "embedding", "conv1d"]  # W: out x in, vocab x hidden, in x out
Tied = Literal["both", "input", "output"]


class GradientError(FtraceError):
    pass


@dataclass
class Use:
    """One module that uses a block's weight."""

    module_name: str
    module: torch.nn.Module
    kind: Kind


@dataclass
class Block:
    name: str  # parameter name, e.g. "model.embed_tokens.weight"
    param: torch.nn.Parameter
    uses: list[Use]
    shape: tuple[int, int]
    factors: tuple[int, int] = (0, 0)  # (k_r, k_c) for factored; (k, 1) for dense and sketch; (R, k) for rows
    kind: str = "factored"  # its projection: the featurizer's, but factored for a non-lookup block of a rows one
    size: int = 0
    # projection matrices actually applied (optimizer correction folded in): {"rows", "cols"} (factored: Gaussian
    # factors; sketch: signs, beside their buckets "rows_at", "cols_at"; rows: a weight per row and the columns'
    # matrix) or {"dense"}
    mats: dict[str, torch.Tensor] = field(default_factory=dict)
    scale: torch.Tensor | None = None  # dense + optimizer state: S = sqrt(v) + eps
    whitener: torch.Tensor | None = None  # (size, size), once whitening is fitted or loaded; rows: (k, k)
    row_whitener: torch.Tensor | None = None  # rows projection's whitening: a weight per row (R,)
    tied: bool = False  # used by an Embedding and by another module (before `uses` was filtered)


def module_kind(module: torch.nn.Module) -> Kind | None:
    if isinstance(module, torch.nn.Linear):
        return "linear"
    if isinstance(module, torch.nn.Embedding):
        return "embedding"
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return "conv1d"
    return None


def resolve_blocks(model: Any, patterns: list[str], tied: Tied = "both") -> list[Block]:
    """The blocks selected by `patterns`, in model parameter order (projections not made yet); a
    tied block keeps the uses `tied` names (module docstring)."""
    modules = dict(model.named_modules())
    usable = {n: (m, k) for n, m in modules.items() if (k := module_kind(m)) is not None}
    chosen: list[str] = []
    for pat in patterns:
        hits = [n for n in usable if fnmatchcase(n, pat)]
        if not hits:
            other = [n for n in modules if n and fnmatchcase(n, pat)]
            examples = ", ".join(list(usable)[:3])
            what = (f"matches only {type(modules[other[0]]).__name__} modules, not Linear or Embedding"
                    if other else "matches no module")
            raise GradientError(f"gradient layers pattern {pat!r} {what}; names look like {examples}")
        chosen += [n for n in hits if n not in chosen]
    pname = {id(p): n for n, p in model.named_parameters()}
    uses_of: dict[int, list[Use]] = {}
    for n, (m, kind) in usable.items():  # every module that uses the weight: a tied LM head included
        uses_of.setdefault(id(m.weight), []).append(Use(n, m, kind))
    order = {n: i for i, n in enumerate(pname.values())}
    wanted = {id(usable[n][0].weight) for n in chosen}
    blocks = []
    for pid in sorted(wanted, key=lambda i: order.get(pname.get(i, ""), 1 << 30)):
        uses = uses_of[pid]
        param = cast(torch.nn.Parameter, uses[0].module.weight)
        is_tied = any(u.kind == "embedding" for u in uses) and any(u.kind != "embedding" for u in uses)
        if is_tied and tied != "both":
            uses = [u for u in uses if (u.kind == "embedding") == (tied == "input")]
        for u in uses:
            if u.kind == "embedding" and getattr(u.module, "scale_grad_by_freq", False):
                raise GradientError(f"gradient layers: {u.module_name} scales gradients by frequency; not supported")
        rows, cols = param.shape
        blocks.append(Block(pname.get(pid, uses_of[pid][0].module_name + ".weight"), param, uses, (rows, cols),
                            tied=is_tied))
    return blocks


def find_block(blocks: list[Block], name: str) -> Block:
    """A block by its parameter name or the name of a module using it."""
    for b in blocks:
        if b.name == name or any(u.module_name == name for u in b.uses):
            return b
    raise GradientError(f"no gradient block named {name!r}; blocks: {[b.name for b in blocks]}")
