"""The featurizer protocol and the registry of featurizer kinds.

A featurizer turns a `LossBatch` into one unit vector per example. Its `spec()` is recorded in the
index manifest under the vector's name; `from_specs` rebuilds the same featurizers from a manifest,
so a query is featurized exactly as the training examples were. `fit` prepares state from training
examples before any vector is stored (e.g. whitening) and saves it where the index says (a `StateFile`: the
index layer names every file of an index); `load` reads it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from ftrace import FtraceError
from ftrace.features import Calibration, StateFile
from ftrace.features.embedding import EmbeddingFeaturizer
from ftrace.features.gradients import TracInFeaturizer
from ftrace.model import LoadedModel, load_model
from ftrace.model.batching import LossBatch
from ftrace.sparse import Vectors


class FeatureError(FtraceError):
    """A featurizer cannot be rebuilt as an index recorded it."""


class Featurizer(Protocol):
    name: str  # the stored vector's name ("embed", "tracin")
    size: int
    sparse: bool  # its vectors are `SparseVectors` (ftrace.sparse), not an (N, size) array

    @property
    def example_loss(self) -> str:
        """Which loss batch a training example is featurized from: "sentence" or "object"."""
        ...

    def spec(self) -> dict: ...

    def fit(self, batches: Calibration, state: StateFile) -> None:
        """Fit what the vectors need from the corpus (`batches(n, seed)`: a sample of n training examples drawn with
        the seed, which the spec records; `batches(n, seed, queries=True)`: of its queries) and save it in
        `state(part)`, or load it where a resumed ingest finds it saved; nothing for most featurizers."""
        ...

    def load(self, state: StateFile) -> None: ...

    def vectors(self, batch: LossBatch) -> Vectors: ...


# manifest "kind" -> how to rebuild that featurizer from its spec
KINDS: dict[str, Callable[[LoadedModel, dict, StateFile], Any]] = {
    "embedding": EmbeddingFeaturizer.from_spec,
    "gradient": TracInFeaturizer.from_spec,
}


def from_specs(lm: LoadedModel, specs: dict[str, dict], state_file: Callable[[str, int], Path],
               names: Iterable[str] | None = None) -> dict[str, Featurizer]:
    """The featurizers recorded in a manifest (only `names`, when given), by vector name; `state_file(vector, part)`:
    where the index keeps each one's fitted state (`IndexDir.state_file`)."""
    out: dict[str, Featurizer] = {}
    for name, spec in specs.items():
        if names is not None and name not in names:
            continue
        make = KINDS.get(spec.get("kind", ""))
        if make is None:
            raise FeatureError(f"{state_file(name, 0).parent}: vector {name!r} has unknown featurizer kind "
                               f"{spec.get('kind')!r} (this ftrace knows {sorted(KINDS)})")
        out[name] = make(lm, spec, functools.partial(state_file, name))
    return out


def input_embedding_name(model: Any) -> str:
    """The module name of the model's input embedding (FTRACE's best gradient layer, "G.0")."""
    emb = model.get_input_embeddings()
    return next(name for name, m in model.named_modules() if m is emb)


def load_checkpoints(lm: LoadedModel, names: list[str]) -> tuple[list, list[dict]]:
    """The models gradients are taken at (the main model is reused, not reloaded)."""
    p = next(lm.model.parameters())
    models = [lm if n == lm.name else load_model(n, p.device, p.dtype) for n in names]
    return [m.model for m in models], [{"name": m.name, "fingerprint": m.fingerprint} for m in models]
