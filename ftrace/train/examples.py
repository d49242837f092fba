"""Training examples from a corpus, and their loss batches.

- loss "sentence": one example per corpus sentence; every token after the first is scored.
- loss "object": one example per (sentence, distinct object of a fact the sentence states) whose
  object occurs in the sentence's text; only the object's tokens are scored, given the text before
  them (a causal LM's version of FTRACE's object masking). Sentences with no such object are skipped
  and counted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from ftrace.corpus import Corpus, Sentence
from ftrace.model.batching import LossBatch, example_batch, object_span_batch, object_span_rows
from ftrace.train.errors import TrainError

CHUNK = 1024  # texts tokenised per call while filtering


@dataclass(frozen=True)
class TrainExample:
    sentence_id: str
    text: str
    object: str | None = None  # the scored object (loss "object"), else None


@dataclass
class ExampleSet:
    examples: list[TrainExample]
    skipped_sentences: int  # sentences that gave no example

    def fingerprint(self) -> str:
        """Hash of exactly what is trained on, in order (covers the corpus's facts too)."""
        h = hashlib.sha256()
        for e in self.examples:
            h.update(json.dumps([e.sentence_id, e.text, e.object]).encode() + b"\n")
        return h.hexdigest()[:16]


def build_examples(corpus: Corpus, loss: str, tokenizer, max_length: int) -> ExampleSet:
    if not corpus.sentences:
        raise TrainError(f"corpus {corpus.source}: no sentences to train on")
    if loss == "object" and not getattr(tokenizer, "is_fast", False):
        raise TrainError("--loss object: needs a fast tokenizer (character offsets); this model's is slow")
    kept = sentence_examples(corpus.sentences, loss, tokenizer, max_length)
    if not kept:
        raise TrainError("--loss object: no sentence of the corpus states a fact whose object appears "
                         "in its text")
    return ExampleSet(kept, len(corpus.sentences) - len({e.sentence_id for e in kept}))


def sentence_examples(sentences: Sequence[Sentence], loss: str, tokenizer, max_length: int) -> list[TrainExample]:
    """The training examples of these sentences, in order (loss "object": none for a sentence whose
    text contains no object of its facts)."""
    if loss == "sentence":
        return [TrainExample(s.id, s.text) for s in sentences]
    candidates = [TrainExample(s.id, s.text, obj)
                  for s in sentences for obj in dict.fromkeys(o.strip() for _, _, o in s.facts) if obj]
    kept: list[TrainExample] = []
    for i in range(0, len(candidates), CHUNK):
        chunk = candidates[i:i + CHUNK]
        rows = object_span_rows(tokenizer, [e.text for e in chunk], [e.object or "" for e in chunk], max_length)
        kept += [e for e, row in zip(chunk, rows, strict=True) if row is not None]
    return kept


def loss_batch(examples: Sequence[TrainExample], tokenizer, max_length: int) -> LossBatch:
    if examples[0].object is None:
        return example_batch(tokenizer, [e.text for e in examples], max_length)
    return object_span_batch(tokenizer, [e.text for e in examples], [e.object or "" for e in examples], max_length)
