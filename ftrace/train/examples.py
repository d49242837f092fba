"""A training run's examples: the corpus's, under the example loss (ftrace.model.objective defines both),
with the sentences that gave none counted, and a fingerprint of exactly what is trained on."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ftrace.corpus import Corpus, Example
from ftrace.model.objective import Objective
from ftrace.runs.errors import TrainError


@dataclass
class ExampleSet:
    examples: list[Example]
    skipped_sentences: int  # sentences that gave no example

    def fingerprint(self) -> str:
        """Hash of exactly what is trained on, in order (covers the corpus's facts too)."""
        h = hashlib.sha256()
        for e in self.examples:
            h.update(json.dumps([e.sentence_id, e.text, e.object]).encode() + b"\n")
        return h.hexdigest()[:16]


def build_examples(corpus: Corpus, objective: Objective) -> ExampleSet:
    if not corpus.sentences:
        raise TrainError(f"corpus {corpus.source}: no sentences to train on")
    kept = objective.training_examples(corpus.sentences)
    if not kept:
        raise TrainError("--example-loss object: no sentence of the corpus states a fact whose object appears "
                         "in its text")
    return ExampleSet(kept, len(corpus.sentences) - len({e.sentence_id for e in kept}))


