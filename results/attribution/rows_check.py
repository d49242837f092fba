"""Issue 27: the rows projection (`--tracin-projection rows`: the lookup's exact gradient rows in a Qdrant sparse
vector) on a bench run's own draws, before an index is built with it. Each draw's rerank candidates (rebuilt from
their seeds, as per_part.py and exact_tracin.py do) are scored at one checkpoint by ftrace's rows featurizer (the
input side of the tied embedding, divided by the rank-1 form of the checkpoint's Adam moments, as the index's
factored and sketched vectors and exact_tracin.py's input side are) at several numbers a row:
the hidden size (exact) and fewer (each row's columns through the seeded Gaussian, as ingest projects them). Beside
them, from an exact_tracin.py JSON of the same run, the stored vector's and the exact cosines' reciprocal ranks on
the same draws.

    python results/attribution/rows_check.py RUN_DIR --checkpoint step-383 --exact EXACT.json --every 6 \
        --per-row 576,144,64 --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    from ftrace.bench.candidates import seeded_tiebreak
    from ftrace.bench.runner import Bench
    from ftrace.config import BenchConfig, GradientConfig
    from ftrace.features.gradients import GradientFeaturizer
    from ftrace.model import load_model, query_batch
    from ftrace.model.objective import Objective, index_examples
    from ftrace.query.fusion import ranking
    from ftrace.runrecord import read_record
    from ftrace.sparse import SparseVector

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--checkpoint", required=True, help="one of the index's checkpoints (its name)")
    ap.add_argument("--exact", type=Path, required=True, help="exact_tracin.py's JSON of the same run")
    ap.add_argument("--every", type=int, default=6, help="every Nth draw (sorted by seed and query)")
    ap.add_argument("--per-row", default="576,144,64")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", type=Path, required=True)
    o = ap.parse_args()
    start = time.perf_counter()
    c = BenchConfig.model_validate(read_record(o.run / "config.json", "bench"))
    bench = Bench(c)
    tracer, scorer = bench.tracer, bench.scorer
    m = tracer.index.manifest
    spec = m.vectors["tracin"]
    ck = next(x for x in spec["checkpoints"] if Path(x["name"]).name == o.checkpoint)
    rows = {(x["seed"], x["query"]): x for x in map(json.loads, (o.run / "rankings.jsonl").read_text().splitlines())
            if x["method"] == "tracin"}
    queries = {q.id: q for q in tracer.corpus.queries}
    draws = sorted(rows)[::o.every]
    cands = {key: scorer.candidates(key[0], queries[key[1]]).ids for key in draws}
    examples = {e.sentence_id: e for e in index_examples(tracer.corpus.sentences)}
    objective = Objective(spec["config"]["example_loss"], tracer.lm.tokenizer, m.max_tokens)
    tokenizer = tracer.lm.tokenizer
    tracer.close()

    model = load_model(ck["name"], "cpu", m.model.dtype).model.eval()
    config = GradientConfig(projection="rows", tied="input", dim=4096, optimizer_state=ck.get("optimizer_state"),
                            optimizer_floor=spec["config"].get("optimizer_floor", 0.0),
                            example_loss=spec["config"]["example_loss"])
    feat = GradientFeaturizer(model, config)
    hidden = feat.blocks[0].factors[1]
    per_row = [int(k) for k in o.per_row.split(",")]
    # the seeded (uncorrected) columns' projection at each smaller k: the exact rows are corrected already
    cols = {k: GradientFeaturizer(model, config.model_copy(update={"dim": k, "optimizer_state": None})).projection(
        feat.blocks[0].name)["cols"] for k in per_row if k < hidden}

    def at(v: SparseVector, k: int) -> dict[int, np.ndarray]:
        """row -> its k numbers (projected as ingest would, unnormalised)."""
        r = v.values.reshape(-1, hidden).astype(np.float64)
        if k < hidden:
            r = r @ cols[k].double().numpy()
        return dict(zip((v.indices[::hidden] // hidden).tolist(), r, strict=True))

    def cosine(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> float:
        num = sum(float(a[t] @ b[t]) for t in a.keys() & b.keys())
        na, nb = (sum(float(x @ x) for x in d.values()) ** 0.5 for d in (a, b))
        return num / (na * nb) if na and nb else 0.0

    qv = {}
    for qid in sorted({q for _, q in draws}):
        v = feat.vectors(query_batch(tokenizer, [queries[qid].prompt], [queries[qid].target], m.max_tokens))[0]
        qv[qid] = {k: at(v, k) for k in per_row}
    order = sorted({s for key in draws for s in cands[key]}, key=lambda s: len(examples[s].text))
    cv: dict[str, dict[int, dict[int, np.ndarray]]] = {}
    nnz = []
    for i in range(0, len(order), o.batch):
        ids = order[i:i + o.batch]
        for sid, v in zip(ids, feat.vectors(objective.batch([examples[s] for s in ids])[0]), strict=True):
            cv[sid] = {k: at(v, k) for k in per_row}
            nnz.append(len(v.indices) // hidden)
        if i // o.batch % 50 == 0:
            print(f"{i + len(ids)}/{len(order)} candidates ({time.perf_counter() - start:.0f} s)", flush=True)
    exact = {(d["seed"], d["query"]): d["rr"] for d in json.loads(o.exact.read_text())["draws"]}
    out_draws = []
    for key in draws:
        q = queries[key[1]]
        props = set(q.proponents)
        d = {"seed": key[0], "query": key[1], "slice": rows[key]["slice"],
             "relation": q.fact[1] if q.fact else key[1].split("/")[0], "rr": {}}
        for k in per_row:
            scores = {s: round(cosine(qv[key[1]][k], cv[s][k]), 6) for s in cands[key]}
            ranked = ranking(scores, seeded_tiebreak(*key))
            first = next((r for r, (i, _) in enumerate(ranked, 1) if i in props), None)
            d["rr"][f"rows {k}"] = 1 / first if first else 0.0
        d["rr"] |= {p: r for p, r in exact[key].items() if p.endswith(o.checkpoint) or o.checkpoint + " " in p}
        out_draws.append(d)
    parts = list(out_draws[0]["rr"])
    mrr = {p: float(np.mean([d["rr"][p] for d in out_draws])) for p in parts}
    for p in parts:
        print(f"| {p} | {mrr[p]:.3f} |")
    o.out.write_text(json.dumps({
        "run": o.run.as_posix(), "checkpoint": o.checkpoint, "command": "python results/attribution/rows_check.py "
        f"{o.run.as_posix()} --checkpoint {o.checkpoint} --exact {o.exact.as_posix()} --every {o.every} "
        f"--per-row {o.per_row} --out {o.out.as_posix()}", "draws_scored": len(out_draws),
        "candidates": len(order), "rows_per_candidate": {"mean": float(np.mean(nnz)), "max": int(np.max(nnz))},
        "mrr": mrr, "seconds": round(time.perf_counter() - start, 1), "draws": out_draws}, indent=1) + "\n")


if __name__ == "__main__":
    main()
