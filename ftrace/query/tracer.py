"""Tracing one prediction: the model's answer, the query's vectors, retrieval and fusion.

Methods follow `query.methods` (bm25, a stored vector's name, or a fusion a+b). All scores are at
the sentence level: a sentence's score is the max over its examples. The model is loaded only
when something needs it (an answer or a query vector), and torch and transformers are imported only
then: a BM25 query with a given target runs without them. When a query needs both the model and
BM25, the JVM starts and Lucene opens in a background thread while the model loads.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftrace import FtraceError
from ftrace.config import CASCADE_K, FUSION_WEIGHT, TraceOptions
from ftrace.corpus import Corpus, Query, Sentence, match_key
from ftrace.corpus.passages import around
from ftrace.corpus.records import example_id, example_sentence
from ftrace.index.layout import IndexDir
from ftrace.index.locks import progress_note, reading
from ftrace.index.manifest import ManifestError
from ftrace.query.fusion import by_sentence, ranking
from ftrace.query.methods import Fuser, Fusion, Method, fused_parts, parse_method
from ftrace.query.result import GroundTruth, QueryResult, Row
from ftrace.sparse import SparseVector, Vector

if TYPE_CHECKING:  # torch and transformers behind these load in seconds: imported where the model is needed
    from ftrace.features.base import Featurizer
    from ftrace.model import LoadedModel


class RequestTimeout(FtraceError):
    """A query passed its deadline (`Tracer.deadline`)."""


class Tracer:
    def __init__(self, index: Path, model: str | None = None, embed_layers: list[int] | None = None,
                 device: str = "cpu", dtype: str | None = None):
        """`dtype`: the model weights' dtype for queries (default: the one the index was built with)."""
        reading(index)  # refuse at once, before any model work, while an ingest writes this index
        self.index = IndexDir(Path(index))
        m = self.index.manifest
        if m.adding is not None:
            raise ManifestError(f"{index}: the addition of {m.adding.source} did not finish{progress_note(index)}; run "
                                "`ftrace ingest --add` with it again to finish it")
        if not m.complete:
            split = {n for (_, n) in self.index.shards()}  # a sharded ingest: its shards resume, then the final one
            todo = (f"finish its shards (`ftrace ingest --shard I/{max(split)}`), then run `ftrace ingest`" if split
                    else "run `ftrace ingest` again to resume it")
            raise ManifestError(f"{index}: ingest did not finish{progress_note(index)}; {todo}")
        m.check_asked(index, model, embed_layers)
        self.device, self.dtype = device, dtype or m.model.dtype
        self.texts = self.index.texts  # read by id and prompt: a query opens what it shows, not the whole corpus
        self._featurizers: dict[str, Featurizer] = {}
        self._bm25_opening: Future | None = None
        self._opening_lock = threading.Lock()
        # seconds the last `query` spent per part: answer, vectors (model), bm25, qdrant (stores), total
        self.timings: dict[str, float] = {}
        # time.monotonic() after which a query stops at its next part (a server's per-request limit)
        self.deadline: float | None = None

    @contextlib.contextmanager
    def _timed(self, part: str) -> Iterator[None]:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise RequestTimeout(f"the request ran out of time before its {part} step")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[part] = self.timings.get(part, 0.0) + time.perf_counter() - start

    @property
    def device_name(self) -> str:
        """The device the model runs on ('auto' resolved), known before it loads."""
        from ftrace.model.loading import resolve_device

        return str(resolve_device(self.device))

    @cached_property
    def lm(self) -> LoadedModel:
        from ftrace.model import load_model

        m = self.index.manifest
        lm = load_model(m.model.name, self.device, self.dtype)
        m.model.check_weights(self.index.path, lm.fingerprint)
        return lm

    def featurizer(self, name: str) -> Featurizer:
        """The featurizer of a stored vector, built on first use (a gradient one loads checkpoints)."""
        if name not in self._featurizers:
            from ftrace.features.base import from_specs

            self._featurizers.update(from_specs(self.lm, self.index.manifest.vectors, self.index.state_file, [name]))
        return self._featurizers[name]

    @cached_property
    def store(self) -> Any:
        return self.index.open_store()

    @cached_property
    def bm25(self) -> Any:
        return self._bm25_opening.result() if self._bm25_opening else self.index.open_bm25()

    def _open_bm25_meanwhile(self) -> None:
        """Start the JVM and open Lucene in a background thread (once), e.g. while the model loads."""
        with self._opening_lock:  # concurrent queries (a server's) start it once
            if self._bm25_opening is None and "bm25" not in self.__dict__:
                pool = ThreadPoolExecutor(1, thread_name_prefix="ftrace-bm25")
                self._bm25_opening = pool.submit(self.index.open_bm25)
                pool.shutdown(wait=False)

    @property
    def methods(self) -> list[str]:
        return ["bm25", *self.index.manifest.vectors]

    def _prompt_cut(self, prompt: str, target: str, limit: int) -> bool:
        from ftrace.model.batching import query_rows

        return query_rows(self.lm.tokenizer, prompt, target, limit)[2]

    def open(self) -> Tracer:
        """Load and open now what queries would on first use: the model, every featurizer, both stores
        (a server's start)."""
        for name in self.index.manifest.vectors:
            self.featurizer(name)
        for part in ("store", "bm25"):
            getattr(self, part)
        return self

    def close(self) -> None:
        if self._bm25_opening is not None and self._bm25_opening.exception() is None:
            self.bm25  # noqa: B018 - a background open finishes, then closes below like any other
        for name in ("store", "bm25"):
            if name in self.__dict__:
                self.__dict__.pop(name).close()
        if "texts" in self.index.__dict__:
            self.index.__dict__.pop("texts").close()

    # --- the pieces ---------------------------------------------------------------------------

    def answer(self, prompt: str) -> str:
        from ftrace.model import greedy_answer

        with self._timed("answer"):
            return greedy_answer(self.lm, prompt, max_tokens=self.index.manifest.max_tokens)

    def query_vectors(self, prompt: str, target: str, names: Iterable[str] | None = None) -> dict[str, Vector]:
        """The query's vectors (only `names`, when given: a gradient costs a forward+backward)."""
        wanted = [n for n in self.index.manifest.vectors if names is None or n in set(names)]
        if not wanted:
            return {}
        from ftrace.model import query_batch

        with self._timed("vectors"):
            batch = query_batch(self.lm.tokenizer, [prompt], [target], self.index.manifest.max_tokens)
            return {n: self.featurizer(n).vectors(batch)[0] for n in wanted}

    def _check(self, method: str) -> None:
        if method not in self.methods:
            raise FtraceError(f"--method {method!r}: this index has {self.methods} (and their a+b fusions)")

    def retrieve(self, method: str, prompt: str, target: str, depth: int,
                 qvec: dict[str, Vector] | None = None) -> dict[str, float]:
        """Top sentences of one single method over the whole corpus."""
        self._check(method)
        if method == "bm25":
            with self._timed("bm25"):
                return dict(self.bm25.search(f"{prompt} {target}", depth))
        vec = (qvec or self.query_vectors(prompt, target, [method]))[method]
        with self._timed("qdrant"):
            return by_sentence(dict(self.store.search(method, vec, depth)), example_sentence)

    def score(self, method: str, prompt: str, target: str, sentence_ids: list[str],
              qvec: dict[str, Vector] | None = None) -> dict[str, float]:
        """Scores of exactly these sentences under one single method (a candidate set)."""
        self._check(method)
        if method == "bm25":
            with self._timed("bm25"):
                return self.bm25.score(f"{prompt} {target}", sentence_ids)
        vec = (qvec or self.query_vectors(prompt, target, [method]))[method]
        examples = [example_id(s) for s in sentence_ids]
        with self._timed("qdrant"):
            hits = dict(self.store.search(method, vec, len(examples), ids=examples, exact=True))
            if isinstance(vec, SparseVector):  # Qdrant leaves out what shares no index with the query: cosine 0
                hits = {e: hits.get(e, 0.0) for e in examples}
            return by_sentence(hits, example_sentence)

    def runs(self, method: Method, prompt: str, target: str, depth: int,
             qvec: dict[str, Vector] | None = None) -> dict[str, dict[str, float]]:
        """Per component, the scores a method ranks by: a single method's top `depth`; for a fusion,
        both components' scores of the union of their top `depth` (the one fusion path)."""
        if not method.is_fusion:
            (name,) = method.components
            return {name: self.retrieve(name, prompt, target, depth, qvec)}
        return fused_parts(method, lambda c: self.retrieve(c, prompt, target, depth, qvec),
                           lambda c, pool: self.score(c, prompt, target, pool, qvec))

    @cached_property
    def corpus(self) -> Corpus:
        """The whole corpus (the bench's candidates and slices); a query reads only `texts`."""
        return self.index.corpus

    def provenance(self, s: Sentence) -> dict[str, Any]:
        """Where a passage lies in its document, with the text around it (nothing for a sentence or short record)."""
        if s.document is None:
            return {}
        before, after = around(s, self.texts.get)
        return {"document": s.document, "span": s.span, "before": before, "after": after}

    def same_prompt(self, prompt: str) -> list[Query]:
        return self.texts.queries_for(prompt)

    def ground_truth(self, same_prompt: list[Query], target: str) -> GroundTruth | None:
        hits = [q for q in same_prompt if match_key(q.target) == match_key(target)]
        if not hits:
            return None
        props = list(dict.fromkeys(p for q in hits for p in q.proponents))
        return GroundTruth(query_ids=[q.id for q in hits], target=hits[0].target, proponents=props)

    # --- one query, end to end ----------------------------------------------------------------

    def query(self, o: TraceOptions) -> QueryResult:
        """One trace (validated options: `ftrace query`'s QueryConfig is one). `method`, `fusion`, `weight`,
        `cascade_k`: None takes the index's default (`resolve`)."""
        self.timings = {}
        with self._timed("total"):
            return self._query(o.prompt, o.target, o.k, *self.resolve(o.method, o.fusion, o.weight, o.cascade_k),
                               o.depth)

    def resolve(self, method: str | None, fusion: Fusion | None, weight: float | None,
                cascade_k: int | None) -> tuple[str, Fusion, float, int]:
        """What a query left out: the method the index's benchmark chose (`ftrace bench --save-default`), with
        its fusion settings when the query asks for that method; else bm25, and sum, 0.5, 20."""
        d = self.index.manifest.query_default
        method = method or (d.method if d else "bm25")
        if (d is not None and parse_method(method, None).components == parse_method(d.method, None).components
                and fusion in (None, d.fusion)):  # the weight was tuned for that fusion kind only
            fusion = d.fusion
            weight = d.weight if weight is None else weight
            cascade_k = cascade_k or d.cascade_k
        return method, fusion or "sum", FUSION_WEIGHT if weight is None else weight, cascade_k or CASCADE_K

    def _query(self, prompt: str, target: str | None, k: int, method: str, fusion: Fusion, weight: float,
               cascade_k: int, depth: int) -> QueryResult:
        m = parse_method(method, self.methods)
        if "bm25" in m.components and (not target or m.components != ("bm25",)):
            self._open_bm25_meanwhile()  # the model loads below: overlap the JVM start with it
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
        top = ranking(scores)[:k]
        shown = self.texts.sentences(s for s, _ in top)
        rows = [Row(rank=r, sentence_id=s, text=shown[s].text, score=sc,
                    scores={p: per_method[p].get(s) for p in per_method},
                    proponent=(s in props) if props is not None else None, **self.provenance(shown[s]))
                for r, (s, sc) in enumerate(top, 1)]
        known = sorted({q.target for q in same}) if truth is None else []
        notes = [f"the corpus knows this prompt with target(s) {known[:3]}, not {target!r}"] if known else []
        limit = self.index.manifest.max_tokens
        if any(c != "bm25" for c in m.components) and self._prompt_cut(prompt, target, limit):
            notes.append(f"the prompt is longer than the index's {limit} tokens: the model saw only its end")
        note = "; ".join(notes) or None
        return QueryResult(prompt=prompt, target=target, target_from=target_from, method=str(m),
                           fusion=fusion if m.is_fusion else None, weight=weight if m.is_fusion else None,
                           rows=rows, ground_truth=truth, note=note)
