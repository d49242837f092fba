"""From rankings to the benchmark's numbers: metrics per slice (mean ± std over seeds) and a paired
significance test of the best method against BM25."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from ftrace.bench import metrics as M
from ftrace.corpus import Query

# (seed, query id, method) -> [(sentence id, score)], best first
Rankings = Mapping[tuple[int, str, str], Sequence[tuple[str, float]]]


def slices(learned: Mapping[str, bool]) -> dict[str, Callable[[Query], bool]]:
    return {"all": lambda q: True, "pre-train-learned": lambda q: learned[q.id]}


def evaluate(per_seed: Mapping[int, Sequence[Query]], rankings: Rankings, methods: Sequence[str],
             learned: Mapping[str, bool], stat_test: str) -> dict:
    table: dict[str, dict[str, dict]] = {}
    counts: dict[str, list[int]] = {}
    significance: dict[str, dict] = {}
    for sl, keep in slices(learned).items():
        by_seed: dict[str, dict[str, list[float]]] = {m: {x: [] for x in M.METRICS} for m in methods}
        counts[sl] = []
        pooled_props: dict[str, list[str]] = {}
        pooled: dict[str, dict[str, list[str]]] = {m: {} for m in methods}
        for seed, all_qs in per_seed.items():
            qs = [q for q in all_qs if keep(q)]
            counts[sl].append(len(qs))
            props = {q.id: q.proponents for q in qs}
            for q in qs:
                pooled_props[f"{seed}|{q.id}"] = q.proponents
            for m in methods:
                ranked = {q.id: [i for i, _ in rankings[(seed, q.id, m)]] for q in qs}
                for q in qs:
                    pooled[m][f"{seed}|{q.id}"] = ranked[q.id]
                vals = M.evaluate(props, ranked) if qs else dict.fromkeys(M.METRICS, math.nan)
                for x in M.METRICS:
                    by_seed[m][x].append(vals[x])
        table[sl] = {m: {x: {**M.mean_std(v), "per_seed": [None if math.isnan(y) else y for y in v]}
                         for x, v in by_seed[m].items()} for m in methods}
        significance[sl] = best_vs_bm25(table[sl], methods, pooled_props, pooled, stat_test)
    return {"metrics": table, "query_counts": counts, "significance": significance}


def best_vs_bm25(table: dict, methods: Sequence[str], props: dict, pooled: dict, stat_test: str) -> dict:
    if "bm25" not in methods or len(methods) < 2:
        return {"note": "needs bm25 and another method"}
    others = [m for m in methods if m != "bm25" and table[m]["mrr"]["mean"] is not None]
    if not others or len(props) < 2:
        return {"note": f"too few queries ({len(props)}) for a paired test"}
    best_other = max(others, key=lambda m: table[m]["mrr"]["mean"])
    bm = table["bm25"]["mrr"]["mean"]
    best = best_other if bm is None or table[best_other]["mrr"]["mean"] > bm else "bm25"
    out = {"best": best, "compared": [best_other, "bm25"], "pairs": len(props),
           "unit": "(seed, query) pairs pooled over seeds", "main_test": stat_test}
    for test in ("student", "fisher"):
        out[test] = M.paired_test(props, pooled[best_other], pooled["bm25"], (best_other, "bm25"), stat_test=test)
    return out
