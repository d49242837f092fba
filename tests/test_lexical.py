import pytest

from ftrace.index.jvm import autoclass
from ftrace.index.lexical import LexicalError, LuceneBM25, build_lucene


@pytest.fixture(scope="module")
def bm25(tmp_path_factory, sample):
    path = tmp_path_factory.mktemp("lucene") / "bm25"
    build_lucene(path, ((s.id, s.text) for s in sample.sentences))
    index = LuceneBM25(path)
    yield index
    index.close()


QUERY = "Toyota Avanza is produced by Toyota"


def test_index_holds_every_sentence(bm25, sample):
    assert bm25.count() == len(sample.sentences)


def test_scores_equal_lucenes_own(bm25, sample):
    """Our search and candidate scores equal Anserini's own per-document BM25 computation."""
    own = autoclass("io.anserini.index.IndexReaderUtils")
    hits = bm25.search(QUERY, 20)
    assert len(hits) == 20 and hits == sorted(hits, key=lambda h: -h[1])
    for doc_id, score in hits:
        assert score == pytest.approx(own.computeQueryDocumentScore(bm25.reader, doc_id, QUERY), rel=1e-6)
    others = [s.id for s in sample.sentences[:40]]
    scored = bm25.score(QUERY, [h[0] for h in hits] + others)
    for doc_id in scored:
        lucene = own.computeQueryDocumentScore(bm25.reader, doc_id, QUERY)
        assert scored[doc_id] == pytest.approx(lucene, rel=1e-6, abs=1e-9)
    assert any(v == 0.0 for v in scored.values())  # sentences sharing no term score 0


def test_proponent_found_by_bm25(bm25, sample):
    [q] = [q for q in sample.queries if q.prompt == "Toyota Avanza is produced by"]
    top10 = [doc for doc, _ in bm25.search(f"{q.prompt} {q.target}", 10)]
    assert set(q.proponents) & set(top10)


def test_rebuild_replaces_atomically(tmp_path, monkeypatch):
    """A rebuild swaps the new index in (never a moment without bm25/, nothing left beside it); one that fails leaves
    the old index as it was."""
    import ftrace.plumbing

    path = tmp_path / "bm25"
    build_lucene(path, [("a", "alpha beta"), ("b", "gamma")])
    swapped = []
    exchange = ftrace.plumbing._exchange
    monkeypatch.setattr(ftrace.plumbing, "_exchange", lambda a, b: swapped.append(b) or exchange(a, b))
    build_lucene(path, [("c", "alpha delta")])
    assert swapped == [path]  # one atomic exchange, not a rename aside and another in
    index = LuceneBM25(path)
    assert index.count() == 1 and [d for d, _ in index.search("alpha", 5)] == ["c"]
    index.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bm25"]
    with pytest.raises(ValueError, match="a document fails"):
        build_lucene(path, ((i, "text") if i != "y" else (_ for _ in ()).throw(ValueError("a document fails"))
                            for i in ("x", "y")))
    index = LuceneBM25(path)
    assert index.count() == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["bm25"]
    index.close()


def test_a_directory_is_replaced_whole_or_kept(tmp_path):
    from ftrace.plumbing import replacing_dir

    path = tmp_path / "d"
    with replacing_dir(path) as tmp:
        (tmp / "one").write_text("1")
    with replacing_dir(path) as tmp:
        (tmp / "two").write_text("2")
    assert sorted(p.name for p in path.iterdir()) == ["two"]
    with replacing_dir(path, replace=False) as tmp:  # another process made it first: theirs is kept
        (tmp / "three").write_text("3")
    with pytest.raises(KeyboardInterrupt), replacing_dir(path) as tmp:
        (tmp / "four").write_text("4")
        raise KeyboardInterrupt
    assert sorted(p.name for p in path.iterdir()) == ["two"] and [p.name for p in tmp_path.iterdir()] == ["d"]
    # a writer that died between its two renames left the old directory aside and its new one half written
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    path.rename(tmp_path / f"d.old-{dead}")
    (tmp_path / f"d.tmp-{dead}").mkdir()
    with pytest.raises(KeyboardInterrupt), replacing_dir(path) as tmp:
        raise KeyboardInterrupt
    assert sorted(p.name for p in path.iterdir()) == ["two"] and [p.name for p in tmp_path.iterdir()] == ["d"]


def test_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(LexicalError, match="no Lucene index"):
        LuceneBM25(tmp_path / "none")
