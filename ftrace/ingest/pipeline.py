"""`ftrace ingest`: corpus -> BM25 index + per-example vectors in Qdrant, resumable; with --shard, one
of N processes featurising 1/N of the examples (shards.py), finished by a final ingest."""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ftrace import FtraceError
from ftrace.config import SQUARE_FROM, IngestConfig
from ftrace.corpus import Corpus, CorpusStore, Example, write_corpus
from ftrace.corpus.records import example_id
from ftrace.features.base import Featurizer, input_embedding_name, load_checkpoints
from ftrace.features.embedding import EmbeddingFeaturizer
from ftrace.features.gradients import TracInFeaturizer
from ftrace.features.gradients.whitening import whitening_queries
from ftrace.index.files import LOCK_FILES, MANIFEST
from ftrace.index.layout import IndexDir
from ftrace.index.lexical import K1, B, build_lucene
from ftrace.index.locks import clear_progress, exclusive, reading, record_progress, writer
from ftrace.index.manifest import CorpusInfo, Manifest, ManifestError, ModelInfo, versions
from ftrace.index.vectors import VectorStore
from ftrace.ingest import shards
from ftrace.model import LoadedModel, load_model
from ftrace.model.batching import LossBatch, budget_batches, query_batch, token_lengths
from ftrace.model.corpus import store_selection
from ftrace.model.objective import Objective, index_examples
from ftrace.plumbing import describe_differences, log, release_freed_memory
from ftrace.runs import TracedRun, traced_run

PLAN_ROWS = 1000  # rows read (and tokenised, and looked up in the store) at a time while planning
TRIM_EVERY = 32  # batches between handing freed heap memory back (about 0.2 s each: well under 1% of the time)


def checkpoint_names(lm: LoadedModel, c: IngestConfig, run: TracedRun | None) -> list[str]:
    """The models gradients are taken at: a training run's, the --checkpoint list, or the model."""
    return [str(p) for p in run.checkpoints] if run else c.tracin.checkpoints or [lm.name]


def build_featurizers(lm: LoadedModel, c: IngestConfig, run: TracedRun | None) -> list[Featurizer]:
    out: list[Featurizer] = [EmbeddingFeaturizer(lm.model, c.embed)]
    t = c.tracin
    if t.enabled:
        gradient = t.gradient(input_embedding_name(lm.model), run.example_loss if run else None)
        models, checkpoints = load_checkpoints(lm, checkpoint_names(lm, c, run))
        if run and t.checkpoint_optimizer:
            if t.optimizer_state:
                raise FtraceError("--optimizer-state and --checkpoint-optimizer: a training run's checkpoints bring "
                                  "their own second moments; give --no-checkpoint-optimizer to use one file")
            for entry, moments in zip(checkpoints, run.moments, strict=True):
                if moments is None:
                    raise FtraceError(f"--train-run: {entry['name']} has no saved second moments; "
                                      "give --no-checkpoint-optimizer")
                entry["optimizer_state"] = str(moments)
        out.append(TracInFeaturizer(models, checkpoints, gradient, t.whiten_samples if t.whiten else 0,
                                    t.whiten_queries, t.whiten_query_mix))
    return out


def calibration_batches(texts: CorpusStore, lm: LoadedModel, c: IngestConfig, n: int, seed: int,
                        loss: str, queries: bool = False) -> Iterator[LossBatch]:
    """A sample of n training examples drawn with `seed`, under `loss`, for fitting what a featurizer fits
    (`Featurizer.fit`: whitening, idf pooling); with `queries`, n of the corpus's queries (`whitening_queries`)
    under the query loss."""
    if queries:
        chosen_queries = whitening_queries(texts.queries(), n, seed)
        if not chosen_queries:  # refused before any work (_staged); a tokenizer called with no text raises
            return
        lengths = token_lengths(lm.tokenizer, [f"{q.prompt} {q.target}" for q in chosen_queries])
        for part in tqdm(batch_plan(lengths, c), desc="calibration queries", unit="batch", leave=False):
            picked = chosen_queries[part]
            yield query_batch(lm.tokenizer, [q.prompt for q in picked], [q.target for q in picked], c.max_tokens)
        return
    total = len(texts)
    if not total:
        return
    rng = np.random.default_rng(seed)
    chosen = index_examples(texts.at(sorted(rng.choice(total, size=min(n, total), replace=False) + 1)))
    parts = batch_plan(token_lengths(lm.tokenizer, [e.text for e in chosen]), c)
    objective = Objective(loss, lm.tokenizer, c.max_tokens)
    for part in tqdm(parts, desc="calibration sample", unit="batch", leave=False):
        yield objective.batch(chosen[part])[0]


def fit_featurizers(featurizers: list[Featurizer], texts: CorpusStore, lm: LoadedModel, c: IngestConfig,
                    index: IndexDir) -> None:
    """Fit what each featurizer fits (whitening, idf pooling) on its calibration sample, saving it in the index
    (or loading what an interrupted ingest saved there)."""
    for f in featurizers:
        f.fit(functools.partial(calibration_batches, texts, lm, c, loss=f.example_loss),
              functools.partial(index.state_file, f.name))


def batch_plan(lengths: list[int], c: IngestConfig) -> list[slice]:
    """At most --batch-size examples, within the --batch-tokens budget, and fewer past SQUARE_FROM tokens (lengths
    as cut by --max-tokens)."""
    return budget_batches([min(n, c.max_tokens) for n in lengths], c.batch_size, c.batch_tokens, SQUARE_FROM)


def plan_manifest(texts: CorpusStore, lm: LoadedModel, featurizers: list[Featurizer], c: IngestConfig,
                  run: TracedRun | None) -> Manifest:
    return Manifest(
        corpus=CorpusInfo(source=texts.source, fingerprint=texts.fingerprint(), sentences=len(texts),
                          examples=len(texts), queries=texts.query_count(), passages=texts.passages),
        model=ModelInfo(name=lm.name, fingerprint=lm.fingerprint,
                        checkpoints=checkpoint_names(lm, c, run),
                        base=run.base if run else None, base_fingerprint=run.base_fingerprint if run else None,
                        train_dir=str(run.train_dir) if run else None, dtype=c.dtype),
        vectors={f.name: f.spec() for f in featurizers},
        store=c.store,
        bm25={"k1": K1, "b": B},
        versions=versions(),
        max_tokens=c.max_tokens,
    )


def _prepare(index: IndexDir, planned: Manifest, fresh: bool = True) -> Manifest:
    """Start a new index, or resume one built the same way; refuse anything else untouched (and,
    with `fresh`, a directory holding anything but locks and shards)."""
    if (index.path / MANIFEST).exists():
        old = Manifest.read(index.path)
        diffs = old.differences(planned)
        if diffs:
            raise ManifestError(f"{index.path}: holds an index built differently ({describe_differences(diffs)}); "
                                "choose another --index or delete this one")
        if old.adding is not None:
            raise ManifestError(f"{index.path}: the addition of {old.adding.source} did not finish; finish it with "
                                "`ftrace ingest --add` and that corpus")
        return old
    if fresh:
        refuse_foreign(index)
    return planned


def refuse_foreign(index: IndexDir) -> None:
    """Refuse a directory that holds anything but an index (or the bookkeeping of one being started)."""
    if (not (index.path / MANIFEST).exists() and index.path.exists()
            and any(p.name not in (*LOCK_FILES, index.shards_dir.name, index.staging_file.name)
                    for p in index.path.iterdir())):
        raise ManifestError(f"{index.path}: directory is not empty and holds no ftrace index; "
                            "refusing to write into it")


def ingest(c: IngestConfig, corpus: Corpus | None = None) -> Manifest:
    """Build or resume the index `c` describes; `corpus`: its corpus selection, when already loaded."""
    run = traced_run(c.tracin.train_dir, c.tracin.select) if c.tracin.train_dir else None
    if run and c.model not in (None, str(run.final), run.base):
        raise FtraceError(f"--model {c.model}: with --train-run the model is the run's final checkpoint "
                          f"({run.final}); leave --model out")
    index = IndexDir(Path(c.index))
    if c.shard_of is None:
        with writer(index.path):  # a second ingest is refused here, at once, before the corpus and model load
            return _staged(c, corpus, run, index, index)
    i, n = c.shard_of
    reading(index.path)  # refused while a plain or final ingest writes the index
    shards.check_layout(index, n)
    with writer(index.shard(i, n).path):  # one process per shard; shards run side by side
        return _staged(c, corpus, run, index, index.shard(i, n))


def _staged(c: IngestConfig, corpus: Corpus | None, run: TracedRun | None, index: IndexDir,
            target: IndexDir) -> Manifest:
    """Read the corpus selection into `target`'s staging store (records streamed: memory bounded by a batch, not by
    the corpus), then build from it."""
    refuse_foreign(index)  # before a copy of the corpus is written into it
    staging = target.staging_file
    timings: dict[str, float] = {}
    texts = None
    try:
        with timed(timings, "corpus_s"):
            if corpus is None:
                texts = store_selection(staging, c.corpus, c.model or (run.base if run else None), c.max_tokens)
            else:
                texts = write_corpus(staging, corpus)
        objects = texts.has_objects()
        asked = c.tracin.example_loss or (run.example_loss if run else None)  # not an existing index's own
        c = resolve_defaults(c, run, objects)
        if c.tracin.enabled and asked == "object" and not objects:
            raise FtraceError(f"--example-loss object: no sentence of {texts.source} states a fact whose object "
                              "appears in its text")
        log(f"corpus: {len(texts)} sentences, {texts.query_count()} queries ({texts.source})")
        held = c.tracin.whiten_queries if c.tracin.enabled else 0  # (IngestConfig: only with --whiten)
        if held and not texts.query_count():
            raise FtraceError(f"--whiten-queries {held}: {texts.source} has no queries to fit the whitening on")
        if held >= texts.query_count() > 0:
            log(f"--whiten-queries {held}: every one of the corpus's {texts.query_count()} queries goes into the "
                "whitening, so `ftrace bench` will have none left to draw")
        return _build(c, texts, run, index, target, timings)
    finally:
        if texts is not None:
            texts.close()
        staging.unlink(missing_ok=True)  # renamed into the index by then, or (a bad corpus) left nothing behind


def resolve_defaults(c: IngestConfig, run: TracedRun | None, objects: bool = True) -> IngestConfig:
    """`c` with what its defaults leave open decided: the gradients' example loss (`TracInConfig.loss_for`:
    --example-loss, an existing index's, the training run's, the default; `objects`: whether the corpus states any),
    and the embed pooling (--embed-pooling, else an existing index's own: re-running the command that built an index
    resumes it rather than being refused as different). With a run, say which checkpoints and loss the gradients use."""
    t = c.tracin
    built = Manifest.read(c.index).vectors if (Path(c.index) / MANIFEST).exists() else {}
    index_loss = built.get("tracin", {}).get("config", {}).get("example_loss")
    embed = c.embed
    if "pooling" not in embed.model_fields_set and "embed" in built:
        embed = embed.model_copy(update={"pooling": built["embed"].get("pooling", "mean")})
    loss = t.loss_for(run.example_loss if run else None, index_loss, objects)
    if run and t.enabled:
        steps = ", ".join(p.name for p in run.checkpoints)
        source = "--example-loss" if t.example_loss else "the index's" if index_loss else "the run's"
        log(f"--train-run {run.train_dir}: gradients at {steps} (--checkpoint-select {t.select}), example loss "
            f"{loss} ({source}); answers and embeddings from {run.final.name}")
        if loss != run.example_loss:
            log(f"note: the run trained on the {run.example_loss} loss; at its fitted checkpoints a gradient under "
                f"the {loss} loss can point away from what it learned")
    return c.model_copy(update={"tracin": t.model_copy(update={"example_loss": loss}), "embed": embed})  # all valid


def _build(c: IngestConfig, texts: CorpusStore, run: TracedRun | None, index: IndexDir, target: IndexDir,
           timings: dict[str, float]) -> Manifest:
    """Ingest `texts` (the staged corpus) into `index`; the vectors go to `target`'s store (a shard's staging
    directory, or the index). `timings`: seconds per stage so far, completed in the manifest."""
    lm = load_model(str(run.final) if run else c.model, c.device, c.dtype)
    featurizers = build_featurizers(lm, c, run)
    planned = plan_manifest(texts, lm, featurizers, c, run)
    if _prepare(index, planned).complete:
        log(f"{index.path}: already complete; nothing to do")
        shards.remove_staging(index)  # left by a final ingest stopped after it finished
        return Manifest.read(index.path)
    if target is not index:
        _prepare(target, planned)
    store = target.open_store(planned)  # before writing anything: an unreachable server fails here
    try:
        with exclusive(index.path):  # what shards share, prepared by whichever comes first
            manifest = _prepare(index, planned, fresh=False)
            manifest.write(index.path)  # first: other shards then find an index here, not a foreign directory
            if not index.corpus_file.exists():  # else the index's own, the same texts (`_prepare`): left as it is
                os.replace(target.staging_file, index.corpus_file)  # read on from its new name
                index.legacy_corpus_file.unlink(missing_ok=True)
            fit_featurizers(featurizers, texts, lm, c, index)  # fitted once, used by every shard
        if (c.shard_of or (0, 1))[0] == 0 and not index.bm25_dir.exists():
            with timed(timings, "bm25_s"):
                build_lucene(index.bm25_dir, ((s.id, s.text) for s in texts.iter_sentences()), total=len(texts))
        if target is not index:
            return _build_shard(c, texts, lm, featurizers, target, store, planned)
        ensure_store(store, featurizers, c)
        with timed(timings, "vectors_s"):
            if index.shards():
                shards.merge(index, store, manifest, (example_id(s.id) for s in texts.iter_sentences()))
            else:
                timings["vectors"] = store_vectors(store, texts, range(1, len(texts) + 1), lm, featurizers, c,
                                                   index.path)
        if c.store.hnsw:
            log("building HNSW (blocking)")
            with timed(timings, "hnsw_s"):
                store.optimize()
        manifest.complete = True
        manifest.timings = timings
        manifest.write(index.path)
        clear_progress(index.path)
        shards.remove_staging(index)
    finally:
        store.close()
    log(f"{index.path}: {manifest.corpus.examples} examples indexed ({', '.join(manifest.vectors)} + bm25)")
    return manifest


def ensure_store(store: VectorStore, featurizers: list[Featurizer], c: IngestConfig) -> None:
    """Create the collection the featurizers' vectors go to, unless it is there already."""
    if not store.exists():
        store.create({f.name: f.size for f in featurizers}, c.store.float16, c.store.shard_number,
                     c.store.replication_factor, sparse={f.name for f in featurizers if f.sparse})


def _build_shard(c: IngestConfig, texts: CorpusStore, lm: LoadedModel, featurizers: list[Featurizer],
                 target: IndexDir, store: VectorStore, planned: Manifest) -> Manifest:
    """Store shard I of N's vectors in its staging store; its own manifest says when it is complete, and its
    own progress file how far it got (a reader refused by the index sums the shards')."""
    i, n = c.shard_of or (0, 1)
    manifest = _prepare(target, planned, fresh=False)
    if not manifest.complete:
        manifest.write(target.path)
        ensure_store(store, featurizers, c)
        store_vectors(store, texts, shards.rows(len(texts), i, n), lm, featurizers, c, target.path)
        manifest.complete = True
        manifest.write(target.path)
        clear_progress(target.path)
    log(f"shard {i}/{n} complete; once every shard is, `ftrace ingest` without --shard finishes {c.index}")
    return manifest


def length_order(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    """Positions in the order ingest featurises them: by token length, ties in corpus order (similar lengths
    together, so batches carry little padding; padding does not change a vector, up to rounding)."""
    return np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")


def ingest_order(tokenizer, examples: list[Example]) -> tuple[list[Example], list[int]]:
    """Examples held in memory in the order ingest featurises them (`length_order`), with their token counts."""
    lengths = token_lengths(tokenizer, [e.text for e in examples]) if examples else []
    order = length_order(lengths)
    return [examples[i] for i in order], [lengths[i] for i in order]


def store_vectors(store: VectorStore, texts: CorpusStore, rows: Sequence[int], lm: LoadedModel,
                  featurizers: list[Featurizer], c: IngestConfig, progress_dir: Path) -> int:
    """Store the vectors of the examples of corpus rows `rows` not stored yet, recording progress in `progress_dir`
    (the directory the writer holds: the index, or a shard's staging directory); how many it featurised. The rows
    are read a batch at a time: memory holds a few numbers per row, not the corpus.

    The batches are always those of the uninterrupted plan over all `rows` (sorted by token length, cut by the batch
    budget), and a batch with anything left to store is featurised whole: a resumed ingest computes every vector in
    the very batch, of the very shape, a clean one does, so its vectors are bit-identical on any machine when
    --batch-size, --batch-tokens and --threads are those of the first run (BLAS kernels may round differently for
    other batch shapes and thread counts; none of the three is part of the index's identity)."""
    at = np.asarray(rows, dtype=np.int64)
    stored = np.zeros(len(at), dtype=bool)
    lengths = np.zeros(len(at), dtype=np.int64)
    with tqdm(total=len(at), desc="planning", unit="ex", leave=False) as bar:
        for k in range(0, len(at), PLAN_ROWS):
            sentences = texts.at(at[k:k + PLAN_ROWS])
            ids = [example_id(s.id) for s in sentences]
            present = store.present(ids)
            stored[k:k + len(ids)] = [i in present for i in ids]
            lengths[k:k + len(ids)] = token_lengths(lm.tokenizer, [s.text for s in sentences])
            bar.update(len(ids))
    done = int(stored.sum())
    record_progress(progress_dir, done, len(at))
    order = length_order(lengths)
    plan = [part for part in batch_plan(lengths[order].tolist(), c) if not stored[order[part]].all()]
    todo = sum(p.stop - p.start for p in plan)
    if done:
        log(f"resuming: {done} examples already stored; {todo} to featurise in {len(plan)} batches of the plan "
            "(a batch partly stored is redone whole)")
    long = int((lengths > c.max_tokens).sum())
    if long:
        log(f"{long} sentences longer than {c.max_tokens} tokens were truncated to their first {c.max_tokens} "
            "(--max-tokens)")
    # each featurizer's example loss: gradients may score object spans, embeddings read whole sentences
    loss_of = {f.name: f.example_loss for f in featurizers}
    objectives = {loss: Objective(loss, lm.tokenizer, c.max_tokens) for loss in sorted(set(loss_of.values()))}
    fallbacks = 0
    n = 0
    with tqdm(total=todo, desc="vectors", unit="ex") as bar:
        for part in plan:
            chunk = index_examples(texts.at(at[order[part]]))
            batches = {}
            for loss, objective in objectives.items():
                batches[loss], fell_back = objective.batch(chunk)
                fallbacks += fell_back
            vectors = {f.name: f.vectors(batches[loss_of[f.name]]) for f in featurizers}
            store.upsert([e.id for e in chunk], vectors,
                         [{"example_id": e.id, "sentence_id": e.sentence_id} for e in chunk])
            done += int((~stored[order[part]]).sum())
            record_progress(progress_dir, done, len(at))  # for readers refused meanwhile
            bar.update(len(chunk))
            if (n := n + 1) % TRIM_EVERY == 0:
                release_freed_memory()
    if "object" in loss_of.values():
        log(f"--example-loss object: {fallbacks} of the {todo} examples featurised in this run have no object "
            "span (no fact's object in the text); their gradients use the whole-sentence loss")
    return todo


@contextlib.contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[key] = round(time.perf_counter() - start, 1)
