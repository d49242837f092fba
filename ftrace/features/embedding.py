"""Hidden-state embeddings: mean-pooled hidden states of chosen layers, each layer unit-normalised,
concatenated, and the whole unit-normalised (so cosine = dot = mean of per-layer cosines)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftrace import FtraceError
from ftrace.config import EmbeddingConfig
from ftrace.model.batching import LossBatch


class EmbeddingFeaturizer:
    name = "embed"

    def __init__(self, model: Any, config: EmbeddingConfig):
        n = model.config.num_hidden_layers
        bad = [i for i in config.layers if not -n - 1 <= i <= n]
        if bad or not config.layers:
            raise FtraceError(f"--embed-layers {bad or config.layers}: the model has hidden states 0..{n}")
        self.model, self.config = model, config
        self.size = model.config.hidden_size * len(config.layers)

    @classmethod
    def from_spec(cls, lm: Any, spec: dict, index_dir: Path) -> EmbeddingFeaturizer:
        return cls(lm.model, EmbeddingConfig(layers=spec["layers"]))

    @property
    def example_loss(self) -> str:
        return "sentence"  # embeddings read the whole sentence

    def spec(self) -> dict:
        return {"kind": "embedding", "pooling": "mean", "layers": self.config.layers, "size": self.size}

    def fit(self, batches: Callable[[], Iterable[LossBatch]], index_dir: Path) -> None:
        """Nothing to fit."""

    def load(self, index_dir: Path) -> None:
        """Nothing to load."""

    @torch.no_grad()
    def vectors(self, batch: LossBatch) -> np.ndarray:
        device = next(self.model.parameters()).device
        input_ids, attention_mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        if set(self.config.layers) == {0}:  # the embedding layer alone needs no forward pass
            hidden = [self.model.get_input_embeddings()(input_ids)]
        else:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                output_hidden_states=True).hidden_states
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        pooled = []
        for i in self.config.layers:
            mean = (hidden[i] * mask).sum(1) / mask.sum(1).clamp(min=1)
            pooled.append(torch.nn.functional.normalize(mean, dim=-1))
        vec = torch.nn.functional.normalize(torch.cat(pooled, dim=-1), dim=-1)
        return vec.float().cpu().numpy()
