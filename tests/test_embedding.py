"""The embed vector's pooling: FTRACE's plain mean, and the idf pooling fitted at ingest (weights and centring saved
beside the index, used again by queries)."""

from collections import Counter

import numpy as np
import pytest

from ftrace import FtraceError
from ftrace.config import IngestConfig
from ftrace.index.layout import IndexDir
from ftrace.index.manifest import Manifest
from ftrace.ingest.pipeline import ingest
from ftrace.model import example_batch, load_model
from ftrace.query.tracer import Tracer


@pytest.fixture(scope="module")
def idf_index(tmp_path_factory, tiny_model_dir):
    index = tmp_path_factory.mktemp("idf") / "index"
    ingest(IngestConfig.model_validate({"index": index, "model": tiny_model_dir, "tracin": {"enabled": False},
                                        "embed": {"pooling": "idf", "samples": 100}, "batch_size": 16}))
    return index


def test_idf_pooling_is_the_weighted_centred_mean_fitted_on_a_sample(idf_index, tiny_model_dir, sample):
    spec = Manifest.read(idf_index).vectors["embed"]
    assert spec["pooling"] == "idf" and spec["samples"] == 100
    state = np.load(IndexDir(idf_index).state_file("embed"))
    assert int(state["sentences"]) == 100
    lm = load_model(tiny_model_dir)
    E = lm.model.get_input_embeddings().weight.detach().float().numpy()
    # the fitted statistics, recomputed by hand from the sample's token ids
    texts = {s.id: s.text for s in IndexDir(idf_index).corpus.sentences}
    rng = np.random.default_rng(0)  # the ingest's seed (--tracin-seed)
    picked = sorted(rng.choice(len(sample.sentences), size=100, replace=False))
    ids = [lm.tokenizer(sample.sentences[i].text)["input_ids"] for i in picked]
    df = Counter(t for row in ids for t in set(row))
    idf = np.log(101 / (np.array([df.get(t, 0) for t in range(len(E))]) + 0.5))
    mean = E[[t for row in ids for t in row]].mean(0)
    np.testing.assert_allclose(state["idf"], idf, rtol=1e-5)
    np.testing.assert_allclose(state["means"][0], mean, atol=1e-5)
    # a stored vector is the idf-weighted mean of the centred token vectors, unit-normalised
    tracer = Tracer(idf_index)
    try:
        sid = sample.sentences[7].id
        toks = lm.tokenizer(texts[sid])["input_ids"]
        want = ((E[toks] - mean) * idf[toks, None]).sum(0) / idf[toks].sum()
        want /= np.linalg.norm(want)
        ((_, cosine),) = tracer.store.search("embed", want.astype(np.float32), 1, ids=[f"{sid}:lm"], exact=True)
        assert cosine == pytest.approx(1.0, abs=1e-3)  # stored as float16
        # a query pools the same way (the state loaded from beside the index)
        again = tracer.featurizer("embed").vectors(example_batch(tracer.lm.tokenizer, [texts[sid]]))[0]
        np.testing.assert_allclose(again, want, atol=1e-5)
        top = tracer.retrieve("embed", texts[sid], "", 3)
        assert next(iter(top)) == sid
    finally:
        tracer.close()


def test_a_resumed_ingest_keeps_the_fitted_state(idf_index, tiny_model_dir, tmp_path):
    """An ingest resumed after the fit reuses the saved state, never refits under stored vectors; a query on an index
    whose state is missing is refused in one line."""
    import shutil

    index = tmp_path / "resumed"
    shutil.copytree(idf_index, index)
    with np.load(IndexDir(index).state_file("embed")) as state:
        marked = {"idf": np.ones_like(state["idf"]), "means": state["means"], "sentences": state["sentences"]}
    with open(IndexDir(index).state_file("embed"), "wb") as fh:  # a fit would overwrite these weights
        np.savez(fh, **marked)
    m = Manifest.read(index)
    m.complete = False  # as an ingest killed after its fit leaves it
    m.write(index)
    ingest(IngestConfig.model_validate({"index": index, "model": tiny_model_dir, "tracin": {"enabled": False},
                                        "embed": {"pooling": "idf", "samples": 100}, "batch_size": 16}))
    assert Manifest.read(index).complete
    with np.load(IndexDir(index).state_file("embed")) as state:
        assert (state["idf"] == 1).all()
    (IndexDir(index).state_file("embed")).unlink()
    with pytest.raises(FtraceError, match="embed-state.npz: missing or unreadable") as e:
        Tracer(index).featurizer("embed")
    assert "\n" not in str(e.value)
