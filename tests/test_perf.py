"""perf/gradient_throughput.py end to end on the tiny model: length-sorted batches, repeats with
min / median / max, ratios to the no-hooks floor, one results file (JSON + markdown) per run."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from ftrace.model.objective import index_examples

pytestmark = pytest.mark.slow  # real processes, servers or the real model: the full tier

SCRIPT = Path(__file__).resolve().parents[1] / "perf" / "gradient_throughput.py"


def perf_script(name: str):
    """perf/NAME.py, imported as a module (its directory on sys.path, as when it runs as a script: the scripts
    import perf/common.py and each other)."""
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location(name, SCRIPT.with_name(f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    return perf_script("gradient_throughput")


def test_throughput_results_file(bench, tiny_model_dir, tmp_path):
    res = bench.main(["--model", tiny_model_dir, "--examples", "8", "--batch-size", "4", "--repeats", "1",
                      "--methods", "plain,no-hooks,ftrace-embed", "--out-dir", str(tmp_path)])
    out = tmp_path / "gradient_throughput-cpu.json"
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    md = out.with_suffix(".md").read_text()
    assert "| ftrace-embed |" in md and "x no-hooks" in md
    assert res["device"] == "cpu" and res["machine"]["device"] == "cpu" and res["card"] is None
    assert res["sorted_by_length"] and res["batches"] == 2 and res["repeats"] == 1
    assert res["examples"] == 8 and res["tokens"] <= res["padded_positions"]
    by = {r["method"]: r for r in res["results"]}
    assert set(by) == {"plain", "no-hooks", "ftrace-embed"}
    for r in by.values():
        e = r["examples_per_s"]
        assert e["min"] <= e["median"] <= e["max"] and e["median"] > 0 and r["tokens_per_s"]["median"] > 0
        assert len(r["seconds"]) == 1 and r["examples"] == 8
        assert "peak_rss_mb" in r
    assert by["no-hooks"]["x_no_hooks"] == pytest.approx(1.0)
    assert by["plain"]["x_plain"] == pytest.approx(1.0)
    assert by["ftrace-embed"]["x_no_hooks"] == pytest.approx(
        by["ftrace-embed"]["examples_per_s"]["median"] / by["no-hooks"]["examples_per_s"]["median"])
    assert by["ftrace-embed"]["size"] == 4096 and by["ftrace-embed"]["x_naive"] is None


def test_throughput_random_init(bench, tiny_model_dir, tmp_path):
    out = tmp_path / "r.json"
    res = bench.main(["--random-init", tiny_model_dir, "--dtype", "bfloat16", "--examples", "4", "--repeats", "2",
                      "--naive-examples", "2", "--methods", "no-hooks", "ftrace-linear,naive-linear",
                      "--out", str(out)])
    assert out.exists() and out.with_suffix(".md").exists()
    assert res["weights"].startswith("random weights, real architecture") and res["dtype"] == "bfloat16"
    by = {r["method"]: r for r in res["results"]}
    assert by["naive-linear"]["examples"] == 2 and len(by["ftrace-linear"]["seconds"]) == 2
    assert by["ftrace-linear"]["x_naive"] > 0
    assert [t["reference"] for t in res["targets"]] == ["no-hooks"]  # bergson was not asked for


def test_serve_latency_results_file(tiny_model_dir, tmp_path):
    """perf/serve_latency.py end to end on the tiny model: a seeded sample of the sample corpus, a real
    `ftrace serve` subprocess, per-method percentiles with model and store parts, a load test."""
    mod = perf_script("serve_latency")
    out = tmp_path / "serve.json"
    res = mod.main(["--model", tiny_model_dir, "--corpus", "sample", "--sizes", "50", "--methods",
                    "bm25,embed,embed+bm25", "--requests", "3", "--warmup", "1", "--queries", "5", "--clients", "2",
                    "--load-seconds", "2", "--beside", "passive", "--work", str(tmp_path / "work"), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    md = out.with_suffix(".md").read_text()
    for size in res["sizes"]:  # the table says what the JSON says
        for r in size["results"]:
            lat = r["latency_s"]
            assert f"| {r['method']} | {1000 * lat['p50']:.0f} | {1000 * lat['p95']:.0f} |" in md, r["method"]
        # --beside: the same methods again beside a neighbour, which kept the machine busy meanwhile
        # (then once more quiet)
        for again in (size["beside"], size["quiet_after"]):
            assert [b["method"] for b in again] == [r["method"] for r in size["results"]]
            assert all(b["errors"] == 0 and b["latency_s"]["n"] == 3 for b in again)
        assert size["beside_load"]["others_cores"] > 0.2 and size["beside_load"]["policy"] == "passive"
        assert "| method | quiet p50 (before / after) | beside p50 | beside / quiet |" in md
    load = res["load"]
    assert f"{load['completed']} requests completed, {load['throughput_rps']:.2f} per second" in md
    assert [s["sentences"] for s in res["sizes"]] == [50]
    for size in res["sizes"]:
        assert size["vectors"] == {"embed": 32, "tracin": 4096} and size["build"]["wall_s"] > 0
        assert not size["build"]["reused"]
        by = {r["method"]: r for r in size["results"]}
        assert list(by) == ["bm25", "embed", "embed+bm25", "embed+bm25, model answer"]
        for r in by.values():
            lat = r["latency_s"]
            assert r["errors"] == 0 and lat["n"] == 3 and 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["max"]
            assert r["server_total_s"]["p50"] <= lat["p50"]
        assert by["bm25"]["model_s"]["max"] == 0 and by["bm25"]["bm25_s"]["min"] > 0  # BM25 with a target: no model
        assert by["embed"]["vectors_s"]["min"] > 0 and by["embed"]["qdrant_s"]["min"] > 0
        assert by["embed+bm25, model answer"]["answer_s"]["min"] > 0 and by["embed+bm25"]["answer_s"]["max"] == 0
    from ftrace.index.layout import IndexDir

    small = IndexDir(tmp_path / "work" / "lama-50").corpus
    ids = {s.id for s in small.sentences}
    assert len(ids) == 50 and small.queries and all(set(q.proponents) <= ids for q in small.queries)
    load = res["load"]
    assert load["errors"] == 0 and load["completed"] > 0 and load["sentences"] == 50 and load["clients"] == 2
    assert res["target"]["sentences"] == 50 and isinstance(res["target"]["met"], bool)
    others = [p["machine_load"]["others_cores"] for p in [*res["sizes"], load]]
    assert f"{min(others):.2f}-{max(others):.2f} of its" in res["notes"][-1]  # the note reports the measured load


def test_ingest_scale_results_file(tiny_model_dir, tmp_path):
    """perf/ingest_scale.py end to end on the tiny model: the reference passes on a fixed sample, then real
    `ftrace ingest` processes for a sample and the whole corpus, each with its wall time, RSS, disk and stages;
    a second run reuses the complete indexes."""
    mod = perf_script("ingest_scale")
    out = tmp_path / "scale.json"
    argv = ["--model", tiny_model_dir, "--corpus", "sample", "--sizes", "60,all", "--sample", "24",
            "--repeats", "2", "--work", str(tmp_path / "work"), "--out", str(out)]
    res = mod.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    ref = res["reference"]["methods"]
    assert list(ref) == ["plain forward", "body forward", "ftrace featurisation"] and ref["plain forward"][
        "x_plain_forward"] == 1.0
    for v in ref.values():
        e = v["examples_per_s"]
        assert 0 < e["min"] <= e["median"] <= e["max"] and v["x_plain_forward"] > 0
    small, full = res["sizes"]
    assert (small["sentences"], full["sentences"]) == (60, 337) and full["index"].endswith("lama-all")
    for b in (small, full):
        assert b["wall_s"] > 0 and b["peak_rss_gib"] > 0.1 and b["disk_total_bytes"] > 0 and not b["reused"]
        assert set(b["stages_s"]) >= {"bm25_s", "vectors_s"} and b["stages_s"]["vectors"] == b["sentences"]
        assert b["tracin"] == "both" and b["dtype"] == "float32"
    assert "| 337 |" in out.with_suffix(".md").read_text()
    assert all(b["reused"] for b in mod.main(argv)["sizes"])


def test_ingest_scale_tail(tiny_model_dir, tmp_path, capsys):
    """--tail N: stand-in vectors for all but ingest's last N examples, then a real ingest that builds BM25 over the
    whole corpus and featurises only those N, the longest, into a store holding the whole collection."""
    mod = perf_script("ingest_scale")
    out, work = tmp_path / "tail.json", tmp_path / "work"
    argv = ["--model", tiny_model_dir, "--corpus", "sample", "--sizes", "all", "--tail", "40", "--sample", "0",
            "--work", str(work), "--out", str(out)]
    (b,) = mod.main(argv)["sizes"]
    # the batch the tail starts in is featurised whole, as a resumed ingest does
    assert (b["sentences"], b["stand_ins"]) == (337, 297) and 40 <= b["featurised"] < 100 and b["peak_rss_gib"] > 0.1
    assert b["index"].endswith("lama-all-tail40") and b["stages_s"]["bm25_s"] >= 0
    from ftrace.config import CorpusSelection, IngestConfig
    from ftrace.index.layout import IndexDir
    from ftrace.ingest.pipeline import ingest, ingest_order
    from ftrace.model import load_model

    def embed_vectors(path):
        index = IndexDir(path)
        assert index.manifest.complete and index.bm25_dir.is_dir()
        store, out = index.open_store(), {}
        try:
            for ids, vectors, _ in store.points(["embed"]):
                out.update(zip(ids, vectors["embed"], strict=True))
        finally:
            store.close()
        return out

    tail = embed_vectors(work / "lama-all-tail40")
    ingest(IngestConfig(index=str(tmp_path / "plain"), corpus=CorpusSelection(corpus="sample"), model=tiny_model_dir))
    plain = embed_vectors(tmp_path / "plain")
    sentences = IndexDir(tmp_path / "plain").corpus.sentences
    ordered, _ = ingest_order(load_model(tiny_model_dir).tokenizer, index_examples(sentences))
    assert len(tail) == len(plain) == 337
    # the featurised tail holds the vectors a plain ingest stores; the rest stood in for them
    for i, e in enumerate(ordered):
        same = np.allclose(tail[e.id], plain[e.id], atol=1e-3)
        assert same if i >= 337 - b["featurised"] else not same, (i, e.id)
    assert f"{b['featurised']} longest of 337" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        mod.main([*argv, "--sizes", "60,all"])  # refused before anything runs
    assert "--tail N: a count of at least 1, with --sizes all" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mod.main([*argv, "--tail", "337"])  # the whole corpus would be featurised: refused
    assert "--tail 337: fewer than the corpus's 337 examples" in capsys.readouterr().err


def test_ingest_scale_compare_tokens(tiny_model_dir, tmp_path):
    """--compare-tokens adds a featurisation pass over the same sentences cut into smaller batches; with no sizes
    the script measures only the reference."""
    mod = perf_script("ingest_scale")
    out = tmp_path / "compare.json"
    res = mod.main(["--model", tiny_model_dir, "--corpus", "sample", "--sizes", "", "--sample", "24",
                    "--repeats", "1", "--batch-tokens", "256", "--compare-tokens", "64", "--sample-longest", "100",
                    "--out", str(out)])
    ref = res["reference"]
    assert res["sizes"] == [] and ref["batch_tokens"] == 256 and ref["drawn_from_longest"] == 100
    assert ref["compare_tokens"]["budget"] == 64 and ref["compare_tokens"]["batches"] >= ref["batches"]
    finer = ref["methods"]["ftrace featurisation, 64-token batches"]
    assert finer["examples_per_s"]["median"] > 0 and finer["x_plain_forward"] > 0
    md = out.with_suffix(".md").read_text()
    assert "64-token batches" in md and "sentences of the 100 longest" in md


def test_tailpatch_speed_results_file(tiny_model_dir, tmp_path):
    """perf/tailpatch_speed.py end to end on the tiny model: every part timed, min <= median <= max."""
    mod = perf_script("tailpatch_speed")
    out = tmp_path / "tp.json"
    res = mod.main(["--model", tiny_model_dir, "--sets", "3", "--k", "4", "--repeats", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == res and res["command"].startswith("python perf/tailpatch_speed.py --model ")
    assert list(res["seconds_per_set"]) == ["gradient", "step", "train step", "update", "score"]
    for t in res["seconds_per_set"].values():
        assert 0 < t["min"] <= t["median"] <= t["max"]
    assert "| step |" in out.with_suffix(".md").read_text() and res["examples_per_set"] == 4


def test_train_step_results_file(tiny_model_dir, tmp_path):
    """perf/train_step.py end to end on the tiny model: the three ways timed over the same epoch, the padding that
    one padded batch costs counted, and the ratio to the floor taken from the same run."""
    mod = perf_script("train_step")
    out = tmp_path / "ts.json"
    res = mod.main(["--model", tiny_model_dir, "--corpus", "sample", "--examples", "12", "--batch-size", "4",
                    "--repeats", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == res and res["examples"] == 12
    assert list(res["seconds_per_epoch"]) == ["one padded batch", "ftrace step", "floor"]
    for t in res["seconds_per_epoch"].values():
        assert 0 < t["min"] <= t["median"] <= t["max"]
    assert res["padded_tokens_one_batch"] >= res["tokens"] and res["x_floor"]["floor"] == 1.0
    assert "| ftrace step |" in out.with_suffix(".md").read_text()


def test_shared_machine_results_file(tiny_model_dir, tmp_path):
    """perf/shared_machine.py end to end on the tiny model: real worker processes alone and beside a neighbour,
    per wait policy, each with its rates and the machine's load."""
    mod = perf_script("shared_machine")
    out = tmp_path / "shared.json"
    res = mod.main(["--model", tiny_model_dir, "--sentences", "8", "--passes", "2", "--threads", "1",
                    "--policies", "spin,passive", "--out", str(out)])
    assert json.loads(out.read_text()) == res
    assert [(s["policy"], s["threads"]) for s in res["settings"]] == [("spin", 1), ("passive", 1)]
    for s in res["settings"]:
        for run in (s["alone"], s["beside"]):
            e = run["examples_per_s"]
            assert 0 < e["min"] <= e["median"] <= e["max"] and run["torch_threads"] == 1
    assert "| passive | 1 |" in out.with_suffix(".md").read_text()


def test_hnsw_recall_results_file(sample_index, tmp_path):
    """perf/hnsw_recall.py end to end on the tiny sample index: HNSW built on a copy (the original stays exact),
    recall of each vector kind within [0, 1] with latencies for both searches."""
    from ftrace.index.manifest import Manifest

    mod = perf_script("hnsw_recall")
    before = Manifest.read(sample_index).model_dump()
    out = tmp_path / "hnsw.json"
    res = mod.main(["--index", str(sample_index), "--queries", "6", "--warmup", "1", "--work", str(tmp_path / "w"),
                    "--ef", "0,64", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert set(res["vectors"]) == {"embed", "tracin"} and res["queries"] == 6
    for v in res["vectors"].values():
        assert list(v["hnsw"]) == ["0", "64"] and 0 < v["exact"]["p50_ms"]
        for h in v["hnsw"].values():
            recall = h["recall@10"]
            assert 0.0 <= recall["min"] <= recall["mean"] <= 1.0 and 0 < h["latency"]["p50_ms"]
    assert Manifest.read(sample_index).model_dump() == before and (tmp_path / "w").exists()


def test_corpus_scale_recall_by_beam(sample_index):
    """perf/corpus_scale.py's HNSW recall on the tiny sample index (exact segments: every beam finds the exact top
    k): the store's own beam first, then the others, a repeated beam measured once."""
    from ftrace.index.vectors import HNSW_EF_MIN

    mod = perf_script("corpus_scale")
    by_beam = mod.recall(sample_index, mod.sample(sample_index, 4, 0), 3, [64, HNSW_EF_MIN, 64])
    assert list(by_beam) == [HNSW_EF_MIN, 64]
    for beam, r in by_beam.items():
        assert r["beam"] == beam and r["queries"] == 4 and r["recall@3"] == r["by_id"] == r["by_document"] == 1.0


def test_query_floor_results_file(sample_index, tmp_path):
    """perf/query_floor.py on the tiny model's sample index: ftrace's query vector and answer beside their floors
    (the bare decode loop must give the same answers, or the script stops), ratios and top ops in the file."""
    mod = perf_script("query_floor")
    out = tmp_path / "floor.json"
    res = mod.main(["--index", str(sample_index), "--queries", "3", "--repeats", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    s = res["seconds_per_query"]
    assert set(s) == {"query vector", "floor: forward + backward", "forward", "answer", "floor: decode"}
    assert all(0 < v["min"] <= v["median"] <= v["max"] for v in s.values())
    assert set(res["x_floor"]) == {"query vector", "answer"} and all(x > 0 for x in res["x_floor"].values())
    assert all(len(ops) == 5 and ops[0]["self_ms"] >= ops[-1]["self_ms"] for ops in res["profiles"].values())
    assert f"| query vector | {1000 * s['query vector']['min']:.0f} /" in out.with_suffix(".md").read_text()


def test_passage_cut_results_file(sample, tiny_model_dir, tmp_path):
    """perf/passage_cut.py on the tiny model's tokenizer: the corpus stage, the cut one document at a time and the
    floor, each timed, on documents long enough to be cut."""
    mod = perf_script("passage_cut")
    texts = [s.text for s in sample.sentences]
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{k}", "text": " ".join(texts[k:k + 40])}) + "\n"
                            for k in range(0, 200, 20)))
    out = tmp_path / "cut.json"
    res = mod.main(["--documents", str(docs), "--limit", "8", "--repeats", "2", "--model", tiny_model_dir,
                    "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["documents"] == 8 and res["passages"] > 8  # cut: more passages than documents
    assert list(res["ways"]) == ["store", "each document alone", "floor"] and res["ways"]["floor"]["x_floor"] == 1.0
    for w in res["ways"].values():
        s = w["seconds"]
        assert 0 < s["min"] <= s["median"] <= s["max"] and w["passages_per_s"] > w["documents_per_s"] > 0
    assert "| each document alone |" in out.with_suffix(".md").read_text()
