"""Per-example projected loss gradients: TracIn / TrackStar features computed LoGra-style.

What a vector is
----------------
For one example, the loss is the SUM over its labelled positions of the token cross-entropy (see
`ftrace.model.batching`). A *block* is one weight matrix W (shape R x C) of a chosen module; its
per-example gradient G = dLoss/dW is projected to k numbers, the k numbers are unit-normalised, the
blocks are concatenated and the whole vector is unit-normalised again. When every block is non-zero
the final step just divides by sqrt(number of blocks), so the dot product of two vectors is the MEAN
over blocks of the per-block cosines (FTRACE normalises per parameter block). With one block (the
default, the embedding matrix: FTRACE's best "G.0") it is the plain TracIn cosine of the projected
gradients.

Blocks, sizes and projections
-----------------------------
- `layers` are fnmatch patterns over `model.named_modules()` names; each must match at least one
  nn.Linear or nn.Embedding (or a transformers Conv1D). Only weights are blocks (biases are left out).
- `dim` is the size of EACH block (not a budget shared by the blocks): the total size is the sum
  over blocks and must not exceed 65,535 (Qdrant's limit). A block never gets more numbers than its
  weight has: factored k_r x k_c is capped at R x C per side (the other side then takes up to
  dim // R, resp. dim // C), dense k at R * C.
- `projection="factored"` (LoGra): two seeded Gaussian matrices per block, P_r (R x k_r) and
  P_c (C x k_c), k_r * k_c = dim with k_r as close to sqrt(dim) as divisors allow (the larger factor
  goes to the larger side; use squares or powers of two). The projected gradient is
  P_r^T G P_c, flattened row-major, which is exactly the dense projection of vec(G) by the Kronecker
  matrix P_r (x) P_c. It is computed without ever forming G: for a Linear (W: out x in) with output
  gradients g_t and inputs x_t, G = sum_t g_t x_t^T, so P_r^T G P_c = sum_t (P_r^T g_t)(P_c^T x_t)^T,
  one batched matmul per module. For an Embedding (W: vocab x hidden), G = sum_t e_{id_t} g_t^T, so
  the row side is just the rows of P_r gathered by token id (lookups of `padding_idx` get no gradient,
  as in PyTorch).
- `projection="dense"`: each example's gradient G is materialised and multiplied by one seeded
  Gaussian matrix (R*C x k). It is the reference path, for small layers only.
- Entries are N(0, 1/k) per matrix (1/sqrt(k_r), 1/sqrt(k_c) per side). Each matrix comes from a
  torch.Generator seeded by sha256(seed, parameter name, side), so the same config gives the same
  matrices in any process.

Tied embeddings
---------------
A block is a weight TENSOR, and its gradient is the true gradient of that tensor: when the LM head
shares the embedding matrix (SmolLM2, the tiny test model), the block "model.embed_tokens.weight"
gets both the input-lookup term and the LM-head term sum_t (softmax_t - onehot_t) h_t^T, i.e. what a
naive `loss.backward(); W.grad` gives. Both terms use the same P_r, P_c, so they add up in projected
space. Patterns that match either module select the same single block.

How it runs
-----------
One batched forward and ONE backward per batch: forward hooks on every module that uses a chosen
weight project its input (Linear) or gather P_r rows (Embedding) right away and register a hook on
its output; the output-gradient hook projects the gradient and accumulates the per-example
(k_r x k_c) outer products. For plain-head architectures (Llama, Qwen, GPT-2, ...) the LM head and
the vocabulary-sized softmax run only at the labelled positions, not at padding and prompts. The
backward is `torch.autograd.grad(loss, input embeddings)`, so no
parameter gets `.grad` and the weight-gradient matmuls of the whole model are skipped. Padding
positions get exactly zero output gradient (right padding, causal attention, no loss there); their
projected terms are masked out as well. The model runs in eval mode; its mode is restored.

Corrections
-----------
- `optimizer_state`: a torch file with an Adam/AdamW `state_dict()` (entries mapped to
  `model.parameters()` by position; shapes must match) or a dict {parameter name: exp_avg_sq}. The
  gradient is divided elementwise by S = sqrt(v) + eps (eps from the optimizer's param group, else
  1e-8). Dense projection divides exactly. Factored projection uses the rank-1 (Adafactor-style)
  approximation S ~= a b^T with a = row means of S and b = column means of S / mean(S), so
  G / S ~= diag(1/a) G diag(1/b) and the correction is folded into the projection matrices
  (P_r / a, P_c / b): free at run time, exact when S is rank-1.
- `whiten` (TrackStar): after `fit_whitening` on a calibration sample, each per-block-normalised
  projected gradient u is mapped to (R + lambda I)^-1/2 u with R = mean(u u^T) over the calibration
  examples and lambda = damping * trace(R) / k, then re-normalised, so dot products stay means of
  per-block cosines. R is per block (block-diagonal over the whole vector); with one block it is
  TrackStar's full R. The fitted matrices go into `state_dict()` / `save()` and must be loaded for
  queries.

Checkpoints
-----------
`combine_checkpoints` concatenates per-checkpoint unit vectors scaled by 1/sqrt(C): the dot product
of two combined vectors is the mean over checkpoints of the per-checkpoint scores (TracIn's sum over
checkpoints up to a constant, with equal learning-rate weights).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from ftrace import FtraceError
from ftrace.model.batching import IGNORE, LossBatch

MAX_SIZE = 65535  # Qdrant's largest vector
DENSE_MAX_ELEMENTS = 1 << 27  # 512 MB of float32 for one dense projection matrix
FORMAT_VERSION = 1
WHITEN_MAX = 8192  # largest block whose k x k whitening matrix we keep
# model types whose logits are exactly `lm_head(last hidden state)` (no soft-capping or scaling)
_PLAIN_HEAD = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gpt2", "gpt_neox",
               "olmo", "olmo2", "phi3", "smollm3", "starcoder2", "gemma"}


class GradientError(FtraceError):
    pass


class GradientConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # fnmatch patterns over module names; the default is the (tied) embedding matrix.
    layers: list[str] = ["model.embed_tokens"]
    # size of EACH block's projection; the sum over blocks must be <= 65535
    dim: int = 4096
    seed: int = 0
    projection: Literal["factored", "dense"] = "factored"
    # torch file: Adam/AdamW state_dict or {parameter name: exp_avg_sq}
    optimizer_state: str | None = None
    # TrackStar R^-1/2, fitted with GradientFeaturizer.fit_whitening
    whiten: bool = False


@dataclass
class _Use:
    module_name: str
    module: torch.nn.Module
    kind: str  # "linear" (W: out x in), "embedding" (W: vocab x hidden), "conv1d" (W: in x out)


@dataclass
class Block:
    name: str  # parameter name, e.g. "model.embed_tokens.weight"
    param: torch.nn.Parameter
    uses: list[_Use]
    shape: tuple[int, int]
    factors: tuple[int, int]  # (k_r, k_c) for factored; (k, 1) for dense
    size: int
    # projection matrices actually applied (optimizer correction folded in for factored)
    mats: dict[str, torch.Tensor] = field(default_factory=dict)
    scale: torch.Tensor | None = None  # dense + optimizer: S = sqrt(v) + eps
    whitener: torch.Tensor | None = None  # (size, size)


def _kind(module: torch.nn.Module) -> str | None:
    if isinstance(module, torch.nn.Linear):
        return "linear"
    if isinstance(module, torch.nn.Embedding):
        return "embedding"
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None \
            and module.weight.dim() == 2:
        return "conv1d"
    return None


def _factor(k: int) -> tuple[int, int]:
    a = math.isqrt(k)
    while k % a:
        a -= 1
    return a, k // a


def gaussian(seed: int, name: str, side: str, rows: int, cols: int) -> torch.Tensor:
    """A (rows x cols) N(0, 1/cols) matrix that depends only on (seed, name, side)."""
    digest = hashlib.sha256(f"ftrace-grad/{seed}/{name}/{side}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return torch.randn(rows, cols, generator=gen, dtype=torch.float32) / math.sqrt(cols)


def _load_optimizer_state(path: str, model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], float]:
    """{parameter name: exp_avg_sq} and eps from an Adam/AdamW state_dict or a plain name dict."""
    where = f"optimizer_state {path}"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GradientError(f"{where}: no such file") from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
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


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-30)


class GradientFeaturizer:
    name = "grad"

    def __init__(self, model: torch.nn.Module, config: GradientConfig):
        if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
            raise GradientError("gradient features need a decoder-only causal LM, not an encoder-decoder")
        if config.dim < 1:
            raise GradientError(f"gradient dim {config.dim}: must be at least 1")
        if config.dim > MAX_SIZE:
            raise GradientError(f"gradient dim {config.dim}: a vector may have at most {MAX_SIZE} numbers")
        if not config.layers:
            raise GradientError("gradient layers: give at least one module name pattern")
        self.model, self.config = model, config
        self.device = next(model.parameters()).device
        self.blocks = self._resolve()
        self.size = sum(b.size for b in self.blocks)
        if self.size > MAX_SIZE:
            raise GradientError(
                f"gradient dim {config.dim} x {len(self.blocks)} blocks = {self.size} numbers, over the "
                f"limit of {MAX_SIZE}: lower dim or select fewer layers")
        big = [b for b in self.blocks if b.size > WHITEN_MAX]
        if config.whiten and big:
            raise GradientError(f"gradient whiten: block {big[0].name} has {big[0].size} numbers and whitening keeps "
                                f"a k x k matrix per block (at most {WHITEN_MAX}); lower dim")
        self._optimizer: dict | None = None
        if config.optimizer_state is not None:
            self._apply_optimizer_state(config.optimizer_state)
        self._whitening: dict | None = None  # {"damping", "samples"} once fitted
        self._run: dict | None = None
        self._fast_head = True  # LM head on labelled positions only, where the architecture allows

    # --- set-up ---------------------------------------------------------------------------------

    def _resolve(self) -> list[Block]:
        modules = dict(self.model.named_modules())
        usable = {n: m for n, m in modules.items() if _kind(m) is not None}
        chosen: list[str] = []
        for pat in self.config.layers:
            hits = [n for n in usable if fnmatchcase(n, pat)]
            if not hits:
                other = [n for n in modules if n and fnmatchcase(n, pat)]
                examples = ", ".join(list(usable)[:3])
                what = (f"matches only {type(modules[other[0]]).__name__} modules, not Linear or Embedding"
                        if other else "matches no module")
                raise GradientError(f"gradient layers pattern {pat!r} {what}; names look like {examples}")
            chosen += [n for n in hits if n not in chosen]
        # a block per distinct weight tensor, named by its first name in named_parameters()
        pname = {id(p): n for n, p in self.model.named_parameters()}
        uses_of: dict[int, list[_Use]] = {}
        for n, m in usable.items():  # every module that uses the weight: tied LM head included
            uses_of.setdefault(id(m.weight), []).append(_Use(n, m, _kind(m)))
        order = {n: i for i, n in enumerate(pname.values())}
        wanted = {id(usable[n].weight) for n in chosen}
        blocks = []
        for pid in sorted(wanted, key=lambda i: order.get(pname.get(i, ""), 1 << 30)):
            uses = uses_of[pid]
            param = uses[0].module.weight
            name = pname.get(pid, uses[0].module_name + ".weight")
            for u in uses:
                if u.kind == "embedding" and getattr(u.module, "scale_grad_by_freq", False):
                    raise GradientError(f"gradient layers: {u.module_name} scales gradients by frequency; "
                                        "not supported")
            blocks.append(self._make_block(name, param, uses))
        return blocks

    def _make_block(self, name: str, param: torch.nn.Parameter, uses: list[_Use]) -> Block:
        R, C = param.shape
        k, seed = self.config.dim, self.config.seed
        if self.config.projection == "dense":
            k = min(k, R * C)
            if R * C * k > DENSE_MAX_ELEMENTS:
                raise GradientError(f"gradient projection 'dense' would need a {R * C} x {k} matrix for "
                                    f"{name}; use projection 'factored' or a smaller dim")
            mats = {"dense": gaussian(seed, name, "dense", R * C, k).to(self.device)}
            return Block(name, param, uses, (R, C), (k, 1), k, mats)
        small, large = _factor(k)
        kr, kc = (large, small) if R >= C else (small, large)
        if kr > R:  # a side never gets more numbers than it has; the other side may then get more
            kr, kc = R, min(C, k // R)
        if kc > C:
            kc, kr = C, min(R, k // C)
        mats = {"rows": gaussian(seed, name, "rows", R, kr).to(self.device),
                "cols": gaussian(seed, name, "cols", C, kc).to(self.device)}
        return Block(name, param, uses, (R, C), (kr, kc), kr * kc, mats)

    def projection(self, name: str) -> dict[str, torch.Tensor]:
        """The seeded matrices of block `name`, before any optimizer correction: {"rows", "cols"}
        (factored; projected = rows^T G cols) or {"dense"} (projected = vec(G) @ dense)."""
        b = self._block(name)
        if self.config.projection == "dense":
            return {"dense": gaussian(self.config.seed, b.name, "dense", b.shape[0] * b.shape[1], b.size)}
        return {"rows": gaussian(self.config.seed, b.name, "rows", b.shape[0], b.factors[0]),
                "cols": gaussian(self.config.seed, b.name, "cols", b.shape[1], b.factors[1])}

    def _block(self, name: str) -> Block:
        for b in self.blocks:
            if b.name == name or any(u.module_name == name for u in b.uses):
                return b
        raise GradientError(f"no gradient block named {name!r}; blocks: {[b.name for b in self.blocks]}")

    def _apply_optimizer_state(self, path: str) -> None:
        state, eps = _load_optimizer_state(path, self.model)
        for b in self.blocks:
            v = state.get(b.name)
            if v is None:  # also accept any alias of a tied weight
                v = next((state[u.module_name + ".weight"] for u in b.uses if u.module_name + ".weight" in state),
                         None)
            if v is None:
                raise GradientError(f"optimizer_state {path}: no exp_avg_sq for {b.name}")
            if tuple(v.shape) != b.shape:
                raise GradientError(f"optimizer_state {path}: {b.name} has shape {tuple(v.shape)}, "
                                    f"the model's is {b.shape}")
            S = v.to(torch.float64).clamp(min=0).sqrt() + eps
            if self.config.projection == "dense":
                b.scale = S.to(torch.float32).to(self.device)
            else:
                a = S.mean(1)
                c = S.mean(0) / S.mean()
                b.mats["rows"] = (b.mats["rows"].double().cpu() / a[:, None]).float().to(self.device)
                b.mats["cols"] = (b.mats["cols"].double().cpu() / c[:, None]).float().to(self.device)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                digest.update(chunk)
        self._optimizer = {"path": str(path), "sha256": digest.hexdigest()[:16], "eps": eps, "divide_by": "sqrt(exp_avg_sq) + eps",
                           "approximation": ("exact" if self.config.projection == "dense"
                                             else "rank-1: row means x column means / mean")}

    # --- description --------------------------------------------------------------------------

    def spec(self) -> dict:
        return {
            "kind": "gradient",
            "format": FORMAT_VERSION,
            "loss": "sum of token cross-entropy over labelled positions",
            "layers": list(self.config.layers),
            "blocks": [{"name": b.name, "modules": [u.module_name for u in b.uses], "shape": list(b.shape),
                        "factors": list(b.factors), "size": b.size} for b in self.blocks],
            "dim": self.config.dim,
            "size": self.size,
            "seed": self.config.seed,
            "projection": self.config.projection,
            "normalization": "per block unit, concatenated, unit (dot = mean of per-block cosines)",
            "corrections": {
                "optimizer": self._optimizer,
                "whitening": ({"enabled": self.config.whiten, "fitted": self._whitening is not None}
                              | (self._whitening or {})),
            },
        }

    # --- the batched pass ---------------------------------------------------------------------

    def _as_examples(self, t: torch.Tensor, name: str) -> torch.Tensor:
        """A module input / output gradient as (B, L, d): (B, T, ...) tensors are reshaped; the
        (N, d) rows of the LM head at labelled positions only are padded per example."""
        run = self._run
        B = run["B"]
        rows = run.get("rows")
        if rows is not None and t.dim() == 2 and t.shape[0] == len(rows[0]):
            out = t.new_zeros(B, rows[2], t.shape[-1])
            out[rows[0], rows[1]] = t
            return out
        if t.dim() < 2 or t.shape[0] != B:
            raise GradientError(f"gradient layers: cannot attribute the tensors of {name} (shape {tuple(t.shape)}) "
                                f"to the {B} examples")
        return t.reshape(B, -1, t.shape[-1])

    def _forward_hook(self, block: Block, use: _Use):
        dense = self.config.projection == "dense"

        def hook(module, args, output):
            run = self._run
            if run is None or not output.requires_grad:
                return None
            B, T = run["B"], run["T"]
            if use.kind == "embedding":
                ids = args[0]
                if ids.shape[0] == 1 and B > 1 and ids.dim() == 2:
                    # shared position ids (GPT-2's wpe): give each example its own copy of the output
                    # so that its gradient stays per example
                    ids = ids.expand(B, -1)
                    output = output.expand(B, *output.shape[1:])
                keep = run["mask"] if ids.shape == (B, T) else torch.ones_like(ids, dtype=torch.float32)
                if module.padding_idx is not None:
                    keep = keep * (ids != module.padding_idx)
                keep = keep.reshape(B, -1, 1)
                ids = ids.reshape(B, -1)
                saved = (ids, keep) if dense else (block.mats["rows"][ids] * keep)
            else:
                x = args[0].detach()
                side = "cols" if use.kind == "linear" else "rows"
                x = x.float() if dense else x.float() @ block.mats[side]
                saved = self._as_examples(x, use.module_name)
                if saved.shape[1] == T:  # padding gets no gradient anyway; make sure of it
                    saved = saved * run["mask"].unsqueeze(-1)
            output.register_hook(self._grad_hook(block, use, saved))
            return output

        return hook

    def _grad_hook(self, block: Block, use: _Use, saved):
        dense = self.config.projection == "dense"

        def hook(grad):
            run = self._run
            B = run["B"]
            g = grad.detach().float()
            if dense:
                g = self._as_examples(g, use.module_name)
                if use.kind == "embedding":
                    ids, keep = saved
                    G = torch.zeros((B, *block.shape), dtype=torch.float32, device=g.device)
                    rows = torch.arange(B, device=g.device).unsqueeze(1).expand_as(ids)
                    G.index_put_((rows.reshape(-1), ids.reshape(-1)), (g * keep).reshape(-1, g.shape[-1]),
                                 accumulate=True)
                elif use.kind == "linear":
                    G = torch.bmm(g.transpose(1, 2), saved)
                else:
                    G = torch.bmm(saved.transpose(1, 2), g)
            elif use.kind == "embedding":  # rows: gathered P_r rows, cols: projected output grads
                G = torch.bmm(saved.transpose(1, 2), self._as_examples(g @ block.mats["cols"], use.module_name))
            elif use.kind == "linear":  # rows: projected output grads, cols: projected inputs
                G = torch.bmm(self._as_examples(g @ block.mats["rows"], use.module_name).transpose(1, 2), saved)
            else:  # conv1d, W: in x out
                G = torch.bmm(saved.transpose(1, 2), self._as_examples(g @ block.mats["cols"], use.module_name))
            acc = run["acc"]
            acc[block.name] = G if block.name not in acc else acc[block.name] + G
            return None

        return hook

    def _loss(self, batch: LossBatch) -> torch.Tensor:
        """Sum over the batch of the per-example summed token cross-entropy. For architectures whose
        logits are just the LM head of the last hidden state, the head runs on the labelled
        positions only (same loss, a fraction of the vocabulary-sized work)."""
        model = self.model
        B = batch.input_ids.shape[0]
        nxt = batch.labels[:, 1:]  # labels[b, t] is predicted from position t - 1
        head = model.get_output_embeddings()
        base = getattr(model, "base_model", None)
        if (self._fast_head and head is not None and base is not None and base is not model
                and getattr(model.config, "model_type", None) in _PLAIN_HEAD):
            hidden = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          use_cache=False).last_hidden_state
            b_idx, t_idx = (nxt != IGNORE).nonzero(as_tuple=True)
            counts = torch.bincount(b_idx, minlength=B)
            starts = torch.cumsum(counts, 0) - counts
            within = torch.arange(len(b_idx), device=b_idx.device) - starts[b_idx]
            self._run["rows"] = (b_idx, within, int(counts.max()) if len(b_idx) else 0)
            logits = head(hidden[b_idx, t_idx])
            return torch.nn.functional.cross_entropy(logits.float(), nxt[b_idx, t_idx], reduction="sum")
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        labels = torch.cat([nxt, torch.full((B, 1), IGNORE, dtype=nxt.dtype, device=nxt.device)], 1)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                                 ignore_index=IGNORE, reduction="sum")

    def _raw(self, batch: LossBatch) -> list[torch.Tensor]:
        """Per block, the (B, size) projected (and optimizer-corrected) per-example gradients."""
        batch = batch.to(self.device)
        B, T = batch.input_ids.shape
        model = self.model
        was_training = model.training
        model.eval()
        targets: list[torch.Tensor] = []
        embed = model.get_input_embeddings()

        def capture(module, args, output):
            if self._run is not None:
                if not output.requires_grad and output.grad_fn is None and output.is_floating_point():
                    output.requires_grad_()
                targets.append(output)

        handles = [embed.register_forward_hook(capture)]
        for b in self.blocks:
            for u in b.uses:
                handles.append(u.module.register_forward_hook(self._forward_hook(b, u)))
                if u.kind == "embedding" and u.module is not embed:
                    handles.append(u.module.register_forward_hook(capture))
        self._run = {"B": B, "T": T, "mask": batch.attention_mask.to(torch.float32), "acc": {}}
        try:
            with torch.enable_grad():
                loss = self._loss(batch)
                wanted = [t for t in targets if t.requires_grad]
                if loss.requires_grad and wanted:
                    torch.autograd.grad(loss, wanted, allow_unused=True)
                del loss
            acc = self._run["acc"]
        finally:
            self._run = None
            for h in handles:
                h.remove()
            model.train(was_training)
        raws = []
        for b in self.blocks:
            G = acc.get(b.name)
            if G is None:
                raws.append(torch.zeros(B, b.size, device=self.device))
            elif self.config.projection == "dense":
                if b.scale is not None:
                    G = G / b.scale
                raws.append(G.reshape(B, -1) @ b.mats["dense"])
            else:
                raws.append(G.reshape(B, -1))
        return raws

    def projections(self, batch: LossBatch, normalize_blocks: bool = True, whiten: bool = True) -> np.ndarray:
        """(B, size) per-block projected gradients before the final normalisation: raw when
        normalize_blocks=False; else each block unit-normalised and, when fitted and whiten=True,
        mapped by (R + lambda I)^-1/2 (without re-normalising)."""
        parts = self._raw(batch)
        if normalize_blocks:
            parts = [_normalize(p) for p in parts]
            if whiten and self._whitening is not None:
                parts = [p @ b.whitener for p, b in zip(parts, self.blocks)]
        return torch.cat(parts, 1).cpu().numpy().astype(np.float32)

    def vectors(self, batch: LossBatch) -> np.ndarray:
        if self.config.whiten and self._whitening is None:
            raise GradientError("gradient whiten: fit_whitening (or load the index's whitening state) first")
        parts = [_normalize(p) for p in self._raw(batch)]
        if self._whitening is not None:
            parts = [_normalize(p @ b.whitener) for p, b in zip(parts, self.blocks)]
        vec = _normalize(torch.cat(parts, 1))
        return vec.cpu().numpy().astype(np.float32)

    # --- whitening ------------------------------------------------------------------------------

    def fit_whitening(self, batches: Iterable[LossBatch], damping: float = 1e-3) -> None:
        """Fit per-block (R + lambda I)^-1/2 on per-block-normalised projected training gradients."""
        if not self.config.whiten:
            raise GradientError("gradient whiten is off: set whiten=True to fit whitening")
        if damping <= 0:
            raise GradientError(f"whitening damping {damping}: must be positive")
        sums = [torch.zeros(b.size, b.size, dtype=torch.float64) for b in self.blocks]
        n = 0
        for batch in batches:
            for s, p in zip(sums, self._raw(batch)):
                u = _normalize(p).double().cpu()
                s += u.T @ u
            n += len(batch)
        if n == 0:
            raise GradientError("whitening: the calibration sample is empty")
        for s, b in zip(sums, self.blocks):
            R = s / n
            lam = damping * float(torch.trace(R)) / b.size
            evals, evecs = torch.linalg.eigh(R)
            W = (evecs * (evals.clamp(min=0) + lam).rsqrt()) @ evecs.T
            b.whitener = W.float().to(self.device)
        self._whitening = {"damping": damping, "samples": n, "scope": "per block",
                           "lambda": "damping * trace(R) / k"}

    def state_dict(self) -> dict:
        """What queries need besides the config: the fitted whitening (if any) and the spec."""
        import json

        return {"format": FORMAT_VERSION, "spec": json.dumps(self._identity(), sort_keys=True),
                "whitening": None if self._whitening is None else dict(self._whitening),
                "whiteners": {b.name: b.whitener.cpu() for b in self.blocks if b.whitener is not None}}

    def _identity(self) -> dict:
        s = self.spec()
        opt = s["corrections"]["optimizer"]
        s["corrections"] = {"optimizer": opt and {k: v for k, v in opt.items() if k != "path"}}
        return s

    def load_state_dict(self, state: dict) -> None:
        import json

        mine = self._identity()
        theirs = json.loads(state.get("spec", "{}"))
        if theirs != mine:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise GradientError(f"gradient state was made with a different configuration ({', '.join(diff)} differ)")
        if state.get("whitening") is not None:
            if not self.config.whiten:
                raise GradientError("gradient state holds whitening but whiten is off in this configuration")
            for b in self.blocks:
                b.whitener = state["whiteners"][b.name].float().to(self.device)
            self._whitening = dict(state["whitening"])

    def save(self, path: str | Path) -> None:
        torch.save(self.state_dict(), path)

    def load(self, path: str | Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise GradientError(f"{path}: no gradient state file") from None
        self.load_state_dict(state)


def combine_checkpoints(vectors: list[np.ndarray]) -> np.ndarray:
    """Concatenate per-checkpoint unit vectors (each (N, d)) scaled by 1/sqrt(C): the dot product
    of two combined vectors is the mean over the C checkpoints of their per-checkpoint dot products
    (cosines), i.e. TracIn's checkpoint sum with equal weights, up to the constant C."""
    if not vectors:
        raise GradientError("combine_checkpoints: no checkpoint vectors")
    n = {v.shape[0] for v in vectors}
    if len(n) != 1 or any(v.ndim != 2 for v in vectors):
        raise GradientError(f"combine_checkpoints: per-checkpoint arrays must be (N, d) with the same N, got "
                            f"{[v.shape for v in vectors]}")
    total = sum(v.shape[1] for v in vectors)
    if total > MAX_SIZE:
        raise GradientError(f"combine_checkpoints: {len(vectors)} checkpoints give {total} numbers, over {MAX_SIZE}")
    return (np.concatenate(vectors, axis=1) / np.sqrt(len(vectors))).astype(np.float32)
