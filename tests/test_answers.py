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
    # a continuation that repeats its first words keeps them once; a name of repeated words stays whole
    assert cut(" Philadelphia Philadelphia PA Philadelphia") == "Philadelphia"
    assert cut(" New York New York City") == "New York" and cut(" Walla Walla, Washington") == "Walla Walla"


def test_an_answer_is_right_a_leading_article_aside():
    from ftrace.model.answer import answer_is_right

    assert answer_is_right("the United States", "United States") and answer_is_right("Beatles", "The Beatles")
    assert answer_is_right("Toyota Motor", "Toyota") and not answer_is_right("Toyotas", "Toyota")
    assert not answer_is_right("the", "United States")


def test_the_teacher_forced_rule_agrees_with_generation(lm, sample, monkeypatch):
    """`answers_right` (one teacher-forced pass) says what `answer_is_right(greedy_answer(...))` says, on every
    sample query and on targets made from the generated answers: the answer itself (several tokens), its first
    word, its first word plus a letter (wrong), the corpus's own targets (mostly wrong for a random model), and
    two kinds the forced tokens cannot decide, which are generated: a strict prefix of the first word (wrong:
    the answer goes on with a letter) and the answer in upper case (right)."""
    from ftrace.model import answer
    from ftrace.model.answer import answer_is_right, answers_right, greedy_answers

    prompts = sorted({q.prompt for q in sample.queries})
    generated = dict(zip(prompts, greedy_answers(lm, prompts), strict=True))
    word = {p: a.split()[0] for p, a in generated.items()}
    decidable = [(q.prompt, q.target) for q in sample.queries] + \
        [(p, t) for p, a in generated.items() for t in (a, word[p], word[p] + "x")]
    undecidable = [(p, t) for p, a in generated.items() for t in (word[p][:-1], a.upper())]
    cases = [(p, t) for p, t in decidable + undecidable if t.strip()]
    multi = [(p, t) for p, t in cases if len(lm.tokenizer(" " + t, add_special_tokens=False)["input_ids"]) > 1]
    right = [(p, t) for p, t in cases if answer_is_right(generated[p], t)]
    assert len(multi) > 100 and len(right) > 80  # multi-token targets, and right answers to get right

    fell_back = []
    real = answer.greedy_answers
    monkeypatch.setattr(answer, "greedy_answers", lambda lm, ps, **k: fell_back.extend(ps) or real(lm, ps, **k))
    assert answers_right(lm, [p for p, _ in cases], [t for _, t in cases], batch_size=7) == \
        [answer_is_right(generated[p], t) for p, t in cases]
    assert len(fell_back) < len(decidable) / 4 + len(undecidable)  # the forced pass decides most cases
    assert answers_right(lm, [], []) == []


def test_a_partial_character_is_left_to_generation(tmp_path):
    """Where the forced argmax is only the first byte of the target's character ('José' whole in the target's
    tokens, its 'é' split in two by the model), the forced pass cannot tell: generation decides, since it may
    well produce 'José'. A real byte-level tokenizer, trained so that 'é' is one token."""
    from transformers import AutoTokenizer

    from ftrace.model.answer import _decide
    from ftrace.testing import make_tiny_model

    tok = AutoTokenizer.from_pretrained(make_tiny_model(tmp_path / "m", ["José Mourinho was born in Setúbal."] * 50))
    target = tok(" José", add_special_tokens=False)["input_ids"]
    j = next(i for i in range(len(target)) if "é" in tok.decode(target[:i + 1]))
    first_byte = tok.convert_tokens_to_ids("Ã")  # byte 0xC3, the first of 'é' in UTF-8 (GPT-2's byte alphabet)
    assert target[j] != first_byte  # the target holds 'é' whole
    best = target[:j] + [first_byte] * (len(target) + 1 - j)
    assert _decide(tok, target, best, "José", 8) is None
    assert _decide(tok, target, target + [tok.convert_tokens_to_ids("Ġwas")], "José", 8) is True


def test_top_answers_of_a_beam_search(lm, sample):
    """FTRACE's strict rule reads the base model's 3 beam-search answers: one beam is the greedy answer, and a
    target is in the top answers exactly when one of the beams is right for it."""
    from ftrace.model.answer import answer_is_right, beam_answers, greedy_answers, in_top_answers

    prompts = [q.prompt for q in sample.queries[:12]]
    assert [a[0] for a in beam_answers(lm, prompts, 1)] == greedy_answers(lm, prompts)
    top = beam_answers(lm, prompts, 3)
    assert all(len(a) == 3 for a in top)
    third = [a[2] or "x" for a in top]  # each prompt's third beam as its target: found among the top 3
    assert in_top_answers(lm, prompts, third, 3) == [any(answer_is_right(b, t) for b in a)
                                                     for a, t in zip(top, third, strict=True)]
    assert all(in_top_answers(lm, [p], [t], 3)[0] for p, t in zip(prompts, third, strict=True) if t != "x")
    assert in_top_answers(lm, prompts, ["zzqx never"] * len(prompts), 3) == [False] * len(prompts)
