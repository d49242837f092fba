"""`ftrace ingest --add MORE`: append a corpus to a complete index, featurised exactly as the index was (the
manifest's model, checkpoints and vector specs, with the whitening and idf statistics fitted when it was built).

The manifest records the addition before anything else is written (`adding`, the index incomplete meanwhile), so an
interrupted addition is finished by the same command: the merged corpus.sqlite is written whole, BM25 takes the
passages it lacks (by id), and the vector store the examples it lacks. Then the addition joins `additions`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ftrace import FtraceError
from ftrace.config import IngestConfig
from ftrace.corpus import CorpusStore
from ftrace.corpus.store import CorpusWriter
from ftrace.features.base import from_specs
from ftrace.index.layout import IndexDir
from ftrace.index.lexical import append_lucene
from ftrace.index.locks import IndexBusyError, clear_progress, served_by, writer
from ftrace.index.manifest import Addition, CorpusInfo, Manifest, ManifestError
from ftrace.ingest.pipeline import store_vectors
from ftrace.model import load_model
from ftrace.model.corpus import store_selection
from ftrace.plumbing import log


def add_corpus(c: IngestConfig) -> Manifest:
    """`ftrace ingest --add`: the addition read (and cut into passages) as the index's corpus was, then appended."""
    index = IndexDir(Path(c.index))
    if served_by(index.path) is not None:
        raise IndexBusyError(f"{index.path}: `ftrace serve` holds this index; stop it before adding to it")
    with writer(index.path):
        m = Manifest.read(index.path)
        size, stride = m.corpus.passages or c.corpus.passages(m.max_tokens)
        sel = c.corpus.model_copy(update={"corpus": c.add, "passage_tokens": size, "stride": stride})
        try:
            addition = store_selection(index.staging_file, sel, m.model.name, m.max_tokens)
            try:
                return _add(c, index, m, addition)
            finally:
                addition.close()
        finally:
            index.staging_file.unlink(missing_ok=True)
            index.merging_file.unlink(missing_ok=True)


def _add(c: IngestConfig, index: IndexDir, m: Manifest, addition: CorpusStore) -> Manifest:
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
    featurizers = list(from_specs(lm, m.vectors, index.state_file).values())
    store = index.open_store()  # an unreachable server refuses here
    held = index.open_texts()
    merged = held
    try:
        if pending is not None:
            log(f"finishing the addition of {pending.source}")
        if pending is None or held.fingerprint() != pending.corpus:
            merged = merge(held, addition, len(m.additions) + 1, index.merging_file, m)
        total = len(merged)  # the addition's rows are the last ones
        if pending is None:
            pending = Addition(source=addition.source, fingerprint=fingerprint, sentences=len(addition),
                               examples=len(addition), queries=addition.query_count(), corpus=merged.fingerprint())
            m.adding, m.complete = pending, False
            m.write(index.path)  # first: from here an interruption is finished by the same command
        if merged is not held:
            os.replace(index.merging_file, index.corpus_file)
            index.legacy_corpus_file.unlink(missing_ok=True)
        append_lucene(index.bm25_dir, [(s.id, s.text) for s in addition.iter_sentences()])
        store_vectors(store, merged, range(total - pending.sentences + 1, total + 1), lm, featurizers,
                      c.model_copy(update={"max_tokens": m.max_tokens}), index.path)
        if m.store.hnsw:
            log("building HNSW (blocking)")
            store.optimize()
        m.corpus = CorpusInfo(source=m.corpus.source, fingerprint=merged.fingerprint(), sentences=total,
                              examples=total, queries=merged.query_count(), passages=m.corpus.passages)
    finally:
        store.close()
        held.close()
        merged.close()
    m.additions.append(pending)
    m.adding, m.complete = None, True
    m.write(index.path)
    clear_progress(index.path)
    log(f"{index.path}: {pending.examples} examples added ({m.corpus.examples} in all)")
    return m


def addition_fingerprint(addition: CorpusStore) -> str:
    """The addition's texts and queries: a resumed addition must be the very same."""
    h = hashlib.sha256(addition.fingerprint().encode())
    for q in addition.queries():
        h.update(q.model_dump_json().encode())
    return h.hexdigest()[:16]


def merge(held: CorpusStore, addition: CorpusStore, number: int, dest: Path, m: Manifest) -> CorpusStore:
    """The index's corpus with the addition's sentences and queries after its own, written to `dest`. A sentence id
    the index holds is refused; a query id it holds gets "~N" (the addition's number): queries are named by line by
    default. Proponents are linked anew (a sentence of either may state a fact of the other's queries)."""
    ids = [s.id for s in addition.iter_sentences()]
    held_ids = set(held.sentences(ids))
    clash = [i for i in ids if i in held_ids]
    if clash:
        raise FtraceError(f"--add {addition.source}: {len(clash)} id(s) the index holds already, e.g. {clash[0]!r}; "
                          "ids must stay unique (give the new records other ids)")
    with CorpusWriter(dest) as w:
        for store in (held, addition):
            for s in store.iter_sentences():
                w.add(s)
        queries = held.queries()
        asked = {q.id for q in queries}
        for q in [*queries, *(q.model_copy(update={"id": f"{q.id}~{number}"}) if q.id in asked else q
                              for q in addition.queries())]:
            w.add_query(q)
        return w.finish(m.corpus.source, m.corpus.passages)
