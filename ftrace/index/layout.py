"""An index directory: manifest.json, corpus.jsonl (the sentences and queries it was built from),
bm25/ (Lucene), and qdrant/ (Qdrant Edge) or qdrant-local/ (qdrant-client local mode)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ftrace.corpus import Corpus, load_jsonl
from ftrace.index.lexical import LuceneBM25
from ftrace.index.manifest import Manifest
from ftrace.index.vectors import VectorStore, open_store


@dataclass
class IndexDir:
    path: Path

    @property
    def corpus_file(self) -> Path:
        return self.path / "corpus.jsonl"

    @property
    def bm25_dir(self) -> Path:
        return self.path / "bm25"

    @cached_property
    def manifest(self) -> Manifest:
        return Manifest.read(self.path)

    @cached_property
    def corpus(self) -> Corpus:
        return load_jsonl(self.corpus_file, source=self.manifest.corpus.source)

    def open_store(self, manifest: Manifest | None = None) -> VectorStore:
        s = (manifest or self.manifest).store
        return open_store(s.backend, self.path, s.collection, s.url)

    def open_bm25(self) -> LuceneBM25:
        return LuceneBM25(self.bm25_dir, **(self.manifest.bm25 or {}))
