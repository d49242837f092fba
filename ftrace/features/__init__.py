"""Per-example vectors a model gives a loss batch: hidden-state embeddings and projected loss
gradients. Used by ingest (training examples) and by query and bench (the query), so that both
sides are featurized by the same code."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ftrace.model.batching import LossBatch

StateFile = Callable[[int], Path]  # part -> the file an index keeps a featurizer's fitted state in (state_file)


class Calibration(Protocol):
    """A featurizer's calibration sample (`Featurizer.fit`): n training examples drawn with the seed, as loss
    batches; with `queries`, n of the corpus's queries (their prompts and targets under the query loss)."""

    def __call__(self, n: int, seed: int, queries: bool = False) -> Iterable[LossBatch]: ...
