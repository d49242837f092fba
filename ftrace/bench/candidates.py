"""Seeded draws and FTRACE's re-ranking candidate sets.

A query's candidate set (Akyurek et al. 2022, section 4) is built from four disjoint groups, in
this order, each drawn from what the earlier groups left:

1. every proponent of the query;
2. BM25's top `bm25` sentences for ``prompt + " " + target`` that are not proponents;
3. `same_target` random sentences stating a fact whose object is the query's target;
4. `random` random sentences from the whole corpus.

Because the groups are disjoint the set holds exactly |proponents| + bm25 + same_target + random
sentences whenever the corpus is large enough, and fewer (every sentence that is left) when not.
Random draws depend only on (seed, query id): every method scores the same set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ftrace.config import CandidateSizes
from ftrace.corpus import Corpus, Query, match_key


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from any values, the same in every process (unlike hash())."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "little")


def rng_for(*parts: object) -> np.random.Generator:
    return np.random.default_rng(stable_seed(*parts))


class CorpusView:
    """The lookups the benchmark needs: sentence ids in corpus order and sentences by fact object."""

    def __init__(self, corpus: Corpus):
        self.ids = [s.id for s in corpus.sentences]
        self.by_object: dict[str, list[str]] = {}
        for s in corpus.sentences:
            for obj in dict.fromkeys(match_key(t[2]) for t in s.facts):
                self.by_object.setdefault(obj, []).append(s.id)

    def same_target(self, target: str) -> list[str]:
        """Sentences stating a fact whose object is `target` (`match_key`: case and spacing aside), in corpus order."""
        return self.by_object.get(match_key(target), [])


def draw(pool: Sequence[str], n: int, rng: np.random.Generator, exclude: set[str]) -> list[str]:
    """Up to n members of `pool` not in `exclude`, uniformly without replacement."""
    avail = [i for i in pool if i not in exclude]
    if n <= 0 or not avail:
        return []
    picked = rng.choice(len(avail), size=min(n, len(avail)), replace=False)
    return [avail[int(j)] for j in picked]


@dataclass
class CandidateSet:
    query_id: str
    seed: int
    proponents: list[str]
    bm25: list[str]
    same_target: list[str]
    random: list[str]

    @property
    def ids(self) -> list[str]:
        return [*self.proponents, *self.bm25, *self.same_target, *self.random]

    def sizes(self) -> dict[str, int]:
        return {"proponents": len(self.proponents), "bm25": len(self.bm25),
                "same_target": len(self.same_target), "random": len(self.random)}


def candidate_set(query: Query, view: CorpusView, bm25_ranked: Callable[[int], Sequence[str]], seed: int,
                  sizes: CandidateSizes | None = None) -> CandidateSet:
    """`bm25_ranked(k)` gives BM25's top-k sentence ids (best first) for the query."""
    sizes = sizes or CandidateSizes()
    props = list(dict.fromkeys(query.proponents))
    taken = set(props)
    bm25 = [s for s in bm25_ranked(sizes.bm25 + len(props)) if s not in taken][:sizes.bm25] if sizes.bm25 else []
    taken.update(bm25)
    rng = rng_for("candidates", seed, query.id)
    same = draw(view.same_target(query.target), sizes.same_target, rng, taken)
    taken.update(same)
    rand = draw(view.ids, sizes.random, rng, taken)
    return CandidateSet(query.id, seed, props, bm25, same, rand)


def sample_queries(queries: Sequence[Query], n: int, seed: int, purpose: str = "eval") -> list[Query]:
    """n queries drawn with the seed; a smaller n gives a prefix of a larger n's draw."""
    order = rng_for("queries", purpose, seed).permutation(len(queries))
    return [queries[int(i)] for i in order[:n]]


def seeded_tiebreak(seed: int, query_id: str) -> Callable[[str], bytes]:
    """A seeded random order of sentences, used to break score ties (the same for every method):
    pass it to `query.fusion.ranking`."""
    def key(sentence_id: str) -> bytes:
        return hashlib.blake2b(f"{seed}\x1f{query_id}\x1f{sentence_id}".encode(), digest_size=8).digest()
    return key
