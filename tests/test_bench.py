"""`ftrace bench` on the sample index with the tiny random model: candidate sets, metrics, tuning,
resume, both modes, the reports and the command."""

import json
import math

import pytest
from typer.testing import CliRunner

from ftrace.bench import metrics as M
from ftrace.bench.candidates import CorpusView, candidate_set, sample_queries, seeded_tiebreak
from ftrace.bench.runner import plan_methods, run_bench, tune_weight
from ftrace.config import BenchConfig, CandidateSizes
from ftrace.corpus import normalize as norm
from ftrace.query.fusion import ranking
from ftrace.query.methods import Method
from ftrace.query.tracer import Tracer


def bench_results(*args, **kwargs):
    return run_bench(*args, **kwargs).results


def pairs(parts):
    """tune_weight's input from (scores of a, scores of b) per query."""
    return {q: {"a": a, "b": b} for q, (a, b) in parts.items()}


AB = Method(("a", "b"))

METHODS = ["bm25", "embed", "embed+bm25", "random-target"]  # on an index without gradient vectors


@pytest.fixture(scope="module")
def view(sample):
    return CorpusView(sample)


@pytest.fixture(scope="module")
def bm25(sample_index):
    from ftrace.index.lexical import LuceneBM25

    index = LuceneBM25(sample_index / "bm25")
    yield index
    index.close()


@pytest.fixture(scope="module")
def planned(sample_index):
    """What a default run evaluates on the sample index: its methods, FTRACE's fusions, the baseline."""
    from ftrace.index.manifest import Manifest

    singles = ["bm25", *Manifest.read(sample_index).vectors]
    methods, skipped = plan_methods(None, singles)
    return {"singles": singles, "methods": methods, "skipped": skipped}


@pytest.fixture
def answers(monkeypatch, sample):
    """The model 'knows' every third query's fact (answered in another case, with spaces), fast."""
    known = {q.prompt: q.target for q in sample.queries[::3]}
    monkeypatch.setattr(Tracer, "answer", lambda self, prompt: f"  {known[prompt].upper()} " if prompt in known
                        else "something else")
    return {q.id for q in sample.queries[::3]}


def ranked_by_bm25(bm25, q):
    return lambda k: [i for i, _ in bm25.search(f"{q.prompt} {q.target}", k)]


# --- candidate sets ---------------------------------------------------------------------------

def test_candidate_set_groups_caps_and_union(sample, view, bm25):
    q = next(q for q in sample.queries if q.id == "q-003")  # Toyota Corolla: 6 more Toyota sentences
    pool = set(view.same_target(q.target))
    assert len(pool - set(q.proponents)) == 6
    small = CandidateSizes(bm25=5, same_target=3, random=20)
    c = candidate_set(q, view, ranked_by_bm25(bm25, q), 0, small)
    ids = c.ids
    # corpus large enough for every group: exactly proponents + 5 + 3 + 20, no duplicates
    assert len(ids) == len(set(ids)) == len(q.proponents) + 5 + 3 + 20
    assert c.proponents == q.proponents and set(q.proponents) <= set(ids)
    assert c.bm25 == [i for i in ranked_by_bm25(bm25, q)(50) if i not in q.proponents][:5]
    assert set(c.same_target) <= pool  # really share the target ...
    for sid in c.same_target:
        assert any(norm(t[2]) == norm(q.target) for t in view_facts(sample, sid))
    assert not set(c.same_target) & set(c.bm25)  # ... and are drawn from what BM25 left

    # default sizes on a 337-sentence corpus: BM25 and the random group run short of sentences
    full = candidate_set(q, view, ranked_by_bm25(bm25, q), 0)
    n = len(full.ids)
    assert n == len(set(full.ids)) <= len(q.proponents) + 300
    assert len(full.bm25) <= 100 and len(full.same_target) == len(pool - set(q.proponents) - set(full.bm25))
    assert len(full.random) == min(100, len(sample.sentences) - len(q.proponents) - len(full.bm25)
                                   - len(full.same_target))
    everything = candidate_set(q, view, ranked_by_bm25(bm25, q), 0, CandidateSizes(random=10_000))
    assert sorted(everything.ids) == sorted(s.id for s in sample.sentences)  # capped at the corpus


def view_facts(corpus, sid):
    return next(s.facts for s in corpus.sentences if s.id == sid)


def test_candidate_draws_are_seeded(sample, view, bm25):
    q = next(q for q in sample.queries if q.id == "q-003")
    sizes = CandidateSizes(bm25=5, same_target=3, random=20)
    a = candidate_set(q, view, ranked_by_bm25(bm25, q), 0, sizes)
    again = candidate_set(q, view, ranked_by_bm25(bm25, q), 0, sizes)
    other = candidate_set(q, view, ranked_by_bm25(bm25, q), 1, sizes)
    assert a.ids == again.ids
    assert a.bm25 == other.bm25 and a.random != other.random
    three = CandidateSizes(bm25=0, same_target=3, random=0)
    assert len({tuple(sorted(candidate_set(q, view, ranked_by_bm25(bm25, q), s, three).same_target))
                for s in range(6)}) > 1  # 3 of 6 same-target sentences: seeds draw different ones
    r = next(x for x in sample.queries if x.id == "q-010")
    assert candidate_set(r, view, ranked_by_bm25(bm25, r), 0, sizes).random != a.random  # per query


def test_query_sampling_is_seeded_and_nested(sample):
    first = sample_queries(sample.queries, 10, 0)
    assert [q.id for q in first] == [q.id for q in sample_queries(sample.queries, 10, 0)]
    assert [q.id for q in sample_queries(sample.queries, 4, 0)] == [q.id for q in first[:4]]
    assert [q.id for q in sample_queries(sample.queries, 10, 1)] != [q.id for q in first]


# --- metrics ---------------------------------------------------------------------------------------

def test_metrics_by_hand():
    fill = [f"x{i}" for i in range(20)]
    props = {"q1": ["a"], "q2": ["a", "b"], "q3": ["z"], "q4": ["w"]}
    rankings = {
        "q1": ["x0", "a", "x1"],                       # first proponent at rank 2
        "q2": ["a", *fill[:10], "b"],                  # one of two proponents in the top 10
        "q3": [*fill[:10], "z"],                       # proponent at rank 11
        "q4": [],                                      # nothing ranked
    }
    pq = M.per_query(props, rankings)
    assert pq["mrr"] == pytest.approx({"q1": 0.5, "q2": 1.0, "q3": 1 / 11, "q4": 0.0})
    assert pq["recall@10"] == pytest.approx({"q1": 1.0, "q2": 0.5, "q3": 0.0, "q4": 0.0})  # FTRACE
    assert pq["hit_rate@10"] == pytest.approx({"q1": 1.0, "q2": 1.0, "q3": 0.0, "q4": 0.0})  # TrackStar
    means = M.evaluate(props, rankings)
    assert means["mrr"] == pytest.approx((0.5 + 1 + 1 / 11) / 4) and means["recall@10"] == pytest.approx(0.375)
    assert M.mean_std([0.5, 0.7]) == {"mean": pytest.approx(0.6), "std": pytest.approx(math.sqrt(0.02)), "n": 2}
    assert M.mean_std([float("nan")])["mean"] is None


def test_paired_test():
    props = {f"q{i}": ["p"] for i in range(30)}
    good = {q: ["p", "x", "y"] for q in props}
    bad = {q: ["x", "y", "p"] if i % 5 else ["p", "x", "y"] for i, q in enumerate(props)}
    p = M.paired_test(props, good, bad, ("good", "bad"))
    assert p["mrr"] < 1e-4 and p["hit_rate@10"] is None  # both always hit: no difference, no p
    assert M.paired_test(props, good, bad, ("good", "bad"), stat_test="fisher")["mrr"] < 0.01
    assert M.paired_test(props, good, good, ("a", "b"))["mrr"] is None


def test_ties_are_broken_by_a_seeded_random_order():
    scores = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.0}
    orders = {tuple(i for i, _ in ranking(scores, seeded_tiebreak(seed, "q"))) for seed in range(20)}
    assert len(orders) > 1 and all(o[-1] == "d" for o in orders)
    assert ranking(scores, seeded_tiebreak(3, "q")) == ranking(scores, seeded_tiebreak(3, "q"))


# --- fusion weights ------------------------------------------------------------------------------

def test_tuning_picks_the_right_weight():
    props = {f"q{i}": ["p"] for i in range(5)}
    # a ranks the proponent first by a small margin; b is misleading: only w = 1 gets it right.
    a = {"p": 1.0, "d": 0.9, "e": 0.0}
    b = {"p": 0.0, "d": 1.0, "e": 0.5}
    w, mrr = tune_weight(pairs({q: (a, b) for q in props}), props, AB)
    assert w == 1.0 and mrr[1.0] == 1.0 and all(v < 1.0 for k, v in mrr.items() if k < 1.0)
    w, _ = tune_weight(pairs({q: (b, a) for q in props}), props, AB)
    assert w == 0.0
    # each part alone is fooled by a different distractor; any blend in (0.1, 0.9) is right: 0.5 wins ties.
    a = {"p": 0.9, "d1": 1.0, "d2": 0.0}
    b = {"p": 0.9, "d1": 0.0, "d2": 1.0}
    w, mrr = tune_weight(pairs({q: (a, b) for q in props}), props, AB)
    assert w == 0.5 and mrr[0.0] < 1.0 and mrr[1.0] < 1.0 and mrr[0.3] == 1.0


def test_plan_methods():
    methods, skipped = plan_methods(None, ["bm25", "embed"])
    assert methods == METHODS and set(skipped) == {"tracin", "tracin+embed", "tracin+bm25"}
    methods, skipped = plan_methods(None, ["bm25", "embed", "tracin"])
    assert methods == ["bm25", "embed", "tracin", "tracin+embed", "tracin+bm25", "embed+bm25", "random-target"]
    assert skipped == {}
    methods, skipped = plan_methods(["bm25", "tracin+bm25", "nope", "bm25"], ["bm25", "embed"])
    assert methods == ["bm25"] and set(skipped) == {"tracin+bm25", "nope"}
    from ftrace import FtraceError
    with pytest.raises(FtraceError, match="none of them"):
        plan_methods(["tracin"], ["bm25"])
    with pytest.raises(FtraceError, match="two methods"):
        plan_methods(["a+b+c"], ["a", "b", "c"])


# --- runs -------------------------------------------------------------------------------------------

def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rerank_run_reports_and_slices(sample_index, sample, answers, planned, tmp_path):
    out = tmp_path / "rerank"
    s = BenchConfig(index=sample_index, split=None, queries=8, seeds=2, out=out)
    r = bench_results(s)
    METHODS = planned["methods"]
    assert {"bm25", "embed", "embed+bm25", "random-target"} <= set(METHODS)
    assert r["methods"] == METHODS and r["skipped"] == planned["skipped"]
    assert r["fusion"]["weights"]["embed+bm25"]["weight"] == 0.5 and r["fusion"]["grid"][-1] == 1.0
    per_seed = r["queries"]["per_seed"]
    assert len(per_seed["0"]) == len(per_seed["1"]) == 8 and per_seed["0"] != per_seed["1"]
    assert r["query_counts"]["all"] == [8, 8]
    assert r["query_counts"]["pre-train-learned"] == [len(set(ids) & answers) for ids in per_seed.values()]
    for sl in ("all", "pre-train-learned"):
        for method in METHODS:
            for m in M.METRICS:
                stat = r["metrics"][sl][method][m]
                assert 0.0 <= stat["mean"] <= 1.0 and stat["std"] >= 0.0 and len(stat["per_seed"]) == 2
    sig = r["significance"]["all"]
    assert sig["compared"][1] == "bm25" and sig["pairs"] == 16 and set(sig["student"]) == set(M.METRICS)
    assert r["index"]["identity"]["corpus"] == sample.fingerprint() and r["index"]["search"] == "exact"

    # the report files
    assert json.loads((out / "results.json").read_text())["metrics"] == r["metrics"]
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "table.md").read_text()
    for method in METHODS:
        assert table.count(f"| {method} |") == 2  # one row per slice
    assert "| Method | MRR | Recall@10 (FTRACE) | Recall@10 (TrackStar) |" in table
    assert "queries per seed: 8, 8" in table
    assert all(f"skipped {m}" in table for m in planned["skipped"])

    # rankings.jsonl agrees with the metrics: MRR recomputed from the proponent ranks
    rows = read_jsonl(out / "rankings.jsonl")
    assert len(rows) == 2 * 8 * len(METHODS)
    by = {(x["seed"], x["query"], x["method"]): x for x in rows}
    queries = {q.id: q for q in sample.queries}
    for seed in (0, 1):
        for method in METHODS:
            rr = [1 / min(by[(seed, qid, method)]["proponent_ranks"]) for qid in per_seed[str(seed)]]
            assert sum(rr) / len(rr) == pytest.approx(r["metrics"]["all"][method]["mrr"]["per_seed"][seed])
        x = by[(seed, per_seed[str(seed)][0], "bm25")]
        assert len(x["top"]) == 10 and x["unranked_proponents"] == 0  # rerank ranks every candidate
        q = queries[x["query"]]
        assert x["ranked"] <= len(q.proponents) + 300 and x["learned"] == (q.id in answers)
    # the random-target baseline puts same-target sentences first
    view = CorpusView(sample)
    for x in rows:
        if x["method"] == "random-target":
            same = set(view.same_target(queries[x["query"]].target))
            k = min(len(same), 10)
            assert all(i in same for i, _ in x["top"][:k])


def test_resume_reuses_cache_and_never_mixes_settings(sample_index, answers, planned, tmp_path, monkeypatch):
    n = len(planned["singles"])  # single methods, each cached per (seed, query)
    out = tmp_path / "resume"
    s = BenchConfig(index=sample_index, split=None, queries=6, seeds=2, out=out,
                      sizes=CandidateSizes(bm25=20, same_target=10, random=20))
    first = bench_results(s, write=False)
    cache = out / "cache.jsonl"
    lines = cache.read_text().splitlines()
    distinct = len({q for ids in first["queries"]["per_seed"].values() for q in ids})
    assert first["cache"]["computed"] == 2 * 6 * n  # (seed, query) x {bm25, embed, ...}
    assert len(lines) == first["cache"]["computed"] + distinct  # + the model's answers

    calls = []
    for name in ("score", "retrieve", "query_vectors", "answer"):
        real = getattr(Tracer, name)
        monkeypatch.setattr(Tracer, name, lambda self, *a, _n=name, _f=real, **k: calls.append(_n) or _f(self, *a, **k))
    with cache.open("a") as f:
        f.write('{"k": "torn')  # a run killed mid-write
    again = bench_results(s, write=False)
    assert [c for c in calls if c != "retrieve"] == [] and again["cache"]["computed"] == 0
    assert again["cache"]["reused"] == len(lines) and again["cache"]["compute_s"] == first["cache"]["compute_s"]
    assert again["metrics"] == first["metrics"] and again["significance"] == first["significance"]
    assert calls.count("retrieve") == 12  # only BM25's candidate lists, which are not cached
    assert len(cache.read_text().splitlines()) == len(lines) + 1

    fewer = bench_results(s.model_copy(update={"queries": 3}), write=False)  # a prefix of the same draws
    assert fewer["cache"]["computed"] == 0

    calls.clear()
    beside = bench_results(s.model_copy(update={"out": tmp_path / "beside"}), write=False)
    assert "answer" not in calls and calls.count("score") == 2 * 6 * n  # answers come from ../resume
    assert beside["metrics"] == first["metrics"] and beside["answers"] == first["answers"]

    calls.clear()
    fewer_random = CandidateSizes(bm25=20, same_target=10, random=5)
    other = bench_results(s.model_copy(update={"sizes": fewer_random}), write=False)
    assert other["cache"]["computed"] == 2 * 6 * n and calls.count("score") == 2 * 6 * n  # nothing stale reused
    assert other["cache"]["other_settings_entries"] == 2 * 6 * n
    assert "answer" not in calls  # the model's answers do not depend on the candidate sets
    assert other["queries"] == first["queries"]
    full = bench_results(s.model_copy(update={"mode": "full", "depth": 15}), write=False)
    assert full["cache"]["computed"] > 0 and full["cache"]["other_settings_entries"] == 2 * 2 * 6 * n


def test_full_mode_matches_tracer_query(sample_index, sample, answers, planned, tmp_path):
    METHODS = planned["methods"]
    out = tmp_path / "full"
    s = BenchConfig(index=sample_index, mode="full", split=None, queries=5, seeds=2, depth=20, out=out)
    r = bench_results(s)
    assert r["index"]["search"] == "exact" and r["depth"] == 20
    for sl in ("all", "pre-train-learned"):
        for method in METHODS:
            for m in M.METRICS:
                v = r["metrics"][sl][method][m]["mean"]
                assert v is None and r["query_counts"][sl] == [0, 0] or 0.0 <= v <= 1.0
    table = (out / "table.md").read_text()
    assert all(table.count(f"| {m} |") == 2 for m in METHODS) and "whole corpus" in table
    rows = read_jsonl(out / "rankings.jsonl")
    assert all(x["ranked"] <= 20 for x in rows)
    # the bench's fused ranking is Tracer.query's
    x = next(x for x in rows if x["method"] == "embed+bm25")
    q = next(q for q in sample.queries if q.id == x["query"])
    tracer = Tracer(sample_index)
    try:
        result = tracer.query(q.prompt, target=q.target, k=10, method="embed+bm25", depth=20)
    finally:
        tracer.close()
    ours = dict(x["top"])
    assert [row.sentence_id for row in result.rows] == [i for i, _ in x["top"]]
    assert [ours[row.sentence_id] for row in result.rows] == pytest.approx([row.score for row in result.rows], abs=1e-5)


def test_tune_split_is_used_and_recorded(sample_index, answers, tmp_path):
    s = BenchConfig(index=sample_index, split=None, tune_split=None, queries=4, seeds=1, out=tmp_path / "t",
                      methods=["bm25", "embed+bm25"], sizes=CandidateSizes(bm25=10, same_target=5, random=10))
    r = bench_results(s, write=False)
    assert r["fusion"]["weights"]["embed+bm25"] == {"weight": 0.5, "source": "default, no --tune-split"}
    from ftrace import FtraceError
    with pytest.raises(FtraceError, match="--tune-split train: no queries"):
        bench_results(s.model_copy(update={"tune_split": "train"}), write=False)  # the sample has no splits
    with pytest.raises(FtraceError, match="--split dev: no queries"):
        bench_results(s.model_copy(update={"split": "dev"}), write=False)

    tracer = Tracer(sample_index)  # give the sample's queries splits: odd ones train, even ones dev
    try:
        for i, q in enumerate(tracer.corpus.queries):
            q.split = "train" if i % 2 else "dev"
        tuned = bench_results(s.model_copy(update={"split": "dev", "tune_split": "train", "queries": 6}), tracer=tracer,
                          write=False)
    finally:
        tracer.close()
    w = tuned["fusion"]["weights"]["embed+bm25"]
    assert w["source"].startswith("tuned on split 'train'") and w["queries"] == 6
    mrr = {float(k): v for k, v in w["mrr_by_weight"].items()}
    assert sorted(mrr) == s.grid and mrr[w["weight"]] == max(mrr.values())
    train = {q.id for i, q in enumerate(tracer.corpus.queries) if i % 2}
    assert not set(tuned["queries"]["per_seed"]["0"]) & train  # evaluated on dev only


def test_bench_command(sample_index, answers, tmp_path):
    from ftrace.cli import app

    runner = CliRunner()
    out = tmp_path / "cli"
    r = runner.invoke(app, ["bench", "--index", str(sample_index), "--split", "all", "--queries", "3", "--seeds", "1",
                            "--methods", "bm25,nosuch", "--methods", "random-target", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["methods"] == ["bm25", "random-target"] and "no 'nosuch' method" in res["skipped"]["nosuch"]
    assert (out / "table.md").exists() and (out / "plot.png").exists()
    r = runner.invoke(app, ["bench", "--index", str(sample_index), "--split", "all", "--queries", "3", "--seeds", "1",
                            "--methods", "bm25", "--out", str(out)])
    assert r.exit_code == 0 and "| bm25 |" in r.stdout
    for args, message in [(["--mode", "exact"], "--mode 'exact'"), (["--split", "test"], "--split test: no queries"),
                          (["--methods", "nosuch"], "none of them can run")]:
        r = runner.invoke(app, ["bench", "--index", str(sample_index), "--out", str(tmp_path / "bad"), *args])
        assert r.exit_code == 1 and message in r.output, r.output
    r = runner.invoke(app, ["bench", "--index", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "no such directory" in r.output
