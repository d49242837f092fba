"""TracIn by part of the gradient vector, from the index a bench run evaluated: which checkpoint, which layer block
carries the signal.

An index's "tracin" vector concatenates one unit vector per checkpoint, each scaled by 1/sqrt(C), and within a
checkpoint one unit vector per layer block, each scaled by 1/sqrt(B): its cosine is the mean of the per-(checkpoint,
block) cosines. This script takes the bench run's very (seed, query) draws and rerank candidate sets (rebuilt from
their seeds) and scores each candidate by one part of that vector alone (the sum of its pieces' dot products, so the
mean of their cosines): each checkpoint (all its blocks), each block (at every checkpoint), each --group of blocks,
and the whole ("sum"), which must reproduce the bench's own tracin MRR (a check).

    python results/attribution/per_part.py RUN_DIR [--group NAME=GLOB ...] [--out FILE.json]

RUN_DIR: an `ftrace bench --mode rerank` output (its config.json and rankings.jsonl). GLOB matches block names
(e.g. --group mlp='model.layers.*'). Prints a markdown table: one row per part, MRR per learned slice.
"""

from __future__ import annotations

import argparse
import json
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np


def parts(spec: dict, groups: dict[str, str]) -> dict[str, np.ndarray]:
    """Part name -> the indices of the stored vector it covers: each checkpoint, each block (when there are several),
    each group of blocks, and the whole vector ("sum")."""
    blocks = [(b["name"], b["size"]) for b in spec["blocks"]]
    width = spec["per_checkpoint_size"]
    starts = np.cumsum([0] + [s for _, s in blocks])
    ckpts = [Path(x["name"]).name for x in spec["checkpoints"]]

    def span(c: int, b: int) -> np.ndarray:
        return np.arange(c * width + starts[b], c * width + starts[b + 1])

    every = range(len(ckpts))
    out = {name: np.concatenate([span(c, b) for b in range(len(blocks))]) for c, name in enumerate(ckpts)}
    if len(blocks) > 1:
        out |= {name: np.concatenate([span(c, b) for c in every]) for b, (name, _) in enumerate(blocks)}
    for g, glob in groups.items():
        chosen = [b for b, (name, _) in enumerate(blocks) if fnmatchcase(name, glob)]
        if not chosen:
            raise SystemExit(f"--group {g}={glob}: matches no block of {[n for n, _ in blocks]}")
        out[g] = np.concatenate([span(c, b) for c in every for b in chosen])
    out["sum"] = np.arange(width * len(ckpts))
    return out


def main() -> None:
    from ftrace.bench.candidates import seeded_tiebreak
    from ftrace.bench.runner import Bench
    from ftrace.config import BenchConfig
    from ftrace.corpus.records import example_sentence
    from ftrace.query.fusion import ranking
    from ftrace.runrecord import read_record

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--group", action="append", default=[], metavar="NAME=GLOB")
    ap.add_argument("--out", type=Path, default=None)
    o = ap.parse_args()
    groups = dict(g.split("=", 1) for g in o.group)
    c = BenchConfig.model_validate(read_record(o.run / "config.json", "bench"))
    if c.mode != "rerank":
        raise SystemExit(f"{o.run}: a rerank run is needed (its candidate sets), not {c.mode}")
    bench = Bench(c)
    tracer, scorer = bench.tracer, bench.scorer
    spans = parts(tracer.index.manifest.vectors["tracin"], groups)
    rows = {(x["seed"], x["query"]): x for x in map(json.loads, (o.run / "rankings.jsonl").read_text().splitlines())
            if x["method"] == "tracin"}
    queries = {q.id: q for q in tracer.corpus.queries}
    vectors: dict[str, np.ndarray] = {}
    for ids, vecs, _ in tracer.store.points(["tracin"]):
        vectors.update({example_sentence(i): vecs["tracin"][j] for j, i in enumerate(ids)})
    rr: dict[str, dict[str, list[float]]] = {}  # slice -> part -> reciprocal ranks, one per (seed, query)
    qvecs: dict[str, np.ndarray] = {}
    for (seed, qid), row in sorted(rows.items()):
        q = queries[qid]
        cands = scorer.candidates(seed, q).ids
        if qid not in qvecs:
            qvecs[qid] = tracer.query_vectors(q.prompt, q.target, ["tracin"])["tracin"]
        qv = qvecs[qid]
        m = np.stack([vectors[i] for i in cands])
        props = set(q.proponents)
        for name, idx in spans.items():
            scores = dict(zip(cands, (m[:, idx].astype(np.float32) @ qv[idx]).tolist(), strict=True))
            ranked = ranking(scores, seeded_tiebreak(seed, qid))
            first = next((r for r, (i, _) in enumerate(ranked, 1) if i in props), None)
            for s in ("all", row["slice"]):
                rr.setdefault(s, {}).setdefault(name, []).append(1 / first if first else 0.0)
        bench_rank = min(row["proponent_ranks"]) if row["proponent_ranks"] else None
        rr.setdefault("all", {}).setdefault("bench", []).append(1 / bench_rank if bench_rank else 0.0)
    tracer.close()
    table = {s: {n: float(np.mean(v)) for n, v in by.items()} | {"draws": len(by["sum"])} for s, by in rr.items()}
    slices = list(table)
    print("| part | " + " | ".join(f"{s} ({table[s]['draws']} draws)" for s in slices) + " |")
    print("|---|" + "---|" * len(slices))
    for name in spans:
        print(f"| {name} | " + " | ".join(f"{table[s][name]:.3f}" for s in slices) + " |")
    print(f"\nbench's own tracin MRR over the same draws: {table['all']['bench']:.3f} (the sum row should match)")
    if o.out:
        o.out.write_text(json.dumps({"run": o.run.as_posix(), "parts": list(spans), "mrr": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
