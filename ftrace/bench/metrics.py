"""Metrics with ranx (qrels from proponents, runs from rankings); paired significance tests with scipy.

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


FISHER_RESAMPLES = 10_000


def paired_pvalues(a: Sequence[float], b: Sequence[float], seed: int = 42) -> dict[str, float | None]:
    """Two-sided p-values of paired tests of a vs b (one value per query each): "student", the paired
    t-test (scipy.stats.ttest_rel), and "fisher", the randomisation test that flips the signs of
    the differences (scipy.stats.permutation_test, 10,000 seeded resamples; exact when 2^n <= 10,000).
    None for both when fewer than 2 pairs or every difference is 0 (nothing to test)."""
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 2 or not np.any(x != y):
        return {"student": None, "fisher": None}
    with np.errstate(all="ignore"), warnings.catch_warnings():
        # nearly equal differences: scipy warns of precision loss and returns nan or a p-value; neither is an error
        warnings.simplefilter("ignore", RuntimeWarning)
        t = float(stats.ttest_rel(x, y).pvalue)
    fisher = stats.permutation_test((x, y), _mean_difference, permutation_type="samples", vectorized=True,
                                    n_resamples=FISHER_RESAMPLES, alternative="two-sided",
                                    random_state=np.random.default_rng(seed))
    return {"student": None if math.isnan(t) else t, "fisher": float(fisher.pvalue)}


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x - y, axis=axis)
