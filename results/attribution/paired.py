"""Paired comparisons of `ftrace bench` runs over the same distinct queries: each query's reciprocal rank of its
first proponent, averaged over the seeds that drew it, for a method of one run against a method of another (or the
same run), optionally within one learned slice; paired t-test and Wilcoxon signed-rank test over those queries.

    python results/attribution/paired.py RUN_A:METHOD RUN_B:METHOD [--slice fine-tune-learned] [--strict]

A RUN may also be a per_part.py output (PARTS.json:PART): each draw's reciprocal rank under one part of the vector.

Prints one markdown table row: A's MRR, B's MRR, the difference, both p-values and the number of queries; with
`--ratio`, also A's MRR over B's (the issue's "x random-target") and its 95% bootstrap interval over the queries.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import stats


def per_query_rr(run: Path, method: str, slice_: str | None = None, strict: bool = False) -> dict[str, float]:
    """query id -> mean over the seeds that drew it of 1 / (rank of its first proponent) under `method`."""
    per: dict[str, list[float]] = {}
    if run.suffix == ".json":  # per_part.py's draws
        for d in json.loads(run.read_text())["draws"]:
            if strict and "strict" not in d:
                raise SystemExit(f"{run}: its draws do not record the strict slice; run per_part.py again")
            if (not slice_ or d["slice"] == slice_) and (not strict or d["strict"]):
                if method not in d["rr"]:
                    raise SystemExit(f"{run}: its draws keep no ranks for {method!r} (per_part.py omits single blocks' "
                                     "ranks for indexes of many blocks; their MRRs are in its mrr table)")
                per.setdefault(d["query"], []).append(d["rr"][method])
        return {q: float(np.mean(v)) for q, v in per.items()}
    for line in (run / "rankings.jsonl").read_text().splitlines():
        x = json.loads(line)
        if x["method"] != method or (slice_ and x["slice"] != slice_) or (strict and not x.get("strict")):
            continue
        ranks = x["proponent_ranks"]
        per.setdefault(x["query"], []).append(1 / min(ranks) if ranks else 0.0)
    return {q: float(np.mean(v)) for q, v in per.items()}


def compare(a: tuple[Path, str], b: tuple[Path, str], slice_: str | None = None, strict: bool = False,
            ratio: bool = False) -> dict:
    ra, rb = per_query_rr(*a, slice_, strict), per_query_rr(*b, slice_, strict)
    qs = sorted(set(ra) & set(rb))
    x, y = np.array([ra[q] for q in qs]), np.array([rb[q] for q in qs])
    differ = len(qs) > 1 and bool(np.any(x != y))
    ratios = np.array([])
    if ratio and len(qs) > 1:  # the queries resampled with replacement, both methods together (seed 0)
        picks = np.random.default_rng(0).integers(0, len(qs), size=(10_000, len(qs)))
        with np.errstate(divide="ignore", invalid="ignore"):  # a resample where B scores 0 gives inf (or nan)
            ratios = x[picks].mean(1) / y[picks].mean(1)
    return {"a": x.mean() if qs else float("nan"), "b": y.mean() if qs else float("nan"), "queries": len(qs),
            "t": stats.ttest_rel(x, y).pvalue if differ else float("nan"),
            "wilcoxon": stats.wilcoxon(x, y).pvalue if differ else float("nan"),
            "ratio_95": tuple(np.percentile(ratios, [2.5, 97.5])) if len(ratios) else (float("nan"),) * 2}


def spec(text: str) -> tuple[Path, str]:
    run, _, method = text.rpartition(":")
    return Path(run), method


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", type=spec)
    ap.add_argument("b", type=spec)
    ap.add_argument("--slice", default=None)
    ap.add_argument("--strict", action="store_true")
    ap.add_argument("--ratio", action="store_true", help="also A / B, with its 95%% bootstrap interval")
    o = ap.parse_args()
    r = compare(o.a, o.b, o.slice, o.strict, o.ratio)
    ratio = f" {r['a'] / r['b']:.2f}x ({r['ratio_95'][0]:.2f}-{r['ratio_95'][1]:.2f}) |" if o.ratio else ""
    print(f"| {o.a[0].name}:{o.a[1]} | {o.b[0].name}:{o.b[1]} | {r['a']:.3f} | {r['b']:.3f} | {r['a'] - r['b']:+.3f} | "
          f"{r['t']:.2g} | {r['wilcoxon']:.2g} | {r['queries']} |{ratio}")


if __name__ == "__main__":
    main()
