"""TracIn per checkpoint, from the index a bench run evaluated: which of its checkpoints carries the signal.

An index's "tracin" vector concatenates one unit vector per checkpoint, each scaled by 1/sqrt(C), so its cosine is
the mean of the per-checkpoint cosines. This script takes the bench run's very (seed, query) draws and rerank
candidate sets (rebuilt from their seeds), scores each candidate by each checkpoint's slice alone, and reports MRR per
checkpoint and slice, with the slices' sum beside it: that one must reproduce the bench's own tracin MRR (a check).

    python results/attribution/per_checkpoint.py RUN_DIR [--out FILE.json]

RUN_DIR: an `ftrace bench --mode rerank` output (its config.json and rankings.jsonl). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def per_query(rows: list[dict]) -> dict[tuple[int, str], dict]:
    """(seed, query id) -> the bench's tracin row (its slice and proponent ranks)."""
    return {(x["seed"], x["query"]): x for x in rows if x["method"] == "tracin"}


def main() -> None:
    from ftrace.bench.candidates import seeded_tiebreak
    from ftrace.bench.runner import Bench
    from ftrace.config import BenchConfig
    from ftrace.query.fusion import ranking
    from ftrace.runrecord import read_record

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    o = ap.parse_args()
    c = BenchConfig.model_validate(read_record(o.run / "config.json", "bench"))
    if c.mode != "rerank":
        raise SystemExit(f"{o.run}: a rerank run is needed (its candidate sets), not {c.mode}")
    bench = Bench(c)
    tracer, scorer = bench.tracer, bench.scorer
    spec = tracer.index.manifest.vectors["tracin"]
    names = [Path(x["name"]).name for x in spec["checkpoints"]]
    width = spec["per_checkpoint_size"]
    rows = per_query([json.loads(line) for line in (o.run / "rankings.jsonl").read_text().splitlines()])
    queries = {q.id: q for q in tracer.corpus.queries}
    vectors: dict[str, np.ndarray] = {}
    for ids, vecs, _ in tracer.store.points(["tracin"]):
        vectors.update({tracer_sentence(i): vecs["tracin"][j] for j, i in enumerate(ids)})
    rr: dict[str, dict[str, list[float]]] = {}  # slice -> method -> reciprocal ranks, one per (seed, query)
    qvecs: dict[str, np.ndarray] = {}
    for (seed, qid), row in sorted(rows.items()):
        q = queries[qid]
        cands = scorer.candidates(seed, q).ids
        if qid not in qvecs:
            qvecs[qid] = tracer.query_vectors(q.prompt, q.target, ["tracin"])["tracin"]
        qv = qvecs[qid]
        m = np.stack([vectors[i] for i in cands])
        props = set(q.proponents)
        for k, name in enumerate([*names, "sum"]):
            part = slice(None) if name == "sum" else slice(k * width, (k + 1) * width)
            scores = dict(zip(cands, (m[:, part] @ qv[part]).tolist(), strict=True))
            ranked = ranking(scores, seeded_tiebreak(seed, qid))
            first = next((r for r, (i, _) in enumerate(ranked, 1) if i in props), None)
            for s in ("all", row["slice"]):
                rr.setdefault(s, {}).setdefault(name, []).append(1 / first if first else 0.0)
        bench_rank = min(row["proponent_ranks"]) if row["proponent_ranks"] else None
        rr.setdefault("all", {}).setdefault("bench", []).append(1 / bench_rank if bench_rank else 0.0)
    tracer.close()
    table = {s: {n: float(np.mean(v)) for n, v in by.items()} | {"draws": len(by["sum"])} for s, by in rr.items()}
    cols = [*names, "sum"]
    print("| slice | draws | " + " | ".join(cols) + " |\n|---|---|" + "---|" * len(cols))
    for s, by in table.items():
        print(f"| {s} | {by['draws']} | " + " | ".join(f"{by[n]:.3f}" for n in cols) + " |")
    print(f"\nbench's own tracin MRR over the same draws: {table['all']['bench']:.3f} (the sum column should match)")
    if o.out:
        o.out.write_text(json.dumps({"run": str(o.run), "checkpoints": names, "mrr": table}, indent=2) + "\n")


def tracer_sentence(example_id: str) -> str:
    from ftrace.corpus.records import example_sentence

    return example_sentence(example_id)


if __name__ == "__main__":
    main()
