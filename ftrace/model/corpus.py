"""A corpus selection loaded for a model: records longer than a passage cut at that model's tokens."""

from __future__ import annotations

import copy
from functools import cached_property
from pathlib import Path
from typing import Any

from ftrace.config import DEFAULT_MODEL, CorpusSelection
from ftrace.corpus import Corpus, CorpusStore, Passages, load_corpus, store_corpus


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
    return Passages(*sel.passages(max_tokens), ModelTokens(model or DEFAULT_MODEL))


class ModelTokens:
    """`Tokens` of a model's fast tokenizer, loaded on first use: its Rust tokenizer called directly, many texts at a
    time (spread over the cores), with the settings transformers' wrapper would use."""

    def __init__(self, model: str):
        self.model = model

    @cached_property
    def _rust(self) -> Any:
        from ftrace.model.loading import load_tokenizer

        wrapper = load_tokenizer(self.model)
        rust = copy.deepcopy(wrapper.backend_tokenizer)  # settings of its own, not the wrapper's
        rust.no_truncation()  # as the wrapper tokenises: no truncation or padding, its own special-token rule
        rust.no_padding()
        rust.encode_special_tokens = bool(getattr(wrapper, "split_special_tokens", False))
        return rust

    def offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        return [e.offsets for e in self._rust.encode_batch(texts, add_special_tokens=False)]

    def counts(self, texts: list[str]) -> list[int]:
        return [len(e) for e in self._rust.encode_batch(texts, add_special_tokens=False)]
