"""Score maps (sentence id -> score, higher is better): ranking, fusion primitives, sentence level.

- `weighted_sum`: each run's scores min-max normalised to [0, 1] over the candidates, then summed
  with weights. A candidate a run did not score counts as that run's minimum.
- `rrf`: reciprocal rank fusion, sum over runs of weight / (k + rank), rank starting at 1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Scores = Mapping[str, float]


def ranking(scores: Scores, tiebreak: Callable[[str], Any] | None = None) -> list[tuple[str, float]]:
    """(id, score) best first; equal scores ordered by `tiebreak(id)` (default: the id itself)."""
    key = tiebreak or (lambda i: i)
    return sorted(scores.items(), key=lambda p: (-p[1], key(p[0])))


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


def rrf(runs: Mapping[str, Scores], k: int = 60, weights: Mapping[str, float] | None = None) -> dict[str, float]:
    fused: dict[str, float] = {}
    for name, run in runs.items():
        w = (weights or {}).get(name, 1.0)
        for r, (i, _) in enumerate(ranking(run), 1):
            fused[i] = fused.get(i, 0.0) + w / (k + r)
    return fused


def by_sentence(example_scores: Scores, sentence_of: Mapping[str, str]) -> dict[str, float]:
    """A sentence's score is the max over its examples."""
    out: dict[str, float] = {}
    for e, s in example_scores.items():
        sid = sentence_of[e]
        if sid not in out or s > out[sid]:
            out[sid] = s
    return out
