"""Which queries the model 'learned': the answer rule and FTRACE's learned slices.

A query's answer is right when the target is a word-boundary prefix of the model's greedy answer,
both normalised (`ftrace.model.answer.RULE`, decided by `answers_right` in one teacher-forced pass). The
slices (besides "all"):

- the index has a base model (it was built from an `ftrace train` run): "fine-tune-learned"
  (wrong at the base model, right at the final one), "pre-train-learned" (right at the base) and
  "not-learned" (wrong at both); and, within fine-tune-learned, FTRACE code's stricter
  "fine-tune-learned-strict": none of the base model's STRICT_BEAMS beam-search answers is right either
  (`ftrace.model.answer.in_top_answers`);
- no base model: "pre-train-learned" (right at the index's model) and "not-learned".
"""

from __future__ import annotations

from collections.abc import Mapping

from ftrace.model.answer import RULE, answer_is_right

__all__ = ["ALL", "BM25_HARD", "FINE_TUNE", "FINE_TUNE_STRICT", "LEARNED", "NOT_LEARNED", "PRE_TRAIN", "RULE",
           "STRICT_BEAMS", "answer_is_right", "in_slice", "learned_slice", "learned_slices", "slice_names",
           "strict_slices"]

ALL = "all"
FINE_TUNE = "fine-tune-learned"
FINE_TUNE_STRICT = "fine-tune-learned-strict"  # a part of FINE_TUNE, reported beside it
STRICT_BEAMS = 3
PRE_TRAIN = "pre-train-learned"
NOT_LEARNED = "not-learned"
LEARNED = (FINE_TUNE, PRE_TRAIN, NOT_LEARNED)
# not a learned slice: the query draws whose BM25 top 1 is not a proponent (the room model signals have)
BM25_HARD = "bm25-hard"


def slice_names(with_base: bool) -> list[str]:
    return [ALL, FINE_TUNE, FINE_TUNE_STRICT, PRE_TRAIN, NOT_LEARNED] if with_base else [ALL, PRE_TRAIN, NOT_LEARNED]


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


def strict_slices(slice_of: Mapping[str, str], in_top_at_base: Mapping[str, bool]) -> dict[str, str]:
    """`slice_of` with each fine-tune-learned query of `in_top_at_base` none of whose base-model top answers is right
    moved to FINE_TUNE_STRICT (reported as a part of FINE_TUNE: `in_slice`)."""
    return {q: FINE_TUNE_STRICT if sl == FINE_TUNE and in_top_at_base.get(q) is False else sl
            for q, sl in slice_of.items()}


def in_slice(query_slice: str, sl: str) -> bool:
    """Whether a query whose own slice is `query_slice` counts in slice `sl` (the strict one is within FINE_TUNE)."""
    return query_slice == sl or (sl == FINE_TUNE and query_slice == FINE_TUNE_STRICT)
