"""A corpus selection loaded for a model: records longer than a passage cut at that model's tokens."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from ftrace.config import DEFAULT_MODEL, CorpusSelection
from ftrace.corpus import Corpus, CorpusStore, Passages, load_corpus, store_corpus
from ftrace.corpus.passages import Offsets


def load_selection(sel: CorpusSelection, model: str | None, max_tokens: int) -> Corpus:
    """The corpus `sel` names, its long records cut into passages of `model`'s tokens, for a model given `max_tokens`
    tokens (its tokenizer is loaded only when a record may be longer than a passage)."""
    return load_corpus(sel.corpus, sel.relations, sel.splits, sel.limit, text_field=sel.text_field,
                       id_field=sel.id_field, passages=_passages(sel, model, max_tokens))


def store_selection(dest: Path, sel: CorpusSelection, model: str | None, max_tokens: int) -> CorpusStore:
    """`load_selection`'s corpus written to a corpus store at `dest` (records streamed: `store_corpus`)."""
    return store_corpus(dest, sel.corpus, sel.relations, sel.splits, sel.limit, text_field=sel.text_field,
                        id_field=sel.id_field, passages=_passages(sel, model, max_tokens))


def _passages(sel: CorpusSelection, model: str | None, max_tokens: int) -> Passages:
    return Passages(*sel.passages(max_tokens), _offsets(model or DEFAULT_MODEL))


def _offsets(model: str) -> Offsets:
    @cache
    def tokenizer() -> Any:
        from ftrace.model.loading import load_tokenizer

        return load_tokenizer(model)

    def offsets(text: str) -> list[tuple[int, int]]:
        return [tuple(o) for o in tokenizer()(text, add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"]]

    return offsets
