"""The learning curve of a run (`ftrace train --eval-facts N`): at every checkpoint, which of a seeded sample of
the corpus's facts the model answers right (the bench's rule, `ftrace.model.answer.answers_right`: teacher-forced,
exact), so that a run shows how many facts went from wrong at the base model to right, and when."""

from __future__ import annotations

from typing import Any

import numpy as np

from ftrace.corpus import Corpus, Query
from ftrace.model.answer import answers_right
from ftrace.model.loading import LoadedModel


def fact_sample(corpus: Corpus, n: int, seed: int) -> list[Query]:
    """n of the corpus's queries (all of them if it has fewer), drawn with the run's seed, in corpus order."""
    queries = corpus.queries
    if n >= len(queries):
        return list(queries)
    picked = np.random.default_rng(seed).choice(len(queries), size=n, replace=False)
    return [queries[i] for i in sorted(picked)]


def facts_right(model: Any, tokenizer: Any, queries: list[Query], max_tokens: int) -> dict[str, Any]:
    """{"right": count, "of": len(queries), "right_ids": [query ids answered right]} for the model as it is now
    (evaluated in eval mode, no gradient; the training mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        lm = LoadedModel(name="training", model=model, tokenizer=tokenizer, fingerprint="")
        right = answers_right(lm, [q.prompt for q in queries], [q.target for q in queries], max_tokens=max_tokens)
    finally:
        model.train(was_training)
    ids = [q.id for q, r in zip(queries, right, strict=True) if r]
    return {"right": len(ids), "of": len(queries), "right_ids": ids}
