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


@pytest.mark.slow
def test_whitening_with_query_gradients_is_recorded_and_its_queries_are_not_benched(tmp_path, tiny_model_dir,
                                                                                      monkeypatch):
    """`--whiten-queries N`: the whitening's R mixes in N of the corpus's queries' gradients (each checkpoint's state
    says how many, at which mix), the stored vectors are whitened by that state, and `ftrace bench` leaves out of its
    draws exactly the queries ingest fitted on (fitted into R, a query weighs its own subject down), also after an
    addition; without --whiten, or a mix without queries, it is refused."""
    import ftrace.ingest.pipeline as pipeline
    from ftrace.bench.runner import whitening_held_out
    from ftrace.index.manifest import Addition

    fitted_on: list[str] = []

    def recording(tokenizer, prompts, targets, max_tokens):
        fitted_on.extend(prompts)
        return query_batch(tokenizer, prompts, targets, max_tokens)

    monkeypatch.setattr(pipeline, "query_batch", recording)
    index = tmp_path / "mixed"
    r = CliRunner().invoke(app, ["ingest", "--index", str(index), "--model", tiny_model_dir, "--tracin-projection",
                                 "rows", "--tracin-tied", "input", "--whiten", "--whiten-samples", "32",
                                 "--whiten-queries", "6", "--whiten-query-mix", "0.9", "--batch-size", "16"])
    assert r.exit_code == 0, r.output
    assert len(fitted_on) == 6  # one checkpoint, six queries
    manifest = Manifest.read(index)
    whitening = manifest.vectors["tracin"]["corrections"]["whitening"]
    assert whitening["queries"] == 6 and whitening["query_mix"] == 0.9 and "queries" in whitening["fitted_on"]
    lm = load_model(tiny_model_dir)
    tracin = from_specs(lm, manifest.vectors, IndexDir(index).state_file, ["tracin"])["tracin"]
    fitted = tracin.per_checkpoint[0].spec()["corrections"]["whitening"]
    assert fitted["queries"] == 6 and fitted["query_mix"] == 0.9 and fitted["samples"] == 32
    assert whitening["query_rule"] == fitted["query_rule"]  # the rows form, in the manifest as in the state
    examples = index_examples(IndexDir(index).corpus.sentences)[:3]
    store = IndexDir(index).open_store()
    try:
        for e, v in zip(examples, tracin.vectors(Objective("object", lm.tokenizer).batch(examples)[0]), strict=True):
            ((hit, score),) = store.search("tracin", v, 1, ids=[e.id], exact=True)
            assert hit == e.id and score > 0.999
    finally:
        store.close()
    queries = IndexDir(index).corpus.queries
    held = whitening_held_out(manifest, queries)
    assert len(held) == 6 and sorted(q.prompt for q in queries if q.id in held) == sorted(fitted_on)
    # an addition appends its queries after the index's own: the same ones stay held out
    more = [q.model_copy(update={"id": f"{q.id}~1"}) for q in queries]
    added = manifest.model_copy(update={
        "corpus": manifest.corpus.model_copy(update={"queries": 2 * len(queries)}),
        "additions": [Addition(source="more", fingerprint="f", sentences=0, examples=0, queries=len(queries),
                               corpus="g")]})
    assert whitening_held_out(added, queries + more) == held
    out = tmp_path / "bench"
    r = CliRunner().invoke(app, ["bench", "--index", str(index), "--split", "all", "--queries", "100", "--seeds", "1",
                                 "--methods", "tracin,bm25", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    drawn = set(res["queries"]["per_seed"]["0"])
    assert res["queries"]["held_out_by_whitening"] == 6 and drawn and not drawn & held
    assert len(drawn) == len([q for q in queries if q.proponents and q.id not in held])
    for options, message in [(["--whiten-queries", "6"], "error: --whiten-queries: needs --whiten"),
                             (["--whiten", "--whiten-query-mix", "0.5"], "--whiten-query-mix: only with")]:
        r = CliRunner().invoke(app, ["ingest", "--index", str(tmp_path / "refused"), "--model", tiny_model_dir,
                                     *options])
        assert r.exit_code != 0 and message in r.output, r.output
