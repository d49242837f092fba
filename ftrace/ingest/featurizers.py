"""Which featurisers an index has, built from ingest settings or, for queries, from its manifest."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ftrace.ingest.embeddings import EmbeddingConfig, EmbeddingFeaturizer
from ftrace.model.batching import LossBatch


class Featurizer(Protocol):
    name: str
    size: int

    def spec(self) -> dict: ...

    def vectors(self, batch: LossBatch) -> np.ndarray: ...


def from_specs(model, specs: dict[str, dict]) -> list[Featurizer]:
    """Rebuild the featurisers recorded in a manifest (queries must be featurised the same way)."""
    out: list[Featurizer] = []
    for name, spec in specs.items():
        if spec["kind"] == "embedding":
            out.append(EmbeddingFeaturizer(model, EmbeddingConfig(layers=spec["layers"])))
        else:
            raise ValueError(f"vector {name!r}: unknown featuriser kind {spec['kind']!r}")
    return out
