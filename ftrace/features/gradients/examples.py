"""Training examples' loss batches for gradient features (`GradientConfig.example_loss`).

"sentence": the LM loss of the whole sentence (`example_batch`: every token after the first).
"object": the loss of the tokens of `Example.object` (the sentence's first stated object,
`ftrace.corpus.stated_objects`) given the text before it, FTRACE's object masking for a causal LM: exactly the
labels of `object_span_rows`. An example with no object, or whose object has no labelled token
(only in the first token, or cut by `max_tokens`), keeps the whole-sentence loss: a fallback,
counted. Either way there is one row per example, with the same input ids as `example_batch`, so
the index layout does not depend on the loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ftrace.config import MAX_TOKENS
from ftrace.corpus.records import Example
from ftrace.features.gradients.blocks import GradientError
from ftrace.model.batching import IGNORE, LossBatch, example_batch, object_span_rows


def example_loss_batch(tokenizer, examples: Sequence[Example], example_loss: str,
                       max_tokens: int = MAX_TOKENS) -> tuple[LossBatch, int]:
    """The batch of `examples` under `example_loss` ("sentence" or "object") and the number of fallbacks
    to the whole-sentence loss (always 0 for "sentence")."""
    batch = example_batch(tokenizer, [e.text for e in examples], max_tokens)
    if example_loss == "sentence":
        return batch, 0
    if example_loss != "object":
        raise GradientError(f"example loss {example_loss!r}: 'sentence' or 'object'")
    at = [i for i, e in enumerate(examples) if e.object]
    try:
        rows = object_span_rows(tokenizer, [examples[i].text for i in at], [examples[i].object or "" for i in at],
                                max_tokens)
    except ValueError as e:
        raise GradientError(f"--example-loss object: {e}") from None
    spans = 0
    for i, row in zip(at, rows, strict=True):
        if row is None:
            continue
        ids, labels = row
        if batch.input_ids[i, :len(ids)].tolist() != ids or int(batch.attention_mask[i].sum()) != len(ids):
            raise GradientError(f"--example-loss object: tokenisation of {examples[i].text[:60]!r} is not stable")
        batch.labels[i] = IGNORE
        batch.labels[i, :len(labels)] = torch.tensor(labels)
        spans += 1
    return batch, len(examples) - spans
