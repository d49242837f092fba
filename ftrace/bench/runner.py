"""`ftrace bench`: FTRACE's fact-tracing evaluation (Akyurek et al. 2022) plus TrackStar's recall.

For each seed s in 0..S-1: draw N queries (with >= 1 proponent, of the chosen split) with s, rank
sentences for each with every method, and score the rankings against the proponents. Means and
standard deviations are over seeds.

- mode "rerank": each method scores every member of the query's candidate set (`candidates.py`).
- mode "full": each method retrieves `depth` sentences from the whole corpus (`Tracer.retrieve`);
  a fusion "a+b" scores the union of a's and b's lists with both (`Tracer.score`) and fuses, as
  `Tracer.query` does. Every ranking is cut at `depth`.
- "random-target": 1 for sentences stating a fact whose object is the query's target, else 0;
  ties in a seeded random order (as for every method).
- "a+b": `fusion.weighted_sum` of min-max normalised scores, weight w on a and 1-w on b; w tuned on
  `tune_split` over `grid` (max MRR) or 0.5.

Scores of the single methods are cached per (seed, query, method) in OUT/cache.jsonl (seed null
in full mode, where nothing depends on it); fusions and the baseline are recomputed from them, so
tuning never calls the model again. The model's answers (for the "pre-train-learned" slice) are
cached too, and taken from other runs' caches beside OUT when they were made with the same model.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from tqdm import tqdm

from ftrace import FtraceError
from ftrace.bench import metrics as M
from ftrace.bench.cache import ScoreCache, settings_hash
from ftrace.bench.candidates import (CandidateSet, CandidateSizes, CorpusView, candidate_set, draw, norm, ranking,
                                     rng_for, sample_queries)
from ftrace.corpus import Query
from ftrace.index.manifest import versions
from ftrace.query.fusion import weighted_sum

GRID = [round(i / 10, 1) for i in range(11)]
FTRACE_FUSIONS = (("tracin", "embed"), ("tracin", "bm25"), ("embed", "bm25"))
RANDOM_TARGET = "random-target"
SLICES = ("all", "pre-train-learned")


class BenchSettings(BaseModel):
    index: Path
    mode: Literal["rerank", "full"] = "rerank"
    queries: int = Field(100, ge=1)
    seeds: int = Field(3, ge=1)
    split: str | None = "dev"
    tune_split: str | None = None
    methods: list[str] | None = None  # None: every method the index has, FTRACE's fusions, the baseline
    depth: int = Field(100, ge=1)
    out: Path | None = None
    sizes: CandidateSizes = CandidateSizes()
    grid: list[float] = GRID
    default_weight: float = 0.5
    stat_test: str = "student"  # main paired test; the other of student/fisher is reported too

    def out_dir(self) -> Path:
        return self.out or Path("results") / "bench" / f"{Path(self.index).resolve().name}-{self.mode}"

    def command(self) -> str:
        parts = ["ftrace bench", f"--index {self.index}", f"--mode {self.mode}", f"--queries {self.queries}",
                 f"--seeds {self.seeds}", f"--out {self.out_dir()}"]
        if self.mode == "full":
            parts.append(f"--depth {self.depth}")
        parts.append(f"--split {self.split}" if self.split else "--split all")
        if self.tune_split:
            parts.append(f"--tune-split {self.tune_split}")
        if self.methods:
            parts.append(f"--methods {','.join(self.methods)}")
        return " ".join(parts)


def log(msg: str) -> None:
    print(msg, file=sys.stderr)


# --- which methods ---------------------------------------------------------------------------------

def plan_methods(requested: Sequence[str] | None, available: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(methods to run, {skipped method: why}). `available`: the index's single methods."""
    have = list(available)
    skipped: dict[str, str] = {}

    def missing_note(parts: Sequence[str]) -> str | None:
        missing = [p for p in parts if p not in have]
        if not missing:
            return None
        why = ", ".join(f"no {p!r} vectors" if p == "tracin" else f"no {p!r} method" for p in missing)
        return f"the index has {why} (it has {have})"

    if requested is None:
        methods = list(have)
        if "tracin" not in have:
            skipped["tracin"] = missing_note(["tracin"]) + "; ingest with gradient features to add them"
        for a, b in FTRACE_FUSIONS:
            note = missing_note([a, b])
            if note:
                skipped[f"{a}+{b}"] = note
            else:
                methods.append(f"{a}+{b}")
        return [*methods, RANDOM_TARGET], skipped
    methods = []
    for name in dict.fromkeys(m.strip() for m in requested if m.strip()):
        if name == RANDOM_TARGET:
            methods.append(name)
            continue
        parts = name.split("+")
        if len(parts) > 2 or not all(parts):
            raise FtraceError(f"--methods {name!r}: a fusion joins two methods, e.g. embed+bm25")
        if len(parts) == 2 and parts[0] == parts[1]:
            raise FtraceError(f"--methods {name!r}: fuse two different methods")
        note = missing_note(parts)
        if note:
            skipped[name] = note
        else:
            methods.append(name)
    if not methods:
        raise FtraceError(f"--methods {','.join(requested)}: none of them can run on this index "
                          f"({'; '.join(f'{k}: {v}' for k, v in skipped.items())})")
    return methods, skipped


def base_methods(methods: Sequence[str]) -> list[str]:
    """The single methods the listed methods need, in order."""
    return list(dict.fromkeys(p for m in methods if m != RANDOM_TARGET for p in m.split("+")))


# --- fusion weights ----------------------------------------------------------------------------------

def fuse(a: dict[str, float], b: dict[str, float], w: float) -> dict[str, float]:
    return weighted_sum({"a": a, "b": b}, {"a": w, "b": 1.0 - w})


def tune_weight(parts: dict[str, tuple[dict[str, float], dict[str, float]]], proponents: dict[str, list[str]],
                grid: Sequence[float] = GRID, seed: int = 0, default: float = 0.5) -> tuple[float, dict[float, float]]:
    """The w of `grid` maximising MRR of fuse(a, b, w) over the queries of `parts`
    (query id -> (scores of a, scores of b)); ties go to the w closest to `default`, then the smaller."""
    mrr: dict[float, float] = {}
    for w in grid:
        ranked = {qid: [s for s, _ in ranking(fuse(a, b, w), seed, qid)] for qid, (a, b) in parts.items()}
        mrr[w] = M.evaluate({q: proponents[q] for q in parts}, ranked, ["mrr"])["mrr"]
    best = max(grid, key=lambda w: (round(mrr[w], 12), -abs(w - default), -w))
    return best, mrr


# --- the run -----------------------------------------------------------------------------------------

def _ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:12]


def _round(x: float) -> float:
    """Scores as cached (7 significant digits), so a resumed run ranks exactly as a fresh one."""
    return float(f"{float(x):.7g}")


class Bench:
    def __init__(self, s: BenchSettings, tracer=None):
        from ftrace.query.tracer import Tracer

        if s.mode not in ("rerank", "full"):
            raise FtraceError(f"--mode {s.mode!r}: choose rerank or full")
        if not s.grid or any(not 0.0 <= w <= 1.0 for w in s.grid):
            raise FtraceError(f"fusion weight grid {s.grid}: weights lie within [0, 1]")
        self.s = s
        self.own_tracer = tracer is None
        self.tracer = tracer or Tracer(Path(s.index))
        try:
            self.methods, self.skipped = plan_methods(s.methods, self.tracer.methods)
        except FtraceError:
            if self.own_tracer:
                self.tracer.close()
            raise
        self.manifest = self.tracer.index.manifest
        self.corpus = self.tracer.corpus
        self.view = CorpusView(self.corpus)
        self.bases = base_methods(self.methods)
        self.fusions = [m for m in self.methods if "+" in m]
        identity = self.manifest.identity()
        scope = {"sizes": s.sizes.model_dump()} if s.mode == "rerank" else {"depth": s.depth}
        self.key = settings_hash({"index": identity, "mode": s.mode, **scope})
        self.answer_key = settings_hash({"answers": identity["model"]})
        self.out = s.out_dir()
        self.cache = ScoreCache(self.out / "cache.jsonl", {self.key, self.answer_key})
        self._qvec: dict[str, dict] = {}
        self.computed = 0

    # ---- queries

    def eligible(self, split: str | None, option: str = "--split") -> list[Query]:
        qs = [q for q in self.corpus.queries if q.proponents and (split is None or q.split == split)]
        if not qs:
            splits = sorted({str(q.split) for q in self.corpus.queries if q.proponents})
            raise FtraceError(f"{option} {split}: no queries with proponents in this index "
                              f"(its splits: {', '.join(splits) or 'none'}; use --split all for every query)")
        return qs

    # ---- per-query scores (cached)

    def _vectors(self, q: Query) -> dict | None:
        if not any(m != "bm25" for m in self.bases):
            return None
        if q.id not in self._qvec:
            self._qvec[q.id] = self.tracer.query_vectors(q.prompt, q.target)
        return self._qvec[q.id]

    def _scored(self, seed: int | None, q: Query, method: str, ids: list[str], tag: str | None = None) -> dict[str, float]:
        """Scores of exactly `ids` under one method, from the cache or tracer.score."""
        name, digest = tag or method, _ids_digest(ids)
        v = self.cache.get(self.key, seed, q.id, name)
        if v is None or v.get("ids") != digest or len(v["s"]) != len(ids):
            t0 = time.perf_counter()
            got = self.tracer.score(method, q.prompt, q.target, ids, self._vectors(q))
            v = self.cache.put(self.key, seed, q.id, name,
                               {"ids": digest, "s": [_round(got.get(i, 0.0)) for i in ids]}, time.perf_counter() - t0)
            self.computed += 1
        return dict(zip(ids, v["s"], strict=True))

    def _retrieved(self, q: Query, method: str) -> dict[str, float]:
        v = self.cache.get(self.key, None, q.id, method)
        if v is None:
            t0 = time.perf_counter()
            got = self.tracer.retrieve(method, q.prompt, q.target, self.s.depth, self._vectors(q))
            v = self.cache.put(self.key, None, q.id, method, [[i, _round(x)] for i, x in got.items()],
                               time.perf_counter() - t0)
            self.computed += 1
        return {i: x for i, x in v}

    def candidates(self, seed: int, q: Query) -> CandidateSet:
        bm25 = lambda k: list(self.tracer.retrieve("bm25", q.prompt, q.target, k))  # noqa: E731
        return candidate_set(q, self.view, bm25, seed, self.s.sizes)

    def base_scores(self, seed: int, q: Query) -> dict[str, Any]:
        """Everything the methods' rankings of one (seed, query) are made from."""
        if self.s.mode == "rerank":
            cands = self.candidates(seed, q)
            ids = cands.ids
            return {"ids": ids, "cands": cands, "single": {m: self._scored(seed, q, m, ids) for m in self.bases}}
        single = {m: self._retrieved(q, m) for m in self.bases}
        pairs = {}
        for f in self.fusions:
            a, b = f.split("+")
            union = sorted(set(single[a]) | set(single[b]))
            pairs[f] = (self._scored(None, q, a, union, f"{f}:{a}"), self._scored(None, q, b, union, f"{f}:{b}"))
        return {"single": single, "pairs": pairs}

    def fusion_parts(self, base: dict, f: str) -> tuple[dict[str, float], dict[str, float]]:
        if self.s.mode == "rerank":
            a, b = f.split("+")
            return base["single"][a], base["single"][b]
        return base["pairs"][f]

    def method_scores(self, seed: int, q: Query, base: dict, method: str, weights: dict[str, float]) -> dict[str, float]:
        if method == RANDOM_TARGET:
            same = set(self.view.same_target(q.target))
            if self.s.mode == "rerank":
                return {i: 1.0 if i in same else 0.0 for i in base["ids"]}
            scores = dict.fromkeys(same, 1.0)
            if len(scores) < self.s.depth:
                filler = draw(self.view.ids, self.s.depth - len(scores), rng_for("random-target", seed, q.id), same)
                scores.update(dict.fromkeys(filler, 0.0))
            return scores
        if "+" in method:
            a, b = self.fusion_parts(base, method)
            return fuse(a, b, weights[method])
        return base["single"][method]

    def ranked(self, seed: int, q: Query, scores: dict[str, float]) -> list[tuple[str, float]]:
        r = ranking(scores, seed, q.id)
        return r[:self.s.depth] if self.s.mode == "full" else r

    # ---- answers (cached)

    def answers(self, queries: Sequence[Query]) -> dict[str, str]:
        out = {}
        todo = []
        for q in dict((q.id, q) for q in queries).values():
            v = self.cache.get(self.answer_key, None, q.id, "@answer")
            if v is None:
                todo.append(q)
            else:
                out[q.id] = v["answer"]
        if todo:
            found = self.sibling_answers()
            for q in [q for q in todo if q.id in found]:
                v, t = found[q.id]
                self.cache.put(self.answer_key, None, q.id, "@answer", v, t)
                out[q.id] = v["answer"]
            todo = [q for q in todo if q.id not in found]
        for q in tqdm(todo, desc="model answers", unit="query", disable=not todo):
            t0 = time.perf_counter()
            a = self.tracer.answer(q.prompt)
            self.cache.put(self.answer_key, None, q.id, "@answer", {"prompt": q.prompt, "answer": a},
                           time.perf_counter() - t0)
            out[q.id] = a
        return out

    def sibling_answers(self) -> dict[str, tuple[dict, float]]:
        """The same model's answers cached by other runs beside OUT (e.g. the other mode's)."""
        found: dict[str, tuple[dict, float]] = {}
        for path in sorted(self.out.parent.glob("*/cache.jsonl")):
            if path.resolve() == self.cache.path.resolve():
                continue
            other = ScoreCache(path, {self.answer_key})
            for (_, _, qid, m), v in other.entries.items():
                if m == "@answer" and isinstance(v, dict) and "answer" in v:
                    found.setdefault(qid, (v, other.seconds[(self.answer_key, None, qid, m)]))
        return found

    # ---- tuning

    def tune(self) -> dict[str, dict]:
        s = self.s
        if not self.fusions:
            return {}
        if not s.tune_split:
            return {f: {"weight": s.default_weight, "source": "default, no --tune-split"} for f in self.fusions}
        pool = self.eligible(s.tune_split, "--tune-split")
        tune_qs = sample_queries(pool, s.queries, 0, purpose="tune")
        parts: dict[str, dict[str, tuple]] = {f: {} for f in self.fusions}
        for q in tqdm(tune_qs, desc=f"tuning on {s.tune_split}", unit="query"):
            base = self.base_scores(0, q)
            for f in self.fusions:
                parts[f][q.id] = self.fusion_parts(base, f)
        props = {q.id: q.proponents for q in tune_qs}
        out = {}
        for f in self.fusions:
            w, mrr = tune_weight(parts[f], props, s.grid, seed=0, default=s.default_weight)
            out[f] = {"weight": w, "source": f"tuned on split {s.tune_split!r} (max MRR, seed 0)",
                      "queries": len(tune_qs), "mrr_by_weight": {str(k): v for k, v in mrr.items()}}
        if s.split == s.tune_split or s.split is None:
            log(f"note: fusion weights tuned on {s.tune_split!r}, which overlaps the evaluated queries")
        return out

    # ---- everything

    def run(self) -> dict:
        t0 = time.time()
        s = self.s
        try:
            pool = self.eligible(s.split)
            per_seed = {seed: sample_queries(pool, s.queries, seed) for seed in range(s.seeds)}
            weights_info = self.tune()
            weights = {f: w["weight"] for f, w in weights_info.items()}
            answers = self.answers([q for qs in per_seed.values() for q in qs])
            learned = {q.id: norm(answers[q.id]) == norm(q.target) for qs in per_seed.values() for q in qs}
            rankings: dict[tuple[int, str, str], list[tuple[str, float]]] = {}
            total = sum(len(qs) for qs in per_seed.values())
            with tqdm(total=total, desc=f"bench {s.mode}", unit="query") as bar:
                for seed, qs in per_seed.items():
                    for q in qs:
                        base = self.base_scores(seed, q)
                        for m in self.methods:
                            rankings[(seed, q.id, m)] = self.ranked(seed, q, self.method_scores(seed, q, base, m, weights))
                        bar.update(1)
        finally:
            self.cache.close()
            if self.own_tracer:
                self.tracer.close()
        results = self.evaluate(per_seed, rankings, learned)
        results.update(self.describe(per_seed, pool, weights_info, answers, learned))
        results["wall_time_s"] = round(time.time() - t0, 2)
        self.rankings = rankings
        self.per_seed = per_seed
        self.learned = learned
        self.answers_ = answers
        return results

    def evaluate(self, per_seed: dict[int, list[Query]], rankings: dict, learned: dict[str, bool]) -> dict:
        s = self.s
        slices = {"all": lambda q: True, "pre-train-learned": lambda q: learned[q.id]}
        table: dict[str, dict[str, dict]] = {}
        counts: dict[str, list[int]] = {}
        significance: dict[str, dict] = {}
        for sl, keep in slices.items():
            by_seed: dict[str, dict[str, list[float]]] = {m: {x: [] for x in M.METRICS} for m in self.methods}
            counts[sl] = []
            pooled_props: dict[str, list[str]] = {}
            pooled: dict[str, dict[str, list[str]]] = {m: {} for m in self.methods}
            for seed, qs in per_seed.items():
                qs = [q for q in qs if keep(q)]
                counts[sl].append(len(qs))
                props = {q.id: q.proponents for q in qs}
                for q in qs:
                    pooled_props[f"{seed}|{q.id}"] = q.proponents
                for m in self.methods:
                    ranked = {q.id: [i for i, _ in rankings[(seed, q.id, m)]] for q in qs}
                    for q in qs:
                        pooled[m][f"{seed}|{q.id}"] = ranked[q.id]
                    vals = M.evaluate(props, ranked) if qs else dict.fromkeys(M.METRICS, math.nan)
                    for x in M.METRICS:
                        by_seed[m][x].append(vals[x])
            table[sl] = {m: {x: {**M.mean_std(v), "per_seed": [None if math.isnan(y) else y for y in v]}
                             for x, v in by_seed[m].items()} for m in self.methods}
            significance[sl] = self.significance(table[sl], pooled_props, pooled)
        return {"metrics": table, "query_counts": counts, "significance": significance}

    def significance(self, table: dict, props: dict, pooled: dict) -> dict:
        if "bm25" not in self.methods or len(self.methods) < 2:
            return {"note": "needs bm25 and another method"}
        others = [m for m in self.methods if m != "bm25" and table[m]["mrr"]["mean"] is not None]
        if not others or len(props) < 2:
            return {"note": f"too few queries ({len(props)}) for a paired test"}
        best_other = max(others, key=lambda m: table[m]["mrr"]["mean"])
        bm = table["bm25"]["mrr"]["mean"]
        best = best_other if bm is None or table[best_other]["mrr"]["mean"] > bm else "bm25"
        out = {"best": best, "compared": [best_other, "bm25"], "pairs": len(props),
               "unit": "(seed, query) pairs pooled over seeds", "main_test": self.s.stat_test}
        for test in ("student", "fisher"):
            out[test] = M.paired_test(props, pooled[best_other], pooled["bm25"], (best_other, "bm25"), stat_test=test)
        return out

    def describe(self, per_seed, pool, weights_info, answers, learned) -> dict:
        s, m = self.s, self.manifest
        vers = {**m.versions, **versions(("ranx", "numpy", "matplotlib", "scipy", "numba"))}
        return {
            "benchmark": "FTRACE-style fact tracing (Akyurek et al. 2022) + TrackStar recall@10",
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": s.command(),
            "settings": s.model_dump(mode="json"),
            "index": {"path": str(Path(s.index).resolve()), "identity": m.identity(), "created": m.created,
                      "corpus": m.corpus.model_dump(), "model": m.model.name,
                      "search": "hnsw (approximate)" if m.store.hnsw else "exact"},
            "mode": s.mode,
            "candidate_sizes": s.sizes.model_dump() if s.mode == "rerank" else None,
            "depth": s.depth if s.mode == "full" else None,
            "seeds": list(per_seed),
            "queries": {"split": s.split, "eligible": len(pool), "per_seed": {str(k): [q.id for q in v]
                                                                              for k, v in per_seed.items()},
                        "note": None if len(pool) > s.queries else
                        f"only {len(pool)} eligible queries: every seed evaluates all of them"},
            "methods": self.methods,
            "skipped": self.skipped,
            "fusion": {"kind": "weighted sum of min-max normalised scores (w on the first, 1-w on the second)",
                       "grid": s.grid, "tune_split": s.tune_split, "weights": weights_info},
            "answers": {"correct": sum(learned.values()), "of": len(learned),
                        "rule": "greedy answer == target, case-insensitive, stripped"},
            "metric_names": M.LABELS,
            "std": "sample standard deviation over seeds (ddof=1)",
            "cache": {"file": str(self.cache.path), "reused": self.cache.reused, "computed": self.computed,
                      "other_settings_entries": self.cache.other,
                      "compute_s": round(self.cache.used_s, 1),
                      "note": "compute_s: model/index time of every cached entry this run used, whether "
                              "computed now or by an earlier run; wall_time_s: this invocation only"},
            "versions": vers,
        }


def run_bench(s: BenchSettings, tracer=None, write: bool = True) -> dict:
    """Run the benchmark and (by default) write OUT/results.json, table.md, plot.png, rankings.jsonl."""
    bench = Bench(s, tracer)
    for name, why in bench.skipped.items():
        log(f"skipping {name}: {why}")
    results = bench.run()
    if write:
        from ftrace.bench.report import write_reports

        write_reports(bench, results)
    return results
