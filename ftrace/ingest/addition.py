"""`ftrace ingest --add MORE`: append a corpus to a complete index, featurised exactly as the index was (the
manifest's model, checkpoints and vector specs, with the whitening and idf statistics fitted when it was built).

The manifest records the addition before anything else is written (`adding`, the index incomplete meanwhile), so an
interrupted addition is finished by the same command: the merged corpus.jsonl is written whole, BM25 takes the
passages it lacks (by id), and the vector store the examples it lacks. Then the addition joins `additions`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ftrace import FtraceError
from ftrace.config import IngestConfig
from ftrace.corpus import Corpus
from ftrace.features.base import from_specs
from ftrace.index.layout import IndexDir
from ftrace.index.lexical import append_lucene
from ftrace.index.locks import IndexBusyError, clear_progress, served_by, writer
from ftrace.index.manifest import Addition, CorpusInfo, Manifest, ManifestError
from ftrace.index.texts import write_texts
from ftrace.ingest.pipeline import store_vectors
from ftrace.model import load_model
from ftrace.model.corpus import load_selection
from ftrace.plumbing import log


def add_corpus(c: IngestConfig) -> Manifest:
    """`ftrace ingest --add`: the addition read (and cut into passages) as the index's corpus was, then appended."""
    m = Manifest.read(c.index)
    size, stride = m.corpus.passages or c.corpus.passages(m.max_tokens)
    sel = c.corpus.model_copy(update={"corpus": c.add, "passage_tokens": size, "stride": stride})
    return add(c, load_selection(sel, m.model.name, m.max_tokens))


def add(c: IngestConfig, addition: Corpus) -> Manifest:
    index = IndexDir(Path(c.index))
    if served_by(index.path) is not None:
        raise IndexBusyError(f"{index.path}: `ftrace serve` holds this index; stop it before adding to it")
    with writer(index.path):
        m = Manifest.read(index.path)
        pending = m.adding
        if pending is None and not m.complete:
            raise ManifestError(f"{index.path}: ingest did not finish; finish it (`ftrace ingest`) before adding to it")
        fingerprint = addition_fingerprint(addition)
        if pending is not None and pending.fingerprint != fingerprint:
            raise ManifestError(f"{index.path}: the addition of {pending.source} did not finish; run `ftrace ingest "
                                f"--add` with it again first")
        # everything that can refuse, before the index changes: the model and checkpoints as built, the store
        lm = load_model(m.model.name, c.device, m.model.dtype)
        m.model.check_weights(index.path, lm.fingerprint)
        featurizers = list(from_specs(lm, m.vectors, index.path).values())
        corpus = index.corpus
        if pending is None:
            merged = merge(corpus, addition, len(m.additions) + 1)
        else:
            log(f"finishing the addition of {pending.source}")
            merged = corpus if corpus.fingerprint() == pending.corpus else merge(corpus, addition,
                                                                                   len(m.additions) + 1)
        store = index.open_store()
        try:
            if pending is None:
                pending = Addition(source=addition.source, fingerprint=fingerprint,
                                   sentences=len(addition.sentences), examples=len(addition.examples()),
                                   queries=len(addition.queries), corpus=merged.fingerprint())
                m.adding, m.complete = pending, False
                m.write(index.path)  # first: from here an interruption is finished by the same command
            if merged is not corpus:
                write_texts(index.corpus_file, merged)
                (index.path / "corpus.jsonl").unlink(missing_ok=True)  # an index made before corpus.sqlite
            new = {s.id for s in addition.sentences}
            append_lucene(index.bm25_dir, [(s.id, s.text) for s in merged.sentences if s.id in new])
            examples = [e for e in merged.examples() if e.sentence_id in new]
            store_vectors(store, examples, lm, featurizers, c.model_copy(update={"max_tokens": m.max_tokens}),
                          index.path)
            if m.store.hnsw:
                log("building HNSW (blocking)")
                store.optimize()
        finally:
            store.close()
        m.corpus = CorpusInfo(source=m.corpus.source, fingerprint=merged.fingerprint(),
                              sentences=len(merged.sentences), examples=len(merged.examples()),
                              queries=len(merged.queries), passages=m.corpus.passages)
        m.additions.append(pending)
        m.adding, m.complete = None, True
        m.write(index.path)
        clear_progress(index.path)
    log(f"{index.path}: {pending.examples} examples added ({m.corpus.examples} in all)")
    return m


def addition_fingerprint(addition: Corpus) -> str:
    """The addition's texts and queries: a resumed addition must be the very same."""
    h = hashlib.sha256(addition.fingerprint().encode())
    for q in addition.queries:
        h.update(q.model_dump_json().encode())
    return h.hexdigest()[:16]


def merge(corpus: Corpus, addition: Corpus, number: int) -> Corpus:
    """The index's corpus with the addition's sentences and queries after its own. A sentence id the index holds is
    refused; a query id it holds gets "~N" (the addition's number): queries are named by line by default."""
    held = {s.id for s in corpus.sentences}
    clash = [s.id for s in addition.sentences if s.id in held]
    if clash:
        raise FtraceError(f"--add {addition.source}: {len(clash)} id(s) the index holds already, e.g. {clash[0]!r}; "
                          "ids must stay unique (give the new records other ids)")
    asked = {q.id for q in corpus.queries}
    queries = [q.model_copy(update={"id": f"{q.id}~{number}"}) if q.id in asked else q for q in addition.queries]
    return Corpus(source=corpus.source, sentences=[*corpus.sentences, *addition.sentences],
                  queries=[*corpus.queries, *queries], passages=corpus.passages).link_proponents()
