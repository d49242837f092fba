"""Paired comparison of bench runs that differ only in how the index was built (gradient_block.sh): per method,
the mean reciprocal rank of the first proponent over the same distinct queries (each averaged over the seeds
that drew it), the difference against the reference run, and paired tests over those queries.

    python results/scale/compare_blocks.py      # -> results/scale/gradient_block.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

HERE = Path(__file__).resolve().parent
RUNS = {"both": "float32, the true gradient (today's default)", "both-bf16": "bfloat16, the true gradient",
        "output": "float32, LM-head term only (no backward)", "output-bf16": "bfloat16, LM-head term only"}
REFERENCE = "both"
METHODS = ("tracin", "tracin+embed", "tracin+bm25")


def reciprocal_ranks(run: Path, method: str) -> dict[str, float]:
    per: dict[str, list[float]] = {}
    for line in (run / "rankings.jsonl").read_text().splitlines():
        x = json.loads(line)
        if x["method"] == method:
            ranks = x["proponent_ranks"]
            per.setdefault(x["query"], []).append(1 / min(ranks) if ranks else 0.0)
    return {q: float(np.mean(v)) for q, v in per.items()}


def main() -> None:
    dirs = {name: HERE / f"block-{name}-rerank" for name in RUNS}
    missing = [str(d) for d in dirs.values() if not (d / "rankings.jsonl").exists()]
    if missing:
        sys.exit(f"missing runs (bash results/scale/gradient_block.sh): {', '.join(missing)}")
    lines = ["# Which gradient at scale: the tied embedding's true gradient against its LM-head term", "",
             "SmolLM2-135M-Instruct (dequantised Q4_1 GGUF), base model; LAMA T-REx TRAIN-split facts (first 30 of "
             "each relation: 2,574 sentences), `ftrace bench --mode rerank --split train --queries 100 --seeds 3` per "
             "index (`results/scale/gradient_block.sh`). The model never trained on these sentences: retrieval of "
             "fact-stating sentences, not attribution. MRR over the same distinct queries (each averaged over the "
             f"seeds that drew it); differences and paired tests against `{REFERENCE}`. The `both`, `output` and "
             "`output-bf16` indexes were built with PyTorch's fused attention, `both-bf16` with plain attention "
             "(ftrace's CPU default since: in float32 the two give gradient vectors within 1e-6 cosine; in bfloat16 "
             "the fused backward drifts further and is 4x slower).", "",
             "| index | method | MRR | difference | t-test p | Wilcoxon p | queries |", "|---|---|---|---|---|---|---|"]
    for method in METHODS:
        ref = reciprocal_ranks(dirs[REFERENCE], method)
        for name, what in RUNS.items():
            rr = reciprocal_ranks(dirs[name], method)
            qs = sorted(set(ref) & set(rr))
            a, b = np.array([rr[q] for q in qs]), np.array([ref[q] for q in qs])
            if name == REFERENCE:
                lines.append(f"| {name}: {what} | {method} | {a.mean():.3f} | | | | {len(qs)} |")
                continue
            t = stats.ttest_rel(a, b).pvalue
            w = stats.wilcoxon(a, b).pvalue if np.any(a != b) else float("nan")
            lines.append(f"| {name}: {what} | {method} | {a.mean():.3f} | {a.mean() - b.mean():+.3f} | {t:.2g} | "
                         f"{w:.2g} | {len(qs)} |")
    out = HERE / "gradient_block.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
