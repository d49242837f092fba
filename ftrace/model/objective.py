"""The objective, defined once (kronfluence's `Task` for ftrace): what a training example is, its loss batch, the loss
itself, a training step's gradient, and a query's measurement. Training steps on it, the index's gradients are its
per-example gradients, the tail-patch steps on it and measures with it.

- **Examples** (`Objective.training_examples`, `index_example`), under the example loss:
  - "sentence": one example per sentence; every token after the first is scored.
  - "object": one example per object the sentence states (`ftrace.corpus.stated_objects`, the one "object" rule);
    only the object's tokens are scored, given the text before them (a causal LM's version of FTRACE's object
    masking). Training and the tail-patch drop a sentence with no such object, or whose object has no token to score.
  - The index holds one example per sentence (`index_example`, id "SENTENCE:lm"), whatever the loss, so its layout
    does not depend on it: under "object" it scores the sentence's FIRST stated object, and the whole sentence where
    there is none (a fallback, counted at ingest). In LAMA's six pilot relations (21,480 train sentences), the
    19,754 that state one object have the same example in training and in the index; the 1,274 that state none are
    not trained on under "object" (the index gives them a whole-sentence gradient); for the 452 that state several
    (2.1%) the index scores the first, training steps on each.
- **Batches** (`Objective.batch`): one rule per example, whatever the others in the batch: its object span under
  "object" when it has one with a scored token, else its whole sentence; `max_tokens` cuts every text.
- **The loss** (`scored_positions`, `summed_loss`): the cross-entropy of the scored tokens, each predicted from the
  position before it, in float32. An index's gradient is that sum for one example (ftrace.features.gradients, which
  computes the LM head on the scored positions only); a training step's is its mean over the batch's scored tokens
  (`lm_loss`, `accumulate_gradient`); a query's gradient is the same sum over its target's tokens.
- **The measurement** (`target_logprobs`): log p(target | prompt), summed over the target's tokens; the tail-patch's
  influence is its change after one step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ftrace import FtraceError
from ftrace.config import MAX_TOKENS
from ftrace.corpus import Example, Sentence, stated_objects
from ftrace.corpus.records import example_id
from ftrace.model.batching import IGNORE, LossBatch, budget_batches, example_batch, object_span_rows, query_batch

EXAMPLE_LOSSES = ("sentence", "object")
CHUNK = 1024  # texts tokenised per call while filtering
# padded tokens per forward and backward within a training step on the CPU (ingest's --batch-tokens); a GPU runs
# the batch whole (its parallelism hides padding; sequential small passes would not be faster there)
GROUP_TOKENS = 1024


class ObjectiveError(FtraceError):
    pass


def index_example(s: Sentence) -> Example:
    """A sentence's one example in an index: its first stated object (scored under the loss "object")."""
    return Example(id=example_id(s.id), sentence_id=s.id, text=s.text, object=next(iter(stated_objects(s)), None))


def index_examples(sentences: Sequence[Sentence]) -> list[Example]:
    return [index_example(s) for s in sentences]


@dataclass(frozen=True)
class Objective:
    """The example loss ("sentence" or "object") with the tokenizer and token limit it is computed with."""

    example_loss: str
    tokenizer: Any
    max_tokens: int = MAX_TOKENS

    def __post_init__(self) -> None:
        if self.example_loss not in EXAMPLE_LOSSES:
            raise ObjectiveError(f"example loss {self.example_loss!r}: 'sentence' or 'object'")
        if self.example_loss == "object" and not getattr(self.tokenizer, "is_fast", False):
            raise ObjectiveError("--example-loss object: needs a fast tokenizer (character offsets); this model's "
                                 "is slow")

    def training_examples(self, sentences: Sequence[Sentence]) -> list[Example]:
        """The training examples of these sentences, in order (under "object", none for a sentence whose text holds
        no object of its facts with a token to score)."""
        if self.example_loss == "sentence":
            return [Example(id=example_id(s.id), sentence_id=s.id, text=s.text) for s in sentences]
        candidates = [Example(id=f"{s.id}:{k}", sentence_id=s.id, text=s.text, object=obj)
                      for s in sentences for k, obj in enumerate(stated_objects(s))]
        kept: list[Example] = []
        for i in range(0, len(candidates), CHUNK):
            chunk = candidates[i:i + CHUNK]
            rows = self._span_rows(chunk)
            kept += [e for e, row in zip(chunk, rows, strict=True) if row is not None]
        return kept

    def batch(self, examples: Sequence[Example]) -> tuple[LossBatch, int]:
        """The loss batch of `examples`, one row each, and how many of them fell back to the whole-sentence loss
        (under "object": no object, or none of its tokens scored; always 0 under "sentence"). Every row has the input
        ids of the whole sentence, so a batch's shape does not depend on the loss."""
        batch = example_batch(self.tokenizer, [e.text for e in examples], self.max_tokens)
        if self.example_loss == "sentence":
            return batch, 0
        at = [i for i, e in enumerate(examples) if e.object]
        spans = 0
        for i, row in zip(at, self._span_rows([examples[i] for i in at]), strict=True):
            if row is None:
                continue
            ids, labels = row
            if batch.input_ids[i, :len(ids)].tolist() != ids or int(batch.attention_mask[i].sum()) != len(ids):
                raise ObjectiveError(f"--example-loss object: tokenisation of {examples[i].text[:60]!r} is not "
                                     "stable")
            batch.labels[i] = IGNORE
            batch.labels[i, :len(labels)] = torch.tensor(labels)
            spans += 1
        return batch, len(examples) - spans

    def _span_rows(self, examples: Sequence[Example]) -> list[tuple[list[int], list[int]] | None]:
        try:
            return object_span_rows(self.tokenizer, [e.text for e in examples], [e.object or "" for e in examples],
                                    self.max_tokens)
        except ValueError as e:
            raise ObjectiveError(f"--example-loss object: {e}") from None


def scored_positions(batch: LossBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, positions, targets) of the batch's scored tokens: `targets[i]` is predicted at (rows[i], positions[i]),
    the position before it; in row order."""
    nxt = batch.labels[:, 1:]
    rows, positions = (nxt != IGNORE).nonzero(as_tuple=True)
    return rows, positions, nxt[rows, positions]


def summed_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The summed cross-entropy of `targets` under `logits` (one row each), in float32."""
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def lm_loss(model: torch.nn.Module, batch: LossBatch) -> torch.Tensor:
    """Mean cross-entropy over the batch's scored tokens."""
    return _loss(model, batch, mean=True)


def _loss(model: torch.nn.Module, batch: LossBatch, mean: bool) -> torch.Tensor:
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    rows, positions, targets = scored_positions(batch)
    if not len(targets):  # nothing scored (every text a single token): no gradient
        return logits.sum() * 0.0
    loss = summed_loss(logits[rows, positions], targets)
    return loss / len(targets) if mean else loss


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
        loss = _loss(model, group, mean=False) / total
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
