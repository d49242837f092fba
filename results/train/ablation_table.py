"""Collect bench results.json files into one markdown ablation table.

Usage: python results/train/ablation_table.py OUT.md NAME=results/bench/DIR [NAME=DIR ...]
Each row is one index variant; cells are mean ± std over seeds for the tracin method (and the
other methods listed in METHODS), per slice."""

from __future__ import annotations

import json
import sys
from pathlib import Path

METRICS = [("mrr", "MRR"), ("recall@10", "R@10 F"), ("hit_rate@10", "R@10 T")]
METHODS = ["tracin", "tracin+bm25", "embed", "bm25", "random-target"]


def cell(stat: dict) -> str:
    return "n/a" if stat.get("mean") is None else f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def main(out: str, runs: list[str]) -> None:
    loaded = {name: json.loads((Path(d) / "results.json").read_text()) for name, d in (r.split("=", 1) for r in runs)}
    first = next(iter(loaded.values()))
    slices = [s for s in ("fine-tune-learned", "pre-train-learned", "not-learned", "all")
              if any(s in r["metrics"] for r in loaded.values())]
    lines = [f"Queries per seed {first['settings']['queries']}, seeds {first['seeds']}, split "
             f"{first['settings']['split']}, relations {first['settings'].get('relations')}; mean ± std over seeds.", ""]
    for sl in slices:
        lines += [f"### {sl}", "", "| variant | method | distinct queries | " + " | ".join(m for _, m in METRICS) + " |",
                  "|---|---|---|" + "---|" * len(METRICS)]
        for name, r in loaded.items():
            table = r["metrics"].get(sl)
            if table is None:
                continue
            count = r["answers"].get("slices", {}).get(sl, "?")
            for method in METHODS:
                if method in table:
                    lines.append(f"| {name} | {method} | {count} | "
                                 + " | ".join(cell(table[method][k]) for k, _ in METRICS) + " |")
        lines.append("")
    Path(out).write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
