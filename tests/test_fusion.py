import json
import math

import pytest

from ftrace import FtraceError
from ftrace.query.fusion import by_sentence, cascade, minmax, ranking, rrf, top_set, weighted_sum
from ftrace.query.learned import LearnedFusion, feature_names, features, reciprocal_ranks
from ftrace.query.methods import Fuser, Method, fuse, parse_method


def test_minmax():
    assert minmax({"a": 2.0, "b": 4.0, "c": 3.0}) == {"a": 0.0, "b": 1.0, "c": 0.5}
    assert minmax({"a": 7.0}) == {"a": 1.0}


def test_weighted_sum_by_hand():
    bm25 = {"a": 10.0, "b": 5.0, "c": 0.0}
    embed = {"a": 0.2, "b": 0.6, "c": 1.0}
    fused = weighted_sum({"bm25": bm25, "embed": embed}, {"bm25": 0.75, "embed": 0.25})
    assert fused["a"] == pytest.approx(0.75 * 1.0 + 0.25 * 0.0)
    assert fused["b"] == pytest.approx(0.75 * 0.5 + 0.25 * 0.5)
    assert fused["c"] == pytest.approx(0.75 * 0.0 + 0.25 * 1.0)


def test_weighted_sum_missing_scores_count_as_minimum():
    fused = weighted_sum({"x": {"a": 1.0, "b": 0.0}, "y": {"b": 2.0, "c": 1.0}}, {})
    assert fused == {"a": 1.0, "b": 1.0, "c": 0.0}


def test_rrf_by_hand():
    fused = rrf({"x": {"a": 3.0, "b": 2.0}, "y": {"b": 9.0, "a": 1.0, "c": 0.5}}, k=60)
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["c"] == pytest.approx(1 / 63)
    weighted = rrf({"x": {"a": 3.0}, "y": {"a": 1.0}}, k=0, weights={"x": 2.0, "y": 0.5})
    assert weighted["a"] == pytest.approx(2.5)


def test_ranking_breaks_ties_by_id_or_a_given_key():
    assert ranking({"b": 1.0, "a": 1.0, "c": 2.0}) == [("c", 2.0), ("a", 1.0), ("b", 1.0)]
    assert ranking({"b": 1.0, "a": 1.0, "c": 2.0}, tiebreak=lambda i: -ord(i)) == [("c", 2.0), ("b", 1.0), ("a", 1.0)]


@pytest.mark.parametrize("text, message", [
    ("bm26", "not 'bm26'"), ("a+b+c", "joins two methods"), ("embed+embed", "two different"),
    ("+bm25", "joins two methods"),
])
def test_one_method_grammar(text, message):
    assert parse_method("bm25", ["bm25", "embed"]) == Method(("bm25",))
    assert str(parse_method("embed+bm25", ["bm25", "embed"])) == "embed+bm25"
    with pytest.raises(FtraceError, match=message):
        parse_method(text, ["bm25", "embed", "a", "b", "c"] if text != "bm26" else ["bm25"])


def test_fuse_weights_the_first_component():
    runs = {"x": {"a": 1.0, "b": 0.0}, "y": {"a": 0.0, "b": 1.0}}
    assert fuse(runs, Method(("x", "y")), 0.8) == pytest.approx({"a": 0.8, "b": 0.2})
    assert fuse(runs, Method(("x", "y")), 0.8, "rrf") == pytest.approx({"a": 0.8 / 61 + 0.2 / 62,
                                                                       "b": 0.8 / 62 + 0.2 / 61})


def test_sentence_score_is_max_over_examples():
    scores = by_sentence({"s1:lm": 0.2, "s1:obj": 0.9, "s2:lm": -1.0},
                         {"s1:lm": "s1", "s1:obj": "s1", "s2:lm": "s2"}.__getitem__)
    assert scores == {"s1": 0.9, "s2": -1.0}
    assert not math.isnan(sum(scores.values()))


# --- cascade -------------------------------------------------------------------------------------

def test_top_set_keeps_ties_at_the_cut():
    assert top_set({"a": 3.0, "b": 2.0, "c": 1.0}, 2) == {"a", "b"}
    assert top_set({"a": 3.0, "b": 2.0, "c": 2.0, "d": 1.0}, 2) == {"a", "b", "c"}  # no tiebreak decides
    assert top_set({"a": 1.0}, 5) == {"a"} and top_set({}, 3) == set()


def test_cascade_by_hand():
    # second (b, e.g. bm25) ranks s1 > s2 > s3 > s4 > s5; its top 3 are re-ranked by the weighted sum
    # with weights normalised over those 3; s4, s5 follow in b's order.
    first = {"s1": 0.0, "s2": 0.5, "s3": 1.0, "s4": 9.0, "s5": 8.0}
    second = {"s1": 10.0, "s2": 8.0, "s3": 6.0, "s4": 4.0, "s5": 0.0}
    fused = cascade(first, second, (0.75, 0.25), 3)
    # over {s1, s2, s3}: first -> 0, 0.5, 1; second -> 1, 0.5, 0
    assert fused["s1"] == pytest.approx(1 + 0.25)
    assert fused["s2"] == pytest.approx(1 + 0.5)
    assert fused["s3"] == pytest.approx(1 + 0.75)
    assert fused["s4"] == pytest.approx(0.4) and fused["s5"] == 0.0  # b's min-max over all candidates
    assert [i for i, _ in ranking(fused)] == ["s3", "s2", "s1", "s4", "s5"]
    assert fuse({"a": first, "b": second}, Method(("a", "b")), 0.75, "cascade", 3) == fused
    # weight 0 on the first method: b's own order; weight 1: the top 3 in first's order, then b's
    assert [i for i, _ in ranking(cascade(first, second, (0.0, 1.0), 3))] == ["s1", "s2", "s3", "s4", "s5"]
    assert [i for i, _ in ranking(cascade(first, second, (1.0, 0.0), 3))] == ["s3", "s2", "s1", "s4", "s5"]
    # a top sentence with the lowest sum still outranks every other: 1 + 0 > the best of the rest
    low = cascade({"s1": 0.0, "s2": 1.0, "s3": 5.0}, {"s1": 1.0, "s2": 1 - 1e-12, "s3": 1 - 2e-12, "s4": 0.0},
                  (1.0, 0.0), 2)
    assert low["s1"] == 1.0 and low["s2"] == 2.0 and 0.999 < low["s3"] < 1.0 and low["s4"] == 0.0


def test_cascade_ties_and_unscored_candidates():
    second = {"s1": 5.0, "s2": 3.0, "s3": 3.0, "s4": 1.0}
    fused = cascade({"s1": 0.0, "s2": 1.0, "s3": 0.5, "x": 7.0}, second, (0.5, 0.5), 2)
    assert {i for i, v in fused.items() if v >= 1.0} == {"s1", "s2", "s3"}  # s3 ties with the 2nd: in
    assert fused["x"] == 0.0 and fused["s4"] == 0.0  # x: b did not score it, counts as b's minimum
    flat = cascade({"s1": 1.0, "s2": 0.0}, {"s1": 2.0, "s2": 2.0, "s3": 2.0}, (0.5, 0.5), 1)
    assert min(flat.values()) >= 1.0  # every b score ties: all are the top set


def test_fuser_is_fuse_with_settled_settings():
    runs = {"x": {"a": 1.0, "b": 0.0, "c": 0.5}, "y": {"a": 0.0, "b": 1.0, "c": 0.2}}
    m = Method(("x", "y"))
    for kind in ("sum", "rrf", "cascade"):
        assert Fuser(m, kind, 0.3, 2)(runs) == fuse(runs, m, 0.3, kind, 2)
    with pytest.raises(FtraceError, match="fitted model"):
        Fuser(m, "learned")(runs)


# --- learned fusion ------------------------------------------------------------------------------

def test_learned_features_by_hand():
    assert reciprocal_ranks({"a": 3.0, "b": 5.0, "c": 3.0}, ["a", "b", "c", "z"]) == [0.5, 1.0, 0.5, 0.0]
    ids, x = features({"x": {"a": 1.0, "b": 3.0}, "y": {"b": 2.0, "c": 4.0}}, ("x", "y"))
    assert ids == ["a", "b", "c"] and feature_names(("x", "y")) == ["x:minmax", "x:1/rank", "y:minmax", "y:1/rank"]
    assert x.tolist() == [[0.0, 0.5, 0.0, 0.0], [1.0, 1.0, 0.0, 0.5], [0.0, 0.0, 1.0, 1.0]]


def test_learned_fusion_ranks_proponents_first():
    """Separable by hand: the proponent is never either method's top, but always 2nd by both; each
    method alone puts a different distractor first."""
    parts, props = {}, {}
    for i in range(12):
        x = {"p": 0.8, "dx": 1.0, "dy": 0.1, "n1": 0.3, "n2": 0.0}
        y = {"p": 0.7, "dx": 0.0, "dy": 1.0, "n1": 0.2, "n2": 0.1}
        parts[f"q{i}"] = {"x": {k: v + 0.01 * i for k, v in x.items()}, "y": y}
        props[f"q{i}"] = ["p"]
    model = LearnedFusion.fit(parts, props, ("x", "y"), seed=0)
    fuser = Fuser(Method(("x", "y")), "learned", model=model)
    for runs in parts.values():
        scores = fuser(runs)
        assert ranking(scores)[0][0] == "p" and all(0.0 <= v <= 1.0 for v in scores.values())
    d = model.describe()
    assert d["features"] == feature_names(("x", "y")) and len(d["coef"]) == 4 and isinstance(d["intercept"], float)
    assert d["samples"] == 60 and d["positives"] == 12 and json.dumps(d)
    again = LearnedFusion.fit(parts, props, ("x", "y"), seed=0).describe()
    assert again == d  # seeded, deterministic
    with pytest.raises(FtraceError, match="nothing to learn"):
        LearnedFusion.fit({"q": {"x": {"a": 1.0}, "y": {"a": 1.0}}}, {"q": ["p"]}, ("x", "y"))


# --- cascade through the CLI ----------------------------------------------------------------------

def test_query_cascade_cli_keeps_bm25_top_k(sample_index):
    from typer.testing import CliRunner

    from ftrace.cli import app

    def query(*args):
        r = CliRunner().invoke(app, ["query", "Toyota Avanza is produced by", "--index", str(sample_index),
                                     "--target", "Toyota", "--json", *map(str, args)])
        assert r.exit_code == 0, r.output
        return json.loads(r.output)

    bm25 = {row["sentence_id"]: row["score"] for row in query("--method", "bm25", "-k", 30)["rows"]}
    top = top_set(bm25, 5)
    for weight in (0.5, 1.0):
        out = query("--method", "embed+bm25", "--fusion", "cascade", "--cascade-k", 5, "--weight", weight, "-k", 12)
        assert out["fusion"] == "cascade"
        rows = out["rows"]
        head, tail = rows[:len(top)], rows[len(top):]
        assert {r["sentence_id"] for r in head} == top
        assert all(r["score"] >= 1.0 for r in head) and all(r["score"] < 1.0 for r in tail)
        tail_bm25 = [r["scores"]["bm25"] for r in tail]
        assert tail_bm25 == sorted(tail_bm25, reverse=True)  # the rest keep BM25's order
        if weight == 1.0:  # all weight on embed: the top set in embed's order
            embed = [r["scores"]["embed"] for r in head]
            assert embed == sorted(embed, reverse=True)
    r = CliRunner().invoke(app, ["query", "x", "--index", str(sample_index), "--cascade-k", "0"])
    assert r.exit_code != 0 and "--cascade-k" in r.output
