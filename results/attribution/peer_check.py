"""Issue 27, item 5: an independent check of ftrace's stored gradient scores against plain per-example autograd.

For a seeded draw of an index's queries, each query's FTRACE rerank candidate set (seed 0, the bench's own
`candidate_set`) is scored twice:
- ftrace: the index's stored `tracin` vectors against the query's (`Tracer.score`: the factored random projection,
  per-block unit norm, as `ftrace bench` scores them);
- reference: the exact cosine of the full gradients of the same parameters, no projection: for the query and for
  every candidate, one plain `torch.autograd.grad` of its own loss (the index's example loss; the query's target
  log-probability) with respect to the input embedding matrix (SmolLM2's is tied to the LM head: both uses), in
  float32, one example at a time, as FTRACE's code does.
A third score separates the two ways the stored scores can drift from the exact ones: ftrace's own featurizer (the
index's projection) on the float32 model. Reported: Spearman's rank correlation per query between the score lists
(stored against exact; float32-projected against exact: the projection alone; stored against float32-projected: the
index's dtype alone), as mean, median and min over queries, and the overlap of the stored and exact top 10; and, for
each of `--dims`, the same featurizer with that projection size against exact (what size keeps the ranking). The
projection should keep the exact cosine's ranking (issue target: Spearman at least 0.9). `--candidates N` keeps the
first N of each set (proponents first), to bound the reference's cost.

    python results/attribution/peer_check.py --index indexes/attribution/loss-object --queries 30 \
        --out results/attribution/peer_check.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from ftrace.bench.candidates import CorpusView, candidate_set, sample_queries
from ftrace.config import GradientConfig
from ftrace.features.base import input_embedding_name
from ftrace.features.gradients import GradientFeaturizer
from ftrace.model import load_model, query_batch
from ftrace.model.batching import IGNORE, LossBatch
from ftrace.model.objective import Objective, index_examples
from ftrace.query.tracer import Tracer

ROOT = Path(__file__).resolve().parents[2]


def exact_gradient(model: torch.nn.Module, weight: torch.nn.Parameter, batch: LossBatch) -> torch.Tensor:
    """The flattened gradient of the batch's (one example's) summed token cross-entropy w.r.t. `weight`."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    labels = batch.labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                             labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
    (grad,) = torch.autograd.grad(loss, weight)
    return grad.reshape(-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--candidates", type=int, default=60)
    ap.add_argument("--split", default="train")
    ap.add_argument("--dims", type=lambda v: [int(x) for x in v.split(",") if x], default=[],
                    help="other projection sizes per block to check against the exact cosine, e.g. 16384")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    tracer = Tracer(a.index)
    m = tracer.index.manifest
    spec = m.vectors["tracin"]
    if len(spec["checkpoints"]) != 1 or spec["layers"] != [input_embedding_name(tracer.lm.model)]:
        raise SystemExit("peer_check compares one checkpoint's input-embedding gradient")
    loss = spec["config"]["example_loss"]
    lm = load_model(spec["checkpoints"][0]["name"], "cpu", "float32")  # the reference in float32
    model = lm.model.eval()
    projected = GradientFeaturizer(model, GradientConfig(**spec["config"]))  # the index's projection, float32
    sized = {d: GradientFeaturizer(model, GradientConfig(**spec["config"] | {"dim": d})) for d in a.dims}
    for p in model.parameters():
        p.requires_grad_(False)
    weight = model.get_input_embeddings().weight
    weight.requires_grad_(True)
    corpus = tracer.corpus
    examples = {e.sentence_id: e for e in index_examples(corpus.sentences)}
    objective = Objective(loss, lm.tokenizer, m.max_tokens)
    eligible = [q for q in corpus.queries if q.proponents and (a.split == "all" or q.split == a.split)]
    queries = sample_queries(eligible, a.queries, seed=0, purpose="peer-check")
    view = CorpusView(corpus)
    rows, start = [], time.perf_counter()
    for n, q in enumerate(queries):
        cands = candidate_set(q, view, lambda k, q=q: list(tracer.retrieve("bm25", q.prompt, q.target, k)), 0)
        ids = cands.ids[:a.candidates]
        ours = tracer.score("tracin", q.prompt, q.target, ids)
        qb = query_batch(lm.tokenizer, [q.prompt], [q.target], m.max_tokens)
        gq = exact_gradient(model, weight, qb)
        gq = gq / gq.norm()
        pq = projected.vectors(qb)[0]
        sq = {d: f.vectors(qb)[0] for d, f in sized.items()}
        exact, f32 = {}, {}
        at_dim: dict[int, dict[str, float]] = {d: {} for d in sized}
        for sid in ids:
            batch, _ = objective.batch([examples[sid]])
            g = exact_gradient(model, weight, batch)
            exact[sid] = float(g @ gq / g.norm())
            f32[sid] = float(projected.vectors(batch)[0] @ pq)
            for d, f in sized.items():
                at_dim[d][sid] = float(f.vectors(batch)[0] @ sq[d])
        top = len(set(sorted(ids, key=ours.get)[-10:]) & set(sorted(ids, key=exact.get)[-10:])) / 10
        pairs = {"stored_vs_exact": (ours, exact), "projection": (f32, exact), "dtype": (ours, f32),
                 **{f"projection_{d}": (at_dim[d], exact) for d in sized}}
        rho = {name: float(spearmanr([x[s] for s in ids], [y[s] for s in ids]).statistic)
               for name, (x, y) in pairs.items()}
        rows.append({"query": q.id, "candidates": len(ids), **rho, "top10_overlap": top})
        print(f"{n + 1}/{len(queries)} {q.id}: spearman {rho}, top-10 overlap {top:.1f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    tracer.close()
    top10 = np.array([r["top10_overlap"] for r in rows])

    def summary(key: str) -> dict:
        v = np.array([r[key] for r in rows])
        return {"mean": v.mean(), "median": float(np.median(v)), "min": v.min()}

    result = {
        "command": "python results/attribution/peer_check.py " + " ".join(
            f"--{k.replace('_', '-')} " + (str(v.resolve().relative_to(ROOT)) if isinstance(v, Path)
                                            else ",".join(map(str, v)) if isinstance(v, list) else str(v))
            for k, v in vars(a).items()),
        "index": str(a.index.resolve().relative_to(ROOT)), "model": m.model.name if not Path(m.model.name).exists()
        else str(Path(m.model.name).resolve().relative_to(ROOT)), "index_dtype": m.model.dtype,
        "example_loss": loss, "projection": {k: spec[k] for k in ("dim", "projection", "seed", "tied")},
        "reference": "exact cosine of full float32 gradients w.r.t. the (tied) input embedding, per example",
        "queries": len(rows), "spearman": {k: summary(k) for k in rows[0] if k not in ("query", "candidates",
                                                                                      "top10_overlap")},
        "top10_overlap": {"mean": top10.mean(), "min": top10.min()}, "per_query": rows,
        "seconds": round(time.perf_counter() - start, 1),
    }
    a.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(json.dumps({k: result[k] for k in ("spearman", "top10_overlap", "seconds")}, default=float))


if __name__ == "__main__":
    main()
