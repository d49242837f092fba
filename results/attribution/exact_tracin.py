"""Issue 27: the exact TracIn of a bench run's index, as a ceiling for its projection: each of the run's draws
(its rerank candidate sets, rebuilt from their seeds as per_part.py does) scored by the exact cosine of the full,
unprojected gradients of the index's gradient block (the tied embedding), at each checkpoint, with the index's own
optimizer correction, beside the same checkpoints' stored (projected) parts.

The exact cosines come in peer_check.py's factored form (G = rows[tokens] + D^T H, never formed). ftrace corrects a
factored or sketched block by the rank-1 form of Adam's S = sqrt(v) + eps (a = S's row means, c = its column means
/ its mean; optimizer.py), so the corrected gradient diag(1/a) G diag(1/c) keeps that form: rows scaled by 1/a of
their token and 1/c, D's columns by 1/a, H's by 1/c. The exact reference is thus the very quantity the stored vector
projects; the check pairs compare it with plain autograd's full gradient divided by a c^T on the float32 model.

    python results/attribution/exact_tracin.py RUN_DIR --out FILE.json [--checkpoints step-383,...]

The JSON has per_part.py's layout (parts, an MRR table per slice and relation, each draw's reciprocal rank by part),
so paired.py compares its parts with each other and with bench runs: "stored CKPT" (the index's part, per_part.py's
CKPT), "exact CKPT", and, with several checkpoints, "stored" and "exact" (the mean of their cosines, as the index
combines them); also each draw's Spearman correlation of stored and exact scores per checkpoint. Variants of the
exact cosine where the index has an optimizer correction: " uncorrected", " floor=1" and " input side" (the lookup
rows alone). Memory grows about 250 MB a minute on the short run's bench (not found why; a three-checkpoint run
reached 16.7 GB): give one checkpoint at a time (--checkpoints) on a 24 GB machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from peer_check import Factors, dot, exact_gradient, factors
from per_part import parts, query_vectors, stored
from scipy.stats import spearmanr

FLOOR = 1.0  # a variant: S + FLOOR x mean(sqrt(v)) (`--optimizer-floor`; results/train tried 1)


def scaled(f: Factors, a: torch.Tensor, c: torch.Tensor) -> Factors:
    """diag(1/a) G diag(1/c) of a factored gradient G."""
    return Factors(f.tokens, f.rows / a[f.tokens, None] / c, f.D / a, f.H / c)


def forms(f: Factors, variants: dict[str, tuple[torch.Tensor, torch.Tensor, bool]]) -> dict[str, Factors]:
    """`f` under each variant's (a, c, head): without the head, the lookup rows alone (no LM-head term)."""
    out = {}
    for v, (a, c, head) in variants.items():
        g = scaled(f, a, c)
        out[v] = g if head else Factors(g.tokens, g.rows, g.D[:0], g.H[:0])
    return out


def correction(state: str | None, model: torch.nn.Module, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ftrace's rank-1 form (a, c) of the block's divisor S (optimizer.py's): ones without a state."""
    from ftrace.features.gradients.optimizer import divisor, load_optimizer_state, rank1

    w = model.get_input_embeddings().weight  # type: ignore[operator]
    if state is None:
        return torch.ones(w.shape[0]), torch.ones(w.shape[1])
    moments, eps = load_optimizer_state(state, model)
    name = next(n for n, p in model.named_parameters() if p is w)
    a, c = rank1(divisor(moments[name], eps, floor))
    return a.float(), c.float()


def main() -> None:
    from ftrace.bench.candidates import seeded_tiebreak
    from ftrace.bench.runner import Bench
    from ftrace.config import BenchConfig
    from ftrace.features.base import input_embedding_name
    from ftrace.model import load_model, query_batch
    from ftrace.model.objective import Objective, index_examples
    from ftrace.query.fusion import ranking
    from ftrace.runrecord import read_record

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--checkpoints", default=None,
                    help="only these of the index's checkpoints (names, comma-separated)")
    ap.add_argument("--draws", type=int, default=None, help="only the first N draws (a trial)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--check-pairs", type=int, default=2)
    ap.add_argument("--scores", type=Path, default=None, help="also keep every candidate's scores here (.npz)")
    ap.add_argument("--out", type=Path, required=True)
    o = ap.parse_args()
    start = time.perf_counter()
    c = BenchConfig.model_validate(read_record(o.run / "config.json", "bench"))
    if c.mode != "rerank":
        raise SystemExit(f"{o.run}: a rerank run is needed (its candidate sets), not {c.mode}")
    bench = Bench(c)
    tracer, scorer = bench.tracer, bench.scorer
    m = tracer.index.manifest
    spec = m.vectors["tracin"]
    if spec["layers"] != [input_embedding_name(tracer.lm.model)] or spec["tied"] != "both" \
            or spec["corrections"]["whitening"]["enabled"]:
        raise SystemExit(f"{o.run}: exact_tracin scores the whole tied embedding block, unwhitened; its index's "
                         f"tracin is {spec['layers']} (tied {spec['tied']})")
    names = [Path(x["name"]).name for x in spec["checkpoints"]]
    wanted = o.checkpoints.split(",") if o.checkpoints else names
    if unknown := sorted(set(wanted) - set(names)):
        raise SystemExit(f"--checkpoints {o.checkpoints}: {unknown} not among the index's {names}")
    rows = {(x["seed"], x["query"]): x for x in map(json.loads, (o.run / "rankings.jsonl").read_text().splitlines())
            if x["method"] == "tracin"}
    queries = {q.id: q for q in tracer.corpus.queries}
    draws = sorted(rows)[:o.draws]
    cands = {key: scorer.candidates(key[0], queries[key[1]]).ids for key in draws}
    asked = sorted({qid for _, qid in draws})
    # the stored parts, scored as per_part.py scores them
    spans = parts(spec, {})
    vectors = stored(tracer)
    qvecs = query_vectors(tracer, queries, asked)
    stored_scores: dict[str, dict[tuple, np.ndarray]] = {}
    combined = {"stored": np.concatenate([spans[n] for n in wanted])} if len(wanted) > 1 else {}
    for name, idx in ({f"stored {n}": spans[n] for n in wanted} | combined).items():
        stored_scores[name] = {key: np.stack([vectors[i][idx] for i in cands[key]]).astype(np.float32)
                               @ qvecs[key[1]][idx].astype(np.float32) for key in draws}
    del vectors
    examples = {e.sentence_id: e for e in index_examples(tracer.corpus.sentences)}
    objective = Objective(spec["config"]["example_loss"], tracer.lm.tokenizer, m.max_tokens)
    tokenizer = tracer.lm.tokenizer
    tracer.close()

    pairs: dict[str, set[str]] = {}  # candidate -> the queries whose draws hold it
    for key in draws:
        for sid in cands[key]:
            pairs.setdefault(sid, set()).add(key[1])
    order = sorted(pairs, key=lambda s: len(examples[s].text))  # length-sorted batches
    exact: dict[str, dict[tuple[str, str], float]] = {}  # "CKPT" or "CKPT VARIANT" -> (query, candidate) -> cosine
    checks = []
    floor = spec["config"].get("optimizer_floor", 0.0)
    for ck in spec["checkpoints"]:
        name = Path(ck["name"]).name
        if name not in wanted:
            continue
        model = load_model(ck["name"], "cpu", m.model.dtype).model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        a, cc = correction(ck.get("optimizer_state"), model, floor)
        variants = {"": (a, cc, True)}  # the index's own correction, then the module docstring's variants
        if ck.get("optimizer_state"):
            variants |= {" uncorrected": (*correction(None, model, 0.0), True),
                         f" floor={FLOOR:g}": (*correction(ck["optimizer_state"], model, FLOOR), True),
                         " input side": (a, cc, False)}

        qf = {}
        for qid in asked:
            qb = query_batch(tokenizer, [queries[qid].prompt], [queries[qid].target], m.max_tokens)
            qf[qid] = {v: (f, dot(f, f) ** 0.5) for v, f in forms(factors(model, qb)[0], variants).items()}
        cos: dict[str, dict[tuple[str, str], float]] = {v: {} for v in variants}
        for at in range(0, len(order), o.batch):
            ids = order[at:at + o.batch]
            batch, _ = objective.batch([examples[s] for s in ids])
            for sid, f0 in zip(ids, factors(model, batch), strict=True):
                for v, f in forms(f0, variants).items():
                    norm = dot(f, f) ** 0.5
                    for qid in pairs[sid]:
                        g, gnorm = qf[qid][v]
                        cos[v][qid, sid] = dot(f, g) / (norm * gnorm) if norm and gnorm else 0.0
            if at // o.batch % 100 == 0:
                print(f"{name}: {at + len(ids)}/{len(order)} candidates ({time.perf_counter() - start:.0f} s)",
                      flush=True)
        exact |= {name + v: c_ for v, c_ in cos.items()}
        del model
        # the check: the scaled factored cosine against autograd's full gradient / (a c^T), float32 model
        model32 = load_model(ck["name"], "cpu", "float32").model.eval()
        for p in model32.parameters():
            p.requires_grad_(False)
        weight = model32.get_input_embeddings().weight
        weight.requires_grad_(True)
        S = torch.outer(a, cc).reshape(-1)
        for seed, qid in draws[:o.check_pairs]:
            sid = cands[seed, qid][0]
            qb = query_batch(tokenizer, [queries[qid].prompt], [queries[qid].target], m.max_tokens)
            sb = objective.batch([examples[sid]])[0]
            gq, gs = exact_gradient(model32, weight, qb) / S, exact_gradient(model32, weight, sb) / S
            fq, fs = scaled(factors(model32, qb)[0], a, cc), scaled(factors(model32, sb)[0], a, cc)
            full, fac = float(gs @ gq / (gs.norm() * gq.norm())), dot(fs, fq) / (dot(fs, fs) * dot(fq, fq)) ** 0.5
            checks.append({"checkpoint": name, "query": qid, "candidate": sid, "autograd": full, "factored": fac,
                           "abs_error": abs(full - fac)})
        del model32, weight

    suffixes = sorted({k[len(n):] for k in exact for n in wanted if k.startswith(n)}, key=len)
    exact_scores = {f"exact {k}": {key: np.array([exact[k][key[1], s] for s in cands[key]]) for key in draws}
                    for k in exact}
    if len(wanted) > 1:
        for v in suffixes:
            exact_scores["exact" + v] = {key: np.mean([exact_scores[f"exact {n}{v}"][key] for n in wanted], axis=0)
                                         for key in draws}
    scores = stored_scores | exact_scores
    out_draws: list[dict] = []
    rr: dict[str, dict[str, list[float]]] = {}  # slice or relation -> part -> reciprocal ranks
    spear: dict[str, list[float]] = {n: [] for n in wanted}
    for seed, qid in draws:
        row, q = rows[seed, qid], queries[qid]
        props = set(q.proponents)
        d = {"seed": seed, "query": qid, "slice": row["slice"], "strict": row.get("strict"),
             "relation": q.fact[1] if q.fact else qid.split("/")[0], "rr": {}}
        for part, by in scores.items():
            s = np.round(by[seed, qid], 6) if part.startswith("exact") else by[seed, qid]
            ranked = ranking(dict(zip(cands[seed, qid], s.tolist(), strict=True)), seeded_tiebreak(seed, qid))
            first = next((r for r, (i, _) in enumerate(ranked, 1) if i in props), None)
            d["rr"][part] = 1 / first if first else 0.0
            for sl in ("all", d["slice"], d["relation"]):
                rr.setdefault(sl, {}).setdefault(part, []).append(d["rr"][part])
        for n in wanted:
            spear[n].append(float(spearmanr(scores[f"stored {n}"][seed, qid],
                                            exact_scores[f"exact {n}"][seed, qid]).statistic))
        out_draws.append(d)
    if o.scores:
        np.savez_compressed(o.scores, **{f"{part}|{seed}|{qid}": by[seed, qid] for part, by in scores.items()
                                         for seed, qid in draws})
    table = {sl: {p: float(np.mean(v)) for p, v in by.items()} | {"draws": len(next(iter(by.values())))}
             for sl, by in rr.items()}
    sl_names = list(table)
    print("| part | " + " | ".join(f"{s} ({table[s]['draws']} draws)" for s in sl_names) + " |")
    print("|---|" + "---|" * len(sl_names))
    for part in scores:
        print(f"| {part} | " + " | ".join(f"{table[s][part]:.3f}" for s in sl_names) + " |")
    spearman = {n: {"mean": float(np.mean(v)), "median": float(np.median(v)), "min": float(np.min(v)),
                    "at_least_0.9": int(np.sum(np.array(v) >= 0.9))} for n, v in spear.items()}
    print("Spearman, stored against exact, per draw:", json.dumps(spearman))
    print("checks:", json.dumps(checks))
    o.out.write_text(json.dumps({
        "run": o.run.as_posix(), "command": "python results/attribution/exact_tracin.py " + " ".join(
            [o.run.as_posix()] + ([f"--checkpoints {o.checkpoints}"] if o.checkpoints else [])
            + ([f"--draws {o.draws}"] if o.draws else [])
            + [f"--out {o.out.as_posix()}"]),
        "reference": "exact cosine of the full gradients w.r.t. the tied embedding, divided by the index's rank-1 "
                     f"optimizer correction, on the index's {m.model.dtype} checkpoints, in factored form",
        "parts": list(scores), "mrr": table, "spearman_stored_vs_exact": spearman, "checks": checks,
        "seconds": round(time.perf_counter() - start, 1), "draws": out_draws}, indent=1) + "\n")


if __name__ == "__main__":
    main()
