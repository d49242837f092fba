"""`ftrace bench` on the sample index with the tiny random model: candidate sets, metrics, tuning,
resume, both modes, the reports and the command."""

import json
import math

import pytest
from typer.testing import CliRunner

from ftrace import FtraceError
from ftrace.bench import metrics as M
from ftrace.bench import scoring
from ftrace.bench.candidates import CorpusView, candidate_set, sample_queries, seeded_tiebreak
from ftrace.bench.evaluate import evaluate
from ftrace.bench.methods import plan_methods, tune_weight
from ftrace.bench.runner import run_bench
from ftrace.bench.slices import answer_is_right, learned_slice
from ftrace.config import BenchConfig, CandidateSizes, TraceOptions
from ftrace.corpus import Query
from ftrace.corpus import match_key as norm
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


def fake_answers(known):
    """A stand-in for greedy_answers: the model 'knows' the facts of `known` (prompt -> target) and
    answers them in another case, with spaces and more words; anything else it answers wrongly."""
    def answers(lm, prompts, batch_size=16, max_new_tokens=8, max_tokens=None):
        return [f"  {known[p].upper()}   and more " if p in known else "something else" for p in prompts]
    return answers


def patch_answers(monkeypatch, answers):
    """Stand in for the generated answers and for the teacher-forced rule, which then follows them."""
    monkeypatch.setattr(scoring, "greedy_answers", answers)
    monkeypatch.setattr(scoring, "answers_right", lambda lm, prompts, targets, **k: [
        answer_is_right(a, t) for a, t in zip(answers(lm, prompts), targets, strict=True)])


@pytest.fixture
def answers(monkeypatch, sample):
    """The model 'knows' every third query's fact: a pre-train-learned slice on the sample index, whose random tiny
    model knows none (the two tests of that slice's bookkeeping use it; the learned slice of a real run is
    test_the_learned_slice_of_a_real_training_run's)."""
    patch_answers(monkeypatch, fake_answers({q.prompt: q.target for q in sample.queries[::3]}))
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


def test_paired_pvalues_by_hand():
    from scipy import stats

    # differences 1, 2, 3, 4: t = 2.5 / (sd / 2) with 3 degrees of freedom; of the 16 sign flips only
    # all + and all - reach |mean| >= 2.5, so the exact randomisation p is 2/16
    a, b = [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]
    p = M.paired_pvalues(a, b)
    t = 2.5 / (math.sqrt(5 / 3) / 2)
    assert p["student"] == pytest.approx(2 * stats.t.sf(t, 3)) == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert p["fisher"] == pytest.approx(2 / 16)
    assert M.paired_pvalues(b, a) == pytest.approx(p)  # two-sided
    assert M.paired_pvalues(a, a) == {"student": None, "fisher": None}  # no difference, nothing to test
    assert M.paired_pvalues([1.0], [0.0]) == {"student": None, "fisher": None}
    good = [1.0] * 30  # 24 of 30 queries better: both tests reject, the randomisation one at its 10,000 resamples
    bad = [1 / 3 if i % 5 else 1.0 for i in range(30)]
    p = M.paired_pvalues(good, bad)
    assert p["student"] < 1e-4 and p["fisher"] < 1e-3
    assert M.paired_pvalues(good, bad) == p  # seeded


def q_(qid):
    return Query(id=qid, prompt=f"prompt {qid}", target="t", proponents=["p"])


def test_significance_is_over_distinct_queries():
    q1, q2, q3 = q_("q1"), q_("q2"), q_("q3")
    per_seed = {0: [q1, q2], 1: [q1, q3]}  # q1 is drawn by both seeds
    at = {1: [("p", 3.0), ("a", 2.0), ("b", 1.0)], 2: [("a", 3.0), ("p", 2.0), ("b", 1.0)],
          3: [("a", 3.0), ("b", 2.0), ("p", 1.0)]}  # the proponent at rank 1, 2, 3
    ranks = {(0, "q1"): (1, 2), (0, "q2"): (1, 3), (1, "q1"): (2, 1), (1, "q3"): (1, 2)}  # (x, bm25)
    rankings = {(seed, q, m): at[r[i]] for (seed, q), r in ranks.items() for i, m in enumerate(["x", "bm25"])}
    slice_of = {"q1": "pre-train-learned", "q2": "not-learned", "q3": "pre-train-learned"}
    draws = set(ranks)
    members = {"all": draws, **{sl: {d for d in draws if slice_of[d[1]] == sl}
                                for sl in ("pre-train-learned", "not-learned")},
               "bm25-hard": {d for d in draws if ranks[d][1] > 1}}  # per draw: q1 is hard for seed 0 only
    r = evaluate(per_seed, rankings, ["bm25", "x"], members, "student")
    assert r["metrics"]["all"]["x"]["mrr"]["per_seed"] == [1.0, 0.75]
    assert r["query_counts"] == {"all": [2, 2], "pre-train-learned": [1, 2], "not-learned": [1, 0],
                                 "bm25-hard": [2, 1]}
    assert r["metrics"]["bm25-hard"]["bm25"]["mrr"]["per_seed"] == [(1 / 2 + 1 / 3) / 2, 1 / 2]
    sig = r["significance"]["all"]
    assert sig["best"] == "x" and sig["queries"] == 3 and sig["seed_query_pairs"] == 4
    assert sig["unit"] == "distinct queries (each averaged over the seeds that drew it)"
    # per distinct query, MRR averaged over seeds: q1 (1 + 1/2)/2 for both; q2 1 vs 1/3; q3 1 vs 1/2
    x, bm = [0.75, 1.0, 1.0], [0.75, 1 / 3, 0.5]
    from scipy import stats
    assert sig["student"]["mrr"] == pytest.approx(stats.ttest_rel(x, bm).pvalue)
    pooled = stats.ttest_rel([1, 1, 0.5, 1], [0.5, 1 / 3, 1, 0.5]).pvalue  # (seed, query) pairs: another p
    assert sig["student"]["mrr"] != pytest.approx(pooled)
    assert sig["fisher"]["mrr"] == pytest.approx(4 / 8)  # differences 0, 2/3, 1/2: 4 of 8 flips reach 7/6
    assert sig["vs_bm25"]["x"]["mean_difference"]["mrr"] == pytest.approx((2 / 3 + 1 / 2) / 3)
    assert sig["student"]["hit_rate@10"] is None  # every ranking hits
    assert r["significance"]["not-learned"] == {"note": "too few distinct queries (1) for a paired test"}


def test_answer_rule():
    for answer, target in [("Toyota", "Toyota"), ("toyota motor", "Toyota"), ("  TOYOTA  ", "toyota"),
                           ("Toyota's", "Toyota"), ("Toyota-based", "Toyota"), ("New  York City", "new york"),
                           ("the Toyota", "Toyota")]:  # one rule: a leading article aside
        assert answer_is_right(answer, target), (answer, target)
    for answer, target in [("Toyotas", "Toyota"), ("Toy", "Toyota"), ("", "Toyota"),
                           ("Toyota", ""), ("New Yorker", "New York"), ("Honda", "Toyota")]:
        assert not answer_is_right(answer, target), (answer, target)
    assert learned_slice(True, None) == "pre-train-learned" and learned_slice(False, None) == "not-learned"
    assert learned_slice(True, True) == learned_slice(False, True) == "pre-train-learned"
    assert learned_slice(True, False) == "fine-tune-learned" and learned_slice(False, False) == "not-learned"


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
    assert list(r["metrics"]) == list(r["query_counts"]) == ["all", "pre-train-learned", "not-learned", "bm25-hard"]
    assert r["query_counts"]["pre-train-learned"] == [len(set(ids) & answers) for ids in per_seed.values()]
    assert r["query_counts"]["not-learned"] == [len(set(ids) - answers) for ids in per_seed.values()]
    distinct = {q for ids in per_seed.values() for q in ids}
    rows = read_jsonl(out / "rankings.jsonl")
    hard = {(x["seed"], x["query"]) for x in rows if x["method"] == "bm25" and 1 not in x["proponent_ranks"]}
    assert r["query_counts"]["bm25-hard"] == [sum(seed == k for k, _ in hard) for seed in (0, 1)]
    assert r["answers"]["slices"] == {"all": len(distinct), "pre-train-learned": len(distinct & answers),
                                      "not-learned": len(distinct - answers), "bm25-hard": len({q for _, q in hard})}
    assert r["answers"]["base"] is None and "prefix" in r["answers"]["rule"]
    for sl in ("all", "pre-train-learned", "not-learned"):
        for method in METHODS:
            for m in M.METRICS:
                stat = r["metrics"][sl][method][m]
                assert 0.0 <= stat["mean"] <= 1.0 and stat["std"] >= 0.0 and len(stat["per_seed"]) == 2
    sig = r["significance"]["all"]
    assert sig["compared"][1] == "bm25" and set(sig["student"]) == set(M.METRICS)
    assert sig["queries"] == len(distinct) < sig["seed_query_pairs"] == 16  # the seeds share queries
    assert set(sig["vs_bm25"]) == set(METHODS) - {"bm25"}
    assert sig["vs_bm25"][sig["compared"][0]]["fisher"] == sig["fisher"]
    assert r["index"]["identity"]["corpus"] == sample.fingerprint() and r["index"]["search"] == "exact"

    # the report files
    assert json.loads((out / "results.json").read_text())["metrics"] == r["metrics"]
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "table.md").read_text()
    for method in METHODS:
        assert table.count(f"| {method} |") == 3 + bool(hard)  # one row per slice (bm25-hard: where it has draws)
    assert r["answers"]["rule"] in table and f"over {len(distinct)} distinct queries" in table
    assert "| Method | MRR | Recall@10 (FTRACE) | Recall@10 (TrackStar) |" in table
    assert "queries per seed: 8, 8" in table
    assert all(f"skipped {m}" in table for m in planned["skipped"])
    # each slice's table warns of exactly the methods whose MRR is below random-target's
    for sl, metrics in r["metrics"].items():
        floor = metrics["random-target"]["mrr"]["mean"]
        below = [m for m in METHODS if m != "random-target" and metrics[m]["mrr"]["mean"] < floor]
        section = table.split(f"## {sl} (")[1].split("\n## ")[0]
        warned = section.split("**Warning: below random-target by MRR")[1].split("\n")[0] if below else ""
        assert ("**Warning" in section) == bool(below) and all(f" {m} (" in warned for m in below), (sl, section)

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
        assert x["slice"] == ("pre-train-learned" if q.id in answers else "not-learned") and "base_answer" not in x
    # the random-target baseline puts same-target sentences first
    view = CorpusView(sample)
    for x in rows:
        if x["method"] == "random-target":
            same = set(view.same_target(queries[x["query"]].target))
            k = min(len(same), 10)
            assert all(i in same for i, _ in x["top"][:k])


def test_resume_reuses_cache_and_never_mixes_settings(sample_index, planned, tmp_path, monkeypatch):
    n = len(planned["singles"])  # single methods, each cached per (seed, query)
    out = tmp_path / "resume"
    s = BenchConfig(index=sample_index, split=None, queries=6, seeds=2, out=out,
                      sizes=CandidateSizes(bm25=20, same_target=10, random=20))
    first = bench_results(s, write=False)
    cache = out / "cache.jsonl"
    lines = cache.read_text().splitlines()
    distinct = len({q for ids in first["queries"]["per_seed"].values() for q in ids})
    assert first["cache"]["computed"] == 2 * 6 * n  # (seed, query) x {bm25, embed, ...}
    eligible = first["queries"]["eligible"]
    assert len(lines) == first["cache"]["computed"] + distinct + eligible  # + answers (drawn) and rights (all)

    calls = []
    for name in ("score", "retrieve", "query_vectors"):
        real = getattr(Tracer, name)
        monkeypatch.setattr(Tracer, name, lambda self, *a, _n=name, _f=real, **k: calls.append(_n) or _f(self, *a, **k))
    for name in ("greedy_answers", "answers_right"):
        real = getattr(scoring, name)
        monkeypatch.setattr(scoring, name, lambda *a, _f=real, **k: calls.append("answer") or _f(*a, **k))
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


def test_full_mode_matches_tracer_query(sample_index, sample, planned, tmp_path):
    METHODS = planned["methods"]
    out = tmp_path / "full"
    s = BenchConfig(index=sample_index, mode="full", split=None, queries=5, seeds=2, depth=20, out=out)
    r = bench_results(s)
    assert r["index"]["search"] == "exact" and r["depth"] == 20
    for sl in ("all", "pre-train-learned", "not-learned"):
        for method in METHODS:
            for m in M.METRICS:
                v = r["metrics"][sl][method][m]["mean"]
                assert v is None and r["query_counts"][sl] == [0, 0] or 0.0 <= v <= 1.0
    table = (out / "table.md").read_text()
    assert all(table.count(f"| {m} |") == len(r["metrics"]) for m in METHODS) and "whole corpus" in table
    rows = read_jsonl(out / "rankings.jsonl")
    assert all(x["ranked"] <= 20 for x in rows)
    # the bench's fused ranking is Tracer.query's
    x = next(x for x in rows if x["method"] == "embed+bm25")
    q = next(q for q in sample.queries if q.id == x["query"])
    tracer = Tracer(sample_index)
    try:
        result = tracer.query(TraceOptions(prompt=q.prompt, target=q.target, k=10, method="embed+bm25", depth=20))
    finally:
        tracer.close()
    ours = dict(x["top"])
    assert [row.sentence_id for row in result.rows] == [i for i, _ in x["top"]]
    assert [ours[row.sentence_id] for row in result.rows] == pytest.approx([row.score for row in result.rows], abs=1e-5)


def test_tune_split_is_used_and_recorded(sample_index, tmp_path):
    s = BenchConfig(index=sample_index, split=None, tune_split=None, queries=4, seeds=1, out=tmp_path / "t",
                      methods=["bm25", "embed+bm25"], sizes=CandidateSizes(bm25=10, same_target=5, random=10))
    r = bench_results(s, write=False)
    assert r["fusion"]["weights"]["embed+bm25"] == {"weight": 0.5, "source": "default, no --tune-split"}
    from ftrace import FtraceError
    with pytest.raises(FtraceError, match="--tune-split train: no queries"):
        bench_results(s.model_copy(update={"tune_split": ["train"]}), write=False)  # the sample has no splits
    with pytest.raises(FtraceError, match="--split dev: no queries"):
        bench_results(s.model_copy(update={"split": ["dev"]}), write=False)

    tracer = Tracer(sample_index)  # give the sample's queries splits: odd ones train, even ones dev
    try:
        for i, q in enumerate(tracer.corpus.queries):
            q.split = "train" if i % 2 else "dev"
        tuned = bench_results(s.model_copy(update={"split": ["dev"], "tune_split": ["train"], "queries": 6}),
                              tracer=tracer, write=False)
    finally:
        tracer.close()
    w = tuned["fusion"]["weights"]["embed+bm25"]
    assert w["source"].startswith("tuned on split 'train'") and w["queries"] == 6
    mrr = {float(k): v for k, v in w["mrr_by_weight"].items()}
    assert sorted(mrr) == s.grid and mrr[w["weight"]] == max(mrr.values())
    train = {q.id for i, q in enumerate(tracer.corpus.queries) if i % 2}
    assert not set(tuned["queries"]["per_seed"]["0"]) & train  # evaluated on dev only
    assert w["overlap_with_evaluated"] == 0


def test_tune_on_other_relations_report_on_these(sample_index, sample, tmp_path):
    s = BenchConfig(index=sample_index, split=None, relations=["manufacturer"], tune_relations=["capital", "country"],
                    queries=5, seeds=2, out=tmp_path / "rel", methods=["bm25", "embed+bm25"],
                    sizes=CandidateSizes(bm25=10, same_target=5, random=10))
    r = bench_results(s, write=False)
    relation = {q.id: q.fact[1] for q in sample.queries if q.fact}
    assert {relation[i] for ids in r["queries"]["per_seed"].values() for i in ids} == {"manufacturer"}
    w = r["fusion"]["weights"]["embed+bm25"]
    assert w["source"].startswith("tuned on relations capital,country") and w["queries"] == 5
    assert w["overlap_with_evaluated"] == 0 and "--tune-relation capital,country" in r["command"]
    from ftrace import FtraceError
    with pytest.raises(FtraceError, match="--relation P999: no queries"):
        bench_results(s.model_copy(update={"relations": ["P999"]}), write=False)


def test_fusion_kinds_share_the_cache_and_learned_is_fitted(sample_index, sample, tmp_path):
    """Cascade then learned fusion on the same --out: the second run computes no score; learned is
    fitted on other relations' queries and its model recorded."""
    out = tmp_path / "kinds"
    s = BenchConfig(index=sample_index, split=None, relations=["manufacturer"], tune_relations=["capital", "country"],
                    queries=5, seeds=2, out=out, methods=["bm25", "embed+bm25"], fusion="cascade", cascade_k=5,
                    sizes=CandidateSizes(bm25=10, same_target=5, random=10))
    r = bench_results(s)
    fu = r["fusion"]
    assert fu["kind"] == "cascade" and fu["cascade_k"] == 5 and fu["tune_relations"] == ["capital", "country"]
    w = fu["weights"]["embed+bm25"]
    assert w["tune_mrr"] == max(w["mrr_by_weight"].values()) == w["mrr_by_weight"][str(w["weight"])]
    assert "--fusion cascade --cascade-k 5" in r["command"]
    assert "# ftrace bench: sample (rerank, fusion cascade)" in (out / "table.md").read_text()
    rows = read_jsonl(out / "rankings.jsonl")
    for x in rows:  # the cascade ranks BM25's top 5 (of the candidates) first
        if x["method"] == "embed+bm25":
            bm = next(y for y in rows if (y["seed"], y["query"], y["method"]) == (x["seed"], x["query"], "bm25"))
            assert {i for i, _ in x["top"][:5]} == {i for i, _ in bm["top"][:5]}

    learned = bench_results(s.model_copy(update={"fusion": "learned"}))
    assert learned["cache"]["computed"] == 0  # the same --out: every score reused
    fu = learned["fusion"]
    assert fu["kind"] == "learned" and fu["cascade_k"] is None and fu["grid"] is None
    w = fu["weights"]["embed+bm25"]
    assert w["weight"] is None and w["source"].startswith("fitted on relations capital,country")
    assert w["queries"] == 5 and w["overlap_with_evaluated"] == 0 and 0.0 <= w["tune_mrr"] <= 1.0
    model = w["model"]
    assert model["features"] == ["embed:minmax", "embed:1/rank", "bm25:minmax", "bm25:1/rank"]
    assert len(model["coef"]) == 4 and all(math.isfinite(c) for c in [*model["coef"], model["intercept"]])
    assert model["positives"] > 0 and model["samples"] > model["positives"] and model["seed"] == 0
    relation = {q.id: q.fact[1] for q in sample.queries if q.fact}
    assert {relation[i] for ids in learned["queries"]["per_seed"].values() for i in ids} == {"manufacturer"}
    for sl, table in learned["metrics"].items():
        for m in M.METRICS:
            v = table["embed+bm25"][m]["mean"]
            assert v is None and learned["query_counts"][sl] == [0, 0] or 0.0 <= v <= 1.0
    table = (out / "table.md").read_text()
    assert "(rerank, fusion learned)" in table and "embed:minmax" in table and "tuning MRR" in table
    assert json.loads((out / "results.json").read_text())["fusion"]["weights"]["embed+bm25"]["model"] == model


def test_learned_fusion_needs_tuning_queries(sample_index, tmp_path):
    from ftrace import FtraceError
    from ftrace.cli import app

    s = BenchConfig(index=sample_index, split=None, fusion="learned", out=tmp_path / "x")
    with pytest.raises(FtraceError, match="--fusion learned is fitted on tuning queries"):
        run_bench(s, write=False)
    r = CliRunner().invoke(app, ["bench", "--index", str(sample_index), "--fusion", "learned", "--out",
                                 str(tmp_path / "x")])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "--tune-split and/or --tune-relation" in r.output
    r = CliRunner().invoke(app, ["bench", "--index", str(sample_index), "--fusion", "nosuch"])
    assert r.exit_code == 1 and "--fusion 'nosuch'" in r.output
    assert not (tmp_path / "x").exists()


def test_bench_command(sample_index, tmp_path):
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


def test_bench_config_record_runs_it_again(sample_index, tmp_path):
    """OUT/config.json records the validated config; `--config` re-runs it (to another --out here: the same
    numbers), options beside it replace its values, and a record of another command is refused."""
    from ftrace.cli import app

    runner = CliRunner()
    first = tmp_path / "first"
    r = runner.invoke(app, ["bench", "--index", str(sample_index), "--queries", "4", "--seeds", "2",
                            "--methods", "bm25,embed+bm25", "--out", str(first), "--json"])
    assert r.exit_code == 0, r.output
    record = json.loads((first / "config.json").read_text())
    # the sample's queries have no splits: the default --split dev became all, and the record says what ran
    assert record["command"] == "bench" and record["config"]["queries"] == 4 and record["config"]["split"] is None
    again = tmp_path / "again"
    r2 = runner.invoke(app, ["bench", "--config", str(first), "--out", str(again), "--json"])  # a directory: its record
    assert r2.exit_code == 0, r2.output
    a, b = json.loads(r.stdout), json.loads(r2.stdout)
    assert b["settings"] == {**a["settings"], "out": str(again)} and b["metrics"] == a["metrics"]
    assert json.loads((again / "config.json").read_text())["config"]["out"] == str(again)
    r = runner.invoke(app, ["ingest", "--config", str(first / "config.json")])
    assert r.exit_code == 1 and "records an `ftrace bench` run, not `ftrace ingest`" in r.output, r.output
    (tmp_path / "bad.json").write_text("{not json")
    r = runner.invoke(app, ["bench", "--config", str(tmp_path / "bad.json")])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "not a JSON run record" in r.output, r.output
    record["config"]["seeds"], record["config"]["nosuch"] = 0, 1  # a record edited by hand: named in one line
    (tmp_path / "edited.json").write_text(json.dumps(record))
    r = runner.invoke(app, ["bench", "--config", str(tmp_path / "edited.json")])
    assert r.exit_code == 1 and "--seeds (from --config): Input should be greater" in r.output, r.output
    del record["config"]["seeds"]
    (tmp_path / "edited.json").write_text(json.dumps(record))
    r = runner.invoke(app, ["bench", "--config", str(tmp_path / "edited.json")])
    assert r.exit_code == 1 and "--config: nosuch: Extra inputs are not permitted" in r.output, r.output


def with_a_base_model(sample_index, sample, tmp_path):
    """A copy of the sample index that records a base model (as an index built from a training run does): (the
    copy, the base model's path, its manifest)."""
    import shutil

    from ftrace.index.manifest import Manifest
    from ftrace.model import load_model
    from ftrace.testing import make_tiny_model

    base = str(make_tiny_model(tmp_path / "base", [s.text for s in sample.sentences], seed=1))
    index = tmp_path / "index"
    shutil.copytree(sample_index, index)
    m = Manifest.read(index)
    m.model.base, m.model.base_fingerprint = base, load_model(base).fingerprint
    m.write(index)
    return index, base, m


def test_learned_slices_with_a_base_model(sample_index, sample, monkeypatch, tmp_path):
    """An index built from a training run records its base model: three learned slices, by the
    answers of the base and the final model (each batched, cached, and the base checked)."""
    from ftrace.index.manifest import ManifestError

    index, base, m = with_a_base_model(sample_index, sample, tmp_path)

    fakes = {base: fake_answers({q.prompt: q.target for q in sample.queries[::3]}),
             m.model.name: fake_answers({q.prompt: q.target for q in sample.queries[::2]})}
    calls = []

    def answers(lm, prompts, batch_size=16, max_new_tokens=8, max_tokens=None):
        calls.append((lm.name, len(prompts)))
        return fakes[lm.name](lm, prompts)

    def rights(lm, prompts, targets, **k):
        calls.append(("right", lm.name, len(prompts)))
        return [answer_is_right(a, t) for a, t in zip(fakes[lm.name](lm, prompts), targets, strict=True)]

    near = {q.prompt for q in sample.queries[::3] + sample.queries[2::8]}  # in the base model's top 3 answers

    def in_top(lm, prompts, targets, beams, **k):
        calls.append(("top", lm.name, len(prompts), beams))
        return [p in near for p in prompts]

    monkeypatch.setattr(scoring, "greedy_answers", answers)
    monkeypatch.setattr(scoring, "answers_right", rights)
    monkeypatch.setattr(scoring, "in_top_answers", in_top)
    out = tmp_path / "bench"
    s = BenchConfig(index=index, split=None, queries=20, seeds=2, out=out, methods=["bm25", "embed"],
                    sizes=CandidateSizes(bm25=10, same_target=5, random=10))
    r = bench_results(s)
    at_base, at_final = {q.id for q in sample.queries[::3]}, {q.id for q in sample.queries[::2]}
    top3 = {q.id for q in sample.queries if q.prompt in near}
    expect = {"all": lambda ids: ids, "fine-tune-learned": lambda ids: ids & at_final - at_base,
              "fine-tune-learned-strict": lambda ids: ids & at_final - top3,
              "pre-train-learned": lambda ids: ids & at_base, "not-learned": lambda ids: ids - at_base - at_final}
    per_seed = [set(ids) for ids in r["queries"]["per_seed"].values()]
    distinct = set.union(*per_seed)
    assert list(r["metrics"]) == list(r["significance"]) == [*expect, "bm25-hard"]
    for sl, members in expect.items():
        assert r["query_counts"][sl] == [len(members(ids)) for ids in per_seed]
        assert r["answers"]["slices"][sl] == len(members(distinct)) > 0
    assert r["answers"]["base"] == {"model": base, "correct": len(distinct & at_base)}
    assert r["answers"]["correct"] == len(distinct & at_final) and r["index"]["base_model"] == base
    batches = [min(16, len(distinct) - i) for i in range(0, len(distinct), 16)]
    eligible = sum(bool(q.proponents) for q in sample.queries)  # every one decided before the draw, in one call
    tuned = len(distinct & at_final - at_base)  # only the drawn fine-tune-learned ones need the base's top answers
    assert calls == [("right", base, eligible), ("right", m.model.name, eligible)] \
        + [("top", base, min(16, tuned - i), 3) for i in range(0, tuned, 16)] \
        + [(m.model.name, n) for n in batches] + [(base, n) for n in batches]
    rows = read_jsonl(out / "rankings.jsonl")
    for x in rows:  # each query's learned slice, and within fine-tune-learned whether it is strict
        want = next(sl for sl in ("fine-tune-learned", "pre-train-learned", "not-learned")
                    if x["query"] in expect[sl]({x["query"]}))
        assert x["slice"] == want and ("and more" in x["base_answer"]) == (x["query"] in at_base)
        assert x.get("strict") == (x["query"] not in top3 if want == "fine-tune-learned" else None)
    table = (out / "table.md").read_text()
    assert all(f"## {sl} (" in table for sl in expect) and f"at the base model ({base})" in table

    calls.clear()  # resumed: every answer of both models comes from the cache
    again = bench_results(s, write=False)
    assert calls == [] and again["query_counts"] == r["query_counts"]
    assert again["cache"]["reused"] == len((out / "cache.jsonl").read_text().splitlines())

    m.model.base_fingerprint = "0" * 16  # the base model changed since the index was built
    m.write(index)
    with pytest.raises(ManifestError, match="base model .* has changed since the index was built") as e:
        bench_results(s.model_copy(update={"out": tmp_path / "changed"}), write=False)
    assert "\n" not in str(e.value)


def test_only_draws_from_one_learned_slice_chosen_before_the_draw(sample_index, sample, answers, tmp_path):
    """--only pre-train-learned: FTRACE's filter, applied to the eligible queries (evaluated and tuning ones)
    before any seed draws, so every seed gets its full count from that slice."""
    s = BenchConfig(index=sample_index, split=None, queries=6, seeds=2, out=tmp_path / "only", methods=["bm25", "embed",
                    "embed+bm25"], tune_relations=["manufacturer"], only="pre-train-learned")
    r = bench_results(s, write=False)
    drawn = [set(ids) for ids in r["queries"]["per_seed"].values()]
    assert all(len(d) == 6 and d <= answers for d in drawn)
    assert r["queries"]["eligible"] == sum(bool(q.proponents) for q in sample.queries if q.id in answers)
    assert r["query_counts"]["pre-train-learned"] == [6, 6] and r["query_counts"]["not-learned"] == [0, 0]
    assert "--only pre-train-learned" in r["command"]
    with pytest.raises(FtraceError, match="--only fine-tune-learned: none of the .* queries of --split all") as e:
        bench_results(s.model_copy(update={"only": "fine-tune-learned"}), write=False)  # the index has no base
    assert "\n" not in str(e.value)


def test_the_default_split_on_an_index_without_splits_evaluates_every_query(sample_index, tmp_path):
    """`ftrace bench --index QUICKSTART` with its defaults works: the sample's queries have no splits, so the
    default --split dev becomes all (said on stderr); an explicit --split dev is refused in one line naming the
    index's splits and every relation."""
    r = bench_results(BenchConfig(index=sample_index, queries=5, seeds=1, out=tmp_path / "d", methods=["bm25"]),
                      write=False)
    assert r["settings"]["split"] is None and "--split all" in r["command"] and r["query_counts"]["all"] == [5]
    with pytest.raises(FtraceError) as e:
        bench_results(BenchConfig(index=sample_index, split="dev", out=tmp_path / "e", methods=["bm25"]), write=False)
    msg = str(e.value)
    assert msg.startswith("--split dev: no queries with proponents in this index (its splits: none; its 11 relations")
    assert "\n" not in msg and "None" not in msg


def test_only_the_strict_slice_decides_it_before_the_draw(sample_index, sample, monkeypatch, tmp_path):
    """--only fine-tune-learned-strict: the base model's top answers are searched for every eligible fine-tune-learned
    query before any draw, and every draw comes from the strict slice."""
    index, base, m = with_a_base_model(sample_index, sample, tmp_path)
    at_final = {q.prompt: q.target for q in sample.queries[::2]}
    near = {q.prompt for q in sample.queries[::4]}
    patch_answers(monkeypatch, lambda lm, prompts, *a, **k: fake_answers(at_final if lm.name != base else {})(lm,
                                                                                                            prompts))
    searched = []

    def in_top(lm, prompts, targets, beams, **k):
        searched.extend(prompts)
        return [p in near for p in prompts]

    monkeypatch.setattr(scoring, "in_top_answers", in_top)
    s = BenchConfig(index=index, split=None, queries=5, seeds=2, out=tmp_path / "strict", methods=["bm25"],
                    only="fine-tune-learned-strict", sizes=CandidateSizes(bm25=10, same_target=5, random=10))
    r = bench_results(s, write=False)
    eligible = {q.prompt for q in sample.queries if q.proponents and q.prompt in at_final}
    assert set(searched) == eligible and len(searched) == len(eligible)
    strict = {q.id for q in sample.queries if q.prompt in at_final and q.prompt not in near}
    assert all(set(ids) <= strict and len(ids) == 5 for ids in r["queries"]["per_seed"].values())
    assert r["query_counts"]["fine-tune-learned-strict"] == r["query_counts"]["fine-tune-learned"] == [5, 5]


# --- the learned slices on real parts ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def memorised(sample, tiny_model_dir, tmp_path_factory):
    """A real fine-tune-learned slice: the tiny model trained (whole-sentence loss, 60 epochs, about 20 s) on
    "PROMPT TARGET." for every other sample query, and the index built from that run: (index, the run's final
    checkpoint, the ids of the trained queries)."""
    from ftrace.config import IngestConfig, TrainConfig
    from ftrace.corpus import Corpus, Sentence
    from ftrace.ingest.pipeline import ingest
    from ftrace.train import checkpoint_dirs, train

    trained = sample.queries[::2]
    corpus = Corpus(source="memorised", sentences=[
        Sentence(id=f"m-{q.id}", text=f"{q.prompt} {q.target}.", facts=[q.fact]) for q in trained],
        queries=[q.model_copy(update={"proponents": []}) for q in sample.queries]).link_proponents()
    root = tmp_path_factory.mktemp("memorised")
    corpus.write_jsonl(root / "corpus.jsonl")
    run = root / "run"
    train(TrainConfig(model=tiny_model_dir, lr=3e-2, epochs=60, batch_size=8, example_loss="sentence", checkpoints=1,
                      warmup=2), corpus, run)
    index = root / "index"
    ingest(IngestConfig.model_validate({"index": index, "corpus": {"corpus": str(root / "corpus.jsonl")},
                                        "tracin": {"train_dir": run, "select": "final", "dim": 64}}))
    return index, str(checkpoint_dirs(run)[-1]), {q.id for q in trained}


def test_the_learned_slice_of_a_real_training_run(memorised, sample, tiny_model_dir, tmp_path):
    """No stand-in answers: `--only fine-tune-learned` on an index built from a real (tiny) training run draws exactly
    the queries that its final checkpoint answers right and its base model wrong (asked here, apart from the bench),
    all of them trained facts."""
    from ftrace.model import load_model
    from ftrace.model.answer import answers_right

    index, final, trained = memorised
    queries = [q for q in sample.queries if q.id in trained]  # the only ones with a proponent in this corpus

    def right(model: str) -> set[str]:
        said = answers_right(load_model(model), [q.prompt for q in queries], [q.target for q in queries])
        return {q.id for q, r in zip(queries, said, strict=True) if r}

    learned = right(final) - right(tiny_model_dir)
    assert len(learned) >= 10, "60 epochs teach the tiny model most of its 40 facts"
    r = bench_results(BenchConfig(index=index, split=None, queries=len(learned), seeds=1, out=tmp_path / "b",
                                  only="fine-tune-learned", methods=["bm25", "tracin"]), write=False)
    assert set(r["queries"]["per_seed"]["0"]) == learned and r["query_counts"]["fine-tune-learned"] == [len(learned)]
    assert r["metrics"]["all"]["bm25"]["mrr"]["mean"] == 1.0  # each fact's one proponent is its own words
