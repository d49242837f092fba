"""A learned fusion of two runs: logistic regression over per-candidate features of both.

Features of a candidate, per component run (in the fusion's order), within its query: the run's
min-max normalised score and 1/rank (rank 1 + the number of strictly higher scores; both 0 where
the run did not score the candidate). The model (scikit-learn: `StandardScaler` then
`LogisticRegression`, class_weight="balanced", seeded) is fitted on tuning queries' candidates,
labelled 1 for a proponent, and scores a candidate by its predicted probability of being one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ftrace import FtraceError
from ftrace.query.fusion import Scores, minmax

FEATURES = ("minmax", "1/rank")
MODEL = ("logistic regression (scikit-learn LogisticRegression, class_weight balanced, lbfgs, L2, C=1) "
         "on standardised features (StandardScaler)")


def feature_names(components: Sequence[str]) -> list[str]:
    return [f"{c}:{f}" for c in components for f in FEATURES]


def reciprocal_ranks(run: Scores, ids: Iterable[str]) -> list[float]:
    """1/rank of each id in `run` (rank = 1 + the number of strictly higher scores; 0 when unscored)."""
    desc = np.sort(-np.fromiter(run.values(), dtype=float, count=len(run)))
    return [1.0 / (1 + int(np.searchsorted(desc, -run[i], side="left"))) if i in run else 0.0 for i in ids]


def features(runs: Mapping[str, Scores], components: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(candidate ids sorted, their features: one row each, columns `feature_names(components)`)."""
    ids = sorted({i for c in components for i in runs[c]})
    cols: list[list[float]] = []
    for c in components:
        norm = minmax(runs[c])
        cols += [[norm.get(i, 0.0) for i in ids], reciprocal_ranks(runs[c], ids)]
    return ids, np.array(cols, dtype=float).reshape(len(cols), len(ids)).T


@dataclass(frozen=True)
class LearnedFusion:
    """A fitted model: fused score of a candidate = its predicted probability of being a proponent."""

    components: tuple[str, ...]
    pipeline: Any  # a fitted sklearn Pipeline (scale, logreg)
    samples: int
    positives: int
    seed: int

    @classmethod
    def fit(cls, parts: Mapping[str, Mapping[str, Scores]], proponents: Mapping[str, Iterable[str]],
            components: Sequence[str], seed: int = 0) -> LearnedFusion:
        """Fit on every candidate of every query of `parts` (query id -> component runs)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        xs, ys = [], []
        for qid, runs in parts.items():
            ids, x = features(runs, components)
            props = set(proponents[qid])
            xs.append(x)
            ys += [1 if i in props else 0 for i in ids]
        y = np.array(ys, dtype=int)
        if len(set(ys)) < 2:
            raise FtraceError(f"--fusion learned: the tuning queries' {len(ys)} candidates for "
                              f"{'+'.join(components)} are all {'proponents' if ys and ys[0] else 'non-proponents'}; "
                              "nothing to learn from (tune on more queries)")
        pipeline = Pipeline([("scale", StandardScaler()),
                             ("logreg", LogisticRegression(class_weight="balanced", random_state=seed, max_iter=1000))])
        pipeline.fit(np.vstack(xs), y)
        return cls(tuple(components), pipeline, len(y), int(y.sum()), seed)

    def __call__(self, runs: Mapping[str, Scores]) -> dict[str, float]:
        ids, x = features(runs, self.components)
        if not ids:
            return {}
        return dict(zip(ids, map(float, self.pipeline.predict_proba(x)[:, 1]), strict=True))

    def describe(self) -> dict:
        scale, logreg = self.pipeline.named_steps["scale"], self.pipeline.named_steps["logreg"]
        return {"kind": MODEL, "features": feature_names(self.components),
                "coef": [float(v) for v in logreg.coef_[0]], "intercept": float(logreg.intercept_[0]),
                "scaler_mean": [float(v) for v in scale.mean_], "scaler_scale": [float(v) for v in scale.scale_],
                "samples": self.samples, "positives": self.positives, "seed": self.seed,
                "note": "coef apply to standardised features: (x - scaler_mean) / scaler_scale"}
