"""Corpora of documents: the record formats users hold (jsonl, .gz, .zst, parquet, a datasets directory, a directory
of shards), documents cut into passages at the model's tokens, and an index of passages that says where a hit lies."""

import gzip
import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from typer.testing import CliRunner

from ftrace.cli import app
from ftrace.corpus import CorpusError, Passages, load_corpus
from ftrace.corpus.passages import AHEAD, SNAP, _Cut, around, token_windows
from ftrace.index.layout import IndexDir
from ftrace.index.manifest import Manifest
from ftrace.model.corpus import ModelTokens

RECORDS = [{"doc_id": "d1", "content": "Spanish is the official language of Spain."},
           {"doc_id": 7, "content": "Apple developed macOS."},
           {"doc_id": "d3", "content": "Toyota builds the Avanza in Indonesia."}]


def write_jsonl(path, records, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return path


def write_zst(path, records):
    path.write_bytes(zstandard.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in records).encode()))
    return path


def write_datasets(path, records):
    import datasets

    datasets.disable_progress_bars()
    datasets.Dataset.from_list(records).save_to_disk(str(path))
    return path


def write_parquet(path, records):
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


FORMATS = {
    "jsonl": lambda d, r: write_jsonl(d / "c.jsonl", r),
    "jsonl.gz": lambda d, r: write_jsonl(d / "c.jsonl.gz", r, gzip.open),
    "jsonl.zst": lambda d, r: write_zst(d / "c.jsonl.zst", r),
    "parquet": lambda d, r: write_parquet(d / "c.parquet", r),
    "datasets": lambda d, r: write_datasets(d / "saved", r),
    "shards": lambda d, r: (write_jsonl(d / "part-0.jsonl.gz", r[:1], gzip.open), write_parquet(d / "part-1.parquet",
                                                                                                   r[1:]), d)[-1],
}


def load(path, **kw):
    return load_corpus(str(path), text_field="content", id_field="doc_id", **kw)


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_every_format_reads_the_same_records(tmp_path, kind):
    # a record's id as text (an integer id included), its text from --text-field
    # a column holds one type: in parquet and datasets every id is text, in jsonl one is an integer
    records = RECORDS if kind.startswith("jsonl") else [{**r, "doc_id": str(r["doc_id"])} for r in RECORDS]
    c = load(FORMATS[kind](tmp_path, records))
    assert [(s.id, s.text) for s in c.sentences] == [("d1", RECORDS[0]["content"]), ("7", RECORDS[1]["content"]),
                                                      ("d3", RECORDS[2]["content"])]


BAD = {  # kind -> (records, where, message): the second record is bad in each
    "jsonl": ([RECORDS[0], {"doc_id": "x", "text": "the wrong field"}], "c.jsonl:2",
              "a record needs either 'content' (a text: --text-field) or 'prompt' (a query)"),
    "jsonl.gz": ([RECORDS[0], {"doc_id": "x", "content": ""}], "c.jsonl.gz:2", "text is empty"),
    "jsonl.zst": ([RECORDS[0], {"doc_id": ["x"], "content": "a list id"}], "c.jsonl.zst:2",
                  "doc_id: an id must be a string or an integer, got list"),
    "parquet": ([RECORDS[0], {"doc_id": "x", "content": None}], "c.parquet: row 1",
                "content: text must be a string, got NoneType"),
    "datasets": ([RECORDS[0], {"doc_id": "d1", "content": "a second d1"}], "saved: row 1",
                 "duplicate id 'd1'"),
    "shards": ([RECORDS[0], {"doc_id": "x", "content": " "}], "part-1.parquet: row 0", "text is empty"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_record_names_its_file_and_line_or_row(tmp_path, kind):
    records, where, message = BAD[kind]
    path = FORMATS[kind](tmp_path, records)
    with pytest.raises(CorpusError) as e:
        load(path)
    line = str(e.value)
    assert "\n" not in line and where in line and message in line, line


def test_broken_and_unnamed_compressed_files_are_named(tmp_path):
    whole = write_jsonl(tmp_path / "c.jsonl.gz", RECORDS * 50, gzip.open).read_bytes()
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(CorpusError, match=r"cut\.jsonl\.gz:\d+: cannot decompress"):
        load(tmp_path / "cut.jsonl.gz")
    zst = write_zst(tmp_path / "c.jsonl.zst", RECORDS * 50).read_bytes()
    (tmp_path / "cut.jsonl.zst").write_bytes(zst[:-8])  # zstandard's own reader returns nothing, silently
    with pytest.raises(CorpusError, match=r"cut\.jsonl\.zst:\d+: cannot decompress .*truncated"):
        load(tmp_path / "cut.jsonl.zst")
    (tmp_path / "plain.jsonl").write_bytes(whole)  # gzip data under a plain name: the message says what to do
    with pytest.raises(CorpusError, match=r"plain\.jsonl:1: not UTF-8 text \(byte 0x8b\); a compressed file needs"):
        load(tmp_path / "plain.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match=r"empty: no corpus files in this directory"):
        load(tmp_path / "empty")
    with pytest.raises(CorpusError, match=r"--text-field content: the corpus .* is LAMA T-REx data"):
        load_corpus(str(write_jsonl(tmp_path / "t.json", [])), text_field="content")


def document(sample, n=30):
    return " ".join(s.text for s in sample.sentences[:n])


def test_a_long_document_is_cut_into_passages_that_tile_it_with_the_stride(sample, tiny_model_dir):
    model_tokens = ModelTokens(tiny_model_dir)
    text = document(sample)
    size, stride = 64, 48
    tokens = model_tokens.offsets([text])[0]
    assert len(tokens) > 4 * size  # several passages
    spans = Passages(size, stride, model_tokens).spans(text)
    windows = token_windows(len(tokens), size, stride)
    assert len(windows) - 1 <= len(spans) <= len(windows) + 1 and len(spans) > 4
    starts = [t[0] for t in tokens]
    for k, (a, b) in enumerate(spans):
        # each starts at its window's first token, or a few tokens before it, between two words
        nominal = starts[min(k * stride, len(tokens) - 1)]
        assert nominal - 60 <= a <= nominal + 1 and (a == 0 or not (text[a - 1].isalnum() and text[a].isalnum()))
        assert model_tokens.counts([text[a:b]])[0] == len(model_tokens.offsets([text[a:b]])[0]) <= size  # fits
    assert spans[0][0] == 0 and spans[-1][1] == len(text)  # the first starts, the last ends, the document
    assert all(b1 > a2 for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False))  # overlapping: no gap
    assert Passages(size, stride, model_tokens).spans(sample.sentences[0].text) == [(0, len(sample.sentences[0].text))]


def one_at_a_time(p: Passages, text: str) -> list[tuple[int, int]]:
    """`Passages.spans` by its definition: each window checked, and shortened, before the next starts from its end."""
    offs = p.tokens.offsets([text])[0]
    n = len(offs)
    if n <= p.size:
        return [(0, len(text))]

    def snapped(i, floor):
        words = [j for j in range(i, max(floor, i - SNAP) - 1, -1)
                 if j >= n or not (text[offs[j][0] - 1].isalnum() and text[offs[j][0]].isalnum())]
        return words[0] if words else i

    out, a = [], 0
    while True:
        b = min(a + p.size, n)
        b = b if b == n else snapped(b, a + 1)
        while True:
            start, end = offs[a][0], offs[b - 1][1]
            start += len(text[start:end]) - len(text[start:end].lstrip())
            end -= len(text[start:end]) - len(text[start:end].rstrip())
            over = p.tokens.counts([text[start:end]])[0] - p.size
            if over <= 0 or b - a <= over:
                break
            b -= over
        if end > start:
            out.append((start, end))
        if b >= n:
            return out
        a = snapped(min(a + p.stride, b), a + 1)


class CountingTokens:
    """A model's `Tokens`, counting the batches of window texts it is asked to count (one per round)."""

    def __init__(self, tokens):
        self.tokens, self.batches = tokens, 0

    def offsets(self, texts):
        return self.tokens.offsets(texts)

    def counts(self, texts):
        self.batches += len(texts) > 1
        return self.tokens.counts(texts)


def test_documents_cut_together_are_cut_as_one_at_a_time(sample, tiny_model_dir):
    model_tokens = ModelTokens(tiny_model_dir)
    texts = [s.text for s in sample.sentences]
    docs = [" ".join(texts[k:k + 25]) for k in range(0, 400, 7)]
    docs += ["x", "\U0001F600" * 40, "  word " * 90, texts[0] + " " * 500 + " ".join(texts[1:30]), " ".join(texts)]
    for size, stride in ((64, 48), (24, 6), (24, 24)):
        p = Passages(size, stride, model_tokens)
        assert p.spans_of(docs) == [one_at_a_time(p, d) for d in docs], (size, stride)
    # windows that run over, tokenised alone, are among them, and cut in more than one round
    p, over = Passages(24, 24, model_tokens), 0
    for d, offs in zip(docs, model_tokens.offsets(docs), strict=True):
        if len(offs) > 24:
            windows = _Cut(p, d, offs).rest()
            over += sum(c > 24 for c in model_tokens.counts([d[w.start:w.end] for w in windows]))
    assert over > 0
    counting = CountingTokens(model_tokens)
    Passages(24, 24, counting).spans_of([docs[-1]])  # the whole sample, one document: hundreds of windows
    assert counting.batches > len(one_at_a_time(p, docs[-1])) / AHEAD > 1  # AHEAD windows a round, or fewer


def test_model_tokens_are_the_tokenizers_own(sample, tiny_model_dir):
    from ftrace.model.loading import load_tokenizer

    wrapper = load_tokenizer(tiny_model_dir)
    texts = [s.text for s in sample.sentences[:20]] + [f"{wrapper.eos_token} after a special token", " x  y "]
    model_tokens = ModelTokens(tiny_model_dir)
    wrapped = [list(map(tuple, wrapper(t, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]))
               for t in texts]
    assert model_tokens.offsets(texts) == wrapped
    assert model_tokens.counts(texts) == [len(wrapper(t, add_special_tokens=False)["input_ids"]) for t in texts]


def test_a_text_that_is_not_unicode_is_refused_at_its_line(tmp_path, tiny_model_dir):
    path = write_jsonl(tmp_path / "s.jsonl", [{"id": "a", "text": "A good sentence."}, {"id": "b", "text": "\ud800 x"}])
    for passages in (None, Passages(64, 48, ModelTokens(tiny_model_dir))):
        with pytest.raises(CorpusError, match=r"s\.jsonl:2: text is not valid Unicode"):
            load_corpus(str(path), passages=passages)


def test_passages_keep_their_document_span_and_facts(tmp_path, sample, tiny_model_dir):
    facts = [f for s in sample.sentences[:30] for f in s.facts]
    doc = document(sample)
    path = write_jsonl(tmp_path / "docs.jsonl", [
        {"id": "doc-1", "text": doc, "facts": facts},
        {"id": "short", "text": sample.sentences[40].text},
        {"prompt": "Spanish is the official language of", "target": "Spain", "fact": facts[0],
         "proponents": ["doc-1"]}])
    c = load_corpus(str(path), passages=Passages(64, 48, ModelTokens(tiny_model_dir)))
    *passages, short = c.sentences
    assert short.id == "short" and short.document is None  # a short record is one example, as before
    assert [p.id for p in passages] == [f"doc-1#{k}" for k in range(len(passages))]
    for p in passages:
        assert p.document == "doc-1" and doc[p.span[0]:p.span[1]] == p.text
        assert all(f in facts and f[2] in p.text for f in p.facts)
    q = c.queries[0]
    assert q.proponents and all(tuple(facts[0]) in c.by_id()[p].facts for p in q.proponents)
    assert "passages of 64 tokens every 48" in c.source
    second = passages[1]
    before, after = around(second, c.by_id().get, chars=10_000)
    assert doc.startswith(before) and (before + second.text + after) in doc


def ingest_args(index, model, corpus, *extra):
    return ["ingest", "--index", str(index), "--model", model, "--corpus", str(corpus), "--passage-tokens", "64",
            "--stride", "48", "--embed-layers", "0,2", "--batch-size", "8", *extra]


@pytest.fixture(scope="module")
def documents(tmp_path_factory, sample):
    d = tmp_path_factory.mktemp("docs")
    sentences = sample.sentences
    records = [{"id": f"doc-{i}", "text": " ".join(s.text for s in sentences[i:i + 25]),
                "facts": [f for s in sentences[i:i + 25] for f in s.facts]} for i in range(0, 100, 25)]
    records.append({"prompt": "Toyota Avanza is produced by", "target": "Toyota"})
    return write_jsonl(d / "docs.jsonl.gz", records, gzip.open)


@pytest.fixture(scope="module")
def passage_index(tmp_path_factory, documents, tiny_model_dir):
    index = tmp_path_factory.mktemp("pidx") / "docs"
    r = CliRunner().invoke(app, ingest_args(index, tiny_model_dir, documents))
    assert r.exit_code == 0, r.output
    return index


def test_a_query_on_a_passage_index_says_where_each_hit_lies(passage_index):
    corpus = IndexDir(passage_index).corpus
    assert {s.document for s in corpus.sentences} == {f"doc-{i}" for i in range(0, 100, 25)}
    r = CliRunner().invoke(app, ["query", "Toyota Avanza is produced by", "--index", str(passage_index), "--target",
                                 "Toyota", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)["rows"]
    by_id = corpus.by_id()
    for row in rows:
        s = by_id[row["sentence_id"]]
        assert row["document"] == s.document and tuple(row["span"]) == s.span
        assert row["before"] or row["after"]  # a passage with a neighbour shows the text around it
    top = rows[0]
    assert "Avanza" in top["text"]
    r = CliRunner().invoke(app, ["query", "Toyota Avanza is produced by", "--index", str(passage_index), "--target",
                                 "Toyota"])
    assert f"[{top['document']} {top['span'][0]}-{top['span'][1]}]" in r.output


def vectors_of(index):
    from ftrace.index.vectors import open_store

    store, out = open_store("edge", index), {}
    try:
        for ids, vecs, _ in store.points(["embed", "tracin"]):
            out.update({i: [*vecs["embed"][j].tolist(), *vecs["tracin"][j].tolist()] for j, i in enumerate(ids)})
    finally:
        store.close()
    return out


KILL_AT_SECOND_BATCH = """
import os, signal
from ftrace.features.embedding import EmbeddingFeaturizer
real, calls = EmbeddingFeaturizer.vectors, []
def dying(self, batch):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, batch)
EmbeddingFeaturizer.vectors = dying
import sys
from ftrace.cli import app
app(sys.argv[1:])
"""


@pytest.mark.slow
def test_resumed_and_sharded_ingests_of_documents_equal_a_plain_one(tmp_path, passage_index, documents,
                                                                   tiny_model_dir):
    want = vectors_of(passage_index)
    resumed = tmp_path / "resumed"
    p = subprocess.run([sys.executable, "-c", KILL_AT_SECOND_BATCH,
                        *ingest_args(resumed, tiny_model_dir, documents)], capture_output=True, text=True)
    assert p.returncode == -9, p.stderr[-2000:]
    r = CliRunner().invoke(app, ingest_args(resumed, tiny_model_dir, documents))
    assert r.exit_code == 0 and "resuming: 8 examples already stored" in r.output, r.output
    sharded = tmp_path / "sharded"
    for extra in (["--shard", "0/2"], ["--shard", "1/2"], []):
        r = CliRunner().invoke(app, ingest_args(sharded, tiny_model_dir, documents, *extra))
        assert r.exit_code == 0, r.output
    for index in (resumed, sharded):
        assert IndexDir(index).corpus.fingerprint() == IndexDir(passage_index).corpus.fingerprint()
        got = vectors_of(index)
        assert set(got) == set(want)
        assert max(abs(a - b) for i in want for a, b in zip(got[i], want[i], strict=True)) < 2e-3


@pytest.mark.slow
def test_an_index_grows_by_an_addition_as_if_built_whole(tmp_path, tiny_model_dir, sample):
    """`ftrace ingest --add`: the first 40 sample sentences, then 30 more and a long document (cut into passages as
    the index's corpus was) added to it, give the index a single ingest of all of them gives; it refuses a clash of
    ids and options that would change how the index was built."""
    lines = [json.dumps({"id": s.id, "text": s.text, "facts": s.facts}) for s in sample.sentences]
    first, more, whole = tmp_path / "first.jsonl", tmp_path / "more.jsonl", tmp_path / "whole.jsonl"
    first.write_text("\n".join(lines[:40]) + "\n")
    long = json.dumps({"id": "long-doc", "text": document(sample, 40)})
    more.write_text("\n".join([*lines[40:70], long]) + "\n")
    whole.write_text("\n".join([*lines[:70], long]) + "\n")
    # mean pooling: an addition takes the idf statistics (and whitening) the index fitted on its first corpus, which
    # an index built whole fits on all of it
    common = ["--model", tiny_model_dir, "--passage-tokens", "64", "--embed-layers", "0,2", "--batch-size", "8",
              "--embed-pooling", "mean"]
    for index, corpus in (("grown", first), ("whole", whole)):
        r = CliRunner().invoke(app, ["ingest", "--index", str(tmp_path / index), "--corpus", str(corpus), *common])
        assert r.exit_code == 0, r.output
    grown = tmp_path / "grown"
    r = CliRunner().invoke(app, ["ingest", "--index", str(grown), "--add", str(more), "--model", tiny_model_dir])
    assert r.exit_code == 1 and "--add extends the index as it was built; leave out --model" in r.output
    r = CliRunner().invoke(app, ["ingest", "--index", str(grown), "--add", str(first)])
    assert r.exit_code == 1 and "40 id(s) the index holds already" in r.output, r.output
    add = ["ingest", "--index", str(grown), "--add", str(more), "--batch-size", "8"]
    p = subprocess.run([sys.executable, "-c", KILL_AT_SECOND_BATCH, *add], capture_output=True, text=True)
    assert p.returncode == -9, p.stderr[-2000:]  # killed mid-addition: the index says so, and the command finishes it
    r = CliRunner().invoke(app, ["query", "Toyota Avanza is produced by", "--index", str(grown)])
    assert r.exit_code == 1 and f"the addition of {more}" in r.output and "did not finish" in r.output, r.output
    # the index's own ingest command neither undoes nor finishes it: refused, the merged corpus kept
    merged = IndexDir(grown).corpus_file.read_bytes()
    r = CliRunner().invoke(app, ["ingest", "--index", str(grown), "--corpus", str(first), *common])
    assert r.exit_code == 1 and "finish it with `ftrace ingest --add`" in r.output, r.output
    assert IndexDir(grown).corpus_file.read_bytes() == merged
    r = CliRunner().invoke(app, add)
    assert r.exit_code == 0 and "finishing the addition" in r.output, r.output
    g, w = Manifest.read(grown), Manifest.read(tmp_path / "whole")
    assert g.complete and g.corpus.fingerprint == w.corpus.fingerprint and g.identity() == w.identity()
    assert [a.source for a in g.additions] == [str(more) + " (passages of 64 tokens every 48)"]
    assert any(s.document == "long-doc" for s in IndexDir(grown).corpus.sentences)  # cut as the index's corpus
    got, want = vectors_of(grown), vectors_of(tmp_path / "whole")
    assert set(got) == set(want)
    assert max(abs(a - b) for i in want for a, b in zip(got[i], want[i], strict=True)) < 2e-3
    ask = ["query", "Toyota Avanza is produced by", "--target", "Toyota", "--method", "bm25", "--json"]
    rows = [json.loads(CliRunner().invoke(app, [*ask, "--index", str(d)]).output)["rows"] for d in (grown, tmp_path
                                                                                                    / "whole")]
    assert [r["sentence_id"] for r in rows[0]] == [r["sentence_id"] for r in rows[1]]


def test_records_keep_their_own_fields_and_ids_stay_unique(tmp_path, tiny_model_dir):
    model_tokens = ModelTokens(tiny_model_dir)
    emoji = "\U0001F600" * 40  # 40 characters, 160 bytes: more tokens than characters, cut all the same
    assert len(Passages(64, 48, model_tokens).spans(emoji)) > 1
    # a user's field named like a passage's provenance is not taken for it (XSum's "document" is its text)
    c = load_corpus(str(write_jsonl(tmp_path / "x.jsonl", [{"id": "a", "document": "The text.", "summary": "s"}])),
                    text_field="document", passages=Passages(64, 48, model_tokens))
    assert c.sentences[0].document is None and c.sentences[0].text == "The text."
    # a cut document's id is taken: a later record of the same id is refused
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "y", "text": emoji}, {"id": "y", "text": "short"}])
    with pytest.raises(CorpusError, match=r"d\.jsonl:2: duplicate id 'y' \(first on line 1\)"):
        load_corpus(str(path), passages=Passages(64, 48, model_tokens))
    # ... and by a later document's passage ("y#1" cut first, then "y" cut into "y#0", "y#1", ...)
    path = write_jsonl(tmp_path / "e.jsonl", [{"id": "y#1", "text": emoji}, {"id": "y", "text": emoji}])
    with pytest.raises(CorpusError, match=r"e\.jsonl:2: duplicate id 'y#1' \(first on line 1\)"):
        load_corpus(str(path), passages=Passages(64, 48, model_tokens))
    # the first error in the file is the one reported, though ids are checked a batch of records at a time
    path = write_jsonl(tmp_path / "f.jsonl", [{"id": "z", "text": "One."}, {"id": "z", "text": "Two."},
                                              {"id": "w", "text": ""}])
    with pytest.raises(CorpusError, match=r"f\.jsonl:2: duplicate id 'z' \(first on line 1\)"):
        load_corpus(str(path))
    # queries without ids, one per file of a directory of shards, get distinct ids
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(2):
        write_jsonl(shards / f"part-{i}.jsonl", [{"text": f"Text {i}."}, {"prompt": f"P{i}", "target": "t"}])
    assert [q.id for q in load_corpus(str(shards)).queries] == ["q2", "part-1.jsonl:q2"]


def test_a_corpus_of_records_is_stored_in_a_stream(tmp_path):
    """Reading records into a corpus store holds a batch of them, not the corpus: ten times the records, about the
    same peak of Python memory (an in-memory corpus grows tenfold)."""
    import tracemalloc

    from ftrace.corpus.loaders import store_records

    def peak(n):
        path = write_jsonl(tmp_path / f"r{n}.jsonl", [
            {"id": f"r{i}", "text": f"Record {i} says that entity {i} is located in place {i % 97}.",
             "facts": [[f"entity {i}", "P131", f"place {i % 97}"]]} for i in range(n)])
        tracemalloc.start()
        store = store_records(tmp_path / f"r{n}.sqlite", path)
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(store) == n and store.at([n])[0].id == f"r{n - 1}"
        store.close()
        return top

    small, large = peak(3_000), peak(30_000)
    assert large < 2 * small, (small, large)


def test_ingest_of_records_never_holds_the_corpus(tmp_path, tiny_model_dir, documents, monkeypatch):
    """`ftrace ingest` of a corpus of records reads it into the index's store in a stream and featurises from there:
    no step builds the whole corpus in memory (each way to do so refuses here), and the index equals one built
    from the corpus held in memory."""
    from ftrace.corpus import Corpus, CorpusStore

    def refuse(*_, **__):
        raise AssertionError("the whole corpus was built in memory")

    for target, name in ((CorpusStore, "corpus"), (Corpus, "by_id"), (Corpus, "fingerprint")):
        monkeypatch.setattr(target, name, refuse)
    monkeypatch.setattr("ftrace.corpus.loaders.load_records", refuse)
    index = tmp_path / "streamed"
    r = CliRunner().invoke(app, ingest_args(index, tiny_model_dir, documents, "--no-tracin"))
    assert r.exit_code == 0, r.output
    monkeypatch.undo()
    assert not IndexDir(index).staging_file.exists()
    m = Manifest.read(index)
    held = load_corpus(str(documents), passages=Passages(64, 48, ModelTokens(tiny_model_dir)))
    assert m.complete and m.corpus.fingerprint == held.fingerprint() and m.corpus.examples == len(held.sentences)
    assert IndexDir(index).corpus.queries == held.queries
