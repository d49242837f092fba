"""Score fusion over sentence-level score maps (id -> score, higher is better).

- `weighted_sum`: each method's scores min-max normalised to [0, 1] over the candidates, then
  summed with weights. A candidate a method did not score counts as that method's minimum.
- `rrf`: reciprocal rank fusion, sum over methods of weight / (k + rank), rank starting at 1.
"""

from __future__ import annotations

from collections.abc import Mapping

Scores = Mapping[str, float]


def minmax(scores: Scores) -> dict[str, float]:
    if not scores:
        return {}
    lo, hi = min(scores.values()), max(scores.values())
    span = hi - lo
    return {i: (s - lo) / span if span > 0 else 1.0 for i, s in scores.items()}


def weighted_sum(runs: Mapping[str, Scores], weights: Mapping[str, float]) -> dict[str, float]:
    ids = {i for run in runs.values() for i in run}
    fused = dict.fromkeys(ids, 0.0)
    for name, run in runs.items():
        norm = minmax(run)
        w = weights.get(name, 1.0)
        for i in ids:
            fused[i] += w * norm.get(i, 0.0)
    return fused


def ranks(scores: Scores) -> dict[str, int]:
    """1-based ranks, ties broken by id so that results are deterministic."""
    order = sorted(scores, key=lambda i: (-scores[i], i))
    return {i: r for r, i in enumerate(order, 1)}


def rrf(runs: Mapping[str, Scores], k: int = 60, weights: Mapping[str, float] | None = None) -> dict[str, float]:
    fused: dict[str, float] = {}
    for name, run in runs.items():
        w = (weights or {}).get(name, 1.0)
        for i, r in ranks(run).items():
            fused[i] = fused.get(i, 0.0) + w / (k + r)
    return fused


def top(scores: Scores, k: int) -> list[tuple[str, float]]:
    return sorted(scores.items(), key=lambda p: (-p[1], p[0]))[:k]


def by_sentence(example_scores: Scores, sentence_of: Mapping[str, str]) -> dict[str, float]:
    """A sentence's score is the max over its examples."""
    out: dict[str, float] = {}
    for e, s in example_scores.items():
        sid = sentence_of[e]
        if sid not in out or s > out[sid]:
            out[sid] = s
    return out
