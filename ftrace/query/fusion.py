"""Score maps (sentence id -> score, higher is better): ranking, fusion primitives, sentence level.

- `weighted_sum`: each run's scores min-max normalised to [0, 1] over the candidates, then summed
  with weights. A candidate a run did not score counts as that run's minimum.
- `rrf`: reciprocal rank fusion, sum over runs of weight / (k + rank), rank starting at 1.
- `cascade`: the second run's top k re-ordered by `weighted_sum` (normalised over those k) and
  ranked above every other candidate, which keep the second run's order.
"""

from __future__ import annotations

import math
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


def top_set(scores: Scores, k: int) -> set[str]:
    """The ids of the k best scores, and every id tied with the k-th (no tiebreak decides the cut)."""
    if not scores:
        return set()
    cut = sorted(scores.values(), reverse=True)[min(k, len(scores)) - 1]
    return {i for i, s in scores.items() if s >= cut}


_BELOW_ONE = math.nextafter(1.0, 0.0)


def cascade(first: Scores, second: Scores, weights: tuple[float, float], k: int) -> dict[str, float]:
    """Re-rank `second`'s top k (`top_set`: ties with the k-th included) by the weighted sum of both
    runs, each min-max normalised over that top set, and rank it above the rest, which keep `second`'s
    order. Fused scores: 1 + that sum (within [1, 2]) for the top set; for the rest, `second`'s min-max
    score over all candidates, which is below 1 (a candidate `second` did not score counts as its minimum, 0).
    Equal fused scores are left to the caller's tiebreak, as for every fusion."""
    top = top_set(second, k)
    head = weighted_sum({"a": {i: s for i, s in first.items() if i in top}, "b": {i: second[i] for i in top}},
                        {"a": weights[0], "b": weights[1]})
    tail = minmax(second)
    return {i: 1.0 + head[i] if i in top else min(tail.get(i, 0.0), _BELOW_ONE) for i in set(first) | set(second)}


def by_sentence(example_scores: Scores, sentence_of: Callable[[str], str]) -> dict[str, float]:
    """A sentence's score is the max over its examples."""
    out: dict[str, float] = {}
    for e, s in example_scores.items():
        sid = sentence_of(e)
        if sid not in out or s > out[sid]:
            out[sid] = s
    return out
