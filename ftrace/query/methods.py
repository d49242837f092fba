"""Method names and fusion: one grammar and one fusion path for query, bench and serve.

A method is `bm25`, a stored vector's name (`embed`, `tracin`, ...), or the fusion `a+b` of two
different such methods (weight w on a, 1 - w on b). Scores are per sentence, higher is better.

Fusion kinds (`fuse`, `Fuser`): "sum" (min-max normalised weighted sum), "rrf" (weighted reciprocal
rank fusion), "cascade" (b's top k re-ranked by the sum, above the rest in b's order: FTRACE's
fusions put bm25 last, so BM25 retrieves and the sum re-ranks) and, in the bench only, "learned"
(a model fitted on tuning queries, `query.learned`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from ftrace import FtraceError
from ftrace.config import CASCADE_K, FUSION_WEIGHT
from ftrace.query.fusion import Scores, cascade, rrf, weighted_sum
from ftrace.query.learned import LearnedFusion

Fusion = Literal["sum", "rrf", "cascade"]  # fusions with a weight
FusionKind = Literal["sum", "rrf", "cascade", "learned"]
FUSIONS: dict[str, str] = {
    "sum": "weighted sum of min-max normalised scores (w on the first method, 1-w on the second)",
    "rrf": "weighted reciprocal rank fusion, sum of w / (60 + rank) (w on the first method, 1-w on the second)",
    "cascade": "the second method's top k (ties with the k-th included) re-ranked by the weighted sum of min-max "
               "scores normalised over them (w on the first method), ranked above the rest in the second's order",
    "learned": "logistic regression over both methods' min-max scores and 1/ranks, fitted on the tuning queries",
}


@dataclass(frozen=True)
class Method:
    components: tuple[str, ...]  # one method, or the two methods of a fusion

    @property
    def is_fusion(self) -> bool:
        return len(self.components) == 2

    def __str__(self) -> str:
        return "+".join(self.components)


def parse_method(text: str, available: Sequence[str] | None, option: str = "--method") -> Method:
    """The method named by `text`; `available`: the index's single methods (None: syntax only)."""
    components = tuple(p.strip() for p in text.split("+"))
    if len(components) > 2 or not all(components):
        raise FtraceError(f"{option} {text!r}: a method is a single method or a fusion that joins two methods, "
                          "e.g. embed+bm25")
    if len(components) == 2 and components[0] == components[1]:
        raise FtraceError(f"{option} {text!r}: fuse two different methods")
    if available is None:
        return Method(components)
    missing = [c for c in components if c not in available]
    if missing:
        raise FtraceError(f"{option} {text!r}: this index has {list(available)} (and their a+b fusions), "
                          f"not {missing[0]!r}")
    return Method(components)


def fusion_pool(retrieved: Mapping[str, Scores]) -> list[str]:
    """What a fusion scores in full retrieval: the union of its components' retrieved sentences."""
    return sorted({s for run in retrieved.values() for s in run})


def fused_parts(method: Method, retrieve: Callable[[str], Scores],
                score: Callable[[str, list[str]], dict[str, float]]) -> dict[str, dict[str, float]]:
    """The one fusion path over a whole corpus (queries and the full-retrieval bench): each component retrieves its
    top sentences, and every component scores their union (`fusion_pool`)."""
    pool = fusion_pool({c: retrieve(c) for c in method.components})
    return {c: score(c, pool) for c in method.components}


def fuse(runs: Mapping[str, Scores], method: Method, weight: float, fusion: Fusion = "sum",
         cascade_k: int = CASCADE_K) -> dict[str, float]:
    """Fuse the component runs of `method` (weight w on a, 1 - w on b): min-max weighted sum, weighted
    reciprocal rank fusion, or the cascade of b's top `cascade_k` re-ranked by the sum."""
    a, b = method.components
    if fusion == "cascade":
        return cascade(runs[a], runs[b], (weight, 1.0 - weight), cascade_k)
    weights = {a: weight, b: 1.0 - weight}
    parts = {a: runs[a], b: runs[b]}
    return weighted_sum(parts, weights) if fusion == "sum" else rrf(parts, weights=weights)


@dataclass(frozen=True)
class Fuser:
    """One fusion method, settled: its kind with a weight, or a fitted model ("learned"). Turns the
    component runs of a query into fused scores, the same way for tuning and for evaluation."""

    method: Method
    fusion: FusionKind = "sum"
    weight: float = FUSION_WEIGHT
    cascade_k: int = CASCADE_K
    model: LearnedFusion | None = None

    def __call__(self, runs: Mapping[str, Scores]) -> dict[str, float]:
        if self.fusion == "learned":
            if self.model is None:
                raise FtraceError(f"{self.method}: a learned fusion needs a fitted model")
            return self.model(runs)
        return fuse(runs, self.method, self.weight, self.fusion, self.cascade_k)
