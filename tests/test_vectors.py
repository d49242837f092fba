import numpy as np
import pytest

from ftrace.index.vectors import (
    HNSW_EF_MAX,
    HNSW_EF_MIN,
    POINTS_PER_BEAM,
    ClientStore,
    EdgeStore,
    StoreError,
    open_store,
    search_beam,
)
from ftrace.sparse import SparseVector, SparseVectors

BACKENDS = ["edge", "local"]


def make(backend, path):
    return open_store(backend, path, collection="t")


@pytest.fixture(params=BACKENDS)
def filled(request, tmp_path):
    rng = np.random.default_rng(0)
    vectors = {"embed": rng.normal(size=(60, 16)).astype(np.float32),
               "tracin": rng.normal(size=(60, 8)).astype(np.float32)}
    ids = [f"s{i}:lm" for i in range(60)]
    store = make(request.param, tmp_path)
    store.create({"embed": 16, "tracin": 8})
    store.upsert(ids, vectors, [{"example_id": i, "sentence_id": i.split(":")[0]} for i in ids])
    yield request.param, tmp_path, store, ids, vectors
    store.close()


def cosine(matrix, q):
    return matrix @ q / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(q))


def test_search_is_cosine_nearest_neighbours(filled):
    _, _, store, ids, vectors = filled
    q = np.random.default_rng(1).normal(size=16).astype(np.float32)
    hits = store.search("embed", q, 5, exact=True)
    expected = cosine(vectors["embed"], q)
    order = np.argsort(-expected)[:5]
    assert [h[0] for h in hits] == [ids[i] for i in order]
    assert [h[1] for h in hits] == pytest.approx(expected[order], abs=2e-3)  # float16 storage


def test_candidate_set_restricts_search(filled):
    _, _, store, ids, vectors = filled
    q = vectors["tracin"][7]
    cands = [ids[3], ids[7], ids[50]]
    hits = dict(store.search("tracin", q, 10, ids=cands))
    assert set(hits) == set(cands)
    assert hits[ids[7]] == pytest.approx(1.0, abs=2e-3)


def test_present_count_idempotent_upsert_and_reopen(filled):
    backend, path, store, ids, vectors = filled
    assert store.present([ids[0], "missing:lm"]) == {ids[0]}
    payloads = [{"example_id": i, "sentence_id": i} for i in ids[:5]]
    store.upsert(ids[:5], {k: v[:5] for k, v in vectors.items()}, payloads)
    assert store.count() == 60
    store.close()
    again = make(backend, path)
    assert again.exists() and again.count() == 60
    assert again.search("embed", vectors["embed"][2], 1)[0][0] == ids[2]
    again.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_vectors_score_by_dot_product_round_trip_and_merge(backend, tmp_path):
    """A sparse vector beside a dense one: searched over the whole store and within a candidate set by its dot
    product (the featurizers' unit vectors: their cosine), scrolled back out as it went in (shard merges)."""
    rng = np.random.default_rng(2)
    dim = 30_000_000  # far past a dense vector's limit: an embedding's rows x columns
    ids = [f"s{i}:lm" for i in range(40)]
    sparse = SparseVectors()
    for _ in ids:
        at = np.sort(rng.choice(2_000, size=50, replace=False)) * 15_000  # shared dimensions, spread out
        values = rng.normal(size=50)
        sparse.append(SparseVector(at.astype(np.int64), (values / np.linalg.norm(values)).astype(np.float32)))
    store = make(backend, tmp_path)
    store.create({"embed": 4, "tracin": dim}, float16=False, sparse={"tracin"})
    store.upsert(ids, {"embed": rng.normal(size=(40, 4)).astype(np.float32), "tracin": sparse},
                 [{"example_id": i, "sentence_id": i} for i in ids])
    q = sparse[5]
    dots = np.array([q.dot(v) for v in sparse])
    hits = store.search("tracin", q, 5, exact=True)
    order = np.argsort(-dots)[:5]
    assert hits[0] == (ids[5], pytest.approx(1.0, abs=1e-5))
    assert [h[0] for h in hits] == [ids[i] for i in order]
    assert [h[1] for h in hits] == pytest.approx(dots[order], abs=1e-5)
    within = dict(store.search("tracin", q, 10, ids=[ids[1], ids[2], ids[5]], exact=True))
    assert within.keys() <= {ids[1], ids[2], ids[5]} and within[ids[5]] == pytest.approx(1.0, abs=1e-5)
    for i in (1, 2):  # a candidate sharing no dimension with the query scores 0, where Qdrant lists it at all
        assert within.get(ids[i], 0.0) == pytest.approx(dots[i], abs=1e-5)
    got_ids, vectors, _ = next(iter(store.points(["tracin"], batch=100)))
    back = dict(zip(got_ids, vectors["tracin"], strict=True))
    np.testing.assert_array_equal(back[ids[7]].indices, sparse[7].indices)
    np.testing.assert_allclose(back[ids[7]].values, sparse[7].values, rtol=1e-6)
    store.close()


def test_the_search_beam_widens_with_the_collection(tmp_path, monkeypatch):
    assert search_beam(0) == search_beam(HNSW_EF_MIN * POINTS_PER_BEAM) == HNSW_EF_MIN
    assert HNSW_EF_MIN < search_beam(1_000_000) == 1_000_000 // POINTS_PER_BEAM < HNSW_EF_MAX == search_beam(10**9)
    store = make("edge", tmp_path)
    store.create({"embed": 4})
    assert store.search("embed", np.ones(4), 1) == [] and store.beam is None  # empty: not kept
    points = {"n": 1_000_000}  # what Qdrant would count in a million-passage collection
    monkeypatch.setattr(store, "count", lambda exact=True: points["n"])
    assert store.search("embed", np.ones(4), 1) == [] and store.beam == 1_000_000 // POINTS_PER_BEAM
    points["n"] = 10  # kept for the store's life: one count a process
    assert store.search_ef() == 1_000_000 // POINTS_PER_BEAM
    store.beam = 0  # Qdrant's own default
    store.upsert(["a"], {"embed": np.ones((1, 4))}, [{"example_id": "a"}])
    assert store.search("embed", np.ones(4), 1)[0][0] == "a"
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_oversized_vectors_are_refused(backend, tmp_path):
    store = make(backend, tmp_path)
    with pytest.raises(StoreError, match="65535"):
        store.create({"tracin": 70_000})
    store.close()


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(StoreError, match=r"--qdrant-url http://127\.0\.0\.1:9: cannot reach Qdrant"):
        ClientStore("c", url="http://127.0.0.1:9")


def test_edge_float16_is_really_stored(tmp_path):
    store = EdgeStore(tmp_path / "q")
    store.create({"v": 4}, float16=True)
    v = np.array([[1.0, 1e-4, 0.0, 0.0]], dtype=np.float32)
    store.upsert(["a:lm"], {"v": v}, [{"example_id": "a:lm", "sentence_id": "a"}])
    q = np.array([0.0, 1.0, 0.0, 0.0], dtype=np.float32)
    score = store.search("v", q, 1)[0][1]
    assert score != pytest.approx(1e-4, rel=1e-6) and score == pytest.approx(1e-4, rel=1e-2)
    store.close()
