import json
from collections import Counter

import pytest
from conftest import LAMA, TREX, needs_shared

from ftrace.corpus import CorpusError, load_corpus, load_lama, load_records, load_trex, sentence_id
from ftrace.corpus.loaders import prompt_from_template


@needs_shared
def test_lama_counts_match_the_data_readme():
    corpus = load_lama(LAMA)
    splits = Counter("test" if "/" not in q.id else q.id.split("/")[1] for q in corpus.queries)
    assert splits == {"train": 25167, "dev": 6574, "test": 957}
    assert len(corpus.queries) == 32698
    assert sum(1 for q in corpus.queries if not q.proponents) == 571
    assert 100_000 <= len(corpus.sentences) <= 104_000  # "about 102k distinct sentences"
    # A sentence proves every fact whose evidence list holds it: recount that from the raw files.
    facts_of = {}
    for path in LAMA.glob("P*/*.jsonl"):
        for line in path.open():
            r = json.loads(line)
            for e in r["evidences"]:
                text = e["masked_sentence"].replace("[MASK]", e["obj_surface"])
                facts_of.setdefault(text, set()).add((r["sub_label"], r["predicate_id"], r["obj_label"]))
    assert {s.text: set(s.facts) for s in corpus.sentences} == facts_of
    assert sum(1 for f in facts_of.values() if len(f) > 1) > 5_000
    sizes = sorted(len(q.proponents) for q in corpus.queries if q.proponents)
    assert sizes[len(sizes) // 2] == 1 and 4_000 <= sizes[-1] <= 6_000


@needs_shared
def test_lama_p176_avanza_query_and_proponents():
    corpus = load_lama(LAMA, relations=["P176"])
    by_id = corpus.by_id()
    [q] = [q for q in corpus.queries if q.fact == ("Toyota Avanza", "P176", "Toyota")]
    assert (q.prompt, q.target) == ("Toyota Avanza is produced by", "Toyota")
    assert q.proponents and all("[MASK]" not in by_id[p].text for p in q.proponents)
    assert all(q.fact in by_id[p].facts for p in q.proponents)
    assert any("Avanza" in by_id[p].text for p in q.proponents)


@needs_shared
def test_lama_selection_is_deterministic():
    a = load_lama(LAMA, relations=["P176", "P19"], splits=["dev"], limit=20)
    b = load_lama(LAMA, relations=["P176", "P19"], splits=["dev"], limit=20)
    assert len(a.queries) == 40 and a.fingerprint() == b.fingerprint()
    assert [q.id for q in a.queries] == [q.id for q in b.queries]
    assert {q.fact[1] for q in a.queries} == {"P176", "P19"}


@needs_shared
def test_raw_trex_sentences_and_facts():
    corpus = load_trex(TREX)
    docs = json.loads(TREX.read_text())
    assert sum(len(d["triples"]) for d in docs) == 112
    assert len(corpus.sentences) == sum(len(d["sentences_boundaries"]) for d in docs)
    first = corpus.sentences[0]
    assert first.text.startswith("Andorra") and ("Andorra", "P37", "Catalan") in first.facts
    # With LAMA templates, facts become queries whose proponents state them.
    with_queries = load_corpus(str(TREX))
    q = next(q for q in with_queries.queries if q.fact == ("Andorra", "P37", "Catalan"))
    assert q.prompt == "The official language of Andorra is"
    by_id = with_queries.by_id()
    assert q.proponents and all(q.fact in by_id[p].facts for p in q.proponents)


def test_prompt_from_template():
    assert prompt_from_template("[X] is produced by [Y] .", "Toyota Avanza") == "Toyota Avanza is produced by"
    assert prompt_from_template("The capital of [X] is [Y] .", "Kenya") == "The capital of Kenya is"


def test_sample_corpus_is_a_usable_benchmark(sample):
    assert len(sample.sentences) >= 200 and len(sample.queries) >= 50
    assert len({s.id for s in sample.sentences}) == len(sample.sentences)
    [q] = [q for q in sample.queries if q.prompt == "Toyota Avanza is produced by"]
    assert q.target == "Toyota" and q.proponents
    by_id = sample.by_id()
    for q in sample.queries:
        assert q.proponents, q.id
        assert all(q.fact in by_id[p].facts for p in q.proponents)


def test_plain_jsonl_round_trip(tmp_path, sample):
    path = tmp_path / "c.jsonl"
    sample.write_jsonl(path)
    again = load_records(path)
    assert again.fingerprint() == sample.fingerprint()
    assert [q.proponents for q in again.queries] == [q.proponents for q in sample.queries]


def test_plain_jsonl_ids_default_to_text_hash(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "Paris is the capital of France."}\n'
                    '{"prompt": "The capital of France is", "target": "Paris", "proponents": []}\n')
    c = load_records(path)
    assert c.sentences[0].id == sentence_id("Paris is the capital of France.")


@pytest.mark.parametrize("lines, expected", [
    (['{"text": "ok."}', '{"text": "broken'], r"c\.jsonl:2: not valid JSON"),
    (['{"text": "ok."}', '', '{"txt": "typo"}'], r"c\.jsonl:3: a record needs either 'text'"),
    (['{"id": "a", "text": "one."}', '{"id": "a", "text": "two."}'],
     r"c\.jsonl:2: duplicate id 'a' \(first on line 1\)"),
    (['{"text": "one.", "facts": [["a", "b"]]}'], r"c\.jsonl:1: facts\.0"),
    (['{"text": "one."}', '{"prompt": "x", "target": "y", "proponents": ["nope"]}'],
     r"unknown proponent ids \['nope'\]"),
    (['{"text": "one."}', '{"prompt": " ", "target": "y"}'], r"c\.jsonl:2: query prompt and target must not be empty"),
    (['[1, 2]'], r"c\.jsonl:1: expected a JSON object"),
])
def test_plain_jsonl_errors_name_file_and_line(tmp_path, lines, expected):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=expected):
        load_records(path)


def test_non_utf8_line_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "fine."}\n{"text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"latin1\.jsonl:2: not UTF-8 text \(byte 0xe9\)"):
        load_records(path)


def test_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError, match="corpus not found"):
        load_corpus(str(tmp_path / "nope.jsonl"))


@needs_shared
def test_lama_bad_relation_and_split():
    with pytest.raises(CorpusError, match="relation 'P9999'"):
        load_lama(LAMA, relations=["P9999"])
    with pytest.raises(CorpusError, match="unknown split"):
        load_lama(LAMA, relations=["P176"], splits=["valid"])


def test_lama_malformed_line_names_file_and_line(tmp_path):
    root = tmp_path / "lama"
    (root / "P176").mkdir(parents=True)
    (root / "relations.jsonl").write_text('{"relation": "P176", "template": "[X] is produced by [Y] ."}\n')
    good = {"sub_label": "A", "obj_label": "B", "predicate_id": "P176",
            "evidences": [{"obj_surface": "B", "masked_sentence": "A is made by [MASK]."}]}
    (root / "P176" / "train.jsonl").write_text(json.dumps(good) + "\n" + '{"sub_label": "C"}\n')
    with pytest.raises(CorpusError, match=r"train\.jsonl:2: obj_label"):
        load_lama(root)
