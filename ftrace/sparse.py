"""Sparse vectors: what a featurizer returns where most of a vector's numbers are zero (the exact gradient of an
embedding lookup has the rows of the example's own tokens only). Stored as Qdrant sparse vectors, scored by dot
product: the featurizer makes them unit vectors, so the dot product is the cosine, as for dense vectors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)  # not a tuple: np.asarray must refuse it rather than make a (2, n) array
class SparseVector:
    indices: np.ndarray  # int64, strictly increasing
    values: np.ndarray  # float32

    def dot(self, other: SparseVector) -> float:
        shared, mine, theirs = np.intersect1d(self.indices, other.indices, assume_unique=True, return_indices=True)
        return float(np.dot(self.values[mine].astype(np.float64), other.values[theirs]))


class SparseVectors(list[SparseVector]):
    """One sparse vector per example (a batch), as an (N, d) array is for dense vectors."""

    def unit(self) -> SparseVectors:
        """Each vector over its norm (a zero vector stays zero)."""
        return SparseVectors(SparseVector(v.indices, (v.values / max(float(np.linalg.norm(v.values)), 1e-30))
                                          .astype(np.float32)) for v in self)

    @staticmethod
    def joined(parts: Sequence[SparseVectors], offsets: Sequence[int], scale: float = 1.0) -> SparseVectors:
        """Per example, the parts' vectors side by side (part i's indices shifted by offsets[i]), times `scale`:
        the sparse form of concatenating dense vectors."""
        return SparseVectors(
            SparseVector(np.concatenate([v.indices + off for v, off in zip(vs, offsets, strict=True)]),
                         (np.concatenate([v.values for v in vs]) * scale).astype(np.float32))
            for vs in zip(*parts, strict=True))


Vector = np.ndarray | SparseVector  # one example's vector, dense or sparse
Vectors = np.ndarray | SparseVectors  # a batch's: (N, d), or one sparse vector each
