"""Issue 27: TrackStar's task-specific whitening on a rows index (Chang et al. 2024, appendix A.1.3; bergson's
`trackstar --target_downweight_components`): R = lam R_eval + (1 - lam) R_train, R_eval the autocorrelation of
*query* gradients, so that the directions every query shares (its relation's template, the answer space) weigh
less. In the rows index's Kronecker form (rows_whiten.py: R ~ diag(r) (x) A) the two fits are mixed factor by
factor: r = lam_rows r_eval + (1 - lam_rows) r_train, A = lam_cols A_eval + (1 - lam_cols) A_train, each A over
its trace (both fits are of per-checkpoint unit vectors, so r_eval is scaled to r_train's total); then whitened
as rows_whiten.py does (damping D).

R_eval must not hold the query it whitens: a query's subject tokens are its own rows, which few other queries
touch, so fitted on itself it weighs its own subject down. So lam is chosen on a tuning set the bench never drew
(N fine-tune-learned facts of the run's pool, one draw each at seed 0), cross-fitted (R_eval of one half scores the
other half's draws), and reported on the bench's own draws with R_eval fitted on the whole tuning set. Each report
draw is tagged by where its proponents name the query's subject: `start` (a proponent begins with it), `mid` (one
names it later), `none` (none names it verbatim: a pronoun, an alias).

    python results/attribution/query_mix.py RUN_DIR [--mix 0:0,0.5:0.5,...] [--damping D] [--tune N] [--depth K] \
        [--tune-cache FILE.npz] [--query-cache FILE.npz] --out FILE.json      (from results/attribution)

The report draws are scored in the bench's rerank mode (RUN_DIR's candidate sets) and in full retrieval over every
stored vector (the top --depth).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
from rows_whiten import (
    Rows,
    as_csr,
    bench_run,
    fitted,
    query_vectors,
    reciprocal_rank,
    recorded,
    stored_vectors,
    whiteners,
)


def mixes(text: str) -> list[tuple[float, float]]:
    """'ROWS:COLS,...' -> [(lam_rows, lam_cols), ...]"""
    return [(float(r), float(c)) for r, c in (x.split(":") for x in text.split(","))]


def proponent_kind(q, texts) -> str:
    said = [s.text for s in texts.sentences(q.proponents).values()]
    subject = q.fact[0]
    return ("start" if any(t.startswith(subject) for t in said) else
            "mid" if any(subject in t for t in said) else "none")


def main() -> None:
    from ftrace.bench.slices import FINE_TUNE, learned_slices

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    ap.add_argument("run", type=Path)
    ap.add_argument("--mix", type=mixes, default=mixes("0:0,0.5:0.5,0.9:0.9,0.99:0.99,0.9:0,0:0.9"),
                    metavar="ROWS:COLS,...", help="lam for the row factor and the column factor; each pair a variant")
    ap.add_argument("--damping", type=float, default=0.01)
    ap.add_argument("--depth", type=int, default=100, help="full retrieval's depth, as the bench's --depth")
    ap.add_argument("--tune", type=int, default=600, help="fine-tune-learned facts the bench did not draw (seed 0)")
    ap.add_argument("--tune-cache", type=Path, default=None)
    ap.add_argument("--query-cache", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    o = ap.parse_args()
    start = time.perf_counter()

    def progress(what: str) -> None:
        gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"{what} ({time.perf_counter() - start:.0f} s, peak RSS {gb:.1f} GB)", flush=True)

    bench, spec, rankings, queries = bench_run(o.run)
    tracer, scorer = bench.tracer, bench.scorer
    vocab, k = spec["blocks"][0]["factors"]
    C = len(spec["checkpoints"])
    report = sorted(rankings)
    drawn = {q for _, q in report}
    pool = bench.eligible(bench.c.split, bench.c.relations)
    slice_of = learned_slices(*bench.learned(pool))
    undrawn = sorted(q.id for q in pool if slice_of[q.id] == FINE_TUNE and q.id not in drawn)
    tune_ids = sorted(np.random.default_rng(0).permutation(undrawn)[:o.tune].tolist())
    tune = [(0, q) for q in tune_ids]
    progress(f"{len(undrawn)} undrawn fine-tune-learned facts")
    asked = sorted(drawn)
    cands = {key: scorer.candidates(key[0], queries[key[1]]) for key in tune + report}
    kind = {q: proponent_kind(queries[q], tracer.texts) for q in asked}
    Qc = as_csr(query_vectors(tracer, [queries[q] for q in asked], o.query_cache), spec["size"], k)
    Tc = as_csr(query_vectors(tracer, [queries[q] for q in tune_ids], o.tune_cache), spec["size"], k)
    progress(f"candidate sets, {len(tune)} tuning and {len(report)} report queries' vectors")
    ids, Xc = stored_vectors(tracer, spec, k)
    tracer.close()
    row_of = {i: r for r, i in enumerate(ids)}
    progress(f"{len(ids)} stored vectors")
    X, Q, T = (Rows(m, k, vocab, C) for m in (Xc, Qc, Tc))
    progress("blocks")

    def trace_normed(As: list[np.ndarray]) -> list[np.ndarray]:
        return [a / np.trace(a) for a in As]

    e_train, A_train, _, _ = fitted(X, len(ids), 0, 0)
    A_train = trace_normed(A_train)
    half = np.arange(len(tune)) % 2

    def eval_fit(members: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        e, A, _, _ = fitted(Rows(Tc[np.flatnonzero(members)], k, vocab, C), int(members.sum()), 0, 0)
        return e * (e_train.sum(1, keepdims=True) / e.sum(1, keepdims=True)), trace_normed(A)

    evals = {"all": eval_fit(np.ones(len(tune), bool)), 0: eval_fit(half == 1), 1: eval_fit(half == 0)}
    progress("fits")

    def mixed(ev, lam_rows: float, lam_cols: float):
        e = lam_rows * ev[0] + (1 - lam_rows) * e_train
        return whiteners(e, [lam_cols * a + (1 - lam_cols) * b for a, b in zip(ev[1], A_train, strict=True)],
                         o.damping)

    def rrs(w, queries_m: Rows, qids: list[str], draws: list[tuple[int, str]], full: bool = False) -> list[float]:
        """Each draw's reciprocal rank among its candidate set, or (`full`) among the top --depth of every stored
        vector (the bench's full mode: a proponent below that depth counts 0)."""
        Xw, Qw = X.transformed(*w), queries_m.transformed(*w)
        q_row = {q: r for r, q in enumerate(qids)}
        by_column = Xw.tocsc() if full else None  # a query touches a few thousand of its indices
        out = []
        for key in draws:
            if by_column is not None:
                q = Qw[q_row[key[1]]]
                scores = by_column[:, q.indices] @ q.data
                top = np.argpartition(-scores, o.depth)[:o.depth]
                out.append(reciprocal_rank([ids[i] for i in top], scores[top], queries[key[1]].proponents, key))
                continue
            cs = cands[key]
            scores = (Xw[[row_of[i] for i in cs.ids]] @ Qw[q_row[key[1]]].T).toarray().ravel()
            out.append(reciprocal_rank(cs.ids, scores, cs.proponents, key))
        return out

    rr: dict[str, dict[str, list[float]]] = {}
    for lam_rows, lam_cols in o.mix:
        name = f"rows {lam_rows:g}, cols {lam_cols:g}"
        tuned = np.zeros(len(tune))
        for h in (0, 1):  # half h's draws, R_eval from the other half
            sel = np.flatnonzero(half == h)
            tuned[sel] = rrs(mixed(evals[h], lam_rows, lam_cols), T, tune_ids, [tune[j] for j in sel])
        w = mixed(evals["all"], lam_rows, lam_cols)
        rr[name] = {"tune": tuned.tolist(), "report": rrs(w, Q, asked, report),
                    "full": rrs(w, Q, asked, report, full=True)}
        print(f"| {name} | tuning {np.mean(rr[name]['tune']):.3f} | report {np.mean(rr[name]['report']):.3f} | "
              f"full {np.mean(rr[name]['full']):.3f} | ({time.perf_counter() - start:.0f} s)", flush=True)
    rr["stored"] = {"tune": rrs((None, None), T, tune_ids, tune), "report": rrs((None, None), Q, asked, report),
                    "full": rrs((None, None), Q, asked, report, full=True)}
    bench_rr = [1 / min(rankings[key]["proponent_ranks"]) if rankings[key]["proponent_ranks"] else 0.0
                for key in report]
    print(f"stored: report {np.mean(rr['stored']['report']):.3f} (the bench's own {np.mean(bench_rr):.3f}), full "
          f"{np.mean(rr['stored']['full']):.3f}")
    chosen = max((n for n in rr if n != "stored"), key=lambda n: np.mean(rr[n]["tune"]))
    print(f"chosen on the tuning draws: {chosen}, report {np.mean(rr[chosen]['report']):.3f}")
    draws = [{"seed": s, "query": q, "relation": queries[q].fact[1], "slice": FINE_TUNE, "kind": kind[q],
              "rr": {n: v["report"][j] for n, v in rr.items()}
              | {f"{n}, full": v["full"][j] for n, v in rr.items()}} for j, (s, q) in enumerate(report)]
    groups = {"all": lambda d: True} | {f"{w} {v}": (lambda d, w=w, v=v: d[w] == v)
                                         for w, vs in (("relation", sorted({d["relation"] for d in draws})),
                                                       ("kind", ("start", "mid", "none"))) for v in vs}
    table = {n: {"tuning": float(np.mean(v["tune"])), "full": float(np.mean(v["full"]))}
             | {g: float(np.mean([d["rr"][n] for d in draws if keep(d)])) for g, keep in groups.items()}
             for n, v in rr.items()}
    counts = {g: sum(map(keep, draws)) for g, keep in groups.items()}
    method_rr: dict[str, dict[str, list[float]]] = {}  # every method of the bench run, by proponent kind
    for x in map(json.loads, (o.run / "rankings.jsonl").read_text().splitlines()):
        ranks = x["proponent_ranks"]
        method_rr.setdefault(x["method"], {}).setdefault(kind[x["query"]], []).append(1 / min(ranks) if ranks else 0.0)
    by_kind = {m: {f"kind {k}": float(np.mean(v)) for k, v in sorted(per.items())} for m, per in method_rr.items()}
    o.out.write_text(json.dumps({
        "run": o.run.as_posix(), "command": "python results/attribution/query_mix.py " + recorded(sys.argv[1:]),
        "bench_mrr": float(np.mean(bench_rr)), "tuning_draws": len(tune), "undrawn_fine_tune_learned": len(undrawn),
        "report_draws_per_group": counts, "chosen_on_tuning": chosen, "mrr": table, "bench_by_kind": by_kind,
        "seconds": round(time.perf_counter() - start), "draws": draws}, indent=1) + "\n")


if __name__ == "__main__":
    main()
