"""Tail-patch influence in `ftrace bench --metric tailpatch|all` (the step itself: tailpatch.py).

For every drawn (seed, query), each method's top k (its full-mode ranking) and the references
(oracle: the first k proponents; random: k seeded random sentences; momentum: none, when the step
starts from a run's state) are tail-patched. A query's value per set is averaged over the seeds
that drew it; tables give the mean ± std over distinct queries per slice, the fraction of queries
whose target log-probability rose, and paired tests of each set against BM25 over those queries.

Cache (OUT/tailpatch.jsonl, resumable like cache.jsonl): per query, its log p before the step and
the log p after the step on each distinct set of sentences (keyed by the sorted ids, so methods
that retrieve the same k sentences share one step). The settings hash covers the index, the model,
k and the step settings.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ftrace.bench import metrics as M
from ftrace.bench.cache import ResultCache, settings_hash
from ftrace.bench.candidates import draw, rng_for
from ftrace.bench.evaluate import DrawRankings, Members
from ftrace.bench.paths import shown
from ftrace.bench.scoring import ids_digest
from ftrace.bench.tailpatch import MOMENTUM, ORACLE, RANDOM, TailPatcher
from ftrace.corpus import Query, Sentence

STATS = ("delta_logp", "delta_logp_vs_momentum", "delta_p")


def _digest(ids: Sequence[str]) -> str:
    return ids_digest(ids, 16)  # 16: the length the cached steps were written with


def reference_sets(patcher: TailPatcher) -> list[str]:
    return [ORACLE, RANDOM, *([MOMENTUM] if patcher.moments is not None else [])]


@dataclass(frozen=True)
class TailPatchRun:
    """What the tail-patch takes from a bench run."""

    patcher: TailPatcher  # the step and the measurement, at the index's final checkpoint
    k: int  # sentences per set: each method's top k
    methods: Sequence[str]
    sentences: Mapping[str, Sentence]  # the corpus by id, in corpus order (the random reference draws from it)
    identity: Mapping[str, Any]  # the index and model the rankings came from: part of the cache key
    out: Path  # the bench's output directory (OUT/tailpatch.jsonl)
    stat_test: str


def tailpatch(run: TailPatchRun, per_seed: Mapping[int, Sequence[Query]], rankings: DrawRankings,
              members: Members) -> tuple[dict, dict[tuple[int, str, str], dict]]:
    """(results["tailpatch"], {(seed, query id, set): {"delta_logp", "examples"}} for rankings.jsonl)."""
    patcher, k, sentences = run.patcher, run.k, run.sentences
    corpus_ids = list(sentences)
    key = settings_hash({"tailpatch": _as_hashed(asdict(patcher.s)), **run.identity, "k": k})
    cache = ResultCache(run.out / "tailpatch.jsonl", {key})
    sets = [*run.methods, *reference_sets(patcher)]

    def batch_of(seed: int, q: Query, name: str) -> list[str]:
        if name == ORACLE:
            ids = list(dict.fromkeys(q.proponents))[:k]
        elif name == RANDOM:
            ids = draw(corpus_ids, k, rng_for("tailpatch-random", seed, q.id), set())
        elif name == MOMENTUM:
            ids = []
        else:
            ids = [i for i, _ in rankings[(seed, q.id, name)][:k]]
        return sorted(ids)  # one batch: its order does not matter, so one step per distinct set

    queries = list({q.id: q for qs in per_seed.values() for q in qs}.values())
    for q in queries:  # one query per forward, exactly as after each step (padding changes the rounding)
        if cache.get(key, None, q.id, "@logp") is None:
            cache.put(key, None, q.id, "@logp", {"prompt": q.prompt, "target": q.target,
                                                 "logp": patcher.logprobs([q.prompt], [q.target])[0]})
    before = {q.id: cache.entries[(key, None, q.id, "@logp")]["logp"] for q in queries}

    wanted = {(seed, q.id, s): batch_of(seed, q, s) for seed, qs in per_seed.items() for q in qs for s in sets}
    steps = {(qid, _digest(ids)): ids for (_, qid, _), ids in wanted.items()}
    by_id = {q.id: q for q in queries}
    missing = [(qid, d) for qid, d in steps if cache.get(key, None, qid, d) is None]
    for qid, d in tqdm(missing, desc=f"tail-patch (k={k})", unit="step", disable=not missing):
        q = by_id[qid]
        got = patcher.patch(q.prompt, q.target, [sentences[i] for i in steps[(qid, d)]])
        cache.put(key, None, qid, d, {"n": got["n"], "after": got["after"]}, got["s"])
    cache.close()

    per_run: dict[tuple[int, str, str], dict] = {}
    for (seed, qid, s), ids in wanted.items():
        v = cache.entries[(key, None, qid, _digest(ids))]
        per_run[(seed, qid, s)] = {"delta_logp": v["after"] - before[qid], "examples": v["n"], "after": v["after"]}
    results = summarize(per_seed, per_run, sets, before, members, run.stat_test)
    results.update({
        "k": k, "sets": sets, "step": {**asdict(patcher.s), "state": shown(patcher.s.state)},
        "what": "one AdamW step on a set of training sentences as one batch, from the final checkpoint (weights never "
                "changed: a functional call); the change of the target's log-probability given the prompt, summed over "
                "its tokens",
        "references": {ORACLE: f"the query's proponents (at most {k})", RANDOM: f"{k} seeded random sentences",
                       MOMENTUM: "no sentences (g = 0): the run's momentum alone"},
        "steps": {"distinct": len(steps), "computed": len(missing), "reused": len(steps) - len(missing),
                  "compute_s": round(sum(cache.seconds.get((key, None, qid, d), 0.0) for qid, d in steps), 1),
                  "file": shown(cache.path)},
    })
    return results, per_run


def summarize(per_seed: Mapping[int, Sequence[Query]], per_run: Mapping[tuple[int, str, str], dict],
              sets: Sequence[str], before: Mapping[str, float], members: Members, stat_test: str) -> dict:
    """Per slice and set: mean ± std over distinct queries (each averaged over its seeds in the slice),
    the fraction that rose, and paired tests against BM25 over the same queries."""
    table: dict[str, dict] = {}
    significance: dict[str, dict] = {}
    counts: dict[str, int] = {}
    for sl, draws in members.items():
        values: dict[str, dict[str, dict[str, list[float]]]] = {s: {x: {} for x in (*STATS, "examples")}
                                                                for s in sets}
        for seed, qs in per_seed.items():
            for q in (q for q in qs if (seed, q.id) in draws):
                momentum = per_run.get((seed, q.id, MOMENTUM))
                for s in sets:
                    d = per_run[(seed, q.id, s)]["delta_logp"]
                    after = per_run[(seed, q.id, s)]["after"]
                    row = {"delta_logp": d, "delta_p": math.exp(after) - math.exp(before[q.id]),
                           "delta_logp_vs_momentum": d - momentum["delta_logp"] if momentum else d}
                    for x in STATS:
                        values[s][x].setdefault(q.id, []).append(row[x])
                    values[s]["examples"].setdefault(q.id, []).append(per_run[(seed, q.id, s)]["examples"])
        per_query = {s: {x: {qid: float(np.mean(v)) for qid, v in d.items()} for x, d in values[s].items()}
                     for s in sets}
        qids = sorted(per_query[sets[0]]["delta_logp"])
        counts[sl] = len(qids)
        table[sl] = {}
        for s in sets:
            row = {x: M.mean_std([per_query[s][x][q] for q in qids]) for x in (*STATS, "examples")}
            for x in ("delta_logp", "delta_logp_vs_momentum"):
                row[f"rose ({x})"] = float(np.mean([per_query[s][x][q] > 0 for q in qids])) if qids else None
            table[sl][s] = row
        if "bm25" in sets and len(qids) >= 2:
            bm25 = [per_query["bm25"]["delta_logp"][q] for q in qids]
            significance[sl] = {s: versus([per_query[s]["delta_logp"][q] for q in qids], bm25)
                                for s in sets if s != "bm25"}
        else:
            significance[sl] = {"note": "needs bm25 and at least 2 queries"}
    return {"metrics": table, "queries": counts, "significance": significance, "main_test": stat_test,
            "tests": "student and fisher compare means (a few large changes can carry them); wilcoxon (signed-rank) "
                     "and wins (the fraction of queries where the set beats bm25) say how often",
            "std": "sample standard deviation over distinct queries (each averaged over the seeds that drew it)",
            "test_on": "delta_logp (the same as on delta_logp_vs_momentum: the momentum step is common to every set "
                       "of a query)"}


def versus(a: Sequence[float], bm25: Sequence[float]) -> dict:
    """A set's Δ log p against bm25's over the same queries: the mean and median differences, how often
    it is higher, and paired tests (t, sign-flip, Wilcoxon signed-rank; None where every difference is 0)."""
    from scipy import stats

    d = np.subtract(a, bm25)
    with warnings.catch_warnings():  # few or tied differences: scipy's approximation warns, the p-value stands
        warnings.simplefilter("ignore", RuntimeWarning)
        wilcoxon = float(stats.wilcoxon(a, bm25).pvalue) if np.any(d != 0) else None
    return {"mean_difference": float(d.mean()), "median_difference": float(np.median(d)),
            "wins": float(np.mean(d > 0)), "losses": float(np.mean(d < 0)), **M.paired_pvalues(a, bm25),
            "wilcoxon": wilcoxon}


def _as_hashed(step: dict) -> dict:
    """The step settings under the names they had when the cache began (loss, max_length), so that renaming
    the fields did not invalidate the tail-patch steps already computed."""
    renamed = {"example_loss": "loss", "max_tokens": "max_length"}
    return {renamed.get(k, k): v for k, v in step.items()}
