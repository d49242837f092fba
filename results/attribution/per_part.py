"""TracIn by part of the gradient vector, from the index a bench run evaluated: which checkpoint, which layer block
carries the signal.

An index's "tracin" vector concatenates one unit vector per checkpoint, each scaled by 1/sqrt(C), and within a
checkpoint one unit vector per layer block, each scaled by 1/sqrt(B): its cosine is the mean of the per-(checkpoint,
block) cosines. This script takes the bench run's very (seed, query) draws and rerank candidate sets (rebuilt from
their seeds) and scores each candidate by one part of that vector alone (the sum of its pieces' dot products, so the
mean of their cosines): each checkpoint (all its blocks), each block (at every checkpoint), each --group of blocks,
and the whole ("sum"), which must reproduce the bench's own tracin MRR (a check).

    python results/attribution/per_part.py RUN_DIR [--group NAME=GLOB ...] [--folds A,B/C,D] [--out FILE.json]

RUN_DIR: an `ftrace bench --mode rerank` output (its config.json and rankings.jsonl). GLOB matches block names
(e.g. --group mlp='model.layers.*'). Prints a markdown table: one row per part, MRR per learned slice and relation.
--folds: two groups of relations; for each, the part with the best MRR on its draws is chosen and reported on the
other group's (a choice made on facts it is not reported on). The JSON keeps every draw's reciprocal rank per part.
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
    ap.add_argument("--folds", default=None, metavar="A,B/C,D")
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
    rr: dict[str, dict[str, list[float]]] = {}  # slice or relation -> part -> reciprocal ranks, one per (seed, query)
    draws: list[dict] = []  # per (seed, query): its slice, relation and reciprocal rank by each part
    qvecs: dict[str, np.ndarray] = {}
    for (seed, qid), row in sorted(rows.items()):
        q = queries[qid]
        cands = scorer.candidates(seed, q).ids
        if qid not in qvecs:
            qvecs[qid] = tracer.query_vectors(q.prompt, q.target, ["tracin"])["tracin"]
        qv = qvecs[qid]
        m = np.stack([vectors[i] for i in cands])
        props = set(q.proponents)
        relation = q.fact[1] if q.fact else qid.split("/")[0]
        draw = {"seed": seed, "query": qid, "slice": row["slice"], "strict": row.get("strict"), "relation": relation,
                "rr": {}}
        for name, idx in spans.items():
            scores = dict(zip(cands, (m[:, idx].astype(np.float32) @ qv[idx]).tolist(), strict=True))
            ranked = ranking(scores, seeded_tiebreak(seed, qid))
            first = next((r for r, (i, _) in enumerate(ranked, 1) if i in props), None)
            draw["rr"][name] = 1 / first if first else 0.0
            for s in ("all", row["slice"], relation):
                rr.setdefault(s, {}).setdefault(name, []).append(draw["rr"][name])
        draws.append(draw)
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
    chosen = cross_chosen(draws, list(spans), o.folds) if o.folds else []
    for c in chosen:
        print(f"\nchosen on {c['chosen_on']}: {c['part']} (MRR {c['mrr_chosen_on']:.3f} there); on {c['reported_on']} "
              f"({c['draws']} draws): {c['mrr']:.3f}, the whole vector {c['mrr_sum']:.3f}")
    if o.out:
        o.out.write_text(json.dumps({"run": o.run.as_posix(), "parts": list(spans), "mrr": table, "chosen": chosen,
                                     "draws": draws}, indent=1) + "\n")


def cross_chosen(draws: list[dict], parts: list[str], folds: str) -> list[dict]:
    """For each group of relations in `folds` ("A,B/C,D"), the part with the best MRR on its draws, reported on the
    other group's."""
    groups = [set(g.split(",")) for g in folds.split("/")]
    if len(groups) != 2:
        raise SystemExit(f"--folds {folds}: two groups of relations, A,B/C,D")
    out = []
    for tune, report in (groups, groups[::-1]):
        on = [d for d in draws if d["relation"] in tune]
        off = [d for d in draws if d["relation"] in report]
        if not on or not off or tune & report:
            raise SystemExit(f"--folds {folds}: two groups of relations that share none, each with draws "
                             f"(the draws' relations: {sorted({d['relation'] for d in draws})})")
        mrr = {p: float(np.mean([d["rr"][p] for d in on])) for p in parts}
        best = max(parts, key=mrr.__getitem__)
        out.append({"chosen_on": ",".join(sorted(tune)), "reported_on": ",".join(sorted(report)), "part": best,
                    "mrr_chosen_on": mrr[best], "draws": len(off),
                    "mrr": float(np.mean([d["rr"][best] for d in off])),
                    "mrr_sum": float(np.mean([d["rr"]["sum"] for d in off]))})
    return out


if __name__ == "__main__":
    main()
