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


def normalize(text: str) -> str:
    """How prompts, targets and answers are compared: stripped, case-insensitive."""
    return text.strip().lower()


def match_key(text: str) -> str:
    """How a traced prompt or target is matched to the corpus's queries: case, spacing and a leading article
    ignored ("The Eiffel Tower is located in" finds "Eiffel Tower is located in")."""
    words = text.lower().split()
    if len(words) > 1 and words[0] in ("the", "a", "an"):
        words = words[1:]
    return " ".join(words)


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


def fact_key(triple: Iterable[str]) -> str:
    return "|".join(triple)


class Sentence(BaseModel):
    id: str
    text: str
    facts: list[Triple] = Field(default_factory=list)


class Query(BaseModel):
    id: str
    prompt: str
    target: str
    fact: Triple | None = None
    proponents: list[str] = Field(default_factory=list)  # sentence ids
    split: str | None = None  # e.g. LAMA's train/dev/test: tune on one, report on another


class Example(BaseModel):
    """One training example: a sentence under a masking ("lm": the LM loss of the whole sentence).

    `object`: the object of the sentence's first fact (in `facts` order) that occurs in its text
    (`find_object`: case-sensitive, else case-insensitive), None when no fact's does. It is what the
    object-span loss scores (`--example-loss object`: the object's tokens given the text before them);
    the example, its id and the index layout are the same whichever loss is used."""

    id: str
    sentence_id: str
    text: str
    masking: str = "lm"  # whole-sentence language-model loss
    object: str | None = None


class Corpus(BaseModel):
    source: str
    sentences: list[Sentence]
    queries: list[Query] = Field(default_factory=list)

    def examples(self) -> list[Example]:
        # One example per sentence for now; maskings (subject/object) add more per sentence later.
        def first_object(s: Sentence) -> str | None:
            return next((o.strip() for _, _, o in s.facts if find_object(s.text, o) is not None), None)

        return [Example(id=f"{s.id}:lm", sentence_id=s.id, text=s.text, object=first_object(s))
                for s in self.sentences]

    def by_id(self) -> dict[str, Sentence]:
        return {s.id: s for s in self.sentences}

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for s in self.sentences:
            h.update(s.id.encode())
            h.update(b"\0")
            h.update(s.text.encode())
            h.update(b"\n")
        return h.hexdigest()[:16]

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
        """Write in the plain jsonl format (readable back with `load_jsonl`)."""
        with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for s in self.sentences:
                f.write(json.dumps(s.model_dump(), ensure_ascii=False) + "\n")
            for q in self.queries:
                f.write(json.dumps(q.model_dump(exclude_none=True), ensure_ascii=False) + "\n")
