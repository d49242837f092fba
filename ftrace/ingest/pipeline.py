"""`ftrace ingest`: corpus -> BM25 index + per-example vectors in Qdrant, resumable."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from pydantic import BaseModel
from tqdm import tqdm

from ftrace import FtraceError
from ftrace.corpus import Corpus, load_corpus
from ftrace.corpus.loaders import SPLITS
from ftrace.index.layout import IndexDir
from ftrace.index.lexical import B, K1, build_lucene
from ftrace.index.manifest import CorpusInfo, Manifest, ManifestError, ModelInfo, StoreInfo, versions
from ftrace.ingest.embeddings import EmbeddingConfig, EmbeddingFeaturizer
from ftrace.ingest.featurizers import Featurizer, input_embedding_name, load_checkpoints
from ftrace.ingest.gradients import GradientConfig
from ftrace.ingest.tracin import TracInFeaturizer
from ftrace.model import DEFAULT_MODEL, LoadedModel, example_batch, load_model
from ftrace.model.batching import token_lengths


class IngestSettings(BaseModel):
    index: Path
    corpus: str = "sample"
    relations: list[str] | None = None
    splits: list[str] = list(SPLITS)
    limit: int | None = None
    model: str = DEFAULT_MODEL
    embed_layers: list[int] = [0]
    tracin: bool = True
    tracin_layers: list[str] | None = None  # module name patterns; None = the input embedding
    tracin_dim: int = 4096  # per layer block
    tracin_seed: int = 0
    tracin_projection: str = "factored"
    optimizer_state: str | None = None
    whiten: bool = False
    whiten_samples: int = 512
    checkpoints: list[str] | None = None  # gradient checkpoints; None = the model itself
    batch_size: int = 32
    max_length: int = 128
    qdrant: str = "edge"  # edge | local | remote
    qdrant_url: str | None = None
    collection: str = "ftrace"
    float16: bool = True
    hnsw: bool = False


def log(msg: str) -> None:
    print(msg, file=sys.stderr)


def build_featurizers(lm: LoadedModel, s: IngestSettings) -> list[Featurizer]:
    out: list[Featurizer] = [EmbeddingFeaturizer(lm.model, EmbeddingConfig(layers=s.embed_layers))]
    if s.tracin:
        config = GradientConfig(layers=s.tracin_layers or [input_embedding_name(lm.model)], dim=s.tracin_dim,
                                seed=s.tracin_seed, projection=s.tracin_projection,
                                optimizer_state=s.optimizer_state, whiten=s.whiten)
        models, checkpoints = load_checkpoints(lm, s.checkpoints or [lm.name])
        out.append(TracInFeaturizer(models, checkpoints, config, s.whiten_samples if s.whiten else 0))
    return out


def calibration_batches(corpus: Corpus, lm: LoadedModel, s: IngestSettings):
    """A seeded sample of training examples, for fitting whitening."""
    examples = corpus.examples()
    rng = np.random.default_rng(s.tracin_seed)
    pick = sorted(rng.choice(len(examples), size=min(s.whiten_samples, len(examples)), replace=False))
    texts = [examples[i].text for i in pick]
    for i in tqdm(range(0, len(texts), s.batch_size), desc="whitening calibration", unit="batch", leave=False):
        yield example_batch(lm.tokenizer, texts[i:i + s.batch_size], s.max_length)


def plan_manifest(corpus: Corpus, lm: LoadedModel, featurizers: list[Featurizer], s: IngestSettings) -> Manifest:
    return Manifest(
        corpus=CorpusInfo(source=corpus.source, fingerprint=corpus.fingerprint(), sentences=len(corpus.sentences),
                          examples=len(corpus.examples()), queries=len(corpus.queries)),
        model=ModelInfo(name=lm.name, fingerprint=lm.fingerprint, checkpoints=s.checkpoints or [lm.name]),
        vectors={f.name: f.spec() for f in featurizers},
        store=StoreInfo(backend=s.qdrant, collection=s.collection, url=s.qdrant_url, float16=s.float16, hnsw=s.hnsw),
        bm25={"k1": K1, "b": B},
        versions=versions(),
    )


def _prepare(index: IndexDir, planned: Manifest) -> Manifest:
    """Start a new index, or resume one built the same way; refuse anything else untouched."""
    if (index.path / "manifest.json").exists():
        old = Manifest.read(index.path)
        diffs = old.differences(planned)
        if diffs:
            raise ManifestError(f"{index.path}: holds an index built differently ({'; '.join(diffs[:3])}); "
                                "choose another --index or delete this one")
        return old
    if index.path.exists() and any(index.path.iterdir()):
        raise ManifestError(f"{index.path}: directory is not empty and holds no ftrace index; refusing to write into it")
    return planned


def ingest(s: IngestSettings) -> Manifest:
    corpus = load_corpus(s.corpus, s.relations, s.splits, s.limit)
    if s.qdrant == "remote" and not s.qdrant_url:
        raise FtraceError("--qdrant remote needs --qdrant-url")
    log(f"corpus: {len(corpus.sentences)} sentences, {len(corpus.queries)} queries ({corpus.source})")
    lm = load_model(s.model)
    featurizers = build_featurizers(lm, s)
    index = IndexDir(Path(s.index))
    manifest = _prepare(index, plan_manifest(corpus, lm, featurizers, s))
    if manifest.complete:
        log(f"{index.path}: already complete; nothing to do")
        return manifest
    store = index.open_store(manifest)  # before writing anything: an unreachable server fails here
    try:
        index.path.mkdir(parents=True, exist_ok=True)
        if not index.corpus_file.exists():
            corpus.write_jsonl(index.corpus_file)
        manifest.write(index.path)
        if not index.bm25_dir.exists():
            build_lucene(index.bm25_dir, ((x.id, x.text) for x in corpus.sentences), total=len(corpus.sentences))
        if not store.exists():
            store.create({f.name: f.size for f in featurizers}, float16=s.float16)
        for f in featurizers:
            if getattr(f, "needs_fit", False):
                f.fit(lambda: calibration_batches(corpus, lm, s), index.path)
        _store_vectors(store, corpus, lm, featurizers, s)
        if s.hnsw:
            log("building HNSW (blocking)")
            store.optimize()
        manifest.complete = True
        manifest.write(index.path)
    finally:
        store.close()
    log(f"{index.path}: {manifest.corpus.examples} examples indexed ({', '.join(manifest.vectors)} + bm25)")
    return manifest


def _store_vectors(store, corpus: Corpus, lm: LoadedModel, featurizers: list[Featurizer], s: IngestSettings) -> None:
    examples = corpus.examples()
    done: set[str] = set()
    for i in range(0, len(examples), 1000):
        done |= store.present([e.id for e in examples[i:i + 1000]])
    todo = [e for e in examples if e.id not in done]
    if done:
        log(f"resuming: {len(done)} examples already stored, {len(todo)} to go")
    # Similar lengths together: less padding, same vectors (padding does not change an example's vector).
    lengths = token_lengths(lm.tokenizer, [e.text for e in todo]) if todo else []
    todo = [e for _, e in sorted(zip(lengths, todo, strict=True), key=lambda p: p[0])]
    with tqdm(total=len(todo), desc="vectors", unit="ex") as bar:
        for i in range(0, len(todo), s.batch_size):
            chunk = todo[i:i + s.batch_size]
            batch = example_batch(lm.tokenizer, [e.text for e in chunk], s.max_length)
            vectors = {f.name: f.vectors(batch) for f in featurizers}
            store.upsert([e.id for e in chunk], vectors,
                         [{"example_id": e.id, "sentence_id": e.sentence_id} for e in chunk])
            bar.update(len(chunk))
