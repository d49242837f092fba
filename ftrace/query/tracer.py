"""Tracing one prediction: the model's answer, the query's vectors, retrieval and fusion.

Methods follow `query.methods` (bm25, a stored vector's name, or a fusion a+b). All scores are at
the sentence level: a sentence's score is the max over its examples. The model is loaded only
when something needs it (an answer or a query vector): a BM25 query with a given target runs
without it.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from ftrace import FtraceError
from ftrace.corpus import Query, match_key
from ftrace.features.base import Featurizer, from_specs
from ftrace.index.layout import IndexDir
from ftrace.index.locks import progress_note, reading
from ftrace.index.manifest import ManifestError
from ftrace.model import LoadedModel, greedy_answer, load_model, query_batch
from ftrace.model.batching import query_rows
from ftrace.query.fusion import by_sentence, ranking
from ftrace.query.methods import CASCADE_K, Fuser, Fusion, Method, fusion_pool, parse_method


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
    def __init__(self, index: Path, model: str | None = None, embed_layers: list[int] | None = None,
                 device: str = "cpu"):
        reading(index)  # refuse at once, before any model work, while an ingest writes this index
        self.index = IndexDir(Path(index))
        m = self.index.manifest
        if not m.complete:
            raise ManifestError(f"{index}: ingest did not finish{progress_note(index)}; run `ftrace ingest` again "
                                "to resume it")
        if model is not None and model != m.model.name:
            raise ManifestError(f"{index}: built with model {m.model.name!r}, not {model!r}")
        if embed_layers is not None and "embed" in m.vectors and m.vectors["embed"]["layers"] != embed_layers:
            raise ManifestError(f"{index}: embeddings were built from layers {m.vectors['embed']['layers']}, "
                                f"not {embed_layers}")
        self.device = device
        self.corpus = self.index.corpus
        self.sentences = self.corpus.by_id()
        self.sentence_of = {e.id: e.sentence_id for e in self.corpus.examples()}
        self.examples_of: dict[str, list[str]] = {}
        for e, s in self.sentence_of.items():
            self.examples_of.setdefault(s, []).append(e)
        self._featurizers: dict[str, Featurizer] = {}

    @cached_property
    def lm(self) -> LoadedModel:
        m = self.index.manifest
        lm = load_model(m.model.name, self.device)
        if lm.fingerprint != m.model.fingerprint:
            raise ManifestError(f"{self.index.path}: model {m.model.name!r} has changed since the index was built "
                                f"(weights {lm.fingerprint}, index {m.model.fingerprint})")
        return lm

    def featurizer(self, name: str) -> Featurizer:
        """The featurizer of a stored vector, built on first use (a gradient one loads checkpoints)."""
        if name not in self._featurizers:
            self._featurizers.update(from_specs(self.lm, self.index.manifest.vectors, self.index.path, [name]))
        return self._featurizers[name]

    @cached_property
    def store(self) -> Any:
        return self.index.open_store()

    @cached_property
    def bm25(self) -> Any:
        return self.index.open_bm25()

    @property
    def methods(self) -> list[str]:
        return ["bm25", *self.index.manifest.vectors]

    def close(self) -> None:
        for name in ("store", "bm25"):
            if name in self.__dict__:
                self.__dict__.pop(name).close()

    # --- the pieces ---------------------------------------------------------------------------

    def answer(self, prompt: str) -> str:
        return greedy_answer(self.lm, prompt)

    def query_vectors(self, prompt: str, target: str, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """The query's vectors (only `names`, when given: a gradient costs a forward+backward)."""
        wanted = [n for n in self.index.manifest.vectors if names is None or n in set(names)]
        if not wanted:
            return {}
        batch = query_batch(self.lm.tokenizer, [prompt], [target], self.index.manifest.max_tokens)
        return {n: self.featurizer(n).vectors(batch)[0] for n in wanted}

    def _check(self, method: str) -> None:
        if method not in self.methods:
            raise FtraceError(f"--method {method!r}: this index has {self.methods} (and their a+b fusions)")

    def retrieve(self, method: str, prompt: str, target: str, depth: int,
                 qvec: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        """Top sentences of one single method over the whole corpus."""
        self._check(method)
        if method == "bm25":
            return dict(self.bm25.search(f"{prompt} {target}", depth))
        vec = (qvec or self.query_vectors(prompt, target, [method]))[method]
        return by_sentence(dict(self.store.search(method, vec, depth)), self.sentence_of)

    def score(self, method: str, prompt: str, target: str, sentence_ids: list[str],
              qvec: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        """Scores of exactly these sentences under one single method (a candidate set)."""
        self._check(method)
        if method == "bm25":
            return self.bm25.score(f"{prompt} {target}", sentence_ids)
        vec = (qvec or self.query_vectors(prompt, target, [method]))[method]
        examples = [e for s in sentence_ids for e in self.examples_of[s]]
        hits = self.store.search(method, vec, len(examples), ids=examples, exact=True)
        return by_sentence(dict(hits), self.sentence_of)

    def runs(self, method: Method, prompt: str, target: str, depth: int,
             qvec: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, float]]:
        """Per component, the scores a method ranks by: a single method's top `depth`; for a fusion,
        both components' scores of the union of their top `depth` (the one fusion path)."""
        if not method.is_fusion:
            (name,) = method.components
            return {name: self.retrieve(name, prompt, target, depth, qvec)}
        pool = fusion_pool({c: self.retrieve(c, prompt, target, depth, qvec) for c in method.components})
        return {c: self.score(c, prompt, target, pool, qvec) for c in method.components}

    def same_prompt(self, prompt: str) -> list[Query]:
        key = match_key(prompt)
        return [q for q in self.corpus.queries if match_key(q.prompt) == key]

    def ground_truth(self, same_prompt: list[Query], target: str) -> GroundTruth | None:
        hits = [q for q in same_prompt if match_key(q.target) == match_key(target)]
        if not hits:
            return None
        props = list(dict.fromkeys(p for q in hits for p in q.proponents))
        return GroundTruth(query_ids=[q.id for q in hits], target=hits[0].target, proponents=props)

    # --- one query, end to end ----------------------------------------------------------------

    def query(self, prompt: str, target: str | None = None, k: int = 10, method: str = "bm25+embed",
              fusion: Fusion = "sum", weight: float = 0.5, depth: int = 100,
              cascade_k: int = CASCADE_K) -> QueryResult:
        if not prompt.strip():
            raise FtraceError("PROMPT is empty: give the text the model completes, e.g. 'Toyota Avanza is produced by'")
        if target is not None and not target.strip():
            raise FtraceError("--target is empty")
        if fusion not in ("sum", "rrf", "cascade"):
            raise FtraceError(f"--fusion {fusion!r}: choose sum, rrf or cascade")
        if cascade_k < 1:
            raise FtraceError(f"--cascade-k {cascade_k}: must be at least 1")
        if not 0.0 <= weight <= 1.0:
            raise FtraceError(f"--weight {weight}: must be within [0, 1]")
        m = parse_method(method, self.methods)
        target_from = "user" if target else "model"
        target = target.strip() if target else self.answer(prompt)
        if not target:
            raise FtraceError(f"the model's answer to {prompt!r} is empty; give the answer to trace with --target")
        qvec = self.query_vectors(prompt, target, m.components)
        per_method = self.runs(m, prompt, target, depth if m.is_fusion else max(k, depth), qvec)
        scores = Fuser(m, fusion, weight, cascade_k)(per_method) if m.is_fusion else per_method[str(m)]
        same = self.same_prompt(prompt)
        truth = self.ground_truth(same, target)
        props = set(truth.proponents) if truth else None
        rows = [Row(rank=r, sentence_id=s, text=self.sentences[s].text, score=sc,
                    scores={p: per_method[p].get(s, float("nan")) for p in per_method},
                    proponent=(s in props) if props is not None else None)
                for r, (s, sc) in enumerate(ranking(scores)[:k], 1)]
        known = sorted({q.target for q in same}) if truth is None else []
        notes = [f"the corpus knows this prompt with target(s) {known[:3]}, not {target!r}"] if known else []
        limit = self.index.manifest.max_tokens
        if any(c != "bm25" for c in m.components) and query_rows(self.lm.tokenizer, prompt, target, limit)[2]:
            notes.append(f"the prompt is longer than the index's {limit} tokens: the model saw only its end")
        note = "; ".join(notes) or None
        return QueryResult(prompt=prompt, target=target, target_from=target_from, method=str(m),
                           fusion=fusion if m.is_fusion else None, rows=rows, ground_truth=truth, note=note)
