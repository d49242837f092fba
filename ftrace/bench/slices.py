"""Which queries the model 'learned': the answer rule and FTRACE's learned slices.

A query's answer is right when the target is a word-boundary prefix of the model's greedy answer,
both normalised (lowercase, whitespace collapsed, stripped). The slices (besides "all"):

- the index has a base model (it was built from an `ftrace train` run): "fine-tune-learned"
  (wrong at the base model, right at the final one), "pre-train-learned" (right at the base) and
  "not-learned" (wrong at both);
- no base model: "pre-train-learned" (right at the index's model) and "not-learned".
"""

from __future__ import annotations

from collections.abc import Mapping

RULE = ("right when the normalised target (lowercase, whitespace collapsed, stripped) equals the normalised greedy "
        "answer or is its prefix followed by a space or punctuation: 'Toyota Motor' and 'Toyota's' count for "
        "'Toyota', 'Toyotas' does not")

ALL = "all"
FINE_TUNE = "fine-tune-learned"
PRE_TRAIN = "pre-train-learned"
NOT_LEARNED = "not-learned"


def normalize_answer(text: str) -> str:
    return " ".join(text.lower().split())


def answer_is_right(answer: str, target: str) -> bool:
    a, t = normalize_answer(answer), normalize_answer(target)
    return bool(t) and a.startswith(t) and (len(a) == len(t) or not a[len(t)].isalnum())


def slice_names(with_base: bool) -> list[str]:
    return [ALL, FINE_TUNE, PRE_TRAIN, NOT_LEARNED] if with_base else [ALL, PRE_TRAIN, NOT_LEARNED]


def learned_slice(right: bool, right_at_base: bool | None) -> str:
    """The query's learned slice from whether the final model (and the base model, if any) answer right."""
    if right_at_base is None:
        return PRE_TRAIN if right else NOT_LEARNED
    if right_at_base:
        return PRE_TRAIN
    return FINE_TUNE if right else NOT_LEARNED


def learned_slices(right: Mapping[str, bool], right_at_base: Mapping[str, bool] | None) -> dict[str, str]:
    """query id -> its learned slice."""
    return {q: learned_slice(r, None if right_at_base is None else right_at_base[q]) for q, r in right.items()}
