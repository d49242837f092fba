"""From rankings to the benchmark's numbers: metrics per slice (mean ± std over seeds) and paired
significance tests against BM25 over the distinct queries."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ftrace.bench import metrics as M
from ftrace.corpus import Query

# per draw and method, (seed, query id, method) -> [(sentence id, score)], best first (metrics.Rankings: one
# run's query id -> sentence ids)
DrawRankings = Mapping[tuple[int, str, str], Sequence[tuple[str, float]]]
# method -> metric -> query id -> the query's value, averaged over the seeds that drew it
PerQuery = dict[str, dict[str, dict[str, float]]]

UNIT = "distinct queries (each averaged over the seeds that drew it)"
TESTS = {"student": "paired t-test (scipy.stats.ttest_rel), two-sided",
         "fisher": f"randomisation test flipping the signs of the paired differences (scipy.stats.permutation_test, "
                   f"{M.FISHER_RESAMPLES:,} resamples; exact when 2^n <= that), two-sided"}


# slice name -> the (seed, query id) draws in it, in report order
Members = Mapping[str, set[tuple[int, str]]]


def evaluate(per_seed: Mapping[int, Sequence[Query]], rankings: DrawRankings, methods: Sequence[str], members: Members,
             stat_test: str) -> dict:
    """`members`: the slices to report and the draws in each ("all" holds every one)."""
    table: dict[str, dict[str, dict]] = {}
    counts: dict[str, list[int]] = {}
    significance: dict[str, dict] = {}
    for sl, draws in members.items():
        by_seed: dict[str, dict[str, list[float]]] = {m: {x: [] for x in M.METRICS} for m in methods}
        values: dict[str, dict[str, dict[str, list[float]]]] = {m: {x: {} for x in M.METRICS} for m in methods}
        counts[sl] = []
        for seed, all_qs in per_seed.items():
            qs = [q for q in all_qs if (seed, q.id) in draws]
            counts[sl].append(len(qs))
            props = {q.id: q.proponents for q in qs}
            for m in methods:
                pq = M.per_query(props, {q.id: [i for i, _ in rankings[(seed, q.id, m)]] for q in qs})
                for x in M.METRICS:
                    by_seed[m][x].append(float(np.mean(list(pq[x].values()))) if qs else math.nan)
                    for qid, v in pq[x].items():
                        values[m][x].setdefault(qid, []).append(v)
        table[sl] = {m: {x: {**M.mean_std(v), "per_seed": [None if math.isnan(y) else y for y in v]}
                         for x, v in by_seed[m].items()} for m in methods}
        per_query = {m: {x: {q: float(np.mean(v)) for q, v in d.items()} for x, d in values[m].items()}
                     for m in methods}
        significance[sl] = vs_bm25(table[sl], methods, per_query, sum(counts[sl]), stat_test)
    return {"metrics": table, "query_counts": counts, "significance": significance}


def compare(per_query: PerQuery, a: str, b: str) -> dict:
    """p-values (each test, each metric) and mean differences of method a vs b over the same queries."""
    queries = sorted(per_query[a][M.METRICS[0]])
    out: dict = {"student": {}, "fisher": {}, "mean_difference": {}}
    for x in M.METRICS:
        va, vb = [per_query[a][x][q] for q in queries], [per_query[b][x][q] for q in queries]
        for test, p in M.paired_pvalues(va, vb).items():
            out[test][x] = p
        out["mean_difference"][x] = float(np.mean(np.subtract(va, vb))) if queries else None
    return out


def vs_bm25(table: dict, methods: Sequence[str], per_query: PerQuery, pairs: int, stat_test: str) -> dict:
    """The best method by MRR (mean over seeds) against BM25, and every method against BM25, paired
    over the distinct queries."""
    if "bm25" not in methods or len(methods) < 2:
        return {"note": "needs bm25 and another method"}
    n = len(per_query["bm25"][M.METRICS[0]])
    others = [m for m in methods if m != "bm25" and table[m]["mrr"]["mean"] is not None]
    if not others or n < 2:
        return {"note": f"too few distinct queries ({n}) for a paired test"}
    best_other = max(others, key=lambda m: table[m]["mrr"]["mean"])
    bm = table["bm25"]["mrr"]["mean"]
    best = best_other if bm is None or table[best_other]["mrr"]["mean"] > bm else "bm25"
    every = {m: compare(per_query, m, "bm25") for m in others}
    return {"best": best, "compared": [best_other, "bm25"], "unit": UNIT, "queries": n, "seed_query_pairs": pairs,
            "main_test": stat_test, "tests": TESTS, "student": every[best_other]["student"],
            "fisher": every[best_other]["fisher"], "vs_bm25": every}
