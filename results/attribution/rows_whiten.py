"""Issue 27: TrackStar's whitening in the form a rows-projection index can keep. A dense R^-1/2 would mix the
embedding rows that the rows projection keeps apart (and fill the sparse vector), so R is taken Kronecker-factored
with a diagonal row factor: R ~ diag(r) (x) A, r_t = E[|G_t|^2] (how much of the corpus's gradient energy token t's
row carries: large for tokens every sentence has, as IDF is small for them) and A = E[G^T G] (k x k, the columns'
covariance), each fitted per checkpoint on the index's own stored vectors (its training examples). A stored or query
vector's row t becomes (r_t + lambda)^-1/2 G_t (A + lambda' I)^-1/2 (lambda = D x the mean r over rows that occur,
lambda' = D x A's mean eigenvalue: ftrace's whitening damping), each checkpoint's piece re-normalised as ingest
stores it. Scored on a rows index's bench run's own draws and candidate sets (rebuilt from their seeds, as
per_part.py does): the stored vectors as they are (must reproduce the bench's tracin MRR), rows only, columns only,
both, and IDF weights (w_t^2 = log(N / df_t), a peer without a fit), at each damping.

    python results/attribution/rows_whiten.py RUN_DIR --damping 0.01,0.1,1 --folds A,B/C,D [--samples N] \
        [--sample-seeds S,S] [--whiteners-from INDEX] [--checkpoints-at D] [--query-cache FILE.npz] --out FILE.json
    (--sample-seeds: other calibration samples of N; --whiteners-from: the fit an ingest saved in INDEX, applied to
    these vectors, alone and factor by factor beside this script's)
    python results/attribution/rows_whiten.py RUN_DIR --parts --out FILE.json   (an index whitened at ingest, or
        with blocks beside the rows: each part of its stored vector scored alone)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def inv_sqrt(M: np.ndarray, damping: float) -> np.ndarray:
    """(M + lambda I)^-1/2 with lambda = damping x M's mean eigenvalue: ftrace's whitening_matrix where M has full
    rank (the columns' A here, 144 x 144 from 10^5 rows and more), without its rule for directions outside the span."""
    e, U = np.linalg.eigh(M.astype(np.float64))
    e = np.clip(e, 0, None)
    return ((U / np.sqrt(e + damping * e.mean())) @ U.T).astype(np.float32)


class Rows:
    """Sparse vectors of a rows index as a CSR matrix (one row per vector), with their blocks of k numbers: each
    block is one (checkpoint, token row) of one vector."""

    def __init__(self, X: sp.csr_matrix, k: int, vocab: int, ckpts: int):
        self.X, self.k, self.vocab, self.ckpts = X, k, vocab, ckpts
        first = X.indices[::k].astype(np.int64)
        step = 1 << 20  # blocks at a time: the check's int64 copy of every index would take GBs
        if len(X.indices) % k or any(
                not np.all(X.indices[a * k:(a + step) * k].reshape(-1, k) - first[a:a + step, None] == np.arange(k))
                for a in range(0, len(first), step)):
            raise SystemExit("stored vectors are not whole rows of k numbers")
        self.ckpt = first // (vocab * k)
        self.token = first % (vocab * k) // k
        self.owner = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr) // k)

    def blocks(self) -> np.ndarray:
        return self.X.data.reshape(-1, self.k)

    def transformed(self, row_w: np.ndarray | None, col_w: list[np.ndarray] | None,
                    ckpts: list[int] | None = None) -> sp.csr_matrix:
        """Each block scaled by row_w[ckpt, token] and mapped by col_w[ckpt]; each (vector, checkpoint) piece
        re-normalised to 1/sqrt(C), as ingest joins unit pieces; with `ckpts`, the other checkpoints' pieces zero
        (the dot product is then the mean cosine of those checkpoints, up to a constant)."""
        B = self.blocks().astype(np.float32, copy=True)
        if col_w is not None:
            for c in range(self.ckpts):
                sel = self.ckpt == c
                B[sel] = B[sel] @ col_w[c]
        if row_w is not None:
            B *= row_w[self.ckpt, self.token][:, None]
        piece = self.owner * self.ckpts + self.ckpt
        norms = np.sqrt(np.bincount(piece, weights=(B.astype(np.float64) ** 2).sum(1), minlength=self.X.shape[0]
                                    * self.ckpts))
        B /= (norms[piece] * np.sqrt(self.ckpts))[:, None].astype(np.float32)
        if ckpts is not None:
            B *= np.isin(self.ckpt, ckpts)[:, None]
        return sp.csr_matrix((B.reshape(-1), self.X.indices, self.X.indptr), shape=self.X.shape)


def whole_rows(v, k: int):
    """The vector with every row it touches complete (k numbers): Qdrant drops a sparse vector's exact zeros."""
    rows = np.unique(v.indices // k)
    if len(v.indices) == len(rows) * k:
        return v
    full = (rows[:, None] * k + np.arange(k)).ravel()
    values = np.zeros(len(full), dtype=np.float32)
    values[np.searchsorted(full, v.indices)] = v.values
    return type(v)(full, values)


def as_csr(vectors: list, size: int, k: int | None) -> sp.csr_matrix:
    """The vectors as rows of a CSR matrix; with `k`, each row of the lookup made whole (`whole_rows`)."""
    vectors = [whole_rows(v, k) for v in vectors] if k else vectors
    indptr = np.cumsum([0] + [len(v.indices) for v in vectors])
    values = np.concatenate([v.values for v in vectors]).astype(np.float32)
    indices = np.concatenate([v.indices for v in vectors]).astype(np.int32 if size < 2**31 else np.int64)
    return sp.csr_matrix((values, indices, indptr), shape=(len(vectors), size))


def bench_run(run: Path) -> tuple:
    """A rows index's bench run reopened: its Bench (tracer and scorer), the index's tracin spec, the run's tracin
    rankings by draw (seed, query id), and the index's queries by id."""
    from ftrace.bench.runner import Bench
    from ftrace.config import BenchConfig
    from ftrace.runrecord import read_record

    bench = Bench(BenchConfig.model_validate(read_record(run / "config.json", "bench")))
    spec = bench.tracer.index.manifest.vectors["tracin"]
    if spec.get("projection") != "rows":
        raise SystemExit(f"{run}: its index's projection is {spec.get('projection')}, not rows")
    rankings = {(x["seed"], x["query"]): x for x in map(json.loads, (run / "rankings.jsonl").read_text().splitlines())
                if x["method"] == "tracin"}
    return bench, spec, rankings, {q.id: q for q in bench.tracer.corpus.queries}


def stored_vectors(tracer, spec: dict, k: int | None) -> tuple[list[str], sp.csr_matrix]:
    """Every stored tracin vector (its sentence id, and the vectors as CSR rows: `as_csr`)."""
    from ftrace.corpus.records import example_sentence

    ids, stored = [], []
    for pids, vecs, _ in tracer.store.points(["tracin"]):
        ids += [example_sentence(i) for i in pids]
        stored += list(vecs["tracin"])
    return ids, as_csr(stored, spec["size"], k)


def query_vectors(tracer, queries: list, cache: Path | None) -> list:
    """The queries' tracin vectors (a gradient pass each), kept in `cache` (.npz) when given and read from it
    when it exists (it must hold these queries, in this order)."""
    from ftrace.sparse import SparseVector

    ids = [q.id for q in queries]
    if cache and cache.exists():
        with np.load(cache) as z:
            if list(z["ids"]) != ids:
                raise SystemExit(f"{cache}: holds other queries than these {len(ids)}; delete it to recompute")
            return [SparseVector(z["indices"][a:b], z["values"][a:b]) for a, b in zip(z["ptr"][:-1], z["ptr"][1:],
                                                                                           strict=True)]
    qv = [tracer.query_vectors(q.prompt, q.target, ["tracin"])["tracin"] for q in queries]
    if cache:
        np.savez(cache, ids=np.array(ids), ptr=np.cumsum([0] + [len(v.indices) for v in qv]),
                 indices=np.concatenate([v.indices for v in qv]), values=np.concatenate([v.values for v in qv]))
    return qv


def reciprocal_rank(cand: list[str], scores: np.ndarray, proponents: list[str], draw: tuple[int, str]) -> float:
    """1 / the rank of the first proponent among the candidates by these scores, ties broken as the bench does."""
    from ftrace.bench.candidates import seeded_tiebreak
    from ftrace.query.fusion import ranking

    ranked = ranking(dict(zip(cand, scores.tolist(), strict=True)), seeded_tiebreak(*draw))
    props = set(proponents)
    first = next((r for r, (i, _) in enumerate(ranked, 1) if i in props), None)
    return 1 / first if first else 0.0


Makers = dict[str, Callable[[], tuple[sp.csr_matrix, sp.csr_matrix]]]  # variant -> its (stored, query) matrices


def part_scorer(spec: dict, X: sp.csr_matrix, Q: sp.csr_matrix, weights: list[float]) -> Makers:
    """Each part of the stored vector (a block at every checkpoint, a checkpoint's blocks, the blocks no lookup uses,
    the whole): the query's other indices zero, so the dot product is the sum of those pieces' cosines; and per
    weight w, the first block's cosines plus w times the other blocks' (the blocks weighed unlike)."""
    width, C = spec["per_checkpoint_size"], len(spec["checkpoints"])
    starts = np.cumsum([0] + [b["size"] for b in spec["blocks"]])
    spans = {b["name"]: [(c * width + a, c * width + e) for c in range(C)]
             for b, a, e in zip(spec["blocks"], starts[:-1], starts[1:], strict=True)}
    parts = {Path(x["name"]).name: [(c * width, (c + 1) * width)] for c, x in enumerate(spec["checkpoints"])}
    parts |= spans
    others = [s for b in spec["blocks"][1:] for s in spans[b["name"]]]
    if len(spec["blocks"]) > 2:
        parts["blocks beside the rows"] = others
    parts["sum"] = [(0, C * width)]

    def masked(where: list[tuple[int, int]], rest: float = 0.0):
        def make():
            m = np.full(Q.shape[1], rest, dtype=np.float32)
            for a, e in where:
                m[a:e] = 1
            return X, sp.csr_matrix(Q.multiply(m[None, :]))
        return make

    first = spec["blocks"][0]["name"]
    return ({name: masked(where) for name, where in parts.items()}
            | {f"{first} + {w:g} x the others": masked(spans[first], w) for w in weights})


def fitted(X: Rows, n_stored: int, samples: int, seed: int) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, int]:
    """The row energies r (C x vocab) and the columns' A (per checkpoint) on `samples` stored vectors drawn with
    `seed` (0: every stored vector; every stored vector is a training example, and TrackStar fits R on training
    gradients), each row's document frequency in them, and how many vectors they are."""
    n = min(samples, n_stored) or n_stored
    fit = np.isin(X.owner, np.random.default_rng(seed).permutation(n_stored)[:n]) if samples else slice(None)
    Bk, ckpt, token = X.blocks()[fit].astype(np.float64), X.ckpt[fit], X.token[fit]
    energy = np.zeros((X.ckpts, X.vocab))
    np.add.at(energy, (ckpt, token), (Bk ** 2).sum(1))
    df = np.zeros(X.vocab)
    np.add.at(df, token[ckpt == 0], 1)
    return energy / n, [(Bk[ckpt == ck].T @ Bk[ckpt == ck]) / n for ck in range(X.ckpts)], df, n


def whiteners(energy: np.ndarray, A: list[np.ndarray], damping: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """The row weights (r_t + lambda)^-1/2 (lambda = damping x the mean r over the rows the sample touched, per
    checkpoint) and each checkpoint's column matrix (A + lambda' I)^-1/2."""
    lam = np.array([e[e > 0].mean() for e in energy])[:, None] * damping
    return (1 / np.sqrt(energy + lam)).astype(np.float32), [inv_sqrt(a, damping) for a in A]


def whitening_scorer(spec: dict, Xc: sp.csr_matrix, Qc: sp.csr_matrix, o: argparse.Namespace,
                     n_stored: int, notes: dict) -> Makers:
    """The stored vectors re-whitened (module docstring) at each damping, and the peers: made one at a time. With
    --whiteners-from, how ingest's fit compares with this script's goes into `notes`."""
    vocab, k = spec["blocks"][0]["factors"]
    C = len(spec["checkpoints"])
    X, Q = Rows(Xc, k, vocab, C), Rows(Qc, k, vocab, C)
    energy, A, df, n = fitted(X, n_stored, o.samples, 0)
    idf = np.sqrt(np.log(n / np.maximum(df, 1)))
    variants: dict[str, tuple] = {"stored": (None, None, None),
                                  "idf": (np.broadcast_to(idf, (C, vocab)), None, None)}
    fits = {d: whiteners(energy, A, d) for d in o.damping}
    for d, (row_w, col_w) in fits.items():
        variants |= {f"rows d={d:g}": (row_w, None, None), f"cols d={d:g}": (None, col_w, None),
                     f"rows+cols d={d:g}": (row_w, col_w, None)}
        if d == o.checkpoints_at:
            names = [Path(x["name"]).name for x in spec["checkpoints"]]
            for keep in [[c] for c in range(C)] + [[c for c in range(C) if c != out] for out in range(C)]:
                variants[f"rows+cols d={d:g} @{'+'.join(names[c] for c in keep)}"] = (row_w, col_w, keep)
            variants |= {f"stored @{names[c]}": (None, None, [c]) for c in range(C)}

    if o.whiteners_from:  # ingest's own fit, saved in that index's state files, on these vectors
        import torch
        states = [torch.load(o.whiteners_from / f"tracin-state-{c}.pt", weights_only=False) for c in range(C)]
        if any(s["whitening"]["damping"] != o.damping[0] for s in states):
            raise SystemExit(f"{o.whiteners_from}: fitted at damping {states[0]['whitening']['damping']}, "
                             f"not --damping's first, {o.damping[0]}")
        name = spec["blocks"][0]["name"]
        ingest_rows = np.stack([s["row_whiteners"][name].numpy() for s in states])
        ingest_cols = [s["whiteners"][name].numpy() for s in states]
        d = o.damping[0]
        here_rows, here_cols = fits[d]
        variants |= {"ingest's rows+cols": (ingest_rows, ingest_cols, None),
                     f"ingest's rows, cols d={d:g} here": (ingest_rows, here_cols, None),
                     f"rows d={d:g} here, ingest's cols": (here_rows, ingest_cols, None)}
        for c in range(C):
            seen_there = ingest_rows[c] < ingest_rows[c].max()  # a row ingest's sample never saw: the largest
            both = (energy[c] > 0) & seen_there
            corr = np.corrcoef(np.log(ingest_rows[c][both]), np.log(here_rows[c][both]))[0, 1]
            there, here = (m / np.trace(m) for m in (ingest_cols[c], here_cols[c]))
            notes.setdefault("ingest's fit against this script's (its first sample)", []).append(
                {"checkpoint": Path(spec["checkpoints"][c]["name"]).name, "rows_seen_here": int((energy[c] > 0).sum()),
                 "rows_seen_by_ingest": int(seen_there.sum()), "rows_seen_by_both": int(both.sum()),
                 "log_row_weights_correlation": round(float(corr), 4),
                 "column_matrices_relative_difference": round(float(np.linalg.norm(there - here)
                                                                    / np.linalg.norm(here)), 4)})
            print(notes["ingest's fit against this script's (its first sample)"][-1], flush=True)

    for seed in o.sample_seeds:  # other calibration samples of the same size, at the first damping
        e, a, _, _ = fitted(X, n_stored, o.samples, seed)
        variants[f"rows+cols d={o.damping[0]:g}, sample seed {seed}"] = (*whiteners(e, a, o.damping[0]), None)

    def made(w: tuple) -> Callable[[], tuple[sp.csr_matrix, sp.csr_matrix]]:
        return lambda: (X.transformed(*w), Q.transformed(*w))

    return {name: made(w) for name, w in variants.items()}


def recorded(argv: list[str]) -> str:
    """The command line as the results record it: the query caches aside (where they live says nothing of the
    result), an index by its name under $RUNS (as the results name ~/ftrace-runs' indexes)."""
    out: list[str] = []
    args = iter(argv)
    for a in args:
        name, eq, value = a.partition("=")
        if name in ("--query-cache", "--tune-cache"):
            if not eq:
                next(args, None)
        elif name == "--whiteners-from":
            out.append(f'--whiteners-from "$RUNS/{Path(value if eq else next(args, "")).name}"')
        else:
            out.append(shlex.quote(a))
    return " ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    ap.add_argument("run", type=Path)
    ap.add_argument("--damping", type=floats, default=[0.01, 0.1, 1.0])
    ap.add_argument("--checkpoints-at", type=float, default=None, metavar="D",
                    help="also score each checkpoint alone and each leave-one-out set, whitened (rows+cols) at D")
    ap.add_argument("--folds", default="P131,P37,P527/P1303,P136,P30")
    ap.add_argument("--samples", type=int, default=0,
                    help="fit on this many stored vectors drawn at random (seed 0), as ingest's --whiten-samples; "
                         "0: on every stored vector")
    ap.add_argument("--sample-seeds", type=ints, default=[], metavar="S,S",
                    help="with --samples: also fit on the samples these seeds draw (both factors, the first damping)")
    ap.add_argument("--parts", action="store_true",
                    help="score each part of the stored vector alone (each block, each checkpoint, the MLP blocks, "
                         "the whole) instead of re-whitening: for an index whose vectors are whitened or have "
                         "blocks beside the rows")
    ap.add_argument("--weights", type=floats, default=[], metavar="W,W",
                    help="with --parts: also the first block's cosines plus W times the other blocks'")
    ap.add_argument("--whiteners-from", type=Path, default=None, metavar="INDEX",
                    help="also whiten by the fit ingest saved in INDEX's state files (its rows block), and each of "
                         "its two factors beside this script's fit at the first damping")
    ap.add_argument("--query-cache", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    o = ap.parse_args()
    if o.sample_seeds and (not o.samples or 0 in o.sample_seeds):  # before the minutes of loading
        ap.error("--sample-seeds: needs --samples N, and seeds other than 0 (seed 0 is the first fit)")
    start = time.perf_counter()
    bench, spec, rankings, queries = bench_run(o.run)
    tracer, scorer = bench.tracer, bench.scorer
    k = spec["blocks"][0]["factors"][1]
    draws = sorted(rankings)
    cands = {key: scorer.candidates(key[0], queries[key[1]]).ids for key in draws}
    ids, Xc = stored_vectors(tracer, spec, None if o.parts else k)
    row_of = {i: r for r, i in enumerate(ids)}
    print(f"{len(ids)} stored vectors, {Xc.nnz / len(ids):.0f} numbers each ({time.perf_counter() - start:.0f} s)",
          flush=True)
    asked = sorted({q for _, q in draws})
    qv = query_vectors(tracer, [queries[q] for q in asked], o.query_cache)
    tracer.close()
    Qc = as_csr(qv, spec["size"], None if o.parts else k)
    q_row = {q: r for r, q in enumerate(asked)}
    print(f"{len(asked)} query vectors ({time.perf_counter() - start:.0f} s)", flush=True)
    notes: dict = {}
    makers = part_scorer(spec, Xc, Qc, o.weights) if o.parts else whitening_scorer(spec, Xc, Qc, o, len(ids), notes)
    baseline = "sum" if o.parts else "stored"  # the stored vectors as the bench scored them

    rr: dict[str, list[float]] = {}
    out_draws = [{"seed": s, "query": q, "relation": queries[q].fact[1], "rr": {}} for s, q in draws]
    for name, make in makers.items():
        Xv, Qv = make()
        for d, key in zip(out_draws, draws, strict=True):
            cand = cands[key]
            scores = Xv[[row_of[i] for i in cand]] @ Qv[q_row[key[1]]].T
            d["rr"][name] = reciprocal_rank(cand, scores.toarray().ravel(), queries[key[1]].proponents, key)
        rr[name] = [d["rr"][name] for d in out_draws]
        print(f"| {name} | {np.mean(rr[name]):.3f} | ({time.perf_counter() - start:.0f} s)", flush=True)
        del Xv, Qv
    bench_rr = [1 / min(rankings[key]["proponent_ranks"]) if rankings[key]["proponent_ranks"] else 0.0
                for key in draws]
    print(f"bench's own tracin MRR over the same draws: {np.mean(bench_rr):.3f} (the stored row should match)")
    relations = sorted({d["relation"] for d in out_draws})
    table = {name: {"all": float(np.mean(v))} | {r: float(np.mean([d["rr"][name] for d in out_draws
                                                                   if d["relation"] == r])) for r in relations}
             for name, v in rr.items()}
    chosen = []
    halves = [set(g.split(",")) for g in o.folds.split("/")]
    for tune, report in (halves, halves[::-1]):
        on = [d for d in out_draws if d["relation"] in tune]
        off = [d for d in out_draws if d["relation"] in report]
        best = max(makers, key=lambda n: np.mean([d["rr"][n] for d in on]))
        chosen.append({"chosen_on": ",".join(sorted(tune)), "reported_on": ",".join(sorted(report)), "variant": best,
                       "draws": len(off), "mrr": float(np.mean([d["rr"][best] for d in off])),
                       "mrr_stored": float(np.mean([d["rr"][baseline] for d in off]))})
        print(f"chosen on {chosen[-1]['chosen_on']}: {best}; on {chosen[-1]['reported_on']} ({len(off)} draws) "
              f"{chosen[-1]['mrr']:.3f} against the stored vectors' {chosen[-1]['mrr_stored']:.3f}")
    command = "python results/attribution/rows_whiten.py " + recorded(sys.argv[1:])
    o.out.write_text(json.dumps({"run": o.run.as_posix(), "command": command, "bench_mrr": float(np.mean(bench_rr)),
                                 "mrr": table, "chosen": chosen, **notes, "seconds": round(time.perf_counter() - start),
                                 "draws": out_draws}, indent=1) + "\n")


if __name__ == "__main__":
    main()
