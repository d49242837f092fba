"""Greedy answers: batched (left-padded) generation answers exactly as one prompt at a time."""

import pytest


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    from ftrace.model import load_model

    return load_model(tiny_model_dir)


def test_batched_answers_equal_one_by_one(lm, sample):
    from ftrace.model.answer import greedy_answer, greedy_answers

    by_length = sorted({q.prompt for q in sample.queries}, key=len)
    prompts = [*by_length[:4], *by_length[-4:], "a", by_length[len(by_length) // 2]]  # token lengths 1 to ~20
    lengths = {len(lm.tokenizer(p)["input_ids"]) for p in prompts}
    assert len(lengths) >= 5 and min(lengths) == 1
    side = lm.tokenizer.padding_side
    one = [greedy_answer(lm, p) for p in prompts]
    for batch_size in (3, 16):
        assert greedy_answers(lm, prompts, batch_size=batch_size) == one
    assert greedy_answers(lm, prompts, batch_size=4, max_new_tokens=2) == [greedy_answer(lm, p, 2) for p in prompts]
    assert lm.tokenizer.padding_side == side  # restored
    assert greedy_answers(lm, []) == []


def test_answers_are_cut_at_the_first_phrase():
    from ftrace.model.answer import cut

    assert cut(" Toyota Motor Corporation, which") == "Toyota Motor Corporation"
    assert cut("Paris.\nThe") == "Paris" and cut("\nParis") == "" and cut(" New York ") == "New York"
