"""Per-example vectors a model gives a loss batch: hidden-state embeddings and projected loss
gradients. Used by ingest (training examples) and by query and bench (the query), so that both
sides are featurized by the same code."""

from collections.abc import Callable
from pathlib import Path

StateFile = Callable[[int], Path]  # part -> the file an index keeps a featurizer's fitted state in (state_file)
