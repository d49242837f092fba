"""Which methods a bench runs (`plan_methods`) and how each fusion's weight is tuned on the tuning queries
(`tune_fuser`): the fusion is frozen before the evaluation, which fuses through the same `Fuser`."""

from __future__ import annotations

from collections.abc import Sequence

from ftrace import FtraceError
from ftrace.bench import metrics as M
from ftrace.bench.candidates import seeded_tiebreak
from ftrace.config import CASCADE_K, FUSION_WEIGHT, GRID, BenchConfig
from ftrace.query.fusion import ranking
from ftrace.query.learned import LearnedFusion
from ftrace.query.methods import Fuser, Fusion, Method, parse_method

FTRACE_FUSIONS = (("tracin", "embed"), ("tracin", "bm25"), ("embed", "bm25"))
RANDOM_TARGET = "random-target"


# --- which methods ---------------------------------------------------------------------------------

def plan_methods(requested: Sequence[str] | None, available: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(methods to run, {skipped method: why}). `available`: the index's single methods."""
    have = list(available)
    skipped: dict[str, str] = {}

    def missing_note(parts: Sequence[str]) -> str | None:
        missing = [p for p in parts if p not in have]
        if not missing:
            return None
        why = ", ".join(f"no {p!r} vectors" if p == "tracin" else f"no {p!r} method" for p in missing)
        return f"the index has {why} (it has {have})"

    if requested is None:
        methods = list(have)
        if "tracin" not in have:
            skipped["tracin"] = f"{missing_note(['tracin'])}; ingest with gradient features to add them"
        for a, b in FTRACE_FUSIONS:
            note = missing_note([a, b])
            if note:
                skipped[f"{a}+{b}"] = note
            else:
                methods.append(f"{a}+{b}")
        return [*methods, RANDOM_TARGET], skipped
    methods = []
    for name in dict.fromkeys(m.strip() for m in requested if m.strip()):
        if name == RANDOM_TARGET:
            methods.append(name)
            continue
        note = missing_note(parse_method(name, None, "--methods").components)
        if note:
            skipped[name] = note
        else:
            methods.append(name)
    if not methods:
        raise FtraceError(f"--methods {','.join(requested)}: none of them can run on this index "
                          f"({'; '.join(f'{k}: {v}' for k, v in skipped.items())})")
    return methods, skipped


def base_methods(methods: Sequence[str]) -> list[str]:
    """The single methods the listed methods need, in order."""
    return list(dict.fromkeys(p for m in methods if m != RANDOM_TARGET for p in m.split("+")))


# --- fusion weights ----------------------------------------------------------------------------------

Parts = dict[str, dict[str, dict[str, float]]]  # query id -> component -> sentence id -> score


def fused_mrr(parts: Parts, proponents: dict[str, list[str]], fuser: Fuser, seed: int = 0) -> float:
    """MRR of a fusion over the queries of `parts` (ties in the seeded order, as in the evaluation)."""
    ranked = {qid: [s for s, _ in ranking(fuser(runs), seeded_tiebreak(seed, qid))] for qid, runs in parts.items()}
    return M.evaluate({q: proponents[q] for q in parts}, ranked, ["mrr"])["mrr"]


def tune_weight(parts: Parts, proponents: dict[str, list[str]], method: Method, grid: Sequence[float] = GRID,
                seed: int = 0, default: float = FUSION_WEIGHT, fusion: Fusion = "sum",
                cascade_k: int = CASCADE_K) -> tuple[float, dict[float, float]]:
    """The w of `grid` maximising MRR of the fusion over the queries of `parts` (query id ->
    component scores); ties go to the w closest to `default`, then the smaller."""
    mrr = {w: fused_mrr(parts, proponents, Fuser(method, fusion, w, cascade_k), seed) for w in grid}
    best = max(grid, key=lambda w: (round(mrr[w], 12), -abs(w - default), -w))
    return best, mrr


def tune_fuser(parts: Parts, proponents: dict[str, list[str]], method: Method, c: BenchConfig,
               seed: int = 0) -> tuple[Fuser, dict]:
    """The frozen fusion of `method` for c.fusion, from the tuning queries of `parts`, and what to record."""
    if c.fusion == "learned":
        model = LearnedFusion.fit(parts, proponents, method.components, seed)
        fuser = Fuser(method, "learned", model=model)
        return fuser, {"weight": None, "model": model.describe(), "tune_mrr": fused_mrr(parts, proponents, fuser, seed)}
    w, mrr = tune_weight(parts, proponents, method, c.grid, seed, c.default_weight, c.fusion, c.cascade_k)
    return Fuser(method, c.fusion, w, c.cascade_k), {"weight": w, "tune_mrr": mrr[w],
                                                      "mrr_by_weight": {str(k): v for k, v in mrr.items()}}
