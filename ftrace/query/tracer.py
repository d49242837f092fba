"""Tracing one prediction: the model's answer, the query's vectors, retrieval and fusion.

Method names: "bm25", any stored vector name ("embed", "tracin", ...), and fusions "a+b"
(weight w on a, 1-w on b; normalised score sum or reciprocal rank fusion). All scores are at the
sentence level: a sentence's score is the max over its examples.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from ftrace import FtraceError
from ftrace.index.layout import IndexDir
from ftrace.index.manifest import ManifestError
from ftrace.ingest.featurizers import from_specs
from ftrace.model import greedy_answer, load_model, query_batch
from ftrace.query.fusion import by_sentence, rrf, top, weighted_sum


class Row(BaseModel):
    rank: int
    sentence_id: str
    text: str
    score: float
    scores: dict[str, float]
    proponent: bool | None = None


class GroundTruth(BaseModel):
    query_ids: list[str]
    target: str
    proponents: list[str]


class QueryResult(BaseModel):
    prompt: str
    target: str
    target_from: str  # "model" or "user"
    method: str
    fusion: str | None
    rows: list[Row]
    ground_truth: GroundTruth | None = None
    note: str | None = None


class Tracer:
    def __init__(self, index: Path, model: str | None = None, embed_layers: list[int] | None = None):
        self.index = IndexDir(Path(index))
        m = self.index.manifest
        if not m.complete:
            raise ManifestError(f"{index}: ingest did not finish; run `ftrace ingest` again to resume it")
        if model is not None and model != m.model.name:
            raise ManifestError(f"{index}: built with model {m.model.name!r}, not {model!r}")
        if embed_layers is not None and "embed" in m.vectors and m.vectors["embed"]["layers"] != embed_layers:
            raise ManifestError(f"{index}: embeddings were built from layers {m.vectors['embed']['layers']}, "
                                f"not {embed_layers}")
        self.lm = load_model(m.model.name)
        if self.lm.fingerprint != m.model.fingerprint:
            raise ManifestError(f"{index}: model {m.model.name!r} has changed since the index was built "
                                f"(weights {self.lm.fingerprint}, index {m.model.fingerprint})")
        self.featurizers = {f.name: f for f in from_specs(self.lm, m.vectors, self.index.path)}
        self.corpus = self.index.corpus
        self.sentences = self.corpus.by_id()
        self.sentence_of = {e.id: e.sentence_id for e in self.corpus.examples()}
        self.examples_of: dict[str, list[str]] = {}
        for e, s in self.sentence_of.items():
            self.examples_of.setdefault(s, []).append(e)

    @cached_property
    def store(self):
        return self.index.open_store()

    @cached_property
    def bm25(self):
        return self.index.open_bm25()

    @property
    def methods(self) -> list[str]:
        return ["bm25", *self.featurizers]

    def close(self) -> None:
        for name in ("store", "bm25"):
            if name in self.__dict__:
                self.__dict__.pop(name).close()

    # --- the pieces ---------------------------------------------------------------------------

    def answer(self, prompt: str) -> str:
        return greedy_answer(self.lm, prompt)

    def query_vectors(self, prompt: str, target: str, names=None) -> dict[str, np.ndarray]:
        """The query's vectors (only `names`, when given: a gradient costs a forward+backward)."""
        batch = query_batch(self.lm.tokenizer, [prompt], [target])
        return {n: f.vectors(batch)[0] for n, f in self.featurizers.items() if names is None or n in names}

    def _check(self, method: str) -> None:
        if method != "bm25" and method not in self.featurizers:
            raise FtraceError(f"--method {method!r}: this index has {self.methods} (and their a+b fusions)")

    def retrieve(self, method: str, prompt: str, target: str, depth: int, qvec: dict | None = None) -> dict[str, float]:
        """Top sentences of one method over the whole corpus."""
        self._check(method)
        if method == "bm25":
            return dict(self.bm25.search(f"{prompt} {target}", depth))
        vec = (qvec or self.query_vectors(prompt, target, [method]))[method]
        return by_sentence(dict(self.store.search(method, vec, depth)), self.sentence_of)

    def score(self, method: str, prompt: str, target: str, sentence_ids: list[str], qvec: dict | None = None) -> dict[str, float]:
        """Scores of exactly these sentences under one method (a candidate set)."""
        self._check(method)
        if method == "bm25":
            return self.bm25.score(f"{prompt} {target}", sentence_ids)
        vec = (qvec or self.query_vectors(prompt, target, [method]))[method]
        examples = [e for s in sentence_ids for e in self.examples_of[s]]
        hits = self.store.search(method, vec, len(examples), ids=examples, exact=True)
        return by_sentence(dict(hits), self.sentence_of)

    def same_prompt(self, prompt: str) -> list:
        key = prompt.strip().lower()
        return [q for q in self.corpus.queries if q.prompt.strip().lower() == key]

    def ground_truth(self, prompt: str, target: str) -> GroundTruth | None:
        hits = [q for q in self.same_prompt(prompt) if q.target.strip().lower() == target.strip().lower()]
        if not hits:
            return None
        props = list(dict.fromkeys(p for q in hits for p in q.proponents))
        return GroundTruth(query_ids=[q.id for q in hits], target=hits[0].target, proponents=props)

    # --- one query, end to end ----------------------------------------------------------------

    def query(self, prompt: str, target: str | None = None, k: int = 10, method: str = "bm25+embed",
              fusion: str = "sum", weight: float = 0.5, depth: int = 100) -> QueryResult:
        if not prompt.strip():
            raise FtraceError("PROMPT is empty: give the text the model completes, e.g. 'Toyota Avanza is produced by'")
        if target is not None and not target.strip():
            raise FtraceError("--target is empty")
        if fusion not in ("sum", "rrf"):
            raise FtraceError(f"--fusion {fusion!r}: choose sum or rrf")
        if not 0.0 <= weight <= 1.0:
            raise FtraceError(f"--weight {weight}: must be within [0, 1]")
        parts = method.split("+")
        for p in parts:
            self._check(p)
        target_from = "user" if target else "model"
        target = target.strip() if target else self.answer(prompt)
        qvec = self.query_vectors(prompt, target, parts)
        if len(parts) == 1:
            scores = self.retrieve(method, prompt, target, max(k, depth), qvec)
            per_method = {method: scores}
        else:
            candidates = sorted({s for p in parts for s in self.retrieve(p, prompt, target, depth, qvec)})
            per_method = {p: self.score(p, prompt, target, candidates, qvec) for p in parts}
            weights = {parts[0]: weight, parts[1]: 1.0 - weight} if len(parts) == 2 else {}
            scores = weighted_sum(per_method, weights) if fusion == "sum" else rrf(per_method, weights=weights or None)
        truth = self.ground_truth(prompt, target)
        props = set(truth.proponents) if truth else None
        rows = [Row(rank=r, sentence_id=s, text=self.sentences[s].text, score=sc,
                    scores={p: per_method[p].get(s, float("nan")) for p in per_method},
                    proponent=(s in props) if props is not None else None)
                for r, (s, sc) in enumerate(top(scores, k), 1)]
        known = sorted({q.target for q in self.same_prompt(prompt)}) if truth is None else []
        note = f"the corpus knows this prompt with target(s) {known[:3]}, not {target!r}" if known else None
        return QueryResult(prompt=prompt, target=target, target_from=target_from, method=method,
                           fusion=fusion if len(parts) > 1 else None, rows=rows, ground_truth=truth, note=note)
