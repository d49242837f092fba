"""`ftrace bench`: FTRACE's fact-tracing evaluation (Akyurek et al. 2022) plus TrackStar's recall.

For each seed s in 0..S-1: draw N queries (with >= 1 proponent, of the chosen split) with s, rank
sentences for each with every method, and score the rankings against the proponents. Means and
standard deviations are over seeds.

- mode "rerank": each method scores every member of the query's candidate set (`candidates.py`).
- mode "full": each method retrieves `depth` sentences from the whole corpus (`Tracer.retrieve`);
  a fusion "a+b" scores its pool (the union of a's and b's lists) with both and fuses, as
  `Tracer.query` does. Every ranking is cut at `depth`.
- "random-target": 1 for sentences stating a fact whose object is the query's target, else 0;
  ties in a seeded random order (as for every method).
- "a+b": a `query.methods.Fuser` of the configured fusion kind, built once per fusion before the
  evaluation and frozen: "sum", "rrf" or "cascade" with weight w on a and 1-w on b, w tuned on the
  `tune_split` / `tune_relations` queries over `grid` (max MRR) or 0.5; "learned" fitted on those
  queries (`query.learned`). Tuning and evaluation fuse through the same Fuser.

Every table is reported for "all" queries, for each learned slice (`slices.py`: whether the index's
model and, when the index records one, its base model answer right, decided for every eligible query
before any draw, so `--only SLICE` can draw from one slice) and for "bm25-hard" (the draws whose BM25
top 1 is not a proponent). Significance: paired tests against BM25 over the distinct queries, each
averaged over the seeds that drew it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from ftrace import FtraceError
from ftrace.bench import metrics as M
from ftrace.bench.candidates import draw, rng_for, sample_queries, seeded_tiebreak
from ftrace.bench.evaluate import DrawRankings, evaluate
from ftrace.bench.methods import RANDOM_TARGET, Parts, base_methods, plan_methods, tune_fuser
from ftrace.bench.paths import shown, shown_paths
from ftrace.bench.scoring import QueryScores, Scorer
from ftrace.bench.slices import (
    ALL,
    BM25_HARD,
    FINE_TUNE,
    FINE_TUNE_STRICT,
    RULE,
    in_slice,
    learned_slices,
    slice_names,
    strict_slices,
)
from ftrace.config import BenchConfig
from ftrace.corpus import Query
from ftrace.index.locks import writer
from ftrace.index.manifest import Manifest, QueryDefault, versions
from ftrace.plumbing import log
from ftrace.query.fusion import ranking
from ftrace.query.methods import FUSIONS, Fuser, parse_method
from ftrace.query.tracer import Tracer

# --- the run -----------------------------------------------------------------------------------------

@dataclass
class BenchRun:
    """A finished run: what the reports are written from."""

    config: BenchConfig
    out: Path
    results: dict
    methods: list[str]
    per_seed: dict[int, list[Query]]
    rankings: dict[tuple[int, str, str], list[tuple[str, float]]]
    learned: dict[str, bool]  # query id -> the index's model answers it right
    answers: dict[str, str]
    slice_of: dict[str, str]  # query id -> its learned slice
    base_answers: dict[str, str] | None = None
    tailpatch: dict[tuple[int, str, str], dict] | None = None  # (seed, query id, set) -> its tail-patch


def whitening_held_out(manifest: Manifest, queries: Sequence[Query]) -> set[str]:
    """The ids of the queries an index's whitening was fitted on (`--whiten-queries`): a query fitted into R weighs
    its own subject down, so no bench draws them. Drawn as ingest drew them, from the index's own queries (an
    `ftrace ingest --add` appends its queries after them)."""
    whitening = manifest.vectors.get("tracin", {}).get("corrections", {}).get("whitening", {})
    if not whitening.get("queries"):
        return set()
    from ftrace.features.gradients.whitening import whitening_queries

    own = manifest.corpus.queries - sum(a.queries for a in manifest.additions)
    return {q.id for q in whitening_queries(queries[:own], whitening["queries"], manifest.vectors["tracin"]["seed"])}


class Bench:
    def __init__(self, c: BenchConfig, tracer: Tracer | None = None):
        if c.fusion == "learned" and not c.tune_split and not c.tune_relations:
            raise FtraceError("--fusion learned is fitted on tuning queries: give --tune-split and/or --tune-relation "
                              "(relations or a split you do not report)")
        self.c = c
        self.own_tracer = tracer is None
        self.tracer = tracer or Tracer(Path(c.index), device=c.device, dtype=c.dtype)
        try:
            self.methods, self.skipped = plan_methods(c.methods, self.tracer.methods)
            train_dir = self.tracer.index.manifest.model.train_dir
            if c.metric != "attribution" and train_dir:
                from ftrace.bench.tailpatch import check_run

                check_run(Path(train_dir), c.tailpatch_lr)  # before the rankings, which may take hours
        except FtraceError:
            if self.own_tracer:
                self.tracer.close()
            raise
        self.manifest = self.tracer.index.manifest
        self.held_out_ids = whitening_held_out(self.manifest, self.tracer.corpus.queries)
        if self.held_out_ids:
            log(f"{len(self.held_out_ids)} of the index's queries are left out of the draws: its whitening was "
                "fitted on their gradients (--whiten-queries)")
        self.corpus = self.tracer.corpus
        if "split" not in c.model_fields_set and c.split and not any(q.split for q in self.corpus.queries):
            log("the index's queries have no splits (a plain corpus): evaluating all of them, not --split "
                f"{','.join(c.split)}")
            self.c = c = c.model_copy(update={"split": None})
        self.fusions = [m for m in self.methods if "+" in m]
        self.fusers: dict[str, Fuser] = {}
        self.out = c.out_dir()
        self.scorer = Scorer(c, self.tracer, base_methods(self.methods), self.fusions, self.out)

    def eligible(self, splits: list[str] | None, relations: list[str] | None = None,
                 tuning: bool = False) -> list[Query]:
        """Queries with proponents, of `splits` (None or 'all': any) and `relations` (None: any)."""
        split = None if splits is None or "all" in splits else ",".join(splits)
        qs = [q for q in self.corpus.queries if q.proponents and (split is None or q.split in (splits or ()))
              and (relations is None or (q.fact is not None and q.fact[1] in relations))
              and q.id not in self.held_out_ids]
        if not qs:
            have = [q for q in self.corpus.queries if q.proponents]
            its_splits = sorted({q.split for q in have if q.split})
            rels = sorted({q.fact[1] for q in have if q.fact})
            given = [f"--tune-split {split}" if tuning else f"--split {split}"] if split or not relations else []
            if relations:
                given.append(f"{'--tune-relation' if tuning else '--relation'} {','.join(relations)}")
            what = " ".join(given)
            held = (f"; {len(self.held_out_ids)} left out: its whitening was fitted on them"
                    if self.held_out_ids else "")
            raise FtraceError(f"{what}: no queries with proponents in this index (its splits: "
                              f"{', '.join(its_splits) or 'none'}; its {len(rels)} relations: "
                              f"{', '.join(rels) or 'none'}{held}; use --split all for every query)")
        return qs

    def method_scores(self, seed: int, q: Query, scores: QueryScores, method: str) -> dict[str, float]:
        if method == RANDOM_TARGET:
            same = set(self.scorer.view.same_target(q.target))
            if scores.candidates is not None:
                return {i: 1.0 if i in same else 0.0 for i in scores.candidates.ids}
            out = dict.fromkeys(same, 1.0)
            if len(out) < self.c.depth:
                filler = draw(self.scorer.view.ids, self.c.depth - len(out), rng_for("random-target", seed, q.id), same)
                out.update(dict.fromkeys(filler, 0.0))
            return out
        if "+" in method:
            return self.fusers[method](scores.components(method))
        return scores.single[method]

    def ranked(self, seed: int, q: Query, scores: dict[str, float]) -> list[tuple[str, float]]:
        r = ranking(scores, seeded_tiebreak(seed, q.id))
        return r[:self.c.depth] if self.c.mode == "full" else r

    def tune(self, evaluated: set[str]) -> dict[str, dict]:
        """Settle self.fusers (tuned, fitted or default) and return what to record about each;
        `evaluated`: the ids of the queries reported (for the overlap with the tuning queries)."""
        c = self.c
        if not self.fusions:
            return {}
        if not c.tune_split and not c.tune_relations:
            self.fusers = {f: Fuser(parse_method(f, None), c.fusion, c.default_weight, c.cascade_k)
                           for f in self.fusions}
            return {f: {"weight": c.default_weight, "source": "default, no --tune-split"} for f in self.fusions}
        pool = self.eligible(c.tune_split, c.tune_relations, tuning=True)
        if c.only:
            slice_of = learned_slices(*self.learned(pool))
            if c.only == FINE_TUNE_STRICT:
                slice_of = self.strict(pool, slice_of)
            pool = self.only(pool, slice_of, f"--tune-split {','.join(c.tune_split or ['all'])}")
        tune_qs = sample_queries(pool, c.queries, 0, purpose="tune")
        what = " and ".join(([f"split {','.join(c.tune_split)!r}"] if c.tune_split else [])
                            + ([f"relations {','.join(c.tune_relations)}"] if c.tune_relations else []))
        parts: dict[str, Parts] = {f: {} for f in self.fusions}
        for q in tqdm(tune_qs, desc=f"tuning on {what}", unit="query"):
            scores = self.scorer.query_scores(0, q)
            for f in self.fusions:
                parts[f][q.id] = scores.components(f)
        props = {q.id: q.proponents for q in tune_qs}
        out = {}
        how = "fitted" if c.fusion == "learned" else "tuned"
        source = f"{how} on {what} (" + ("" if c.fusion == "learned" else "max MRR, ") + "seed 0)"
        for f in self.fusions:
            self.fusers[f], info = tune_fuser(parts[f], props, parse_method(f, None), c, seed=0)
            out[f] = {"weight": info.pop("weight"), "source": source, "queries": len(tune_qs), **info}
        overlap = len(evaluated & {q.id for q in tune_qs})
        if overlap:
            log(f"note: fusion {how} on {what}, which shares {overlap} queries with the evaluated ones")
        for f in out:
            out[f]["overlap_with_evaluated"] = overlap
        return out

    def run(self) -> BenchRun:
        t0 = time.time()
        c = self.c
        try:
            pool = self.eligible(c.split, c.relations)
            learned, base_learned = self.learned(pool)
            slice_of = learned_slices(learned, base_learned)
            if c.only == FINE_TUNE_STRICT:  # decided before the draw, like every --only
                slice_of = self.strict(pool, slice_of)
            if c.only:
                pool = self.only(pool, slice_of, f"--split {','.join(c.split or ['all'])}")
            per_seed = {seed: sample_queries(pool, c.queries, seed) for seed in range(c.seeds)}
            weights_info = self.tune({q.id for q in pool})
            drawn = list({q.id: q for qs in per_seed.values() for q in qs}.values())
            if base_learned is not None and c.only != FINE_TUNE_STRICT:  # the beam search for the drawn ones only
                slice_of = self.strict(drawn, slice_of)
            answers = self.scorer.answers(drawn)  # shown beside the rankings; the slices come from `learned`
            base_answers = self.scorer.answers(drawn, base=True) if self.manifest.model.base else None
            self.scorer.release_base()
            rankings: dict[tuple[int, str, str], list[tuple[str, float]]] = {}
            total = sum(len(qs) for qs in per_seed.values())
            with tqdm(total=total, desc=f"bench {c.mode}", unit="query") as bar:
                for seed, qs in per_seed.items():
                    for q in qs:
                        scores = self.scorer.query_scores(seed, q)
                        for m in self.methods:
                            rankings[(seed, q.id, m)] = self.ranked(seed, q, self.method_scores(seed, q, scores, m))
                        bar.update(1)
            members = self.members(per_seed, rankings, slice_of, base_learned is not None)
            tail = None
            if c.metric != "attribution":
                from ftrace.bench.influence import TailPatchRun, tailpatch  # loads the training machinery
                from ftrace.bench.tailpatch import TailPatcher

                patcher = TailPatcher.for_index(self.tracer.lm, self.manifest.model.train_dir, self.manifest.max_tokens,
                                                c.tailpatch_lr)
                run = TailPatchRun(patcher, c.tailpatch_k, self.methods, self.tracer.corpus.by_id(),
                                   self.scorer.identity, self.out, c.stat_test)
                tail_results, tail = tailpatch(run, per_seed, rankings, members)
        finally:
            self.scorer.close()
            if self.own_tracer:
                self.tracer.close()
        results = evaluate(per_seed, rankings, self.methods, members, c.stat_test)
        results.update(self.describe(per_seed, pool, weights_info,
                                     self.answers_info({q.id: learned[q.id] for q in drawn},
                                                       base_learned and {q.id: base_learned[q.id] for q in drawn},
                                                       members)))
        if tail is not None:
            results["tailpatch"] = tail_results
        results["wall_time_s"] = round(time.time() - t0, 2)
        return BenchRun(c, self.out, results, self.methods, per_seed, rankings, learned, answers, slice_of,
                        base_answers, tail)

    def learned(self, queries: Sequence[Query]) -> tuple[dict[str, bool], dict[str, bool] | None]:
        """Whether the index's model, and its base model where it records one, answer each query right."""
        base = self.scorer.rights(queries, base=True) if self.manifest.model.base else None
        return self.scorer.rights(queries), base

    def strict(self, queries: Sequence[Query], slice_of: dict[str, str]) -> dict[str, str]:
        """`slice_of` with those of `queries` that are fine-tune-learned and that the base model's top beam-search
        answers miss as well moved to the strict slice (a beam search each, base model only)."""
        return strict_slices(slice_of, self.scorer.in_top_at_base([q for q in queries if slice_of[q.id] == FINE_TUNE]))

    def only(self, pool: list[Query], slice_of: dict[str, str], what: str) -> list[Query]:
        """The queries of `pool` in the --only slice (chosen before any draw, as FTRACE filters its queries)."""
        assert self.c.only is not None
        kept = [q for q in pool if in_slice(slice_of[q.id], self.c.only)]
        if not kept:
            known = [sl for sl in slice_names(True)[1:] if sl != FINE_TUNE_STRICT or self.c.only == FINE_TUNE_STRICT]
            counts = {sl: n for sl in known if (n := sum(in_slice(slice_of[q.id], sl) for q in pool))}
            raise FtraceError(f"--only {self.c.only}: none of the {len(pool)} queries of {what} is in that slice "
                              f"(slices: {', '.join(f'{k} {v}' for k, v in counts.items())})")
        return kept

    def members(self, per_seed: dict[int, list[Query]], rankings: DrawRankings, slice_of: dict[str, str],
                with_base: bool) -> dict[str, set[tuple[int, str]]]:
        """The draws of every slice reported: all, the learned slices, and bm25-hard (BM25's top 1 is not a
        proponent: the room the model signals have)."""
        draws = {(seed, q.id) for seed, qs in per_seed.items() for q in qs}
        out = {sl: draws if sl == ALL else {d for d in draws if in_slice(slice_of[d[1]], sl)}
               for sl in slice_names(with_base)}
        if "bm25" in self.methods:
            out[BM25_HARD] = {(seed, q.id) for seed, qs in per_seed.items() for q in qs
                              if not rankings[(seed, q.id, "bm25")]
                              or rankings[(seed, q.id, "bm25")][0][0] not in set(q.proponents)}
        return out

    def answers_info(self, learned: dict[str, bool], base_learned: dict[str, bool] | None,
                     members: dict[str, set[tuple[int, str]]]) -> dict:
        m = self.manifest.model
        return {"rule": RULE, "decided_by": "one teacher-forced pass per batch of queries (answers_right); the "
                                            "generated answers are shown in rankings.jsonl",
                "of": len(learned), "model": m.name, "correct": sum(learned.values()),
                "base": None if base_learned is None else {"model": m.base, "correct": sum(base_learned.values())},
                "slices": {sl: len({q for _, q in d}) for sl, d in members.items()},
                "note": "counts of distinct queries (drawn by any seed); query_counts has them per seed; bm25-hard: "
                        "the draws whose BM25 top 1 is not a proponent"}

    def describe(self, per_seed: dict[int, list[Query]], pool: list[Query], weights_info: dict,
                 answers: dict) -> dict:
        c, m, cache = self.c, self.manifest, self.scorer.cache
        vers = {**m.versions, **versions(("ranx", "numpy", "matplotlib", "scipy", "numba", "scikit-learn"))}
        return {
            "benchmark": "FTRACE-style fact tracing (Akyurek et al. 2022) + TrackStar recall@10"
                         + (" + TrackStar tail-patch influence" if c.metric != "attribution" else ""),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(shown_paths(part) for part in c.command().split(" ")),
            "settings": shown_paths(c.model_dump(mode="json")),
            "index": shown_paths({"path": shown(Path(c.index)), "identity": m.identity(), "created": m.created,
                                  "corpus": m.corpus.model_dump(), "model": m.model.name, "base_model": m.model.base,
                                  "search": "hnsw (approximate)" if m.store.hnsw else "exact"}),
            "mode": c.mode,
            "candidate_sizes": c.sizes.model_dump() if c.mode == "rerank" else None,
            "depth": c.depth if c.mode == "full" else None,
            "seeds": list(per_seed),
            "queries": {"split": c.split, "eligible": len(pool), "held_out_by_whitening": len(self.held_out_ids),
                        "per_seed": {str(k): [q.id for q in v] for k, v in per_seed.items()},
                        "note": None if len(pool) > c.queries else
                        f"only {len(pool)} eligible queries: every seed evaluates all of them"},
            "methods": self.methods,
            "skipped": self.skipped,
            "fusion": {"kind": c.fusion, "description": FUSIONS[c.fusion],
                       "cascade_k": c.cascade_k if c.fusion == "cascade" else None,
                       "grid": None if c.fusion == "learned" else c.grid, "tune_split": c.tune_split,
                       "tune_relations": c.tune_relations, "weights": weights_info},
            "answers": answers,
            "metric_names": M.LABELS,
            "std": "sample standard deviation over seeds (ddof=1)",
            "cache": {"file": str(cache.path), "reused": cache.reused, "computed": self.scorer.computed,
                      "other_settings_entries": cache.other,
                      "compute_s": round(cache.used_s, 1),
                      "note": "compute_s: model/index time of every cached entry this run used, whether "
                              "computed now or by an earlier run; wall_time_s: this invocation only"},
            "versions": vers,
        }


def run_bench(c: BenchConfig, tracer: Tracer | None = None, write: bool = True) -> BenchRun:
    """Run the benchmark and (by default) write OUT/results.json, table.md, plot.png, rankings.jsonl;
    with --save-default, record the best method in the index."""
    bench = Bench(c, tracer)
    for name, why in bench.skipped.items():
        log(f"skipping {name}: {why}")
    run = bench.run()
    if write:  # first: a refused --save-default loses nothing
        from ftrace.bench.report import write_reports

        write_reports(run)
    if c.save_default:
        chosen = save_default(run, bench.manifest)
        run.results["saved_default"] = chosen.model_dump()
        log(f"{c.index}: `ftrace query` now uses {chosen.method} by default ({chosen.source})")
        if write:
            from ftrace.bench.report import write_results

            write_results(run)  # results.json with the choice
    return run


def save_default(run: BenchRun, evaluated: Manifest) -> QueryDefault:
    """Record in the index the method with the best MRR over all queries (random-target, which reads the
    ground truth, aside), with its fusion settings as tuned: `ftrace query`'s and `serve`'s default. Refused
    when the index has changed since `evaluated` (its manifest when the run began)."""
    table, fusion = run.results["metrics"][ALL], run.results["fusion"]
    usable = [m for m in run.methods if m != RANDOM_TARGET and table[m]["mrr"]["mean"] is not None]
    if not usable:
        raise FtraceError("--save-default: no method was scored")
    best = max(usable, key=lambda m: table[m]["mrr"]["mean"])
    mrr = table[best]["mrr"]["mean"]
    q = run.results["queries"]
    source = (f"best MRR {mrr:.3f} over {len(run.results['seeds'])} seeds x {run.config.queries} queries drawn from "
              f"{q['eligible']} eligible: {run.results['command']}")
    if "+" in best:  # --fusion learned is refused with --save-default before the run (BenchConfig)
        w = fusion["weights"][best]
        chosen = QueryDefault(method=best, fusion=fusion["kind"], weight=w["weight"],
                              cascade_k=fusion["cascade_k"], source=f"{source} (weight {w['source']})")
    else:
        chosen = QueryDefault(method=best, source=source)
    index = Path(run.config.index)
    with writer(index):  # refused at once while an ingest writes the index; none can start until this is written
        manifest = Manifest.read(index)
        if manifest.identity() != evaluated.identity() or not manifest.complete:
            raise FtraceError(f"--save-default: {index} has changed since this run began (rebuilt meanwhile?); the "
                              "reports are written, the default is not")
        manifest.query_default = chosen
        manifest.write(index)  # atomic; not part of the identity, so caches and readers are unaffected
    return chosen
