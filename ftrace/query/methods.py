"""Method names and fusion: one grammar and one fusion path for query, bench and serve.

A method is `bm25`, a stored vector's name (`embed`, `tracin`, ...), or the fusion `a+b` of two
different such methods (weight w on a, 1 - w on b). Scores are per sentence, higher is better.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from ftrace import FtraceError
from ftrace.query.fusion import Scores, rrf, weighted_sum

Fusion = Literal["sum", "rrf"]


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


def fuse(runs: Mapping[str, Scores], method: Method, weight: float, fusion: Fusion = "sum") -> dict[str, float]:
    """Fuse the component runs of `method`: min-max weighted sum or weighted reciprocal rank fusion."""
    a, b = method.components
    weights = {a: weight, b: 1.0 - weight}
    parts = {a: runs[a], b: runs[b]}
    return weighted_sum(parts, weights) if fusion == "sum" else rrf(parts, weights=weights)
