"""Every score and answer a bench run uses, from the resumable cache or computed once.

Scores of the single methods are cached per (seed, query, method) in OUT/cache.jsonl (seed null
in full mode, where nothing depends on it); fusions and the baseline are recomputed from them, so
tuning never calls the model again. The model's answers (for the learned slices) are cached too, one
entry per query under a key of the model's identity (the base model's under the base model's), and
taken from other runs' caches beside OUT when they were made with the same model.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ftrace.bench.cache import ResultCache, settings_hash
from ftrace.bench.candidates import CandidateSet, CorpusView, candidate_set
from ftrace.bench.slices import STRICT_BEAMS
from ftrace.config import BenchConfig
from ftrace.corpus import Query
from ftrace.index.manifest import ManifestError
from ftrace.model import LoadedModel, load_model
from ftrace.model.answer import RIGHT_RULE_VERSION, answers_right, greedy_answers, in_top_answers
from ftrace.query.methods import fused_parts, parse_method
from ftrace.query.tracer import Tracer
from ftrace.sparse import Vector


def ids_digest(ids: Sequence[str], size: int = 12) -> str:
    """A short hash of a list of sentence ids (cache entries name their sentences by it)."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:size]


def _round(x: float) -> float:
    """Scores as cached (7 significant digits), so a resumed run ranks exactly as a fresh one."""
    return float(f"{float(x):.7g}")


ANSWER_BATCH = 16  # prompts per generate call
RIGHT_BATCH = 512  # queries per answers_right call (its own batches are smaller), between cache writes


@dataclass
class QueryScores:
    """What one (seed, query)'s rankings are made from: each single method's scores (rerank: of the
    candidate set; full: its retrieved list) and, in full mode, each fusion's component scores of
    the fusion's pool."""

    single: dict[str, dict[str, float]]
    fused_parts: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    candidates: CandidateSet | None = None

    def components(self, fusion: str) -> dict[str, dict[str, float]]:
        if fusion in self.fused_parts:
            return self.fused_parts[fusion]
        return {c: self.single[c] for c in fusion.split("+")}


class Scorer:
    def __init__(self, config: BenchConfig, tracer: Tracer, singles: list[str], fusions: list[str], out: Path):
        self.c, self.tracer, self.singles, self.fusions = config, tracer, singles, fusions
        self.view = CorpusView(tracer.corpus)
        identity = tracer.index.manifest.identity()
        if identity["model"]["dtype"] == "float32":  # as before dtype was recorded: earlier caches stay valid
            del identity["model"]["dtype"]
        scope = {"sizes": config.sizes.model_dump()} if config.mode == "rerank" else {"depth": config.depth}
        dtype = {} if tracer.dtype == "float32" else {"dtype": tracer.dtype}  # queries' model weights
        self.identity = {"index": identity, **dtype}  # what every cached value depends on
        self.key = settings_hash({"index": identity, "mode": config.mode, **scope, **dtype})
        limit = {"max_tokens": identity["max_tokens"]}  # answers see a prompt's last max_tokens tokens
        self.answer_key = settings_hash({"answers": identity["model"], **dtype, **limit})
        base = tracer.index.manifest.model
        self.base_answer_key = settings_hash({"answers": {"name": base.base, "fingerprint": base.base_fingerprint},
                                              **dtype, **limit})
        self.cache = ResultCache(out / "cache.jsonl", {self.key, self.answer_key, self.base_answer_key})
        self.computed = 0
        self._qvec: dict[str, dict[str, Vector]] = {}

    def _vectors(self, q: Query) -> dict[str, Vector] | None:
        """The query's vectors, for the vector methods this run uses (computed once per query)."""
        names = [m for m in self.singles if m != "bm25"]
        if not names:
            return None
        if q.id not in self._qvec:
            self._qvec[q.id] = self.tracer.query_vectors(q.prompt, q.target, names)
        return self._qvec[q.id]

    def scored(self, seed: int | None, q: Query, method: str, ids: list[str],
               tag: str | None = None) -> dict[str, float]:
        """Scores of exactly `ids` under one method, from the cache or tracer.score."""
        name, digest = tag or method, ids_digest(ids)
        v = self.cache.get(self.key, seed, q.id, name)
        if v is None or v.get("ids") != digest or len(v["s"]) != len(ids):
            t0 = time.perf_counter()
            got = self.tracer.score(method, q.prompt, q.target, ids, self._vectors(q))
            v = self.cache.put(self.key, seed, q.id, name,
                               {"ids": digest, "s": [_round(got.get(i, 0.0)) for i in ids]}, time.perf_counter() - t0)
            self.computed += 1
        return dict(zip(ids, v["s"], strict=True))

    def retrieved(self, q: Query, method: str) -> dict[str, float]:
        v = self.cache.get(self.key, None, q.id, method)
        if v is None:
            t0 = time.perf_counter()
            got = self.tracer.retrieve(method, q.prompt, q.target, self.c.depth, self._vectors(q))
            v = self.cache.put(self.key, None, q.id, method, [[i, _round(x)] for i, x in got.items()],
                               time.perf_counter() - t0)
            self.computed += 1
        return {i: x for i, x in v}

    def candidates(self, seed: int, q: Query) -> CandidateSet:
        def bm25(k: int) -> list[str]:
            return list(self.tracer.retrieve("bm25", q.prompt, q.target, k))
        return candidate_set(q, self.view, bm25, seed, self.c.sizes)

    def query_scores(self, seed: int, q: Query) -> QueryScores:
        if self.c.mode == "rerank":
            cands = self.candidates(seed, q)
            return QueryScores({m: self.scored(seed, q, m, cands.ids) for m in self.singles}, candidates=cands)
        single = {m: self.retrieved(q, m) for m in self.singles}
        fused = {f: fused_parts(parse_method(f, None), single.__getitem__,
                                lambda p, pool, f=f: self.scored(None, q, p, pool, f"{f}:{p}"))  # type: ignore[misc]
                 for f in self.fusions}
        return QueryScores(single, fused)

    # ---- answers

    @cached_property
    def base_lm(self) -> LoadedModel:
        """The model before fine-tuning (manifest model.base), checked against its fingerprint."""
        m = self.tracer.index.manifest.model
        if m.base is None:
            raise ManifestError(f"{self.tracer.index.path}: the index records no base model")
        lm = load_model(m.base, self.tracer.device, self.tracer.dtype)
        m.check_weights(self.tracer.index.path, lm.fingerprint, base=True)
        return lm

    def answers(self, queries: Sequence[Query], base: bool = False) -> dict[str, str]:
        """query id -> the greedy answer of the index's model (or of its base model), cached per query."""
        limit = self.tracer.index.manifest.max_tokens  # prompts keep their last --max-tokens, as in queries
        return self._per_query(queries, base, "answer", lambda q: {"prompt": q.prompt}, ANSWER_BATCH,
                               lambda lm, qs: greedy_answers(lm, [q.prompt for q in qs], len(qs), max_tokens=limit))

    def rights(self, queries: Sequence[Query], base: bool = False) -> dict[str, bool]:
        """query id -> whether the index's model (or its base model) answers it right (`answers_right`: one
        teacher-forced pass, no generation), cached per query: every query of a corpus is affordable."""
        limit = self.tracer.index.manifest.max_tokens
        return self._per_query(queries, base, "right",
                               lambda q: {"prompt": q.prompt, "target": q.target, "rule": RIGHT_RULE_VERSION},
                               RIGHT_BATCH, lambda lm, qs: answers_right(lm, [q.prompt for q in qs],
                                                                         [q.target for q in qs], max_tokens=limit))

    def in_top_at_base(self, queries: Sequence[Query]) -> dict[str, bool]:
        """query id -> whether any of the base model's STRICT_BEAMS beam-search answers is right (FTRACE's strict
        fine-tune-learned rule), cached per query."""
        limit = self.tracer.index.manifest.max_tokens
        return self._per_query(queries, True, "top",
                               lambda q: {"prompt": q.prompt, "target": q.target, "beams": STRICT_BEAMS},
                               ANSWER_BATCH, lambda lm, qs: in_top_answers(lm, [q.prompt for q in qs],
                                                                           [q.target for q in qs], STRICT_BEAMS,
                                                                           max_tokens=limit))

    def _per_query(self, queries: Sequence[Query], base: bool, field: str, inputs: Callable[[Query], dict],
                   batch: int, compute: Callable[[LoadedModel, list[Query]], list]) -> dict[str, Any]:
        """query id -> `field` of the model's (or base model's) output for it: cached (entries "@field" under
        the model's key, checked against the query's `inputs`), else taken from other runs' caches beside OUT
        made with the same model, else computed `batch` queries at a time."""
        key, tag = (self.base_answer_key if base else self.answer_key), f"@{field}"
        out: dict[str, Any] = {}
        todo = []
        for q in dict((q.id, q) for q in queries).values():
            v = self.cache.get(key, None, q.id, tag)
            if v is None or any(v.get(k) != x for k, x in inputs(q).items()):  # an id reused for another query
                todo.append(q)
            else:
                out[q.id] = v[field]
        if todo:
            found = self.sibling_entries(key, tag)
            for q in todo:
                if q.id in found and field in found[q.id][0] and all(found[q.id][0].get(k) == x
                                                                     for k, x in inputs(q).items()):
                    v, t = found[q.id]
                    self.cache.put(key, None, q.id, tag, v, t)
                    out[q.id] = v[field]
            todo = [q for q in todo if q.id not in out]
        what = {"answer": "answers", "right": "right?", "top": f"top-{STRICT_BEAMS} answers"}[field]
        with tqdm(total=len(todo), desc=f"base model {what}" if base else f"model {what}", unit="query",
                  disable=not todo) as bar:
            for i in range(0, len(todo), batch):
                chunk = todo[i:i + batch]
                t0 = time.perf_counter()
                got = compute(self.base_lm if base else self.tracer.lm, chunk)
                t = (time.perf_counter() - t0) / len(chunk)
                for q, a in zip(chunk, got, strict=True):
                    self.cache.put(key, None, q.id, tag, {**inputs(q), field: a}, t)
                    out[q.id] = a
                bar.update(len(chunk))
        return out

    def release_base(self) -> None:
        """Free the base model (it only answers)."""
        self.__dict__.pop("base_lm", None)

    def sibling_entries(self, key: str, tag: str) -> dict[str, tuple[dict, float]]:
        """The same model's per-query entries (`tag`: "@answer", "@right") cached by other runs beside OUT
        (e.g. the other mode's)."""
        found: dict[str, tuple[dict, float]] = {}
        for path in sorted(self.cache.path.parent.parent.glob("*/cache.jsonl")):
            if path.resolve() == self.cache.path.resolve():
                continue
            other = ResultCache(path, {key})
            for (_, _, qid, m), v in other.entries.items():
                if m == tag and isinstance(v, dict):
                    found.setdefault(qid, (v, other.seconds[(key, None, qid, m)]))
        return found

    def close(self) -> None:
        self.cache.close()

