"""The corpus model: sentences (training examples' text), facts, and queries with ground truth."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, Field

from ftrace.plumbing import replacing

Triple = tuple[str, str, str]


def sentence_id(text: str) -> str:
    """Stable id of a sentence that has no id of its own: a hash of its text."""
    return "t" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


ARTICLES = ("the", "a", "an")


def match_key(text: str) -> str:
    """The one rule for comparing targets, objects, answers and prompts: case, spacing and a leading article aside
    ("Toyota  Motor " is "toyota motor"; a model's answer "the United States" is the target "United States"; "The
    Eiffel Tower is located in" finds the query "Eiffel Tower is located in"). A lone article stays itself."""
    words = " ".join(text.lower().split()).split(" ")
    return " ".join(words[1:] if len(words) > 1 and words[0] in ARTICLES else words)


def find_object(text: str, obj: str) -> tuple[int, int] | None:
    """Character span [start, end) of the first occurrence of `obj` in `text`: case-sensitive first,
    then case-insensitive; None when absent or empty. (A regex keeps offsets into the original text,
    which str.lower() would not for characters whose lower case is longer.)"""
    obj = obj.strip()
    if not obj:
        return None
    at = text.find(obj)
    if at >= 0:
        return at, at + len(obj)
    m = re.search(re.escape(obj), text, flags=re.IGNORECASE)
    return (m.start(), m.end()) if m else None


def example_id(sentence_id: str) -> str:
    """The id of an index's one example of a sentence (`ftrace.model.objective.index_example`)."""
    return f"{sentence_id}:lm"


def example_sentence(example_id: str) -> str:
    """The sentence an index's example belongs to."""
    return example_id.removesuffix(":lm")


def fact_key(triple: Iterable[str]) -> str:
    return "|".join(triple)


class Sentence(BaseModel):
    """A training example's text: a sentence, a short record, or a passage of a longer document (with the document's
    id, the passage's character span [start, end) in it, and its number from 0)."""

    id: str
    text: str
    facts: list[Triple] = Field(default_factory=list)
    document: str | None = None
    span: tuple[int, int] | None = None
    passage: int | None = None


class Query(BaseModel):
    id: str
    prompt: str
    target: str
    fact: Triple | None = None
    proponents: list[str] = Field(default_factory=list)  # sentence ids
    split: str | None = None  # e.g. LAMA's train/dev/test: tune on one, report on another


def stated_objects(s: Sentence) -> list[str]:
    """The one "object" rule: the distinct objects of the sentence's facts (in `facts` order, stripped) that
    occur in its text (`find_object`: case-sensitive, else case-insensitive)."""
    return [o for o in dict.fromkeys(o.strip() for _, _, o in s.facts) if o and find_object(s.text, o) is not None]


class Example(BaseModel):
    """One training example: a sentence, and the object whose tokens the example loss "object" scores (given
    the text before them), or None (the whole sentence's LM loss).

    Which examples a corpus gives, for training and for an index: `ftrace.model.objective`."""

    id: str
    sentence_id: str
    text: str
    object: str | None = None


def fingerprint_of(sentences: Iterable[Sentence]) -> str:
    """A corpus's identity in a manifest: its sentences' ids and texts, in order."""
    h = hashlib.sha256()
    for s in sentences:
        h.update(s.id.encode() + b"\0" + s.text.encode() + b"\n")
    return h.hexdigest()[:16]


class Corpus(BaseModel):
    source: str
    sentences: list[Sentence]
    queries: list[Query] = Field(default_factory=list)
    passages: tuple[int, int] | None = None  # (tokens, stride) its long records were cut with, for a corpus of records

    def by_id(self) -> dict[str, Sentence]:
        return {s.id: s for s in self.sentences}

    def fingerprint(self) -> str:
        return fingerprint_of(self.sentences)

    def link_proponents(self) -> Corpus:
        """Add to each query every sentence stating its fact (a sentence proves every fact it states)."""
        stating: dict[str, list[str]] = {}
        for s in self.sentences:
            for t in s.facts:
                stating.setdefault(fact_key(t), []).append(s.id)
        for q in self.queries:
            extra = stating.get(fact_key(q.fact), []) if q.fact else []
            q.proponents = list(dict.fromkeys([*q.proponents, *extra]))
        return self

    def write_jsonl(self, path: Path) -> None:
        """Write in the plain jsonl format (readable back with `load_records`)."""
        with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for s in self.sentences:
                f.write(json.dumps(s.model_dump(exclude_none=True), ensure_ascii=False) + "\n")
            for q in self.queries:
                f.write(json.dumps(q.model_dump(exclude_none=True), ensure_ascii=False) + "\n")
