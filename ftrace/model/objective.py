"""The training objective, defined once: what a training example is, its loss, and a query's target
log-probability. `ftrace train` steps on it, the tail-patch (bench) steps on it and measures with it.

- a training example: `ftrace.corpus.Example` (a sentence, and the object its loss scores, or None).
- example loss "sentence": one example per sentence; every token after the first is scored.
- example loss "object": one example per object the sentence states (`ftrace.corpus.stated_objects`, the one
  "object" rule); only the object's tokens are scored, given the text before them (a causal LM's version of
  FTRACE's object masking). Sentences with no such object, or whose object has no token to score, give no
  example. (An index holds one example per sentence, its first stated object, with a whole-sentence
  fallback: `Corpus.examples`, ftrace.features.gradients.examples.)
- the token limit: `max_tokens` (ftrace.config.MAX_TOKENS by default), longer texts truncated.
- a training step's gradient (`accumulate_gradient`): the batch's mean token loss, computed in length-sorted
  groups so that one long sentence does not pad the others.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ftrace.config import MAX_TOKENS
from ftrace.corpus import Example, Sentence, stated_objects
from ftrace.model.batching import (
    IGNORE,
    LossBatch,
    budget_batches,
    example_batch,
    object_span_batch,
    object_span_rows,
    query_batch,
)

CHUNK = 1024  # texts tokenised per call while filtering
# padded tokens per forward and backward within a training step on the CPU (ingest's --batch-tokens); a GPU runs
# the batch whole (its parallelism hides padding; sequential small passes would not be faster there)
GROUP_TOKENS = 1024


def sentence_examples(sentences: Sequence[Sentence], example_loss: str, tokenizer,
                      max_tokens: int = MAX_TOKENS) -> list[Example]:
    """The training examples of these sentences, in order (example loss "object": none for a sentence whose
    text contains no object of its facts)."""
    if example_loss == "sentence":
        return [Example(id=f"{s.id}:lm", sentence_id=s.id, text=s.text) for s in sentences]
    candidates = [Example(id=f"{s.id}:{k}", sentence_id=s.id, text=s.text, object=obj)
                  for s in sentences for k, obj in enumerate(stated_objects(s))]
    kept: list[Example] = []
    for i in range(0, len(candidates), CHUNK):
        chunk = candidates[i:i + CHUNK]
        rows = object_span_rows(tokenizer, [e.text for e in chunk], [e.object or "" for e in chunk], max_tokens)
        kept += [e for e, row in zip(chunk, rows, strict=True) if row is not None]
    return kept


def loss_batch(examples: Sequence[Example], tokenizer, max_tokens: int = MAX_TOKENS) -> LossBatch:
    if examples[0].object is None:
        return example_batch(tokenizer, [e.text for e in examples], max_tokens)
    return object_span_batch(tokenizer, [e.text for e in examples], [e.object or "" for e in examples], max_tokens)


def lm_loss(model: torch.nn.Module, batch: LossBatch) -> torch.Tensor:
    """Mean cross-entropy over the batch's scored tokens (labels[b, t] is predicted at t - 1)."""
    return _cross_entropy(model, batch, "mean")


def _cross_entropy(model: torch.nn.Module, batch: LossBatch, reduction: str) -> torch.Tensor:
    """The cross-entropy of the batch's scored tokens, "mean" or "sum" (labels[b, t] is predicted at t - 1)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    logits, labels = logits[:, :-1], batch.labels[:, 1:]
    if not (labels != IGNORE).any():  # nothing scored (every text a single token): no gradient
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=IGNORE, reduction=reduction)


def accumulate_gradient(model: torch.nn.Module, batch: LossBatch, group_tokens: int | None = None) -> float:
    """Add to the parameters' .grad the gradient of `lm_loss(model, batch)` and return that loss, computed in groups:
    the rows sorted by the position of their last scored token (nothing after it changes the loss of a causal LM),
    cut into groups of at most `group_tokens` padded tokens (default: GROUP_TOKENS on the CPU, the whole batch
    elsewhere), each padded to its own longest row, each scored token weighing 1 / (the batch's scored tokens). The
    same loss and gradient as one padded batch, up to float rounding (summed in float32 whatever the weights' dtype),
    for the tokens the rows really have (perf/results/train_step-cpu.md)."""
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    scored = batch.labels[:, 1:] != IGNORE
    total = int(scored.sum())
    if not total:  # nothing scored: lm_loss's zero loss
        loss = lm_loss(model, batch.to(device))
        loss.backward()
        return loss.item()
    # tokens up to each row's last scored one; a row with none adds nothing to the loss
    ends = [int(row.nonzero().max()) + 2 if row.any() else 0 for row in scored]
    order = sorted((i for i, end in enumerate(ends) if end), key=ends.__getitem__)
    budget = group_tokens or (GROUP_TOKENS if device.type == "cpu" else len(order) * max(ends))
    groups = budget_batches([ends[i] for i in order], len(order), budget)
    # low-precision weights: the groups' gradients are summed in float32, rounded to the weights' dtype once
    low = [p for p in params if p.dtype != torch.float32] if len(groups) > 1 else []
    wide: dict[torch.nn.Parameter, torch.Tensor] = {}

    def widen() -> None:
        for p in low:
            if p.grad is not None:
                wide[p] = p.grad.float() if p not in wide else wide[p].add_(p.grad.float())
                p.grad = None

    widen()
    value = 0.0
    for part in groups:
        rows, width = order[part], max(ends[i] for i in order[part])
        group = LossBatch(batch.input_ids[rows, :width], batch.attention_mask[rows, :width],
                          batch.labels[rows, :width]).to(device)
        loss = _cross_entropy(model, group, "sum") / total
        loss.backward()
        value += loss.item()
        widen()
    for p, g in wide.items():
        p.grad = g.to(p.dtype)
    return value


@torch.no_grad()
def target_logprobs(model: torch.nn.Module, tokenizer, prompts: Sequence[str], targets: Sequence[str],
                    max_tokens: int = MAX_TOKENS, params: dict[str, torch.Tensor] | None = None) -> list[float]:
    """log p(target | prompt) per query, summed over the target's tokens, in float64 (at `params`, a
    {name: tensor} replacing the model's parameters, if given)."""
    device = next(model.parameters()).device
    batch = query_batch(tokenizer, prompts, targets, max_tokens).to(device)
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    out = functional_call(model, params, (), kwargs) if params is not None else model(**kwargs)
    logp = torch.log_softmax(out.logits[:, :-1].double(), dim=-1)
    labels = batch.labels[:, 1:]
    scored = labels != IGNORE
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * scored).sum(dim=1).tolist()
