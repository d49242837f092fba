"""`ftrace ingest --example-loss object`: object-span gradients end to end, through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ftrace.cli import app
from ftrace.corpus.records import example_sentence
from ftrace.features.base import from_specs
from ftrace.index.layout import IndexDir
from ftrace.index.manifest import Manifest
from ftrace.model import example_batch, load_model, query_batch
from ftrace.model.objective import Objective, index_examples
from ftrace.query.tracer import Tracer


@pytest.mark.slow
def test_ingest_with_object_loss_stores_object_span_gradients(tmp_path, tiny_model_dir):
    index = tmp_path / "object"
    r = CliRunner().invoke(app, ["ingest", "--index", str(index), "--model", tiny_model_dir, "--example-loss", "object",
                                 "--tracin-dim", "64", "--whiten", "--whiten-samples", "16", "--batch-size", "16",
                                 "--tracin-tied", "input"])
    assert r.exit_code == 0, r.output
    assert "--example-loss object:" in r.output and "whole-sentence loss" in r.output  # fallbacks reported
    spec = Manifest.read(index).vectors["tracin"]
    assert spec["config"]["example_loss"] == "object" and "examples: object span" in spec["loss"]
    assert spec["config"]["tied"] == spec["tied"] == "input"
    assert spec["blocks"][0]["modules"] == ["model.embed_tokens"]
    whitening = spec["corrections"]["whitening"]
    assert whitening["damping"] == 0.1 and "mean eigenvalue" in whitening["lambda"] and whitening["samples"] == 16
    assert "embed" in Manifest.read(index).vectors  # sentence embeddings stored beside

    # the stored vectors are the object-span gradients (whitened as the index's state says), and an
    # example without an object span got the whole-sentence one
    examples = index_examples(IndexDir(index).corpus.sentences)
    lm = load_model(tiny_model_dir)
    tracin = from_specs(lm, Manifest.read(index).vectors, IndexDir(index).state_file, ["tracin"])["tracin"]
    with_span = [e for e in examples if e.object][:3]
    without = [e for e in examples if not e.object][:2]
    chosen = with_span + without
    batch, fallbacks = Objective("object", lm.tokenizer).batch(chosen)
    assert fallbacks == len(without)
    expected = tracin.vectors(batch)
    whole = tracin.vectors(example_batch(lm.tokenizer, [e.text for e in chosen]))
    store = IndexDir(index).open_store()
    try:
        for e, v, w in zip(chosen, expected, whole, strict=True):
            ((hit, score),) = store.search("tracin", v, 1, ids=[e.id], exact=True)
            assert hit == e.id and score > 0.999  # float16 storage
            if e.object:
                assert float(v @ w) < 0.99  # really not the whole-sentence gradient
            else:
                np.testing.assert_allclose(v, w, atol=1e-6)
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("projection,whiten", [("sketch", False), ("rows", False), ("rows", True)])
def test_ingest_with_another_projection_stores_and_queries_it(tmp_path, tiny_model_dir, projection, whiten):
    """`--tracin-projection sketch` and `rows` (the exact lookup gradient in a sparse vector; whitened in its rows
    form, with an MLP block factored beside it) end to end: recorded in the manifest, the stored vectors are the
    featurizer's (with the index's fitted state), and `ftrace query` loads the same projection to score."""
    index = tmp_path / projection
    options = {"sketch": ["--tracin-dim", "100"], "rows": ["--tracin-tied", "input"]}[projection]
    options += ["--whiten", "--whiten-samples", "16", "--tracin-layers",
                "model.embed_tokens,model.layers.0.mlp.down_proj", "--tracin-block-dim", "16"] if whiten else []
    r = CliRunner().invoke(app, ["ingest", "--index", str(index), "--model", tiny_model_dir, "--tracin-projection",
                                 projection, *options, "--batch-size", "16"])
    assert r.exit_code == 0, r.output
    spec = Manifest.read(index).vectors["tracin"]
    rows, cols = spec["blocks"][0]["shape"]
    size, factors = {"sketch": (100, [100, 1]), "rows": (rows * cols, [rows, cols])}[projection]
    size += 16 if whiten else 0
    assert spec["projection"] == projection and spec["size"] == size and spec["blocks"][0]["factors"] == factors
    assert spec["corrections"]["whitening"]["enabled"] == whiten
    if whiten:
        assert "diag(r)" in spec["corrections"]["whitening"]["lambda"]
    examples = index_examples(IndexDir(index).corpus.sentences)[:4]
    lm = load_model(tiny_model_dir)
    tracin = from_specs(lm, Manifest.read(index).vectors, IndexDir(index).state_file, ["tracin"])["tracin"]
    expected = tracin.vectors(Objective(spec["config"]["example_loss"], lm.tokenizer).batch(examples)[0])
    store = IndexDir(index).open_store()
    try:
        for e, v in zip(examples, expected, strict=True):
            ((hit, score),) = store.search("tracin", v, 1, ids=[e.id], exact=True)
            assert hit == e.id and score > 0.999
    finally:
        store.close()
    prompt, target = examples[0].text.rstrip(".").rsplit(" ", 1)
    r = CliRunner().invoke(app, ["query", prompt, "--target", target, "--index", str(index), "--method", "tracin",
                                 "--json", "-k", "3"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["method"] == "tracin" and len(result["rows"]) == 3
    # the query's vector is this sketch's: its nearest stored vector and score are the query's first row
    store = IndexDir(index).open_store()
    try:
        ((hit, score),) = store.search("tracin", tracin.vectors(query_batch(lm.tokenizer, [prompt], [target]))[0], 1,
                                       exact=True)
    finally:
        store.close()
    first = result["rows"][0]
    assert first["sentence_id"] == example_sentence(hit) and first["scores"]["tracin"] == pytest.approx(score, abs=1e-3)
    # a candidate set is scored whole: with sparse vectors, those sharing no token with the query score 0
    tracer = Tracer(index, model=tiny_model_dir)
    try:
        every = [s.id for s in tracer.corpus.sentences]
        scored = tracer.score("tracin", prompt, target, every)
    finally:
        tracer.close()
    assert set(scored) == set(every)
    if projection == "rows" and not whiten:  # (the MLP block's dense part is shared by every vector)
        assert any(v == 0.0 for v in scored.values())
