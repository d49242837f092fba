"""Hidden-state embeddings: pooled hidden states of chosen layers, each layer unit-normalised, concatenated, and the
whole unit-normalised (so cosine = dot = mean of per-layer cosines).

Pooling "mean" is FTRACE's EMBED: the plain mean over the tokens. Pooling "idf" weights each token by its inverse
document frequency, log((n + 1) / (df + 0.5)) over a seeded sample of n sentences, and subtracts that sample's mean
token hidden state per layer first: a plain mean of token vectors is dominated by the direction they all share and
by the commonest words (results/attribution/README.md#embed). The fitted statistics are saved beside the index
(the index names its file), so queries pool the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ftrace import FtraceError
from ftrace.config import EmbeddingConfig
from ftrace.features import Calibration, StateFile
from ftrace.model.batching import LossBatch
from ftrace.plumbing import replacing

SAMPLE_SEED = 0  # the idf pooling's sample (recorded in the spec)


class EmbeddingFeaturizer:
    name = "embed"
    sparse = False

    def __init__(self, model: Any, config: EmbeddingConfig):
        n = model.config.num_hidden_layers
        bad = [i for i in config.layers if not -n - 1 <= i <= n]
        if bad or not config.layers:
            raise FtraceError(f"--embed-layers {bad or config.layers}: the model has hidden states 0..{n}")
        self.model, self.config = model, config
        self.size = model.config.hidden_size * len(config.layers)
        self._idf: torch.Tensor | None = None  # (vocabulary,) once fitted or loaded ("idf" pooling)
        self._means: torch.Tensor | None = None  # (layers, hidden): each layer's mean token hidden state

    @classmethod
    def from_spec(cls, lm: Any, spec: dict, state: StateFile) -> EmbeddingFeaturizer:
        f = cls(lm.model, EmbeddingConfig(layers=spec["layers"], pooling=spec.get("pooling", "mean"),
                                          **({"samples": spec["samples"]} if "samples" in spec else {})))
        f.load(state)
        return f

    @property
    def example_loss(self) -> str:
        return "sentence"  # embeddings read the whole sentence

    def spec(self) -> dict:
        spec = {"kind": "embedding", "pooling": self.config.pooling, "layers": self.config.layers, "size": self.size}
        if self.config.pooling == "idf":
            spec |= {"samples": self.config.samples, "seed": SAMPLE_SEED,
                     "fitted_on": "seeded sample of the corpus's sentences",
                     "weights": "idf = log((n + 1) / (df + 0.5))", "centred": "the sample's mean token, per layer"}
        return spec

    @torch.no_grad()
    def fit(self, batches: Calibration, state: StateFile) -> None:
        """"idf" pooling: document frequencies and mean token states over a seeded sample (reused when an
        interrupted ingest resumes, never refitted under stored vectors)."""
        if self.config.pooling != "idf":
            return
        if state(0).exists():
            self.load(state)
            return
        vocabulary = self.model.get_input_embeddings().num_embeddings
        df = torch.zeros(vocabulary, dtype=torch.float64)
        sums = torch.zeros(len(self.config.layers), self.model.config.hidden_size, dtype=torch.float64)
        sentences = tokens = 0
        for batch in batches(self.config.samples, SAMPLE_SEED):
            hidden, mask = self._hidden(batch)
            for row, keep in zip(batch.input_ids, batch.attention_mask, strict=True):
                df[row[keep.bool()].unique()] += 1
            for j, h in enumerate(hidden):
                sums[j] += (h.double() * mask.double()).sum((0, 1)).cpu()
            sentences += len(batch)
            tokens += int(mask.sum())
        if not sentences:
            raise FtraceError("--embed-pooling idf: no sentence to fit it on")
        self._idf = torch.log((sentences + 1) / (df + 0.5)).float()
        self._means = (sums / tokens).float()
        with replacing(state(0)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, idf=self._idf.numpy(), means=self._means.numpy(), sentences=sentences)

    def load(self, state: StateFile) -> None:
        if self.config.pooling != "idf":
            return
        path = state(0)
        try:
            with np.load(path) as saved:
                self._idf, self._means = torch.from_numpy(saved["idf"]), torch.from_numpy(saved["means"])
        except (OSError, KeyError, ValueError):
            raise FtraceError(f"{path}: missing or unreadable; the index's idf pooling needs it (ingest again)") \
                from None

    def _hidden(self, batch: LossBatch) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The chosen layers' hidden states (B, T, d) and the mask (B, T, 1) as float32."""
        device = next(self.model.parameters()).device
        input_ids, attention_mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        if set(self.config.layers) == {0}:  # the embedding layer alone needs no forward pass
            hidden = [self.model.get_input_embeddings()(input_ids)]
            return hidden, attention_mask.unsqueeze(-1).to(torch.float32)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
        return [out[i] for i in self.config.layers], attention_mask.unsqueeze(-1).to(torch.float32)

    @torch.no_grad()
    def vectors(self, batch: LossBatch) -> np.ndarray:
        hidden, mask = self._hidden(batch)
        if self.config.pooling == "idf":
            if self._idf is None or self._means is None:
                raise FtraceError("--embed-pooling idf: fit it (ftrace ingest) or load the index's state first")
            device = mask.device
            weight = mask * self._idf.to(device)[batch.input_ids.to(device)].unsqueeze(-1)
            hidden = [h.float() - m.to(device) for h, m in zip(hidden, self._means, strict=True)]
        else:
            weight = mask
        pooled = []
        for h in hidden:
            mean = (h * weight).sum(1) / weight.sum(1).clamp(min=1e-6 if self.config.pooling == "idf" else 1)
            pooled.append(torch.nn.functional.normalize(mean, dim=-1))
        vec = torch.nn.functional.normalize(torch.cat(pooled, dim=-1), dim=-1)
        return vec.float().cpu().numpy()
