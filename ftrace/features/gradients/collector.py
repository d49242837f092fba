"""The hooked pass: per-example projected gradients of every block from ONE batched forward and ONE
backward (docs/gradients.md, "How it runs").

Forward hooks on every module that uses a block project its input (Linear, Conv1D) or gather P_r
rows (Embedding) and hook its output; the output-gradient hook projects the gradient and adds the
per-example (k_r x k_c) outer products. The sketch projection keeps the raw input and, in the
gradient hook, count-sketches both sides and adds the per-token products of their Fourier transforms
(the transform of the circular convolution that is the TensorSketch of g_t x_t^T; an Embedding's
one-hot rows are scattered straight into their buckets), one inverse transform per example at the
end. The rows projection keeps an embedding lookup's token ids and gradients and sums them per row at the end (a
sparse vector per example). The backward is `torch.autograd.grad(loss, input embeddings)`: no parameter gets
`.grad`, the weight-gradient matmuls are skipped. For plain-head architectures the LM head runs at the labelled
positions only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ftrace.features.gradients.blocks import Block, GradientError, Use
from ftrace.model.batching import LossBatch
from ftrace.model.objective import scored_positions, summed_loss
from ftrace.sparse import SparseVector, SparseVectors

# model types whose logits are exactly `lm_head(last hidden state)` (no soft-capping or scaling)
PLAIN_HEAD = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gpt2", "gpt_neox",
              "olmo", "olmo2", "phi3", "smollm3", "starcoder2", "gemma"}


@dataclass
class LabelledRows:
    """Where the LM head ran when it ran at labelled positions only: row i of its (N, d) tensors is
    example `example[i]`, its `within[i]`-th labelled position; `most` = the largest count."""

    example: torch.Tensor
    within: torch.Tensor
    most: int


@dataclass
class PassState:
    """What the hooks of one batched pass share."""

    batch_size: int
    seq_len: int
    mask: torch.Tensor  # (B, T) float, 1 = real token
    # block name -> (B, k_r, k_c), (B, R, C) (dense) or (B, k // 2 + 1) complex (sketch: a Fourier transform)
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    lookups: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)  # rows: (ids, grads)
    rows: LabelledRows | None = None
    outputs: list[torch.Tensor] = field(default_factory=list)  # the hooked outputs: where the backward stops


class GradientCollector:
    def __init__(self, model: Any, blocks: list[Block]):
        self.model, self.blocks = model, blocks  # each block hooked by its own projection kind
        self.device = next(model.parameters()).device
        self.fast_head = True  # LM head on labelled positions only, where the architecture allows
        self._state: PassState | None = None

    def _as_examples(self, t: torch.Tensor, name: str) -> torch.Tensor:
        """A module input / output gradient as (B, L, d): (B, T, ...) tensors are reshaped; the
        (N, d) rows of the LM head at labelled positions only are padded per example."""
        state = self._state
        assert state is not None
        B, rows = state.batch_size, state.rows
        if rows is not None and t.dim() == 2 and t.shape[0] == len(rows.example):
            out = t.new_zeros(B, rows.most, t.shape[-1])
            out[rows.example, rows.within] = t
            return out
        if t.dim() < 2 or t.shape[0] != B:
            raise GradientError(f"gradient layers: cannot attribute the tensors of {name} (shape {tuple(t.shape)}) "
                                f"to the {B} examples")
        return t.reshape(B, -1, t.shape[-1])

    def _forward_hook(self, block: Block, use: Use) -> Callable:
        def hook(module, args, output):
            state = self._state
            if state is None or not output.requires_grad:
                return None
            B, T = state.batch_size, state.seq_len
            saved: torch.Tensor | tuple[torch.Tensor, torch.Tensor]
            if use.kind == "embedding":
                ids = args[0]
                if ids.shape[0] == 1 and B > 1 and ids.dim() == 2:
                    # shared position ids (GPT-2's wpe): give each example its own copy of the output
                    # so that its gradient stays per example
                    ids = ids.expand(B, -1)
                    output = output.expand(B, *output.shape[1:])
                keep = state.mask if ids.shape == (B, T) else torch.ones_like(ids, dtype=torch.float32)
                if module.padding_idx is not None:
                    keep = keep * (ids != module.padding_idx)
                keep = keep.reshape(B, -1, 1)
                ids = ids.reshape(B, -1)
                saved = (block.mats["rows"][ids] * keep) if block.kind == "factored" else (ids, keep)
            else:
                x = args[0].detach()
                side = "cols" if use.kind == "linear" else "rows"
                x = x.float() @ block.mats[side] if block.kind == "factored" else x.float()
                saved = self._as_examples(x, use.module_name)
                if saved.shape[1] == T:  # padding gets no gradient anyway; make sure of it
                    saved = saved * state.mask.unsqueeze(-1)
            output.register_hook(self._grad_hook(block, use, saved))
            state.outputs.append(output)
            return output

        return hook

    def _grad_hook(self, block: Block, use: Use, saved) -> Callable:
        def hook(grad):
            state = self._state
            assert state is not None
            B = state.batch_size
            g = grad.detach().float()
            if block.kind == "rows":  # the lookup's (B, L) ids and (B, L, C) gradients, summed per row in `collect`
                ids, keep = saved
                state.lookups.setdefault(block.name, []).append((ids, self._as_examples(g, use.module_name) * keep))
                return None
            if block.kind == "dense":
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
            elif block.kind == "sketch":
                if use.kind == "embedding":  # entry (id_t, j) straight into bucket (h_r(id_t) + h_c(j)) mod k
                    ids, keep = saved
                    g = self._as_examples(g, use.module_name)
                    at = (block.mats["rows_at"][ids].unsqueeze(-1) + block.mats["cols_at"]) % block.size
                    at = at + block.size * torch.arange(B, device=g.device).reshape(B, 1, 1)
                    signed = block.mats["rows"][ids].unsqueeze(-1) * block.mats["cols"] * g * keep
                    flat = g.new_zeros(B * block.size).index_add_(0, at.reshape(-1), signed.reshape(-1))
                    G = torch.fft.rfft(flat.reshape(B, block.size))
                else:  # the transforms of both sides' count sketches, multiplied per token; the gradient's
                    # sketched before it is padded per example (the LM head's rows are the labelled ones only)
                    side, other = ("rows", "cols") if use.kind == "linear" else ("cols", "rows")
                    g = self._as_examples(self._transform(block, side, g), use.module_name)
                    G = (g * self._transform(block, other, saved)).sum(1)
            elif use.kind == "embedding":  # rows: gathered P_r rows, cols: projected output grads
                G = torch.bmm(saved.transpose(1, 2), self._as_examples(g @ block.mats["cols"], use.module_name))
            elif use.kind == "linear":  # rows: projected output grads, cols: projected inputs
                G = torch.bmm(self._as_examples(g @ block.mats["rows"], use.module_name).transpose(1, 2), saved)
            else:  # conv1d, W: in x out
                G = torch.bmm(saved.transpose(1, 2), self._as_examples(g @ block.mats["cols"], use.module_name))
            sums = state.sums
            sums[block.name] = G if block.name not in sums else sums[block.name] + G
            return None

        return hook

    @staticmethod
    def _transform(block: Block, side: str, x: torch.Tensor) -> torch.Tensor:
        """The Fourier transform ((..., k // 2 + 1) complex) of the count sketch of x (..., n), one side of
        the block."""
        sketch = x.new_zeros((*x.shape[:-1], block.size))
        sketch.index_add_(x.dim() - 1, block.mats[f"{side}_at"], x * block.mats[side])
        return torch.fft.rfft(sketch)

    def _loss(self, batch: LossBatch) -> torch.Tensor:
        """Sum over the batch of the per-example summed token cross-entropy (`ftrace.model.objective`). For
        architectures whose logits are just the LM head of the last hidden state, the head runs on the scored
        positions only (same loss, a fraction of the vocabulary-sized work)."""
        model, state = self.model, self._state
        assert state is not None
        rows, positions, targets = scored_positions(batch)
        head = model.get_output_embeddings()
        base = getattr(model, "base_model", None)
        if (self.fast_head and head is not None and base is not None and base is not model
                and getattr(model.config, "model_type", None) in PLAIN_HEAD):
            # No block inside the body (e.g. the LM-head term of a tied embedding): the body is a plain
            # forward, and the backward is the softmax's alone (docs/gradients.md, "How it runs").
            head_only = not any(_inside(u.module, base) for b in self.blocks for u in b.uses)
            with torch.no_grad() if head_only else contextlib.nullcontext():
                hidden = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              use_cache=False).last_hidden_state
            if head_only:
                hidden.requires_grad_()  # the head's output needs a graph even when its weight is frozen
            counts = torch.bincount(rows, minlength=state.batch_size)
            starts = torch.cumsum(counts, 0) - counts
            within = torch.arange(len(rows), device=rows.device) - starts[rows]
            state.rows = LabelledRows(rows, within, int(counts.max()) if len(rows) else 0)
            return summed_loss(head(hidden[rows, positions]), targets)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        return summed_loss(logits[rows, positions], targets)

    def collect(self, batch: LossBatch) -> list[torch.Tensor]:
        """Per block, the (B, size) projected (and optimizer-corrected) per-example gradients."""
        if any(b.kind == "rows" for b in self.blocks):
            raise GradientError("the rows projection's gradients are sparse: collect_rows")
        sums, _, B = self._pass(batch)
        return [_projected(b, sums.get(b.name), B, self.device) for b in self.blocks]

    def collect_rows(self, batch: LossBatch) -> list[SparseVectors]:
        """Per block, the rows projection's per-example (optimizer-corrected, whitened where fitted) gradients as
        sparse vectors: a lookup's rows (`_rows`), or a factored block's numbers, every index."""
        sums, lookups, B = self._pass(batch)
        out = []
        for b in self.blocks:
            if b.kind == "rows":
                out.append(_rows(b, lookups.get(b.name, []), B))
                continue
            p = _projected(b, sums.get(b.name), B, self.device)
            if b.whitener is not None:  # the dense whitening, as the featurizer applies it to a dense vector
                p = p @ b.whitener
            values = p.cpu().numpy().astype(np.float32)
            out.append(SparseVectors(SparseVector(np.arange(b.size, dtype=np.int64), v) for v in values))
        return out

    def _pass(self, batch: LossBatch) -> tuple[dict[str, torch.Tensor], dict[str, list], int]:
        """The hooked forward and backward: the hooks' per-block sums and lookups, and the batch size."""
        batch = batch.to(self.device)
        B, T = batch.input_ids.shape
        model = self.model
        was_training = model.training
        model.eval()
        embed = model.get_input_embeddings()

        def start_graph(module, args, output):
            """Input embeddings require grad, so the pass has a graph even when the weights are frozen."""
            if self._state is not None and torch.is_grad_enabled():
                if not output.requires_grad and output.grad_fn is None and output.is_floating_point():
                    output.requires_grad_()

        handles = [embed.register_forward_hook(start_graph)]
        for b in self.blocks:
            for u in b.uses:
                handles.append(u.module.register_forward_hook(self._forward_hook(b, u)))
                if u.kind == "embedding" and u.module is not embed:
                    handles.append(u.module.register_forward_hook(start_graph))
        self._state = PassState(B, T, batch.attention_mask.to(torch.float32))
        try:
            with torch.enable_grad():
                loss = self._loss(batch)
                wanted = self._state.outputs  # the backward goes down to the lowest block use, no further
                if loss.requires_grad and wanted:
                    torch.autograd.grad(loss, wanted, allow_unused=True)
                del loss
            sums, lookups = self._state.sums, self._state.lookups
        finally:
            self._state = None
            for h in handles:
                h.remove()
            model.train(was_training)
        return sums, lookups, B


def _projected(b: Block, G: torch.Tensor | None, batch_size: int, device: torch.device) -> torch.Tensor:
    """A (non-rows) block's (B, size) projected gradients from its hooks' sums (zeros where the pass never
    reached it)."""
    if G is None:
        return torch.zeros(batch_size, b.size, device=device)
    if b.kind == "dense":
        return (G / b.scale if b.scale is not None else G).reshape(batch_size, -1) @ b.mats["dense"]
    if b.kind == "sketch":
        return torch.fft.irfft(G, n=b.size)
    return G.reshape(batch_size, -1)


def _rows(block: Block, lookups: list[tuple[torch.Tensor, torch.Tensor]], batch_size: int) -> SparseVectors:
    """Each example's gradient of an embedding lookup, G = sum_t onehot(x_t) g_t^T, as a sparse vector over the
    block's R x k numbers (row-major): the rows of its tokens with a nonzero gradient, each times its row weight
    and through the columns' matrix (the identity or a projection; the optimizer's rank-1 correction folded into
    both, as for the factored projection)."""
    k = block.factors[1]
    weight, cols = block.mats["rows"], block.mats["cols"]
    out = SparseVectors()
    for e in range(batch_size):
        ids = torch.cat([i[e].reshape(-1) for i, _ in lookups]) if lookups else torch.zeros(0, dtype=torch.long)
        if len(ids) == 0:
            out.append(SparseVector(np.zeros(0, np.int64), np.zeros(0, np.float32)))
            continue
        grads = torch.cat([g[e].reshape(-1, g.shape[-1]) for _, g in lookups])
        rows, where = torch.unique(ids, return_inverse=True)
        G = grads.new_zeros(len(rows), grads.shape[-1]).index_add_(0, where, grads)
        G = (G * weight[rows].unsqueeze(1)) @ cols
        if block.row_whitener is not None and block.whitener is not None:  # whitening.py's rows form: a weight
            G = (G * block.row_whitener[rows].unsqueeze(1)) @ block.whitener  # per row, the columns' matrix
        kept = G.abs().amax(1) > 0  # padding and the tokens after the last scored one have no gradient
        rows, G = rows[kept], G[kept]
        at = rows.unsqueeze(1) * k + torch.arange(k, device=rows.device)
        out.append(SparseVector(at.reshape(-1).cpu().numpy(), G.reshape(-1).cpu().numpy().astype(np.float32)))
    return out


def _inside(module: torch.nn.Module, root: torch.nn.Module) -> bool:
    return any(m is module for m in root.modules())
