"""Projected per-example loss gradients (TracIn / TrackStar), computed LoGra-style without ever
forming a per-example gradient. The math and every convention: docs/gradients.md.

blocks.py      which weight matrices are blocks        projection.py  seeded projection matrices
optimizer.py   Adam second-moment correction           collector.py   the hooked forward+backward
whitening.py   TrackStar's R^-1/2                      featurizer.py  per-model and per-checkpoint featurizers
(the loss and the examples' batches: ftrace.model.objective)
"""

from ftrace.features.gradients.featurizer import (
                                                  GradientError,
                                                  GradientFeaturizer,
                                                  TracInFeaturizer,
                                                  combine_checkpoints,
                                                  tied_norm_ratio,
)

__all__ = ["GradientError", "GradientFeaturizer", "TracInFeaturizer", "combine_checkpoints", "tied_norm_ratio"]
