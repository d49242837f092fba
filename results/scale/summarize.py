"""The whole-corpus bench runs (bench.sh) in FTRACE Table 2's layout: per mode and query pool, one table per slice
(all, pre-train-learned, bm25-hard) with MRR and both Recall@10s (mean ± std over seeds) and the paired t-test
against BM25 over distinct queries.

    python results/scale/summarize.py      # -> results/scale/bench.md
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = [("rerank", "all", "bench-rerank-all"), ("rerank", "pre-train-learned", "bench-rerank-pretrain"),
        ("full", "all", "bench-full-all"), ("full", "pre-train-learned", "bench-full-pretrain"),
        ("full (cascade fusion)", "all", "bench-full-all-cascade")]
SLICES = ("all", "pre-train-learned", "bm25-hard")
METRICS = ("mrr", "recall@10", "hit_rate@10")


def cell(stat: dict) -> str:
    return "n/a" if stat.get("mean") is None else f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def p_value(sig: dict, method: str) -> str:
    vs = sig.get("vs_bm25", {}).get(method)
    if not vs:
        return ""
    p = vs["student"]["mrr"]
    return "n/a" if p is None else f"{p:.2g}" if p >= 1e-4 else "<1e-4"


def table(run: dict, slice_: str) -> list[str]:
    metrics, sig = run["metrics"].get(slice_), run["significance"].get(slice_, {})
    counts = run["query_counts"].get(slice_)
    if not metrics or not counts or not sum(counts):
        return [f"_{slice_}: no queries_", ""]
    weights = run["fusion"]["weights"]
    lines = [f"**{slice_}** (queries per seed: {', '.join(map(str, counts))})", "",
             "| method | MRR | Recall@10 (FTRACE) | Recall@10 (TrackStar) | MRR vs bm25: p | fusion weight |",
             "|---|---|---|---|---|---|"]
    for method, row in metrics.items():
        w = weights.get(method, {}).get("weight")
        lines.append(f"| {method} | " + " | ".join(cell(row[m]) for m in METRICS)
                     + f" | {p_value(sig, method)} | {'' if w is None else w} |")
    return [*lines, ""]


def main() -> None:
    out = ["# FTRACE's evaluation on the whole LAMA T-REx corpus", "",
           "Made by `results/scale/bench.sh` (commands there and in each run's `results.json`); "
           "`python results/scale/summarize.py` writes this file. Mean ± std over 3 seeds x 200 dev-split queries; "
           "p: paired t-test of MRR against bm25 over distinct queries (each averaged over the seeds that drew it); "
           "fusion weights (on the first method) tuned on 200 train-split queries (seed 0, grid 0-1, max MRR).", ""]
    for mode, pool, name in RUNS:
        path = HERE / name / "results.json"
        if not path.exists():
            out += [f"## {mode}, {pool} queries: not run", ""]
            continue
        run = json.loads(path.read_text())
        answers = run["answers"]
        out += [f"## {mode}, {pool} queries (`{name}/`)", "",
                f"Eligible dev queries: {run['queries']['eligible']:,}; the model answers {answers['correct']} of the "
                f"{answers['of']:,} it was asked. Distinct queries per slice: "
                + ", ".join(f"{k} {v}" for k, v in answers["slices"].items())
                + f". Wall time {run['wall_time_s']:,.0f} s.",
                ""]
        for sl in SLICES if pool == "all" else ("all", "bm25-hard"):
            out += table(run, sl)
    (HERE / "bench.md").write_text("\n".join(out) + "\n")
    print((HERE / "bench.md").read_text())


if __name__ == "__main__":
    main()
