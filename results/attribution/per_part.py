"""TracIn by part of the gradient vector, from the index a bench run evaluated: which checkpoint, which layer block
carries the signal.

An index's "tracin" vector concatenates one unit vector per checkpoint, each scaled by 1/sqrt(C), and within a
checkpoint one unit vector per layer block, each scaled by 1/sqrt(B): its cosine is the mean of the per-(checkpoint,
block) cosines. This script takes the bench run's very (seed, query) draws and rerank candidate sets (rebuilt from
their seeds) and scores each candidate by one part of that vector alone (the sum of its pieces' dot products, so the
mean of their cosines): each checkpoint (all its blocks), each block (at every checkpoint), each --group of blocks,
and the whole ("sum"), which must reproduce the bench's own tracin MRR (a check).

    python results/attribution/per_part.py RUN_DIR [--group NAME=GLOB ...] [--folds A,B/C,D] [--fold-groups]
        [--whiten D,D] [--kfac D,D] [--whiten-samples N,N] [--with INDEX] [--out FILE.json]

RUN_DIR: an `ftrace bench --mode rerank` output (its config.json and rankings.jsonl). GLOB matches block names
(e.g. --group mlp='model.layers.*'). Prints a markdown table: one row per part, MRR per learned slice and relation.
--folds: two groups of relations; for each, the part with the best MRR on its draws is chosen and reported on the
other group's (a choice made on facts it is not reported on); --fold-groups: among the --group parts and the whole
vector only, and their whitened variants (where single blocks are many and small, choosing among them fits noise).
The JSON keeps every draw's reciprocal rank per part, but for an index of more than MANY_BLOCKS (32) blocks only the
checkpoints', groups', whole vector's and chosen parts' (their MRRs all stay in the table).
--whiten: every part is also scored after TrackStar's whitening, each (checkpoint, block) piece mapped by ftrace's
(R + lambda I)^-1/2 (lambda = D x R's mean eigenvalue) fitted on N stored training vectors drawn at random, as
`ftrace ingest --whiten --whiten-damping D --whiten-samples N` stores them (from an index built without --whiten).
--kfac: every part is also scored after a Kronecker-factored whitening (K-FAC's form of R, as LoGra and Kronfluence
precondition): a piece is a factored projection G (k_r x k_c, the block's `factors`), mapped to
(S + lambda I)^-1/2 G (A + lambda I)^-1/2 with S = E[G G^T] and A = E[G^T G] over the same N stored training vectors
(lambda = D x the factor's mean eigenvalue), then re-normalised. Not an ingest option (yet): a measurement.
--with INDEX: a second index of the same corpus and blocks at another checkpoint; each vector becomes the two indexes'
stored vectors joined (each / sqrt(2)), as one index of both checkpoints would store it, so each checkpoint is a part.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np

MANY_BLOCKS = 32  # above this, the JSON's draws omit single blocks' ranks (hundreds of parts: tens of MB)


def base_part(name: str) -> str:
    """The part a scored name belongs to: its whitening variant's " @..." suffix aside."""
    return name.split(" @")[0]


def parts(spec: dict, groups: dict[str, str]) -> dict[str, np.ndarray]:
    """Part name -> the indices of the stored vector it covers: each checkpoint, each block (when there are several),
    each group of blocks, and the whole vector ("sum")."""
    blocks = [(b["name"], b["size"]) for b in spec["blocks"]]
    width = spec["per_checkpoint_size"]
    ckpts = [Path(x["name"]).name for x in spec["checkpoints"]]
    pieces = piece_spans(spec)

    def span(c: int, b: int) -> np.ndarray:
        return pieces[c * len(blocks) + b]

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


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def piece_spans(spec: dict) -> list[np.ndarray]:
    """The stored vector's pieces, one per (checkpoint, block): what ingest unit-normalises and whitens."""
    starts = np.cumsum([0] + [b["size"] for b in spec["blocks"]])
    width = spec["per_checkpoint_size"]
    return [np.arange(c * width + a, c * width + b) for c in range(len(spec["checkpoints"]))
            for a, b in zip(starts[:-1], starts[1:], strict=True)]


def fit_pieces(sample: np.ndarray, pieces: list[np.ndarray], dampings: list[float]) -> list[list]:
    """Per damping, one W per piece: ftrace's whitening (whitening.py) fitted on the sample's pieces, which are
    ingest's per-block-normalised gradients up to scale."""
    import torch

    from ftrace.features.gradients.whitening import unit, whitening_matrices

    per_piece = []
    for idx in pieces:
        u = unit(torch.from_numpy(sample[:, idx]).double())
        per_piece.append([W.float() for W, _ in whitening_matrices(u.T @ u / len(u), dampings)])
    return [[Ws[k] for Ws in per_piece] for k in range(len(dampings))]


def fit_kfac(sample: np.ndarray, pieces: list[np.ndarray], factors: list[tuple[int, int]],
             dampings: list[float]) -> list[list]:
    """Per damping, one (W_r, W_c) per piece: ftrace's whitening (whitening.py: the damped inverse square root) of
    the Kronecker factors S = E[G G^T] and A = E[G^T G] of the sample's pieces, each G its (k_r x k_c) factored
    projection."""
    import torch

    from ftrace.features.gradients.whitening import unit, whitening_matrices

    per_piece = []
    for idx, (kr, kc) in zip(pieces, factors, strict=True):
        G = unit(torch.from_numpy(sample[:, idx]).double()).reshape(-1, kr, kc)
        S = torch.einsum("nij,nkj->ik", G, G) / len(G)
        A = torch.einsum("nji,njk->ik", G, G) / len(G)
        pairs = zip(whitening_matrices(S, dampings), whitening_matrices(A, dampings), strict=True)
        per_piece.append([(Wr.float(), Wc.float()) for (Wr, _), (Wc, _) in pairs])
    return [[Ws[k] for Ws in per_piece] for k in range(len(dampings))]


def whiten(X: np.ndarray, pieces: list[np.ndarray], Ws: list,
           factors: list[tuple[int, int]] | None = None) -> np.ndarray:
    """Each piece of each row mapped by its W (or, with `factors`, by its Kronecker pair (W_r, W_c) as
    W_r G W_c) and re-normalised to the norm it had (so dot products stay the mean of the pieces' cosines), as
    ingest stores a whitened vector."""
    import torch

    from ftrace.features.gradients.whitening import unit

    out = np.empty_like(X)
    for k, (idx, W) in enumerate(zip(pieces, Ws, strict=True)):
        for a in range(0, len(X), 4096):
            x = torch.from_numpy(X[a:a + 4096, idx]).float()
            if factors is None:
                y = x @ W
            else:
                (Wr, Wc), (kr, kc) = W, factors[k]
                y = (Wr @ x.reshape(-1, kr, kc) @ Wc).reshape(len(x), -1)
            out[a:a + 4096, idx] = (unit(y) * x.norm(dim=-1, keepdim=True)).numpy()
    return out


def stored(tracer) -> dict[str, np.ndarray]:
    """Every stored tracin vector of the tracer's index by sentence id, in the type the index stores (float16 by
    default: half the memory of float32, and no rounding)."""
    from ftrace.corpus.records import example_sentence

    dtype = np.float16 if tracer.index.manifest.store.float16 else np.float32
    vectors: dict[str, np.ndarray] = {}
    for ids, vecs, _ in tracer.store.points(["tracin"]):
        vectors.update({example_sentence(i): np.asarray(vecs["tracin"][j], dtype=dtype) for j, i in enumerate(ids)})
    return vectors


def joinable(spec: dict, spec2: dict, other: Path) -> None:
    """Refuse a --with index whose vectors cannot be joined to the run's index's as one index of both checkpoints."""
    def layout(s: dict) -> list:
        return [(b["name"], tuple(b["factors"]), b["size"]) for b in s["blocks"]] + [s["per_checkpoint_size"]]

    if layout(spec2) != layout(spec):
        raise SystemExit(f"--with {other}: its gradient blocks (names, projection sizes) differ from the run's index's")
    if spec2["corrections"]["whitening"]["enabled"] != spec["corrections"]["whitening"]["enabled"]:
        raise SystemExit(f"--with {other}: one of the two indexes is whitened and the other is not")
    names = [Path(x["name"]).name for x in spec["checkpoints"] + spec2["checkpoints"]]
    twice = [n for n in names if names.count(n) > 1]
    if twice:
        raise SystemExit(f"--with {other}: both indexes have a checkpoint named {twice[0]}; join different ones")


def query_vectors(tracer, queries: dict, asked: list[str]) -> dict[str, np.ndarray]:
    return {qid: tracer.query_vectors(queries[qid].prompt, queries[qid].target, ["tracin"])["tracin"]
            for qid in asked}


def main() -> None:
    from ftrace.bench.candidates import seeded_tiebreak
    from ftrace.bench.runner import Bench
    from ftrace.config import BenchConfig
    from ftrace.query.fusion import ranking
    from ftrace.runrecord import read_record

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--group", action="append", default=[], metavar="NAME=GLOB")
    ap.add_argument("--folds", default=None, metavar="A,B/C,D")
    ap.add_argument("--fold-groups", action="store_true",
                    help="--folds chooses among the --group parts and the whole vector only")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--whiten", type=floats, default=[], metavar="D,D",
                    help="also score every part whitened as `ftrace ingest --whiten --whiten-damping D` would")
    ap.add_argument("--kfac", type=floats, default=[], metavar="D,D",
                    help="also score every part under a Kronecker-factored whitening with damping D")
    ap.add_argument("--whiten-samples", type=ints, default=[512], metavar="N,N",
                    help="calibration sample sizes: N stored training vectors drawn at random (seed 0)")
    ap.add_argument("--with", dest="other", type=Path, default=None, metavar="INDEX",
                    help="a second index of the same corpus and blocks (another checkpoint): its vectors joined to "
                         "the run's index's as one index of both checkpoints stores them (mean of the two cosines)")
    ap.add_argument("--query-cache", default=None, metavar="FILE.npz",
                    help="keep the queries' vectors here (read back when it exists: the same bench run only)")
    o = ap.parse_args()
    if not o.whiten and not o.kfac:
        o.whiten_samples = []
    for option, dampings in (("--whiten", o.whiten), ("--kfac", o.kfac)):
        if any(d <= 0 for d in dampings):
            raise SystemExit(f"{option} {','.join(f'{d:g}' for d in dampings)}: dampings are positive")
    groups = dict(g.split("=", 1) for g in o.group)
    if o.fold_groups and not (o.folds and groups):
        raise SystemExit("--fold-groups: needs --folds and at least one --group")
    c = BenchConfig.model_validate(read_record(o.run / "config.json", "bench"))
    if c.mode != "rerank":
        raise SystemExit(f"{o.run}: a rerank run is needed (its candidate sets), not {c.mode}")
    bench = Bench(c)
    tracer, scorer = bench.tracer, bench.scorer
    spec = tracer.index.manifest.vectors["tracin"]
    if o.whiten_samples and spec["corrections"]["whitening"]["enabled"]:
        raise SystemExit(f"{o.run}: its index's vectors are whitened already; --whiten and --kfac take an index built "
                         "without")
    if o.kfac and spec.get("projection", "factored") != "factored":
        raise SystemExit(f"{o.run}: --kfac needs a factored projection's pieces; its index's is {spec['projection']}")
    spans = parts(spec, groups)
    rows = {(x["seed"], x["query"]): x for x in map(json.loads, (o.run / "rankings.jsonl").read_text().splitlines())
            if x["method"] == "tracin"}
    queries = {q.id: q for q in tracer.corpus.queries}
    vectors = stored(tracer)
    scored = sorted(rows.items())
    cands = {key: scorer.candidates(key[0], queries[key[1]]).ids for key, _ in scored}
    cache = Path(o.query_cache) if o.query_cache else None
    asked = sorted({qid for _, qid in rows})
    if cache and cache.exists():  # the queries' vectors of an earlier run on the same bench run
        with np.load(cache) as saved:
            qvecs = {str(q): v for q, v in zip(saved["ids"], saved["vectors"], strict=True)}
    else:
        qvecs = query_vectors(tracer, queries, asked)
        if cache:
            np.savez(cache, ids=np.array(list(qvecs)), vectors=np.stack(list(qvecs.values())))
    if o.other:  # a second checkpoint's index: both joined as one index of the two checkpoints stores them
        from ftrace.query.tracer import Tracer

        other = Tracer(o.other, device=c.device)
        spec2 = other.index.manifest.vectors["tracin"]
        joinable(spec, spec2, o.other)
        vectors2, qvecs2 = stored(other), query_vectors(other, queries, asked)
        other.close()
        if vectors2.keys() != vectors.keys():
            raise SystemExit(f"--with {o.other}: not the same corpus as {o.run}'s index")
        spec = {**spec, "checkpoints": spec["checkpoints"] + spec2["checkpoints"],
                "size": spec["size"] + spec2["size"]}
        for i in list(vectors):  # in place: two indexes' vectors are several GB
            vectors[i] = np.concatenate([vectors[i], vectors2.pop(i)]) * vectors[i].dtype.type(np.sqrt(0.5))
        qvecs = {q: np.concatenate([v, qvecs2[q]]) / np.sqrt(2) for q, v in qvecs.items()}
        spans = parts(spec, groups)
    needed = sorted({i for group in cands.values() for i in group})
    row_of = {i: r for r, i in enumerate(needed)}
    X = np.stack([vectors[i] for i in needed])  # in the index's storage type (float16 by default)
    rng = np.random.default_rng(0)
    if o.whiten_samples and max(o.whiten_samples) > len(vectors):
        raise SystemExit(f"--whiten-samples {max(o.whiten_samples)}: the index stores {len(vectors)} vectors")
    calibration = (np.stack([vectors[i] for i in rng.permutation(sorted(vectors))[:max(o.whiten_samples)]])
                   if o.whiten_samples else None)
    del vectors
    pieces = piece_spans(spec)
    factors = [tuple(b["factors"]) for _ in spec["checkpoints"] for b in spec["blocks"]]
    Q = np.stack([qvecs[q] for q in qvecs]).astype(np.float32)
    q_row = {q: r for r, q in enumerate(qvecs)}

    def variants() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """The stored vectors, then each whitening of them, one at a time (each a copy of the candidates')."""
        yield "", X, Q
        for n in o.whiten_samples:
            assert calibration is not None
            for d, Ws in zip(o.whiten, fit_pieces(calibration[:n], pieces, o.whiten), strict=True):
                yield f" @whiten d={d:g} n={n}", whiten(X, pieces, Ws), whiten(Q, pieces, Ws)
            for d, Ws in zip(o.kfac, fit_kfac(calibration[:n], pieces, factors, o.kfac), strict=True):
                yield f" @kfac d={d:g} n={n}", whiten(X, pieces, Ws, factors), whiten(Q, pieces, Ws, factors)

    rr: dict[str, dict[str, list[float]]] = {}  # slice or relation -> part -> reciprocal ranks, one per (seed, query)
    draws: list[dict] = []  # per (seed, query): its slice, relation and reciprocal rank by each part
    for (seed, qid), row in scored:
        q = queries[qid]
        draws.append({"seed": seed, "query": qid, "slice": row["slice"], "strict": row.get("strict"),
                      "relation": q.fact[1] if q.fact else qid.split("/")[0], "rr": {}})
        bench_rank = min(row["proponent_ranks"]) if row["proponent_ranks"] else None
        rr.setdefault("all", {}).setdefault("bench", []).append(1 / bench_rank if bench_rank else 0.0)
    names = []
    for suffix, Xv, Qv in variants():
        names += [name + suffix for name in spans]
        for draw in draws:
            seed, qid = draw["seed"], draw["query"]
            ids, props = cands[seed, qid], set(queries[qid].proponents)
            m, qv = Xv[[row_of[i] for i in ids]].astype(np.float32), Qv[q_row[qid]]
            for name, idx in spans.items():
                scores = dict(zip(ids, (m[:, idx] @ qv[idx]).tolist(), strict=True))
                ranked = ranking(scores, seeded_tiebreak(seed, qid))
                first = next((r for r, (i, _) in enumerate(ranked, 1) if i in props), None)
                draw["rr"][name + suffix] = 1 / first if first else 0.0
                for s in ("all", draw["slice"], draw["relation"]):
                    rr.setdefault(s, {}).setdefault(name + suffix, []).append(draw["rr"][name + suffix])
        del Xv, Qv
    tracer.close()
    table = {s: {n: float(np.mean(v)) for n, v in by.items()} | {"draws": len(by["sum"])} for s, by in rr.items()}
    slices = list(table)
    print("| part | " + " | ".join(f"{s} ({table[s]['draws']} draws)" for s in slices) + " |")
    print("|---|" + "---|" * len(slices))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{table[s][name]:.3f}" for s in slices) + " |")
    check = f"the {Path(spec['checkpoints'][0]['name']).name} row" if o.other else "the sum row"
    print(f"\nbench's own tracin MRR over the same draws: {table['all']['bench']:.3f} ({check} should match)")
    among = [n for n in names if base_part(n) in {*groups, "sum"}] if o.fold_groups else names
    chosen = cross_chosen(draws, among, o.folds) if o.folds else []
    for ch in chosen:
        print(f"\nchosen on {ch['chosen_on']}: {ch['part']} (MRR {ch['mrr_chosen_on']:.3f} there); "
              f"on {ch['reported_on']} ({ch['draws']} draws): {ch['mrr']:.3f}, the whole vector {ch['mrr_sum']:.3f}")
    if o.out:
        whitening = {"dampings": o.whiten, "kfac_dampings": o.kfac, "samples": o.whiten_samples}
        if len(spec["blocks"]) > MANY_BLOCKS:  # each draw keeps the checkpoints', groups', whole's and chosen ranks
            single, kept = {b["name"] for b in spec["blocks"]}, {ch["part"] for ch in chosen}
            for d in draws:
                d["rr"] = {n: r for n, r in d["rr"].items() if base_part(n) not in single or n in kept}
        o.out.write_text(json.dumps({"run": o.run.as_posix(), "parts": names, "whiten": whitening, "mrr": table,
                                     "chosen": chosen,
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
