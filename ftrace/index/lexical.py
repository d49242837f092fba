"""BM25 over a Lucene index built with Pyserini's Anserini classes.

Search and candidate scoring run the same Lucene query (Anserini's bag-of-words query over the
`contents` field, Anserini's default English analyzer, BM25 k1/b), so a sentence's score is the same
whether it was retrieved or scored as a candidate. Candidate sets are scored in one Lucene call: the
query plus a non-scoring `id IN (...)` filter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tqdm import tqdm

from ftrace import FtraceError
from ftrace.index.jvm import autoclass, jstring_ref
from ftrace.plumbing import replacing_dir

K1, B = 0.9, 0.4  # Anserini's defaults


class LexicalError(FtraceError):
    pass


def build_lucene(path: Path, docs: Iterable[tuple[str, str]], total: int | None = None, threads: int = 2) -> None:
    """Index (id, text) pairs into `path`, atomically: built beside it, then put in its place (`replacing_dir`)."""
    with replacing_dir(Path(path)) as tmp:
        indexer = autoclass("io.anserini.index.SimpleIndexer")(str(tmp), False, threads)
        doc = autoclass("io.anserini.collection.JsonCollection$Document")
        try:
            for doc_id, text in tqdm(docs, total=total, desc="bm25 index", unit="doc", leave=False):
                indexer.addJsonDocument(doc.fromFields(doc_id, text))
        finally:
            indexer.close()


def append_lucene(path: Path, docs: Sequence[tuple[str, str]], threads: int = 2) -> None:
    """Add to the index in `path` the (id, text) pairs whose id it lacks (so that an interrupted append, run again,
    adds each once: Lucene commits the additions at close, all or none)."""
    reader = LuceneBM25(path)
    try:
        held = reader.present([i for i, _ in docs])
    finally:
        reader.close()
    todo = [(i, t) for i, t in docs if i not in held]
    if not todo:
        return
    indexer = autoclass("io.anserini.index.SimpleIndexer")(str(path), True, threads)  # True: append
    doc = autoclass("io.anserini.collection.JsonCollection$Document")
    try:
        for doc_id, text in tqdm(todo, desc="bm25 index", unit="doc", leave=False):
            indexer.addJsonDocument(doc.fromFields(doc_id, text))
    finally:
        indexer.close()


class LuceneBM25:
    def __init__(self, path: Path, k1: float = K1, b: float = B):
        path = Path(path)
        if not path.is_dir():
            raise LexicalError(f"{path}: no Lucene index here")
        self.reader = autoclass("io.anserini.index.IndexReaderUtils").getReader(str(path))
        self.searcher = autoclass("org.apache.lucene.search.IndexSearcher")(self.reader)
        self.searcher.setSimilarity(autoclass("org.apache.lucene.search.similarities.BM25Similarity")(k1, b))
        self.fields = self.searcher.storedFields()
        self.analyzer = autoclass("io.anserini.analysis.DefaultEnglishAnalyzer").newDefaultInstance()
        self.generator = autoclass("io.anserini.search.query.BagOfWordsQueryGenerator")()

    def _query(self, text: str):
        return self.generator.buildQuery("contents", self.analyzer, text)

    def _run(self, query, k: int) -> list[tuple[str, float]]:
        hits = self.searcher.search(query, k).scoreDocs
        return [(self.fields.document(h.doc).get("id"), float(h.score)) for h in hits]

    def search(self, text: str, k: int) -> list[tuple[str, float]]:
        """Top-k (sentence id, BM25 score)."""
        return self._run(self._query(text), k)

    @staticmethod
    def _ids(ids: Sequence[str]):
        """A Lucene query matching the documents of these ids."""
        terms = autoclass("java.util.ArrayList")()
        for i in ids:
            terms.add(jstring_ref(i))
        return autoclass("org.apache.lucene.search.TermInSetQuery")("id", terms)

    def score(self, text: str, ids: Sequence[str]) -> dict[str, float]:
        """BM25 score of every listed sentence (0 where no query term occurs), in one Lucene call."""
        if not ids:
            return {}
        occur = autoclass("org.apache.lucene.search.BooleanClause$Occur")
        q = autoclass("org.apache.lucene.search.BooleanQuery$Builder")()
        q.add(self._query(text), occur.MUST)
        q.add(self._ids(ids), occur.FILTER)
        scores = dict.fromkeys(ids, 0.0)
        scores.update(self._run(q.build(), len(ids)))
        return scores

    def present(self, ids: Sequence[str], chunk: int = 1024) -> set[str]:
        """Which of `ids` the index holds."""
        out: set[str] = set()
        for start in range(0, len(ids), chunk):
            out.update(i for i, _ in self._run(self._ids(ids[start:start + chunk]), chunk))
        return out

    def count(self) -> int:
        return int(self.reader.numDocs())

    def close(self) -> None:
        self.reader.close()
