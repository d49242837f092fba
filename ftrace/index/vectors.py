"""The vector store: one small interface, two Qdrant back ends. Nothing else imports Qdrant.

- `EdgeStore`: Qdrant's own engine in process (`qdrant-edge-py`), persisted in a directory.
- `ClientStore`: `qdrant-client`, for a server or cluster (`url`) or its local mode (`path`).

Points are keyed by a UUID derived from the example id (so re-ingesting is idempotent) and carry
the example and sentence ids as payload. Vectors are compared by cosine; scores: higher is better. A vector named in
`create(sparse=...)` is a Qdrant sparse vector (`ftrace.sparse`), compared by dot product: the featurizers
store unit vectors, so that too is their cosine.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import numpy as np

from ftrace import FtraceError
from ftrace.config import MAX_SPARSE_SIZE, MAX_VECTOR_SIZE
from ftrace.index.files import STORES
from ftrace.index.locks import StoreLock
from ftrace.sparse import SparseVector, SparseVectors, Vector, Vectors

# HNSW's search beam (hnsw_ef) where `ingest --hnsw` built one (exact segments ignore it). On the 102k LAMA sentences
# Qdrant's default (its build's ef_construct, 100) finds 0.76-0.78 of the exact top 10 and 512 finds 0.91-0.92, in a
# sixth of exact search's time (perf/results/hnsw_recall-cpu.md); at a million passages 512 finds 0.54, 2,048 0.70 and
# 8,192 0.82 (perf/results/corpus_scale_capped-cpu.md). So the beam is 512 up to 131,072 points (HNSW_EF_MIN x
# POINTS_PER_BEAM) and widens in proportion beyond, up to HNSW_EF_MAX (reached at about 2.1M points).
HNSW_EF_MIN, HNSW_EF_MAX, POINTS_PER_BEAM = 512, 8192, 256


def search_beam(points: int) -> int:
    """The HNSW search beam for a collection of `points` (on a cluster, every shard searches with it)."""
    return min(HNSW_EF_MAX, max(HNSW_EF_MIN, points // POINTS_PER_BEAM))


_NAMESPACE = uuid.UUID("6f1d3c52-96a4-4f0c-9a4e-1f3b8f1e2a10")


class StoreError(FtraceError):
    pass


def point_id(example_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, example_id))


def _check_sizes(sizes: dict[str, int], sparse: Collection[str]) -> None:
    for name, size in sizes.items():
        most = MAX_SPARSE_SIZE if name in sparse else MAX_VECTOR_SIZE
        if not 0 < size <= most:
            raise StoreError(f"vector {name!r} has size {size}; Qdrant takes 1..{most}")


Points = tuple[list[str], dict[str, Vectors], list[dict]]  # example ids, vectors by name, payloads


def _as_points(records, names: Sequence[str]) -> Points:
    ids = [r.payload["example_id"] for r in records]
    vectors = {n: _stored(r.vector[n] for r in records) for n in names}
    return ids, vectors, [dict(r.payload) for r in records]


def _stored(vectors) -> Vectors:
    """Stored vectors as the featurizers give them: an (N, d) array, or sparse vectors."""
    vectors = list(vectors)
    if vectors and hasattr(vectors[0], "indices"):
        return SparseVectors(SparseVector(np.asarray(v.indices, dtype=np.int64), np.asarray(v.values, dtype=np.float32))
                             for v in vectors)
    return np.asarray(vectors, dtype=np.float32)


class VectorStore(ABC):
    beam: int | None = None  # set: the beam every search of this store object uses

    def search_ef(self) -> int:
        """The hnsw_ef this store searches with (0: Qdrant's default, ef_construct): `beam`, else the collection's
        search_beam, kept once the collection holds points."""
        if self.beam is not None:
            return self.beam
        points = self.count(exact=False)  # the segments' own counts: 0.1 ms at 1M points, exact 100 ms
        beam = search_beam(points)
        if points:
            self.beam = beam
        return beam

    @abstractmethod
    def create(self, sizes: dict[str, int], float16: bool = True, shard_number: int = 1,
               replication_factor: int = 1, sparse: Collection[str] = ()) -> None:
        """Make the (empty) collection, the vectors named in `sparse` sparse; the layout arguments apply to a Qdrant
        server."""

    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def upsert(self, ids: Sequence[str], vectors: dict[str, Vectors], payloads: Sequence[dict]) -> None: ...

    @abstractmethod
    def search(self, name: str, vector: Vector, k: int, ids: Sequence[str] | None = None,
               exact: bool = False) -> list[tuple[str, float]]:
        """Top-k (example id, cosine); with `ids`, only among those examples (a candidate set). A sparse vector's
        search lists only examples sharing an index with it (the others' cosine is 0), so it may give fewer."""

    @abstractmethod
    def present(self, ids: Sequence[str]) -> set[str]:
        """Which of these example ids are stored."""

    @abstractmethod
    def count(self, exact: bool = True) -> int: ...

    @abstractmethod
    def points(self, names: Sequence[str], batch: int = 256) -> Iterator[Points]:
        """Every stored point with the vectors `names`, in batches (to merge one store into another)."""

    def _vector(self, v: Vector):
        """A vector as the back end's client takes it: a list of floats, or its sparse vector type."""
        if isinstance(v, SparseVector):
            return self._sparse(v.indices.tolist(), v.values.tolist())
        return np.asarray(v, dtype=np.float32).tolist()

    @abstractmethod
    def _sparse(self, indices: list[int], values: list[float]): ...

    def optimize(self) -> None:  # noqa: B027 - optional: back ends that build no index on request do nothing
        """Build the ANN index where the back end does it on request (search is exact before)."""

    @abstractmethod
    def close(self) -> None: ...


class EdgeStore(VectorStore):
    """The shard is opened on first use and held, under the index's `.store.lock` (see `locks`), until `close`."""

    def __init__(self, path: Path):
        import qdrant_edge as qe

        self.qe, self.path, self._shard = qe, Path(path), None
        self._lock = StoreLock(self.path.parent)

    def _open(self, opener):
        self._lock.acquire()  # Qdrant Edge's WAL lock is exclusive: wait for another process's turn, bounded
        try:
            self._shard = opener()
        except BaseException:
            self._lock.release()
            raise
        return self._shard

    @property
    def shard(self):
        if self._shard is None:
            if not self.exists():
                raise StoreError(f"{self.path}: no Qdrant Edge shard here")
            self._open(lambda: self.qe.EdgeShard.load(str(self.path)))
        return self._shard

    def exists(self) -> bool:
        return self.path.is_dir() and any(self.path.iterdir())

    def create(self, sizes: dict[str, int], float16: bool = True, shard_number: int = 1,
               replication_factor: int = 1, sparse: Collection[str] = ()) -> None:
        _check_sizes(sizes, sparse)
        qe = self.qe
        dtype = qe.VectorStorageDatatype.Float16 if float16 else qe.VectorStorageDatatype.Float32
        config = qe.EdgeConfig(vectors={n: qe.EdgeVectorParams(size=s, distance=qe.Distance.Cosine, datatype=dtype)
                                        for n, s in sizes.items() if n not in sparse},
                               sparse_vectors={n: qe.EdgeSparseVectorParams(datatype=dtype) for n in sizes
                                               if n in sparse})
        self._open(lambda: qe.EdgeShard.create(str(self.path), config))

    def upsert(self, ids, vectors, payloads) -> None:
        qe = self.qe
        points = [qe.Point(point_id(i), {n: self._vector(v[j]) for n, v in vectors.items()}, payloads[j])
                  for j, i in enumerate(ids)]
        self.shard.update(qe.UpdateOperation.upsert_points(points))

    def _sparse(self, indices, values):
        return self.qe.SparseVector(indices, values)

    def search(self, name, vector, k, ids=None, exact=False):
        qe = self.qe
        flt = qe.Filter(must=[qe.HasIdCondition({point_id(i) for i in ids})]) if ids is not None else None
        hits = self.shard.query(qe.QueryRequest(
            limit=k, query=qe.Query.Nearest(self._vector(vector), using=name),
            filter=flt, with_payload=["example_id"],
            params=qe.SearchParams(exact=exact, hnsw_ef=None if exact else self.search_ef() or None)))
        return [(h.payload["example_id"], h.score) for h in hits]

    def present(self, ids):
        if not ids:
            return set()
        recs = self.shard.retrieve([point_id(i) for i in ids], with_payload=["example_id"], with_vector=False)
        return {r.payload["example_id"] for r in recs}

    def count(self, exact: bool = True) -> int:
        return self.shard.count(self.qe.CountRequest(exact=exact))

    def points(self, names, batch=256):
        return _scrolled(lambda offset: self.shard.scroll(self.qe.ScrollRequest(
            offset=offset, limit=batch, with_payload=True, with_vector=list(names))), names)

    def optimize(self) -> None:
        self.shard.optimize()

    def close(self) -> None:
        try:
            if self._shard is not None:
                self._shard.flush()
                self._shard.close()
                self._shard = None
        finally:
            self._lock.release()


class ClientStore(VectorStore):
    """qdrant-client: `url` for a Qdrant server or cluster, `path` for its pure-Python local mode."""

    def __init__(self, collection: str, url: str | None = None, path: Path | None = None, api_key: str | None = None):
        from qdrant_client import QdrantClient, models

        self.models, self.collection, self.where, self.remote = models, collection, url or str(path), bool(url)
        try:
            self.client = (QdrantClient(url=url, api_key=api_key, timeout=10, check_compatibility=False) if url
                           else QdrantClient(path=str(path)))
            self.client.get_collections()  # fail here, clearly, if the server is unreachable
        except Exception as e:
            raise StoreError(f"--qdrant-url {self.where}: cannot reach Qdrant "
                             f"({type(e).__name__}: {str(e)[:120]})") from None

    def exists(self) -> bool:
        return self.client.collection_exists(self.collection)

    def collection_params(self, sizes: dict[str, int], float16: bool = True, shard_number: int = 1,
                          replication_factor: int = 1, sparse: Collection[str] = ()) -> dict:
        """create_collection's arguments: named cosine vectors (and sparse ones), their storage type, and the layout
        over a cluster's nodes (shards, and copies of each; qdrant-client's local mode takes and ignores them)."""
        _check_sizes(sizes, sparse)
        m = self.models
        dtype = m.Datatype.FLOAT16 if float16 else m.Datatype.FLOAT32
        params = {"vectors_config": {n: m.VectorParams(size=s, distance=m.Distance.COSINE, datatype=dtype)
                                     for n, s in sizes.items() if n not in sparse},
                  "shard_number": shard_number, "replication_factor": replication_factor}
        if any(n in sparse for n in sizes):
            params["sparse_vectors_config"] = {
                n: m.SparseVectorParams(index=m.SparseIndexParams(datatype=dtype)) for n in sizes if n in sparse}
        return params

    def create(self, sizes: dict[str, int], float16: bool = True, shard_number: int = 1,
               replication_factor: int = 1, sparse: Collection[str] = ()) -> None:
        params = self.collection_params(sizes, float16, shard_number, replication_factor, sparse)
        try:
            self.client.create_collection(self.collection, **params)
        except Exception:
            if not self.exists():  # several `ingest --shard` processes may race to create it: one wins
                raise

    def upsert(self, ids, vectors, payloads) -> None:
        m = self.models
        points = [m.PointStruct(id=point_id(i), vector={n: self._vector(v[j]) for n, v in vectors.items()},
                                payload=payloads[j]) for j, i in enumerate(ids)]
        self.client.upsert(self.collection, points=points, wait=True)

    def _sparse(self, indices, values):
        return self.models.SparseVector(indices=indices, values=values)

    def search(self, name, vector, k, ids=None, exact=False):
        m = self.models
        flt = m.Filter(must=[m.HasIdCondition(has_id=[point_id(i) for i in ids])]) if ids is not None else None
        params = (m.SearchParams(exact=exact, hnsw_ef=None if exact else self.search_ef() or None)
                  if self.remote else None)  # local mode searches exactly: no beam, nothing to count
        res = self.client.query_points(self.collection, query=self._vector(vector), using=name,
                                       limit=k, query_filter=flt, with_payload=["example_id"], search_params=params)
        return [((p.payload or {})["example_id"], p.score) for p in res.points]

    def present(self, ids):
        if not ids:
            return set()
        recs = self.client.retrieve(self.collection, [point_id(i) for i in ids], with_payload=["example_id"])
        return {(r.payload or {})["example_id"] for r in recs}

    def count(self, exact: bool = True) -> int:
        return self.client.count(self.collection, exact=exact).count

    def points(self, names, batch=256):
        return _scrolled(lambda offset: self.client.scroll(self.collection, limit=batch, offset=offset,
                                                           with_payload=True, with_vectors=list(names)), names)

    def close(self) -> None:
        self.client.close()


def _scrolled(scroll, names):
    """Every point, a page at a time: `scroll(offset)` gives (records, next offset or None)."""
    offset = None
    while True:
        recs, offset = scroll(offset)
        if recs:
            yield _as_points(recs, names)
        if offset is None:
            return


def open_store(backend: str, index_dir: Path, collection: str = "ftrace", url: str | None = None) -> VectorStore:
    """The store an index uses: Qdrant Edge in the index directory (default), qdrant-client's local
    mode in the index directory, or a remote Qdrant at `url`."""
    if backend == "edge":
        return EdgeStore(Path(index_dir) / STORES["edge"])
    if backend == "local":
        return ClientStore(collection, path=Path(index_dir) / STORES["local"])
    if backend == "remote":
        if not url:
            raise StoreError("a remote Qdrant needs --qdrant-url")
        return ClientStore(collection, url=url)
    raise StoreError(f"unknown Qdrant back end {backend!r} (edge, local, remote)")
