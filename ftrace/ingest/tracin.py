"""The "tracin" vector: projected loss gradients (`gradients.GradientFeaturizer`) at one or more
checkpoints, combined so that the stored cosine is the mean of per-checkpoint TracIn/TrackStar
scores. Whitening, when asked for, is fitted on a seeded calibration sample of training examples
and saved beside the index so queries are whitened the same way."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from ftrace.ingest.gradients import GradientConfig, GradientFeaturizer, combine_checkpoints
from ftrace.model.batching import LossBatch


def state_file(index_dir: Path, checkpoint: int) -> Path:
    return Path(index_dir) / f"tracin-state-{checkpoint}.pt"


class TracInFeaturizer:
    name = "tracin"

    def __init__(self, models: list[torch.nn.Module], checkpoints: list[dict], config: GradientConfig,
                 whiten_samples: int = 0):
        self.parts = [GradientFeaturizer(m, config) for m in models]
        self.checkpoints, self.config, self.whiten_samples = checkpoints, config, whiten_samples
        self.size = self.parts[0].size * len(self.parts)

    def spec(self) -> dict:
        """What made the vectors; stable before and after whitening is fitted (it names the
        calibration, the fitted matrices live in the state files)."""
        spec = self.parts[0].spec()
        spec["corrections"]["whitening"] = {"enabled": self.config.whiten, "samples": self.whiten_samples,
                                            "fitted_on": "seeded sample of training examples"}
        spec["per_checkpoint_size"] = spec.pop("size")
        spec.update(size=self.size, checkpoints=self.checkpoints, config=self.config.model_dump(),
                    combination="per-checkpoint unit vectors / sqrt(C): dot = mean of per-checkpoint cosines")
        return spec

    @property
    def needs_fit(self) -> bool:
        return self.config.whiten

    def fit(self, batches: Callable[[], Iterable[LossBatch]], index_dir: Path) -> None:
        for i, part in enumerate(self.parts):
            path = state_file(index_dir, i)
            if path.exists():  # resumed ingest: reuse the fitted whitening, never refit under stored vectors
                part.load(path)
                continue
            part.fit_whitening(batches())
            part.save(path)

    def load(self, index_dir: Path) -> None:
        if self.config.whiten:
            for i, part in enumerate(self.parts):
                part.load(state_file(index_dir, i))

    def vectors(self, batch: LossBatch) -> np.ndarray:
        per = [p.vectors(batch) for p in self.parts]
        return per[0] if len(per) == 1 else combine_checkpoints(per)
