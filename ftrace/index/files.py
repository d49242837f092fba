"""Every name an index directory holds, in one place (`IndexDir`, layout.py, resolves them to paths).

    manifest.json            what made the index and how far its ingest got (manifest.py)
    corpus.sqlite            the sentences and queries (ftrace.corpus.store); corpus.jsonl in an index made before it
    corpus.sqlite.staging    the selection an ingest reads first, renamed to corpus.sqlite once the manifest accepts it
    corpus.sqlite.merging    `ftrace ingest --add`'s corpus, the index's with the addition's after it
    bm25/                    Lucene (lexical.py)
    qdrant/, qdrant-local/   the vectors: Qdrant Edge's shard or qdrant-client's local mode (vectors.py)
    embed-state.npz          the embed vector's fitted state (idf pooling)
    tracin-state-<i>.pt      the tracin vector's fitted state at checkpoint i (whitening)
    shards/<i>-of-<n>/       a sharded ingest's staging directories (each laid out as an index)
    config.json              the last `ftrace ingest` run's record (named by ftrace.runrecord.RECORD, which every
                             command's run record shares)
    .write.lock, ...         bookkeeping of the processes using the index (locks.py): LOCK_FILES
    train/, bench/           beside the index's content: `ftrace train --index`'s run, `ftrace bench`'s results
                             (bench/ named by its config, ftrace.config.bench, which no index module may import)
"""

from ftrace.config.bench import BENCH_DIR

MANIFEST = "manifest.json"
CORPUS = "corpus.sqlite"
LEGACY_CORPUS = "corpus.jsonl"
STAGING = CORPUS + ".staging"
MERGING = CORPUS + ".merging"
BM25 = "bm25"
STORES = {"edge": "qdrant", "local": "qdrant-local"}  # by back end; a remote one keeps nothing here
FEATURE_STATES = {"embed": "embed-state.npz", "tracin": "tracin-state-{part}.pt"}  # by vector name
SHARDS = "shards"
SHARD = "{i}-of-{n}"  # under SHARDS
ANY_SHARD = SHARD.format(i="*", n="*")
WRITE_LOCK, STORE_LOCK, SERVE_LOCK, SETUP_LOCK = ".write.lock", ".store.lock", ".serve.lock", ".setup.lock"
PROGRESS = ".progress.json"
LOCK_FILES = (WRITE_LOCK, STORE_LOCK, SERVE_LOCK, SETUP_LOCK, PROGRESS)  # bookkeeping, not index content
TRAIN = "train"
OUTSIDE = (TRAIN, BENCH_DIR)


def feature_state(vector: str, part: int = 0) -> str:
    """The file a featurizer's fitted state (part `part`, e.g. a checkpoint) is kept in."""
    return FEATURE_STATES.get(vector, vector + "-state-{part}").format(part=part)


def shard_of(name: str) -> tuple[int, int] | None:
    """(I, N) of a shard's staging directory named SHARD, else None."""
    i, _, n = name.partition(SHARD.format(i="", n=""))
    return (int(i), int(n)) if i.isdigit() and n.isdigit() else None
