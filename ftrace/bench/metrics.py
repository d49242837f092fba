"""Metrics with ranx: qrels from proponents, runs from rankings, paired significance tests.

- "mrr": mean reciprocal rank of the first proponent (0 when no proponent is ranked).
- "recall@10": FTRACE's recall, the fraction of a query's proponents in the top 10.
- "hit_rate@10": TrackStar's recall@10, 1 when any proponent is in the top 10.

Runs are handed to ranx as rankings already ordered by the benchmark (ties broken by a seeded
random order), as scores n, n-1, ..., 1, so ranx never breaks a tie itself.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

METRICS = ("mrr", "recall@10", "hit_rate@10")
LABELS = {"mrr": "MRR", "recall@10": "Recall@10 (FTRACE)", "hit_rate@10": "Recall@10 (TrackStar)"}

Rankings = Mapping[str, Sequence[str]]  # query id -> sentence ids, best first


def _ranx():
    warnings.filterwarnings("ignore", module="ranx")
    warnings.filterwarnings("ignore", message=".*unsafe cast.*")
    import ranx

    return ranx


def qrels(proponents: Mapping[str, Iterable[str]]):
    q = {qid: {s: 1 for s in props} for qid, props in proponents.items()}
    empty = [qid for qid, rel in q.items() if not rel]
    if empty:
        raise ValueError(f"queries without proponents cannot be evaluated: {empty[:3]}")
    return _ranx().Qrels(q)


def run(rankings: Rankings, name: str = "run"):
    r = {qid: {s: float(len(ids) - i) for i, s in enumerate(ids)} for qid, ids in rankings.items() if ids}
    return _ranx().Run(r, name=name)


def per_query(proponents: Mapping[str, Iterable[str]], rankings: Rankings,
              metrics: Sequence[str] = METRICS) -> dict[str, dict[str, float]]:
    """metric -> query id -> value, for every query in `proponents` (an unranked query scores 0)."""
    if not proponents:
        return {m: {} for m in metrics}
    q, r = qrels(proponents), run({qid: rankings.get(qid, []) for qid in proponents})
    _ranx().evaluate(q, r, list(metrics), make_comparable=True)
    return {m: {qid: float(r.scores[m][qid]) for qid in proponents} for m in metrics}


def evaluate(proponents: Mapping[str, Iterable[str]], rankings: Rankings,
             metrics: Sequence[str] = METRICS) -> dict[str, float]:
    """metric -> mean over the queries of `proponents` (NaN when there are none)."""
    pq = per_query(proponents, rankings, metrics)
    return {m: float(np.mean(list(v.values()))) if v else math.nan for m, v in pq.items()}


def mean_std(values: Sequence[float]) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) of the finite values."""
    vals = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return {"mean": float(np.mean(vals)), "std": std, "n": len(vals)}


def paired_test(proponents: Mapping[str, Iterable[str]], a: Rankings, b: Rankings, names: tuple[str, str],
                metrics: Sequence[str] = METRICS, stat_test: str = "student",
                seed: int = 42) -> dict[str, float | None]:
    """Two-sided p-value per metric of a paired test (ranx.compare) between two rankings of the
    same queries: 'student' (paired t-test) or 'fisher' (randomisation test, 1000 permutations)."""
    ranx = _ranx()
    if len(proponents) < 2:
        return dict.fromkeys(metrics)
    q = qrels(proponents)
    ra = run({qid: a.get(qid, []) for qid in proponents}, names[0]).make_comparable(q)
    rb = run({qid: b.get(qid, []) for qid in proponents}, names[1]).make_comparable(q)
    with np.errstate(all="ignore"):
        report = ranx.compare(q, [ra, rb], metrics=list(metrics), stat_test=stat_test, random_seed=seed,
                              make_comparable=True)
    out: dict[str, float | None] = {}
    for m in metrics:
        p = float(report.to_dict()[names[0]]["comparisons"][names[1]][m])
        out[m] = None if math.isnan(p) else p
    return out
