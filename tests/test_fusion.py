import math

import pytest

from ftrace import FtraceError
from ftrace.query.fusion import by_sentence, minmax, ranking, rrf, weighted_sum
from ftrace.query.methods import Method, fuse, parse_method


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
                         {"s1:lm": "s1", "s1:obj": "s1", "s2:lm": "s2"})
    assert scores == {"s1": 0.9, "s2": -1.0}
    assert not math.isnan(sum(scores.values()))
