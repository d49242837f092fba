"""An index directory, its paths and what it holds now. Its names (and what each file is) are in files.py. While a
sharded ingest runs, shards/I-of-N/ holds each shard's staging directory: its manifest and, for the in-directory back
ends, its own store (one writer each), merged into the index's by the final ingest."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ftrace import FtraceError
from ftrace.corpus import Corpus, CorpusStore
from ftrace.corpus.loaders import store_records
from ftrace.index import files
from ftrace.index.lexical import LuceneBM25
from ftrace.index.manifest import Manifest
from ftrace.index.vectors import VectorStore, open_store


@dataclass
class IndexDir:
    path: Path
    # where files.py's names lie in this index (what each holds: files.py)
    corpus_file: Path = field(init=False)  # the texts (ftrace.corpus.store)
    legacy_corpus_file: Path = field(init=False)  # an index made before corpus.sqlite holds its corpus here
    merging_file: Path = field(init=False)  # `ingest --add`'s corpus, renamed to corpus_file once merged
    staging_file: Path = field(init=False)  # an ingest's selection, renamed to corpus_file once accepted
    bm25_dir: Path = field(init=False)
    shards_dir: Path = field(init=False)
    train_dir: Path = field(init=False)  # `ftrace train --index`'s run, beside the index's content

    def __post_init__(self) -> None:
        p = self.path = Path(self.path)
        self.corpus_file, self.legacy_corpus_file = p / files.CORPUS, p / files.LEGACY_CORPUS
        self.merging_file, self.staging_file = p / files.MERGING, p / files.STAGING
        self.bm25_dir, self.shards_dir, self.train_dir = p / files.BM25, p / files.SHARDS, p / files.TRAIN

    def state_file(self, vector: str, part: int = 0) -> Path:
        """Where the featurizer of `vector` keeps its fitted state (part `part`: a checkpoint's whitening)."""
        return self.path / files.feature_state(vector, part)

    def shard(self, i: int, n: int) -> IndexDir:
        """The staging directory of shard I of N."""
        return IndexDir(self.shards_dir / files.SHARD.format(i=i, n=n))

    def shards(self) -> dict[tuple[int, int], IndexDir]:
        """The staging directories present, by (I, N)."""
        out = {}
        for p in sorted(self.shards_dir.glob(files.ANY_SHARD)) if self.shards_dir.is_dir() else []:
            if (numbers := files.shard_of(p.name)) is not None:
                out[numbers] = IndexDir(p)
        return out

    @cached_property
    def manifest(self) -> Manifest:
        return Manifest.read(self.path)

    @cached_property
    def texts(self) -> CorpusStore:
        """The sentences and queries, read by id, prompt and row."""
        return self.open_texts()

    def open_texts(self) -> CorpusStore:
        """`texts`, opened anew (for its caller to close)."""
        source, passages = self.manifest.corpus.source, self.manifest.corpus.passages
        if self.corpus_file.exists():
            return CorpusStore.open(self.corpus_file, source, passages)
        # an index from before corpus.sqlite: its corpus.jsonl (a query line lists every proponent: no cap)
        return CorpusStore(store_records(None, self.legacy_corpus_file, source, own=True).db, source, passages)

    @cached_property
    def corpus(self) -> Corpus:
        """The whole corpus (bench, train): queries read what they need from `texts`."""
        return self.texts.corpus()

    def open_store(self, manifest: Manifest | None = None) -> VectorStore:
        s = (manifest or self.manifest).store
        return open_store(s.backend, self.path, s.collection, s.url)

    def open_bm25(self) -> LuceneBM25:
        return LuceneBM25(self.bm25_dir, **(self.manifest.bm25 or {}))

    def status(self, store: VectorStore | None = None, bm25: LuceneBM25 | None = None) -> dict:
        """What the index holds now: stored points (each with every vector), BM25 documents,
        whether ingest completed, and the bytes on disk (vectors in a server are not counted).
        `store`, `bm25`: ones this process holds open already (a server's), else opened here."""
        m = self.manifest
        out: dict = {"complete": m.complete, "examples_expected": m.corpus.examples,
                     "sentences_expected": m.corpus.sentences}
        try:
            opened = store if store is not None else self.open_store()
            try:
                out["points"] = opened.count() if opened.exists() else 0
            finally:
                if store is None:
                    opened.close()
        except FtraceError as e:
            out["points"] = f"unavailable ({e})"
        except Exception as e:  # e.g. Qdrant Edge's lock while an ingest writes
            out["points"] = f"unavailable ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        if bm25 is not None:
            out["bm25_documents"] = bm25.count()
        elif self.bm25_dir.is_dir():
            reader = self.open_bm25()
            try:
                out["bm25_documents"] = reader.count()
            finally:
                reader.close()
        else:
            out["bm25_documents"] = 0
        shards = self.shards()
        if shards:  # a sharded ingest in progress: which shards have finished
            out["shards"] = {f"{i}/{n}": (("complete" if Manifest.read(d.path).complete else "incomplete")
                                          if (d.path / files.MANIFEST).exists() else "starting")
                             for (i, n), d in shards.items()}
        # `ftrace train --index`'s checkpoints and `ftrace bench`'s results live beside it, not in it
        outside = {self.path / name for name in files.OUTSIDE}
        # allocated, as `du -s` counts (files and directories): Qdrant preallocates sparse files far larger than
        # what they hold
        out["bytes_on_disk"] = sum(p.lstat().st_blocks * 512 for p in [self.path, *self.path.rglob("*")]
                                   if p not in outside and not outside & set(p.parents))
        return out
