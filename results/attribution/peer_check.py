"""Issue 27, item 5: an independent check of ftrace's stored gradient scores against the exact gradients.

For a seeded draw of an index's queries, each query's FTRACE rerank candidate set (seed 0, the bench's own
`candidate_set`: proponents, BM25's top 100 non-proponents, 100 same-target and 100 random sentences) is scored:
- ftrace: the index's stored `tracin` vectors against the query's (`Tracer.score`: the factored random projection,
  per-block unit norm, as `ftrace bench` scores them);
- reference: the exact cosine of the full gradients of the same parameter, no projection, on the index's own model
  (its checkpoint in its dtype, `--dtype` for another): each example's loss (the index's example loss; the query's
  target log-probability, summed token cross-entropy) differentiated with respect to the input embedding matrix.
  SmolLM2's is tied to the LM head, so an example's gradient is G = sum_t onehot(x_t) g_t^T + sum_s (softmax_s -
  onehot(y_s)) h_s^T (g_t: dL/d(embedding of token t); h_s: the LM head's input at a scored position s). Inner
  products are taken in that factored form, summed in float32 from the model's own arithmetic (exact, and cheap
  enough for whole candidate sets: the 49,152 x 576 matrices are never formed); `--check-pairs` of them are
  compared with plain `torch.autograd.grad` of the same loss on the float32 model (FTRACE's way, the full matrix),
  a test of the factored arithmetic. A candidate whose loss scores no token has no gradient: cosine 0.
- for each of `--projections`: ftrace's featurizer with that projection and size on the same model (what size and
  which projection keep the ranking; e.g. `sketch:4096`, the TensorSketch, against the index's factored one);
- an ideal random projection's floor: each exact cosine c moved by the error a dense Gaussian projection to the
  index's k numbers would give it (normal, variance (1 + c^2) / k; 5 draws per query, averaged), to tell ftrace's
  projection from any.
Reported: Spearman's rank correlation per query between the score lists, as mean, median and min over queries and
how many reach 0.9, over the whole candidate set and over its first `--hard` (the proponents and BM25's best
non-proponents: the hard part of the ranking); the overlap of the stored and exact top 10; and the spread of each
query's exact cosines (their range and the median gap between neighbours, which a projection's error of about
1/sqrt(k) must not bridge); per query, every candidate's exact and stored score (`scores`). Issue target: Spearman
at least 0.9. And what the bench would see: each score list's MRR over the same candidate sets (the first
proponent's reciprocal rank, ties in the bench's order), stored against exact paired over the queries, and a rank
correlation weighted to the top (weighted tau). (The first version of this check took its reference on the float32
model: the index's bfloat16 model moved the projected scores' ranking by 0.003.)

    python results/attribution/peer_check.py --index indexes/attribution/loss-object --queries 100 \
        --out results/attribution/peer_check.json
    python results/attribution/peer_check.py --index INDEX --rescore RUN.json --out RUN.json   # from kept scores
"""

from __future__ import annotations

import argparse
import json
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr, weightedtau

from ftrace.bench.candidates import CorpusView, candidate_set, sample_queries, seeded_tiebreak
from ftrace.bench.metrics import paired_pvalues, per_query
from ftrace.config import GradientConfig
from ftrace.features.base import input_embedding_name
from ftrace.features.gradients import GradientFeaturizer
from ftrace.model import load_model, query_batch
from ftrace.model.batching import IGNORE, LossBatch
from ftrace.model.objective import Objective, index_examples
from ftrace.query.fusion import ranking
from ftrace.query.tracer import Tracer

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Factors:
    """One example's gradient w.r.t. a tied embedding W, as G = rows[tokens] + D^T H (module docstring)."""

    tokens: torch.Tensor  # (U,) distinct input token ids
    rows: torch.Tensor  # (U, d): the summed g_t of each distinct input token
    D: torch.Tensor  # (S, V): softmax - onehot at the scored positions
    H: torch.Tensor  # (S, d): the LM head's inputs there

    def head_rows(self, tokens: torch.Tensor) -> torch.Tensor:
        """Rows `tokens` of D^T H."""
        return self.D[:, tokens].T @ self.H


def dot(a: Factors, b: Factors) -> float:
    common, ia, ib = np.intersect1d(a.tokens.numpy(), b.tokens.numpy(), return_indices=True)
    lookup = float((a.rows[ia] * b.rows[ib]).sum()) if len(common) else 0.0
    cross = float((a.rows * b.head_rows(a.tokens)).sum() + (b.rows * a.head_rows(b.tokens)).sum())
    head = float(((a.D @ b.D.T) * (a.H @ b.H.T)).sum())
    return lookup + cross + head


def factors(model: torch.nn.Module, batch: LossBatch) -> list[Factors]:
    """Each example's `Factors` from one forward and backward pass of the batch's summed loss (rows do not mix)."""
    heads: list[torch.Tensor] = []
    hook = model.get_output_embeddings().register_forward_pre_hook(lambda _m, args: heads.append(args[0]))
    try:
        embeds = model.get_input_embeddings()(batch.input_ids).detach().requires_grad_(True)
        out = model(inputs_embeds=embeds, attention_mask=batch.attention_mask, use_cache=False)
    finally:
        hook.remove()
    logits = out.logits[:, :-1].float()
    labels = batch.labels[:, 1:]
    scored = labels != IGNORE
    loss = torch.nn.functional.cross_entropy(logits[scored], labels[scored], reduction="sum")
    (g,) = torch.autograd.grad(loss, embeds)
    result = []
    with torch.no_grad():
        for b in range(len(batch)):
            real = batch.attention_mask[b].bool()
            ids, gb = batch.input_ids[b][real], g[b][real].float()
            tokens, inverse = torch.unique(ids, return_inverse=True)
            rows = torch.zeros(len(tokens), gb.shape[1]).index_add_(0, inverse, gb)
            D = torch.softmax(logits[b][scored[b]], dim=-1)
            D[torch.arange(len(D)), labels[b][scored[b]]] -= 1
            result.append(Factors(tokens, rows, D, heads[0][b, :-1][scored[b]].float()))
    return result


def exact_gradient(model: torch.nn.Module, weight: torch.nn.Parameter, batch: LossBatch) -> torch.Tensor:
    """The flattened gradient of one example's summed token cross-entropy w.r.t. `weight`: plain autograd."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    labels = batch.labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                             labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
    (grad,) = torch.autograd.grad(loss, weight)
    return grad.reshape(-1)


def rho(x: dict[str, float], y: dict[str, float], ids: list[str]) -> float:
    return float(spearmanr([x[s] for s in ids], [y[s] for s in ids]).statistic)


DRAWS = 5  # the ideal projection's draws per query
LARGER = (16_384, 65_535, 262_144)  # the ideal projection's Spearman at these sizes too (Qdrant's largest: 65,535)


def ideal(exact: np.ndarray, k: int, query: str, draw: int) -> np.ndarray:
    """Each exact cosine c moved by the error of a dense Gaussian projection to k numbers (normal, variance
    (1 + c^2) / k), drawn afresh for each (query, draw)."""
    rng = np.random.default_rng([draw, zlib.crc32(query.encode())])
    return exact + rng.standard_normal(len(exact)) * np.sqrt((1 + exact**2) / k)


def ideal_rho(draws: list[np.ndarray], ids: list[str], exact: dict[str, float], part: list[str]) -> float:
    """The mean over the draws of an ideal projection's Spearman with the exact cosines over `part`."""
    return float(np.mean([rho(dict(zip(ids, v.tolist(), strict=True)), exact, part) for v in draws]))


def reciprocal_rank(query: str, ids: list[str], scores: np.ndarray, proponents: list[str]) -> float:
    """1 / the rank of the first proponent, ties in the bench's seeded order (seed 0, the candidate set's)."""
    ranked = [i for i, _ in ranking(dict(zip(ids, scores.tolist(), strict=True)), seeded_tiebreak(0, query))]
    return per_query({query: proponents}, {query: ranked}, ["mrr"])["mrr"][query]


def outcomes(rows: list[dict], proponents: dict[str, list[str]], k: int, hard: int) -> dict:
    """From each row's kept scores: an ideal projection's Spearman (whole set and first `hard`, the mean of DRAWS
    draws); what the bench would see, each score list's reciprocal rank of the first proponent in the query's
    candidate set, ranked as `ftrace bench` ranks (ties in the bench's seeded order; the exact cosines rounded to
    1e-6 so that equal gradients tie), the stored against the exact paired over the queries; and a rank correlation
    weighted to the top (scipy's weighted tau, hyperbolic weights, both lists' tops)."""
    for row in rows:
        qid, ids, sc = row["query"], row["scores"]["ids"], row["scores"]
        exact, stored = np.asarray(sc["exact"]), np.asarray(sc["stored"])
        e = dict(zip(ids, exact.tolist(), strict=True))
        draws = {d: [ideal(exact, d, qid, n) for n in range(DRAWS)] for d in (k, *LARGER)}
        row["ideal_projection_all"] = ideal_rho(draws[k], ids, e, ids)
        row["ideal_projection_hard"] = ideal_rho(draws[k], ids, e, ids[:hard])
        row |= {f"ideal_projection_{d}_all": ideal_rho(draws[d], ids, e, ids) for d in LARGER}
        projected = {name: np.asarray(v) for name, v in sc.items() if name.startswith("projection_")}
        row["rr"] = {"exact": reciprocal_rank(qid, ids, np.round(exact, 6), proponents[qid]),
                     "stored": reciprocal_rank(qid, ids, stored, proponents[qid])} | {
            f"ideal_{d}": float(np.mean([reciprocal_rank(qid, ids, v, proponents[qid]) for v in draws[d]]))
            for d in (k, 65_535)} | {name: reciprocal_rank(qid, ids, v, proponents[qid])
                                     for name, v in projected.items()}
        row["weighted_tau"] = float(weightedtau(stored, exact).statistic)
        row |= {f"weighted_tau_{name}": float(weightedtau(v, exact).statistic) for name, v in projected.items()}
        row["weighted_tau_ideal"] = float(np.mean([weightedtau(v, exact).statistic for v in draws[k]]))
    rr = {name: [row["rr"][name] for row in rows] for name in rows[0]["rr"]}
    return {"mrr": {name: float(np.mean(v)) for name, v in rr.items()},
            "mrr_stored_vs_exact_p": paired_pvalues(rr["stored"], rr["exact"]),
            "weighted_tau": {key: summary(rows, key) for key in rows[0] if key.startswith("weighted_tau")}}


def summary(rows: list[dict], key: str) -> dict:
    v = np.array([r[key] for r in rows])
    return {"mean": v.mean(), "median": float(np.median(v)), "min": v.min(), "at_least_0.9": int((v >= 0.9).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--hard", type=int, default=40, help="the first N of each candidate set, scored apart too")
    ap.add_argument("--split", default="train")
    ap.add_argument("--projections", type=lambda v: [x if ":" in x else f"factored:{x}" for x in v.split(",") if x],
                    default=[], help="other projections to check against the exact cosine, KIND:SIZE or SIZE "
                    "(factored), e.g. 16384,sketch:4096")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], help="the reference model's (default: the index's)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--check-pairs", type=int, default=3, help="pairs whose factored inner product is checked "
                    "against plain autograd's full gradients")
    ap.add_argument("--rescore", type=Path, help="an earlier run's JSON: recompute what its kept scores give (the "
                    "proponents' reciprocal ranks, the weighted rank correlation) without the model")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    start = time.perf_counter()
    tracer = Tracer(a.index)
    if a.rescore:
        result = json.loads(a.rescore.read_text())
        index = os.path.relpath(a.index.resolve(), ROOT)
        if index != result["index"]:
            raise SystemExit(f"--rescore {a.rescore}: made from {result['index']}, not --index {index}")
        proponents = {q.id: q.proponents for q in tracer.corpus.queries}
        tracer.close()
        rows = result["per_query"]
        result |= outcomes(rows, proponents, result["projection"]["dim"], a.hard)
        result["spearman"] |= {k: summary(rows, k) for k in rows[0] if k.startswith("ideal_projection")}
        rel = {k: os.path.relpath(v.resolve(), ROOT) for k, v in (("rescore", a.rescore), ("out", a.out))}
        result["rescored_by"] = (f"python results/attribution/peer_check.py --index {result['index']} "
                                 f"--rescore {rel['rescore']} --out {rel['out']}")
        a.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
        print(json.dumps({k: result[k] for k in ("mrr", "mrr_stored_vs_exact_p", "weighted_tau")}, default=float))
        return
    m = tracer.index.manifest
    spec = m.vectors["tracin"]
    corrections = spec["corrections"]
    if len(spec["checkpoints"]) != 1 or spec["layers"] != [input_embedding_name(tracer.lm.model)] \
            or spec["tied"] != "both" or corrections["optimizer"] or corrections["whitening"]["enabled"]:
        raise SystemExit("peer_check compares one checkpoint's whole tied-embedding gradient, uncorrected")
    loss = spec["config"]["example_loss"]
    checkpoint, dtype = spec["checkpoints"][0]["name"], a.dtype or m.model.dtype
    lm = load_model(checkpoint, "cpu", dtype)
    model = lm.model.eval()
    sized = {label.replace(":", "_"): GradientFeaturizer(model, GradientConfig(
        **spec["config"] | {"projection": label.split(":")[0], "dim": int(label.split(":")[1])}))
        for label in a.projections}
    for p in model.parameters():
        p.requires_grad_(False)
    corpus = tracer.corpus
    examples = {e.sentence_id: e for e in index_examples(corpus.sentences)}
    objective = Objective(loss, lm.tokenizer, m.max_tokens)
    eligible = [q for q in corpus.queries if q.proponents and (a.split == "all" or q.split == a.split)]
    queries = sample_queries(eligible, a.queries, seed=0, purpose="peer-check")
    view = CorpusView(corpus)
    sets = {q.id: candidate_set(q, view, lambda k, q=q: list(tracer.retrieve("bm25", q.prompt, q.target, k)), 0).ids
            for q in queries}
    stored = {q.id: tracer.score("tracin", q.prompt, q.target, sets[q.id]) for q in queries}
    tracer.close()

    qf, qv = {}, {}
    for q in queries:
        qb = query_batch(lm.tokenizer, [q.prompt], [q.target], m.max_tokens)
        (qf[q.id],) = factors(model, qb)
        qv[q.id] = {d: f.vectors(qb)[0] for d, f in sized.items()}
    wanted: dict[str, list[str]] = {}  # candidate -> the queries whose set holds it
    for qid, ids in sets.items():
        for sid in ids:
            wanted.setdefault(sid, []).append(qid)
    order = sorted(wanted, key=lambda s: len(examples[s].text))  # length-sorted batches
    exact: dict[str, dict[str, float]] = {qid: {} for qid in sets}
    at_dim: dict[str, dict[str, dict[str, float]]] = {d: {qid: {} for qid in sets} for d in sized}
    qnorm = {qid: dot(f, f) ** 0.5 for qid, f in qf.items()}
    for n in range(0, len(order), a.batch):
        ids = order[n:n + a.batch]
        batch, _ = objective.batch([examples[s] for s in ids])
        vecs = {d: f.vectors(batch) for d, f in sized.items()}
        for k, (sid, f) in enumerate(zip(ids, factors(model, batch), strict=True)):
            norm = dot(f, f) ** 0.5
            for qid in wanted[sid]:
                exact[qid][sid] = dot(f, qf[qid]) / (norm * qnorm[qid]) if norm else 0.0
                for d in sized:
                    at_dim[d][qid][sid] = float(vecs[d][k] @ qv[qid][d])
        if n // a.batch % 50 == 0:
            print(f"{n + len(ids)}/{len(order)} candidates ({time.perf_counter() - start:.0f} s)", flush=True)

    model32 = load_model(checkpoint, "cpu", "float32").model.eval()  # the check: both ways on the float32 model
    for p in model32.parameters():
        p.requires_grad_(False)
    weight = model32.get_input_embeddings().weight
    weight.requires_grad_(True)
    checks = []
    for q in queries[:a.check_pairs]:
        sid = sets[q.id][0]
        qb = query_batch(lm.tokenizer, [q.prompt], [q.target], m.max_tokens)
        sb = objective.batch([examples[sid]])[0]
        gq, gs = exact_gradient(model32, weight, qb), exact_gradient(model32, weight, sb)
        (fq,), (fs,) = factors(model32, qb), factors(model32, sb)
        full, factored = float(gs @ gq / (gs.norm() * gq.norm())), dot(fs, fq) / (dot(fs, fs) * dot(fq, fq)) ** 0.5
        checks.append({"query": q.id, "candidate": sid, "autograd": full, "factored": factored,
                       "abs_error": abs(full - factored)})

    rows = []
    for q in queries:
        ids, e = sets[q.id], exact[q.id]
        hard = ids[:a.hard]
        top = len(set(sorted(ids, key=stored[q.id].get)[-10:]) & set(sorted(ids, key=e.get)[-10:])) / 10
        c = np.array([e[s] for s in ids])
        row = {"query": q.id, "candidates": len(ids), "top10_overlap": top,
               "exact_cosine_range": float(c.max() - c.min()),
               "exact_median_gap": float(np.median(np.diff(np.sort(c))))}
        for name, ranks in (("all", ids), ("hard", hard)):
            row[f"stored_vs_exact_{name}"] = rho(stored[q.id], e, ranks)
            for d in sized:
                row[f"projection_{d}_{name}"] = rho(at_dim[d][q.id], e, ranks)
        row["scores"] = {"ids": ids, "exact": c.tolist(), "stored": [stored[q.id][s] for s in ids]} | {
            f"projection_{d}": [at_dim[d][q.id][s] for s in ids] for d in sized}
        rows.append(row)
    top10 = np.array([r["top10_overlap"] for r in rows])
    seen = outcomes(rows, {q.id: q.proponents for q in queries}, spec["dim"], a.hard)
    result = {
        "command": "python results/attribution/peer_check.py " + " ".join(
            f"--{k.replace('_', '-')} " + (os.path.relpath(v.resolve(), ROOT) if isinstance(v, Path)
                                            else ",".join(map(str, v)) if isinstance(v, list) else str(v))
            for k, v in vars(a).items() if v is not None and not (isinstance(v, list) and not v)),
        "index": str(a.index.resolve().relative_to(ROOT)), "model": m.model.name if not Path(m.model.name).exists()
        else str(Path(m.model.name).resolve().relative_to(ROOT)), "index_dtype": m.model.dtype,
        "example_loss": loss, "projection": {k: spec[k] for k in ("dim", "projection", "seed", "tied")},
        "reference": f"exact cosine of the full gradients w.r.t. the tied input embedding ({dtype} model), in "
                     "factored form",
        "factored_vs_autograd": checks, "queries": len(rows), "candidates": len(order),
        "spearman": {k: summary(rows, k) for k in rows[0] if k.startswith(("stored", "projection", "ideal"))},
        "top10_overlap": {"mean": top10.mean(), "min": top10.min()},
        "exact_cosine_range": summary(rows, "exact_cosine_range"),
        "exact_median_gap": summary(rows, "exact_median_gap"),
        **seen,
        "per_query": rows, "seconds": round(time.perf_counter() - start, 1),
    }
    a.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(json.dumps({k: result[k] for k in ("factored_vs_autograd", "spearman", "top10_overlap", "seconds")},
                     default=float))


if __name__ == "__main__":
    main()
