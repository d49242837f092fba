"""Which featurisers an index has, built from ingest settings or, for queries, from its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ftrace.index.manifest import ManifestError
from ftrace.ingest.embeddings import EmbeddingConfig, EmbeddingFeaturizer
from ftrace.ingest.gradients import GradientConfig
from ftrace.ingest.tracin import TracInFeaturizer
from ftrace.model import LoadedModel, load_model
from ftrace.model.batching import LossBatch


class Featurizer(Protocol):
    name: str
    size: int

    def spec(self) -> dict: ...

    def vectors(self, batch: LossBatch) -> np.ndarray: ...


def input_embedding_name(model) -> str:
    """The module name of the model's input embedding (FTRACE's best gradient layer, "G.0")."""
    emb = model.get_input_embeddings()
    return next(name for name, m in model.named_modules() if m is emb)


def load_checkpoints(lm: LoadedModel, names: list[str]) -> tuple[list, list[dict]]:
    """The models gradients are taken at (the main model is reused, not reloaded)."""
    models = [lm if n == lm.name else load_model(n) for n in names]
    return [m.model for m in models], [{"name": m.name, "fingerprint": m.fingerprint} for m in models]


def from_specs(lm: LoadedModel, specs: dict[str, dict], index_dir: Path) -> list[Featurizer]:
    """Rebuild the featurisers recorded in a manifest (queries must be featurised the same way)."""
    out: list[Featurizer] = []
    for name, spec in specs.items():
        if spec["kind"] == "embedding":
            out.append(EmbeddingFeaturizer(lm.model, EmbeddingConfig(layers=spec["layers"])))
        elif spec["kind"] == "gradient":
            models, checkpoints = load_checkpoints(lm, [c["name"] for c in spec["checkpoints"]])
            if checkpoints != spec["checkpoints"]:
                raise ManifestError(f"{index_dir}: a gradient checkpoint has changed since the index was built "
                                    f"(index {spec['checkpoints']}, now {checkpoints})")
            f = TracInFeaturizer(models, checkpoints, GradientConfig(**spec["config"]),
                                 spec["corrections"]["whitening"]["samples"])
            f.load(index_dir)
            out.append(f)
        else:
            raise ValueError(f"vector {name!r}: unknown featuriser kind {spec['kind']!r}")
    return out
