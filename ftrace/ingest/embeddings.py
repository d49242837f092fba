"""Hidden-state embeddings: mean-pooled hidden states of chosen layers, each layer unit-normalised,
concatenated, and the whole unit-normalised (so cosine = dot = mean of per-layer cosines)."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel

from ftrace import FtraceError
from ftrace.model.batching import LossBatch


class EmbeddingConfig(BaseModel):
    # hidden_states index: 0 = the embedding layer's output (FTRACE's best), i = output of block i.
    layers: list[int] = [0]


class EmbeddingFeaturizer:
    name = "embed"

    def __init__(self, model: torch.nn.Module, config: EmbeddingConfig):
        n = model.config.num_hidden_layers
        bad = [i for i in config.layers if not -n - 1 <= i <= n]
        if bad or not config.layers:
            raise FtraceError(f"--embed-layers {bad or config.layers}: the model has hidden states 0..{n}")
        self.model, self.config = model, config
        self.size = model.config.hidden_size * len(config.layers)

    def spec(self) -> dict:
        return {"kind": "embedding", "pooling": "mean", "layers": self.config.layers, "size": self.size}

    @torch.no_grad()
    def vectors(self, batch: LossBatch) -> np.ndarray:
        if set(self.config.layers) == {0}:  # the embedding layer alone needs no forward pass
            hidden = [self.model.get_input_embeddings()(batch.input_ids)]
        else:
            hidden = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                output_hidden_states=True).hidden_states
        mask = batch.attention_mask.unsqueeze(-1).to(torch.float32)
        parts = []
        for i in self.config.layers:
            pooled = (hidden[i] * mask).sum(1) / mask.sum(1).clamp(min=1)
            parts.append(torch.nn.functional.normalize(pooled, dim=-1))
        vec = torch.nn.functional.normalize(torch.cat(parts, dim=-1), dim=-1)
        return vec.numpy().astype(np.float32)
