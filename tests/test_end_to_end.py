"""ingest -> query through the CLI, on the sample corpus with a tiny random transformer."""

import csv
import json
import shutil
import subprocess

import pytest
import torch
from typer.testing import CliRunner

from ftrace.cli import app
from ftrace.config import IngestConfig
from ftrace.features.embedding import EmbeddingFeaturizer
from ftrace.index.layout import IndexDir
from ftrace.index.manifest import Manifest
from ftrace.index.vectors import open_store
from ftrace.ingest.pipeline import ingest

runner = CliRunner()
AVANZA = "Toyota Avanza is produced by"


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_ingest_records_what_made_the_index(sample_index, sample, tiny_model_dir):
    m = Manifest.read(sample_index)
    assert m.complete and m.model.name == tiny_model_dir and len(m.model.fingerprint) == 16
    assert m.corpus.sentences == len(sample.sentences) and m.corpus.fingerprint == sample.fingerprint()
    assert m.vectors["embed"]["layers"] == [0, 2] and m.vectors["embed"]["size"] == 64
    tracin = m.vectors["tracin"]
    assert tracin["kind"] == "gradient" and tracin["layers"] == ["model.embed_tokens"] and tracin["seed"] == 0
    assert tracin["checkpoints"] == [{"name": tiny_model_dir, "fingerprint": m.model.fingerprint}]
    assert m.store.backend == "edge" and {"torch", "qdrant-edge-py", "pyserini"} <= set(m.versions)
    store = open_store("edge", sample_index)
    assert store.count() == len(sample.sentences)
    store.close()


def test_info_shows_manifest_counts_and_size(sample_index, sample):
    r = cli("info", "--index", sample_index)
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    status = info["status"]
    assert info["complete"] and info["corpus"]["sentences"] == len(sample.sentences)
    assert status["points"] == status["bm25_documents"] == status["examples_expected"] == len(sample.sentences)
    assert status["bytes_on_disk"] > 100_000
    if shutil.which("du"):  # allocated bytes, as du counts them (not the apparent sizes of sparse files)
        du = subprocess.run(["du", "-s", "--block-size=1", str(sample_index)], capture_output=True, text=True)
        assert status["bytes_on_disk"] == int(du.stdout.split()[0])


def test_query_json_marks_proponents_and_fuses(sample_index, sample):
    r = cli("query", AVANZA, "--index", sample_index, "--target", "Toyota", "--method", "embed+bm25", "--json", "-k",
            "15")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["target"] == "Toyota" and out["target_from"] == "user" and out["method"] == "embed+bm25"
    assert (out["fusion"], out["weight"]) == ("sum", 0.5)  # the index records no tuned choice
    [q] = [q for q in sample.queries if q.prompt == AVANZA]
    assert set(out["ground_truth"]["proponents"]) == set(q.proponents)
    rows = out["rows"]
    assert [r["rank"] for r in rows] == list(range(1, 16))
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert all(set(r["scores"]) == {"bm25", "embed"} for r in rows)
    assert any(r["proponent"] for r in rows[:10])  # BM25 half of the fusion finds the Avanza sentences
    for row in rows:
        assert row["proponent"] == (row["sentence_id"] in q.proponents)


def test_each_method_and_rrf(sample_index):
    for method in ("bm25", "embed", "tracin", "tracin+bm25", "tracin+embed"):
        r = cli("query", AVANZA, "--index", sample_index, "--target", "Toyota", "--method", method, "--json")
        assert r.exit_code == 0, r.output
        rows = json.loads(r.output)["rows"]
        assert len(rows) == 10 and list(rows[0]["scores"]) == method.split("+")
    r = cli("query", AVANZA, "--index", sample_index, "--target", "Toyota", "--method", "embed+bm25", "--fusion", "rrf",
            "--json")
    rows = json.loads(r.output)["rows"]
    assert rows[0]["score"] <= 2 / 61 + 1e-9  # RRF scores are sums of 1/(60 + rank)


def test_embed_scores_equal_cosine_of_featuriser_vectors(sample_index, sample, tiny_model_dir):
    from ftrace.query.tracer import Tracer

    tracer = Tracer(sample_index)
    try:
        qvec = tracer.query_vectors(AVANZA, "Toyota")["embed"]
        ids = [s.id for s in sample.sentences[:12]]
        scores = tracer.score("embed", AVANZA, "Toyota", ids)
        from ftrace.model import example_batch
        batch = example_batch(tracer.lm.tokenizer, [s.text for s in sample.sentences[:12]])
        expected = tracer.featurizer("embed").vectors(batch) @ qvec
        assert [scores[i] for i in ids] == pytest.approx(list(expected), abs=3e-3)  # float16 storage
    finally:
        tracer.close()


def test_ground_truth_ignores_case_spacing_and_a_leading_article(sample_index):
    # the sample knows "Eiffel Tower is located in" -> "France"
    r = cli("query", "The  eiffel Tower is located in", "--index", sample_index, "--target", "france", "--method",
            "bm25", "--json")
    assert r.exit_code == 0, r.output
    truth = json.loads(r.output)["ground_truth"]
    assert truth and truth["target"] == "France" and truth["proponents"]


def test_help_shows_flags_without_a_type():
    out = {command: cli(command, "--help").output for command in ("ingest", "query", "bench", "train")}
    assert all("--help" in text and "<bool>" not in text for text in out.values()), out
    assert "--mode [rerank|full]" in out["bench"] and "--fusion [sum|rrf|cascade]" in out["query"]  # the choices
    assert "  --json  " in out["query"] and "--tracin / --no-tracin" in out["ingest"]


def test_human_table(sample_index):
    r = cli("query", AVANZA, "--index", sample_index, "--target", "Toyota", "--method", "embed+bm25")
    assert r.exit_code == 0, r.output
    assert "rank" in r.output and "bm25" in r.output and "embed" in r.output and "*" in r.output
    assert "method: embed+bm25 (fusion: sum, weight 0.5 on embed)" in r.output


def test_model_answer_is_used_without_target(sample_index):
    r = cli("query", AVANZA, "--index", sample_index, "--json", "--method", "bm25")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["target_from"] == "model" and isinstance(out["target"], str)


def test_second_ingest_is_a_no_op(sample_index, tiny_model_dir):
    before = (sample_index / "manifest.json").read_text()
    r = cli("ingest", "--index", sample_index, "--model", tiny_model_dir, "--embed-layers", "0,2")
    assert r.exit_code == 0, r.output
    assert (sample_index / "manifest.json").read_text() == before


@pytest.mark.parametrize("args, message", [
    (["query", AVANZA, "--model", "other-model"], "built with model"),
    (["query", AVANZA, "--embed-layers", "1"], "layers [0, 2], not [1]"),
    (["query", "  "], "PROMPT '  ': blank; give the text the model completes"),
    (["query", AVANZA, "--target", " "], "--target ' ': blank"),
    (["query", AVANZA, "--method", "bm26"], "--method 'bm26'"),
    (["query", AVANZA, "--weight", "2"], "--weight 2.0"),
    (["query", AVANZA, "--device", "tpu"], "--device 'tpu'"),
])
def test_query_refusals(sample_index, args, message):
    r = cli(*args, "--index", sample_index)
    assert r.exit_code == 1 and message in r.output, r.output


def test_changed_model_weights_are_refused(tmp_path, sample_index, tiny_model_dir):
    index = tmp_path / "copy"
    shutil.copytree(sample_index, index)
    m = Manifest.read(index)
    m.model.fingerprint = "0" * 16  # as if the model at that path had been retrained
    m.write(index)
    r = cli("query", AVANZA, "--index", index)
    assert r.exit_code == 1 and "has changed since the index was built" in r.output


def test_bad_inputs_give_one_line_errors(tmp_path, tiny_model_dir):
    # bad corpus files: tests/test_reliability.py
    no_facts = tmp_path / "no-facts.jsonl"
    no_facts.write_text('{"text": "Paris is big."}\n')
    r = cli("ingest", "--index", tmp_path / "i1", "--corpus", no_facts, "--model", tiny_model_dir,
            "--example-loss", "object")
    assert r.exit_code == 1 and "--example-loss object: no sentence of" in r.output
    assert not (tmp_path / "i1").exists()
    r = cli("ingest", "--index", tmp_path / "i2", "--model", tmp_path / "no-such-model")
    assert r.exit_code == 1 and "cannot load a Hugging Face causal LM" in r.output
    r = cli("ingest", "--index", tmp_path / "i3", "--model", tiny_model_dir, "--qdrant-url", "http://127.0.0.1:9")
    assert r.exit_code == 1 and "cannot reach Qdrant" in r.output
    assert not (tmp_path / "i3").exists()
    r = cli("query", AVANZA, "--index", tmp_path / "nothing")
    assert r.exit_code == 1 and "not an ftrace index" in r.output
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    r = cli("ingest", "--index", tmp_path / "busy", "--model", tiny_model_dir)
    assert r.exit_code == 1 and "not empty" in r.output
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_interrupted_ingest_resumes(tmp_path, tiny_model_dir, sample, monkeypatch):
    index = tmp_path / "resume"
    # batches of 32 whatever the sentences' lengths (up to 64 tokens): three of them before the interruption
    settings = IngestConfig(index=index, model=tiny_model_dir, batch_size=32, batch_tokens=2048)
    real = EmbeddingFeaturizer.vectors
    calls = {"n": 0}

    def interrupted(self, batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # Ctrl-C in the middle of ingest
        return real(self, batch)

    monkeypatch.setattr(EmbeddingFeaturizer, "vectors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ingest(settings)
    monkeypatch.setattr(EmbeddingFeaturizer, "vectors", real)
    assert not Manifest.read(index).complete
    r = cli("query", AVANZA, "--index", index)
    assert r.exit_code == 1 and "did not finish" in r.output
    store = open_store("edge", index)
    assert store.count() == 3 * 32
    store.close()
    assert ingest(settings).complete
    store = open_store("edge", index)
    assert store.count() == len(sample.sentences)
    store.close()


@pytest.mark.slow
def test_qdrant_client_back_end_end_to_end(tmp_path, tiny_model_dir, sample):
    index = tmp_path / "local"
    r = cli("ingest", "--index", index, "--model", tiny_model_dir, "--qdrant", "local")
    assert r.exit_code == 0, r.output
    assert Manifest.read(index).store.backend == "local" and (index / "qdrant-local").is_dir()
    r = cli("query", AVANZA, "--index", index, "--target", "Toyota", "--method", "embed", "--json")
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)["rows"]) == 10


@pytest.mark.parametrize("pooling", ["idf", "mean"])
def test_padding_does_not_change_embeddings(tiny_model_dir, sample, pooling, tmp_path):
    from ftrace.config import EmbeddingConfig
    from ftrace.model import example_batch, load_model

    lm = load_model(tiny_model_dir)
    f = EmbeddingFeaturizer(lm.model, EmbeddingConfig(layers=[0, 1, 2], pooling=pooling))
    f.fit(lambda n, seed: [example_batch(lm.tokenizer, [s.text for s in sample.sentences[:n]])],
          lambda part: tmp_path / f"state-{part}.npz")
    short = "Toyota makes cars."
    alone = f.vectors(example_batch(lm.tokenizer, [short]))[0]
    padded = f.vectors(example_batch(lm.tokenizer, [short, "A much longer sentence that needs padding " * 3]))[0]
    assert alone == pytest.approx(padded, abs=1e-5)
    assert float(alone @ alone) == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        assert f.size == 3 * lm.model.config.hidden_size


def test_tracin_scores_equal_cosine_of_gradient_vectors(sample_index, sample):
    from ftrace.model.objective import Objective, index_examples
    from ftrace.query.tracer import Tracer

    tracer = Tracer(sample_index)
    try:
        qvec = tracer.query_vectors(AVANZA, "Toyota")["tracin"]
        texts = sample.sentences[:10]
        scores = tracer.score("tracin", AVANZA, "Toyota", [s.id for s in texts])
        examples = {e.sentence_id: e for e in index_examples(tracer.corpus.sentences)}
        loss = tracer.index.manifest.vectors["tracin"]["config"]["example_loss"]  # the object loss, by default
        batch, _ = Objective(loss, tracer.lm.tokenizer).batch([examples[s.id] for s in texts])
        stored = tracer.featurizer("tracin").vectors(batch)
        assert [scores[s.id] for s in texts] == pytest.approx(list(stored @ qvec), abs=3e-3)
    finally:
        tracer.close()


@pytest.mark.slow
def test_checkpoints_and_whitening(tmp_path, tiny_model_dir, sample):
    from ftrace.testing import make_tiny_model

    texts = [s.text for s in sample.sentences] + [f"{q.prompt} {q.target}" for q in sample.queries]
    other = str(make_tiny_model(tmp_path / "ckpt1", texts, seed=1))
    index = tmp_path / "ckpts"
    r = cli("ingest", "--index", index, "--model", tiny_model_dir, "--checkpoint", tiny_model_dir,
            "--checkpoint", other, "--whiten", "--whiten-samples", "64", "--tracin-dim", "64", "--no-tracin",
            "--tracin")
    assert r.exit_code == 0, r.output
    m = Manifest.read(index)
    assert [c["name"] for c in m.vectors["tracin"]["checkpoints"]] == [tiny_model_dir, other]
    assert m.vectors["tracin"]["size"] == 2 * 64 and m.vectors["tracin"]["corrections"]["whitening"]["enabled"]
    assert (index / "tracin-state-0.pt").exists() and (index / "tracin-state-1.pt").exists()
    r = cli("query", AVANZA, "--index", index, "--target", "Toyota", "--method", "tracin", "--json")
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)["rows"]) == 10
    (index / "tracin-state-1.pt").unlink()  # queries cannot be whitened like the index any more
    r = cli("query", AVANZA, "--index", index, "--target", "Toyota", "--method", "tracin")
    assert r.exit_code == 1 and "tracin-state-1.pt" in r.output


def test_long_prompts_keep_their_end_and_long_sentences_are_counted(tmp_path, tiny_model_dir, sample):
    from ftrace.model import load_model, query_batch
    from ftrace.model.batching import query_rows

    lm = load_model(tiny_model_dir)
    filler = "In a long story about many other things, " * 40
    ids, labels, truncated = query_rows(lm.tokenizer, filler + AVANZA, "Toyota", 64)
    assert truncated and len(ids) == 64 and lm.tokenizer.decode(ids).endswith(AVANZA + " Toyota")
    assert not query_rows(lm.tokenizer, AVANZA, "Toyota", 64)[2]
    batch = query_batch(lm.tokenizer, [filler + AVANZA, filler + "Mount Fuji is located in"], ["Toyota", "Japan"], 64)
    assert not torch.equal(batch.input_ids[0, :-3], batch.input_ids[1, :-3])  # the ends differ, not cut away

    # a record of documents is cut into passages the model sees whole; a sentence of T-REx is kept whole, and cut
    records = tmp_path / "long.jsonl"
    lines = [json.dumps({"text": s.text}) for s in sample.sentences[:20]] + [json.dumps({"text": filler + "The end."})]
    records.write_text("\n".join(lines) + "\n")
    r = cli("ingest", "--index", tmp_path / "passages", "--corpus", records, "--model", tiny_model_dir, "--max-tokens",
            "100", "--no-tracin")
    assert r.exit_code == 0 and "truncated" not in r.output, r.output
    assert len(IndexDir(tmp_path / "passages").corpus.sentences) > 21
    text = " ".join(s.text for s in sample.sentences[:20]) + " " + filler + "The end."
    starts = [0, *(i + 1 for i, c in enumerate(text) if c == " " and text[i - 1] == ".")]
    corpus = tmp_path / "long.json"  # raw T-REx: one document, its sentences' boundaries
    corpus.write_text(json.dumps([{"docid": "d", "text": text, "triples": [],
                                   "sentences_boundaries": [[a, b] for a, b in zip(starts, [*starts[1:], len(text)],
                                                                                   strict=True)]}]))
    index = tmp_path / "long"
    r = cli("ingest", "--index", index, "--corpus", corpus, "--model", tiny_model_dir, "--max-tokens", "100",
            "--no-tracin")
    assert r.exit_code == 0, r.output
    assert "1 sentences longer than 100 tokens were truncated" in r.output  # the sample's are shorter
    assert Manifest.read(index).max_tokens == 100
    r = cli("query", filler + AVANZA, "--index", index, "--target", "Toyota", "--method", "embed")
    assert r.exit_code == 0 and "the model saw only its end" in r.output, r.output
    r = cli("ingest", "--index", index, "--corpus", corpus, "--model", tiny_model_dir, "--max-tokens", "64",
            "--no-tracin")
    assert r.exit_code == 1 and "max_tokens: index has 100, asked for 64" in r.output


@pytest.mark.slow
def test_an_index_whose_fact_has_10000_proponents_is_readable(tmp_path, tiny_model_dir):
    """The line cap guards the corpora users give, not the index's own texts, whose query lists every proponent
    (about 180 KB here; 5,000 proponents for one LAMA fact)."""
    fact = ["Oslo", "P17", "Norway"]
    lines = [{"text": f"Oslo district {i} lies in Norway.", "facts": [fact]} for i in range(10_000)]
    lines.append({"prompt": "Oslo is located in", "target": "Norway", "fact": fact})
    corpus = tmp_path / "big.jsonl"
    corpus.write_text("".join(json.dumps(x) + "\n" for x in lines))
    index = tmp_path / "idx"
    ingest(IngestConfig.model_validate({"index": index, "model": tiny_model_dir, "corpus": {"corpus": str(corpus)},
                                        "tracin": {"enabled": False}}))
    assert len(IndexDir(index).texts.queries_for("Oslo is located in")[0].proponents) == 10_000
    r = cli("query", "Oslo is located in", "--index", index, "--target", "Norway", "--method", "bm25", "--json")
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)["ground_truth"]["proponents"]) == 10_000


def test_the_default_method_is_bm25_or_what_the_index_benchmark_chose(tmp_path, sample_index, monkeypatch):
    """Without --method a query uses the index's recorded choice (`ftrace bench --save-default`: the best method
    by MRR, with its tuned weight), else bm25, never an untuned fusion."""
    from ftrace.bench import scoring

    index = tmp_path / "index"
    shutil.copytree(sample_index, index)

    def query(*args):
        r = cli("query", AVANZA, "--index", index, "--target", "Toyota", "--json", *args)
        assert r.exit_code == 0, r.output
        out = json.loads(r.output)
        return out["method"], out["fusion"], out["weight"]

    assert query() == ("bm25", None, None)
    monkeypatch.setattr(scoring, "answers_right", lambda lm, prompts, targets, **k: [False] * len(prompts))
    monkeypatch.setattr(scoring, "greedy_answers", lambda lm, prompts, *a, **k: ["?"] * len(prompts))
    args = ["bench", "--index", index, "--split", "all", "--queries", "10", "--seeds", "1", "--methods",
            "bm25,embed,embed+bm25", "--tune-relation", "manufacturer", "--save-default", "--out", tmp_path / "b"]
    r = cli(*args)  # rerank scores candidate sets, not the whole corpus a query retrieves from: refused
    assert r.exit_code == 1 and "--save-default" in r.stderr and "--mode full" in r.stderr, r.output
    r = cli(*args, "--mode", "full", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    table = res["metrics"]["all"]
    best = max(["bm25", "embed", "embed+bm25"], key=lambda m: table[m]["mrr"]["mean"])
    saved = Manifest.read(index).query_default
    assert saved.method == best == res["saved_default"]["method"] and "--save-default" in saved.source
    assert Manifest.read(index).identity() == Manifest.read(sample_index).identity()  # nothing else changed

    m = Manifest.read(index)  # a fusion recorded with its tuned weight: used when the method is the default's
    m.query_default = m.query_default.model_copy(update={"method": "embed+bm25", "fusion": "rrf", "weight": 0.3})
    m.write(index)
    assert query() == ("embed+bm25", "rrf", 0.3)
    assert query("--weight", "0.8") == ("embed+bm25", "rrf", 0.8)  # what the user gives wins
    assert query("--method", "bm25+embed") == ("bm25+embed", "sum", 0.5)  # another fusion: untuned defaults


def test_a_file_of_prompts_is_traced_in_one_process_as_each_alone(tmp_path, sample_index):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in [
        {"id": "avanza", "prompt": AVANZA, "target": "Toyota"},
        {"prompt": "Honda Civic is produced by", "target": "Honda"},
        {"prompt": "Mount Fuji is located in"}]) + "\n")  # the model's own answer
    args = ["--index", sample_index, "--method", "embed+bm25", "-k", "5"]
    r = cli("query", "--prompts", prompts, "--out", tmp_path / "out", *args)
    assert r.exit_code == 0, r.output
    results = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [x["id"] for x in results] == ["avanza", "2", "3"]  # an id, else the line
    assert [x["target_from"] for x in results] == ["user", "user", "model"]
    for x in results:  # each as `ftrace query` traces it alone
        alone = ["query", x["prompt"], *args, "--json"] + (["--target", x["target"]] if x["target_from"] == "user"
                                                           else [])
        assert json.loads(cli(*alone).output)["rows"] == x["rows"]
    with open(tmp_path / "out.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 15 and table[0]["id"] == "avanza" and table[0]["rank"] == "1"
    assert float(table[0]["score_bm25"]) == results[0]["rows"][0]["scores"]["bm25"]
    r = cli("query", "--prompts", prompts, *args)  # without --out: JSON lines on stdout
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == ["avanza", "2", "3"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": AVANZA}) + "\n" + json.dumps({"target": "Toyota"}) + "\n")
    r = cli("query", "--prompts", bad, *args)
    assert r.exit_code == 1 and "bad.jsonl:2: a prompt record needs a non-blank 'prompt'" in r.output
    r = cli("query", AVANZA, "--prompts", prompts, *args)
    assert r.exit_code == 1 and "give a PROMPT or --prompts FILE, not both" in r.output
    r = cli("query", "--prompts", prompts, "--out", tmp_path / "nowhere" / "out", *args)  # before any tracing
    assert r.exit_code == 1 and "no directory" in r.output and "prompts:" not in r.output


def test_a_query_reads_only_what_it_shows_and_an_older_index_still_answers(tmp_path, sample_index):
    """The texts live in corpus.sqlite, read by id and prompt: a query never loads the whole corpus. An index made
    before it (corpus.jsonl) answers the same."""
    from ftrace.config import QueryConfig
    from ftrace.query.tracer import Tracer

    tracer = Tracer(sample_index)
    try:
        result = tracer.query(QueryConfig(prompt=AVANZA, target="Toyota", method="embed+bm25"))
        assert result.ground_truth and result.rows and "corpus" not in tracer.index.__dict__
    finally:
        tracer.close()
    older = tmp_path / "older"
    shutil.copytree(sample_index, older)
    IndexDir(older).corpus.write_jsonl(older / "corpus.jsonl")
    (older / "corpus.sqlite").unlink()
    args = ["query", AVANZA, "--target", "Toyota", "--method", "embed+bm25", "--json"]
    got, want = (json.loads(cli(*args, "--index", d).output) for d in (older, sample_index))
    assert got == want
