"""One markdown ablation table from several `ftrace bench` runs on the same queries.

Usage: python results/train/ablation_table.py OUT.md --slices-from DIR NAME=DIR [NAME=DIR ...]

Metrics are recomputed from each run's rankings.jsonl (proponent ranks per seed, query and method), so
every variant is scored on the SAME query slices: those recorded in the --slices-from run (an index
built from the training run: fine-tune-learned, pre-train-learned, not-learned), including variants
whose own index has no base model (the base-model index). Cells: mean ± sample std over seeds of the
per-seed means (MRR; Recall@10 as FTRACE, the fraction of proponents in the top 10; Recall@10 as
TrackStar, any proponent in the top 10)."""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

METHODS = ["tracin", "tracin+bm25", "embed", "bm25", "random-target"]
SLICES = ["fine-tune-learned", "pre-train-learned", "not-learned", "all"]


def metrics(row: dict) -> tuple[float, float, float]:
    ranks = row["proponent_ranks"]
    mrr = 1 / min(ranks) if ranks else 0.0
    top10 = sum(r <= 10 for r in ranks)
    return mrr, top10 / row["proponents"], float(top10 > 0)


def cell(values: list[float]) -> str:
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main(argv: list[str]) -> None:
    out, ref = argv[0], Path(argv[argv.index("--slices-from") + 1])
    runs = [a.split("=", 1) for a in argv[1:] if "=" in a]
    slice_of = {}
    for line in (ref / "rankings.jsonl").read_text().splitlines():
        row = json.loads(line)
        slice_of[row["query"]] = row["slice"]
    counts = {s: sum(v == s for v in slice_of.values()) for s in SLICES}
    counts["all"] = len(slice_of)
    lines = [f"Query slices from `{ref}` (distinct queries: "
             + ", ".join(f"{s} {counts[s]}" for s in SLICES) + "). Mean ± std over seeds.", ""]
    for sl in SLICES:
        lines += [f"### {sl} ({counts[sl]} distinct queries)", "",
                  "| variant | method | MRR | Recall@10 (FTRACE) | Recall@10 (TrackStar) |", "|---|---|---|---|---|"]
        for name, d in runs:
            per: dict[tuple[str, int], list[tuple[float, float, float]]] = defaultdict(list)
            for line in (Path(d) / "rankings.jsonl").read_text().splitlines():
                row = json.loads(line)
                if sl == "all" or slice_of.get(row["query"]) == sl:
                    per[(row["method"], row["seed"])].append(metrics(row))
            for method in METHODS:
                seeds = sorted(s for m, s in per if m == method)
                if not seeds:
                    continue
                means = [[statistics.mean(x[i] for x in per[(method, s)]) for s in seeds] for i in range(3)]
                lines.append(f"| {name} | {method} | " + " | ".join(cell(v) for v in means) + " |")
        lines.append("")
    Path(out).write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
