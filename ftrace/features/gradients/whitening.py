"""TrackStar whitening: each per-block-normalised projected gradient u is mapped to W u and
re-normalised (so dot products stay means of per-block cosines). W ~= (R + lambda I)^-1/2, R =
mean(u u^T) over a calibration sample of training examples, per block (block-diagonal over the
whole vector; with one block it is TrackStar's full R); with --whiten-queries, mixed with the same
mean over a sample of the corpus's queries (TrackStar's task-specific R: `mixed_with_queries`).

Exactly, per block of size k, from the eigendecomposition R = sum_i e_i v_i v_i^T:

- span: the r eigenvectors with e_i > RANK_TOL * max_i e_i (r = the calibration sample's rank,
  at most its size n; V = [v_1 .. v_r]);
- e_bar = mean of those r eigenvalues (= trace(R) / r; = trace(R) / k when R has full rank);
- lambda = damping * e_bar (`whiten_damping`, default 0.1);
- W = V diag((e_i + lambda)^-1/2) V^T + (e_bar + lambda)^-1/2 (I - V V^T).

Why the second term: with n < k (e.g. 512 samples for 4096 numbers per block; the default is 4,096) R has rank
<= n and says nothing about the other k - r directions. Plain (R + lambda I)^-1/2 scales them by
lambda^-1/2, the largest factor there is, so whatever a new example has outside the sample's span
dominates its whitened vector (two near-duplicate sentences went from cosine 0.85 to 0.02). Here
an unseen direction is treated as if its variance were the mean one, e_bar: it is scaled like a
typical in-span direction, and the most amplified in-span direction gets at most
sqrt(1 + 1/damping) times its factor (3.3 at 0.1). Within the span W is TrackStar's
(R + lambda I)^-1/2: the calibration vectors' whitened autocorrelation is
V diag(e_i / (e_i + lambda)) V^T (identity on the span as damping -> 0). With full rank (no
eigenvalue under the tolerance) the second term vanishes and W is exactly (R + lambda I)^-1/2 with
lambda = damping * trace(R) / k, the former rule (whose default damping was 1e-3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from ftrace.corpus.records import Query
from ftrace.features.gradients.blocks import Block, GradientError
from ftrace.sparse import SparseVectors

WHITEN_MAX = 8192  # largest block whose k x k whitening matrix we keep
RANK_TOL = 1e-6  # eigenvalues at most this times the largest are outside the calibration span
LAMBDA_RULE = "damping * mean eigenvalue of R over its span (trace(R) / rank)"
COMPLEMENT_RULE = "directions outside the calibration span scaled by (mean eigenvalue + lambda)^-1/2"


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-30)


def whitener(block: Block) -> torch.Tensor:
    if block.whitener is None:
        raise GradientError(f"gradient whiten: block {block.name} has no fitted whitening")
    return block.whitener


def kept_size(block: Block) -> int:
    """The side of the k x k matrix whitening keeps for a block: its size, or (rows projection) its numbers a row."""
    return block.factors[1] if block.kind == "rows" else block.size


def check_whitenable(blocks: list[Block]) -> None:
    big = [b for b in blocks if kept_size(b) > WHITEN_MAX]
    if big:
        beside_rows = big[0].kind == "factored" and any(b.kind == "rows" for b in blocks)
        option = "--tracin-block-dim" if beside_rows else "--tracin-dim"
        raise GradientError(f"gradient whiten: block {big[0].name} keeps {kept_size(big[0])} numbers (a row's, for "
                            f"the rows projection) and whitening keeps a k x k matrix of them (at most {WHITEN_MAX}); "
                            f"lower {option}")


def whitening_matrix(R: torch.Tensor, damping: float) -> tuple[torch.Tensor, int]:
    """W for the (k x k) autocorrelation R (module docstring) and the rank r it kept."""
    return whitening_matrices(R, [damping])[0]


def whitening_matrices(R: torch.Tensor, dampings: list[float]) -> list[tuple[torch.Tensor, int]]:
    """`whitening_matrix` for several dampings from one eigendecomposition (the costly part)."""
    evals, evecs = torch.linalg.eigh(R.double())
    top = float(evals.max())
    if top <= 0:
        raise GradientError("whitening: every calibration gradient of a block is zero")
    keep = evals > RANK_TOL * top
    e, V = evals[keep], evecs[:, keep]
    e_bar = float(e.mean())
    # the directions outside the sample's span, the same for every damping
    outside = torch.eye(len(R), dtype=V.dtype) - V @ V.T if len(e) < len(evals) else None
    out = []
    for damping in dampings:
        lam = damping * e_bar
        W = (V * (e + lam).rsqrt()) @ V.T
        if outside is not None:
            W += (e_bar + lam) ** -0.5 * outside
        out.append((W, len(e)))
    return out


def _dense_moments(blocks: list[Block], projected: Iterable[list[torch.Tensor]]) -> tuple[list[list], int]:
    """One factor: per block, the mean of u u^T over per-block unit vectors u (trace 1); and how many examples."""
    sums = [torch.zeros(b.size, b.size, dtype=torch.float64) for b in blocks]
    n = 0
    for per_block in projected:
        for s, p in zip(sums, per_block, strict=True):
            u = unit(p).double().cpu()
            s += u.T @ u
        n += len(per_block[0])
    return [[s / max(n, 1) for s in sums]], n


QUERY_RULE = "R = query_mix x the query gradients' R + (1 - query_mix) x the training gradients' (TrackStar A.1.3)"
ROWS_QUERY_RULE = ("each factor of R ~ diag(r) (x) A mixed: r and A = query_mix x the query gradients' + (1 - "
                   "query_mix) x the training gradients' (TrackStar A.1.3, factor by factor)")


def mixed_with_queries(train: list, queries: list, mix: float) -> list:
    """TrackStar's task-specific R (Chang et al. 2024, appendix A.1.3): mix x the queries' + (1 - mix) x the
    training examples', item by item (None stays None: a block without that factor); each is a mean over unit
    vectors (trace 1), so they mix as they are."""
    return [None if t is None else mix * q + (1 - mix) * t for q, t in zip(queries, train, strict=True)]


def _calibrated(moments: Callable[[list[Block], Iterable], tuple[list[list], int]], blocks: list[Block],
                collected: Iterable, damping: float, queries: Iterable | None, mix: float) -> tuple[list[list], int,
                                                                                                   int | None]:
    """The factors `moments` gives of the calibration sample (each a list over blocks), mixed with the queries'
    (`mixed_with_queries`) where given; the two samples' sizes (None: no queries). Refuses a damping that is not
    positive and an empty sample."""
    if damping <= 0:
        raise GradientError(f"whitening damping {damping}: must be positive")
    factors, n = moments(blocks, collected)
    if n == 0:
        raise GradientError("whitening: the calibration sample is empty")
    if queries is None:
        return factors, n, None
    of_queries, m = moments(blocks, queries)
    if m == 0:
        raise GradientError("whitening: the queries' calibration sample is empty")
    return [mixed_with_queries(t, q, mix) for t, q in zip(factors, of_queries, strict=True)], n, m


def _queries_described(m: int | None, mix: float, rule: str) -> dict:
    return {} if m is None else {"queries": m, "query_mix": mix, "query_rule": rule}


def whitening_queries(queries: Sequence[Query], n: int, seed: int) -> list[Query]:
    """The corpus's queries whose gradients `--whiten-queries n` mixes into R: n drawn with the seed, in corpus
    order. One rule for ingest (which fits on them) and `ftrace bench` (which leaves them out of its draws: a
    query fitted into R weighs its own subject's rows down)."""
    picked = np.random.default_rng(seed).permutation(len(queries))[:n]
    return [queries[i] for i in sorted(picked)]


def fit_whiteners(blocks: list[Block], projected: Iterable[list[torch.Tensor]], damping: float,
                  device: torch.device, queries: Iterable[list[torch.Tensor]] | None = None,
                  mix: float = 0.0) -> dict:
    """Set each block's whitener from batches of per-block raw projected gradients (and, with `queries`, queries'
    gradients mixed in at `mix`); returns the description recorded in the state and the spec (with each block's
    rank)."""
    (R,), n, m = _calibrated(_dense_moments, blocks, projected, damping, queries, mix)
    ranks = {}
    for r, b in zip(R, blocks, strict=True):
        try:
            W, ranks[b.name] = whitening_matrix(r, damping)
        except GradientError as e:
            raise GradientError(f"{e} ({b.name})") from None
        b.whitener = W.float().to(device)
    return {"damping": damping, "samples": n, "scope": "per block", "lambda": LAMBDA_RULE,
            "rank": ranks, "size": {b.name: b.size for b in blocks}, "rank_deficient": COMPLEMENT_RULE,
            **_queries_described(m, mix, QUERY_RULE)}


ROWS_RULE = ("R ~ diag(r) (x) A: row t scaled by (r_t + lambda)^-1/2, r_t = E[|G_t|^2], lambda = damping x the mean r "
             "over the rows the sample touches; the columns mapped by (A + lambda' I)^-1/2, A = E[G^T G] (lambda' as "
             "for a dense block); a factored block beside them (every index stored) whitened as a dense one")


def _row_moments(blocks: list[Block], collected: Iterable[list[SparseVectors]]) -> tuple[list[list], int]:
    """Two factors: per block, the mean row energies r (a rows block; None for a factored one) and columns' A =
    E[G^T G] (a factored block: E[u u^T]) over per-block unit vectors; and how many examples."""
    energy = [torch.zeros(b.factors[0], dtype=torch.float64) if b.kind == "rows" else None for b in blocks]
    cols = [torch.zeros(kept_size(b), kept_size(b), dtype=torch.float64) for b in blocks]
    n = 0
    for per_block in collected:
        for e, A, vs, b in zip(energy, cols, per_block, blocks, strict=True):
            k = kept_size(b)
            if e is None:  # every index stored: the batch's vectors stacked, as fit_whiteners sums them
                U = torch.from_numpy(np.stack([v.values for v in vs.unit()])).double()
                A += U.T @ U
                continue
            for v in vs.unit():
                G = torch.from_numpy(v.values).double().reshape(-1, k)
                e.index_add_(0, torch.from_numpy(v.indices[::k] // k), (G ** 2).sum(1))
                A += G.T @ G
        n += len(per_block[0])
    d = max(n, 1)
    return [[None if e is None else e / d for e in energy], [A / d for A in cols]], n


def fit_row_whiteners(blocks: list[Block], collected: Iterable[list[SparseVectors]], damping: float,
                      device: torch.device, queries: Iterable[list[SparseVectors]] | None = None,
                      mix: float = 0.0) -> dict:
    """The rows projection's whitening: TrackStar's R in the one form a sparse vector keeps. A dense R^-1/2 mixes
    the rows the projection keeps apart, so R is Kronecker-factored with a diagonal row factor (ROWS_RULE): r_t is
    how much of the sample's (per-block unit) gradient energy token t's row carries, large for tokens every
    sentence has (where IDF is small); a row the sample never touched gets the largest weight, lambda^-1/2 (a rare
    token is what tells two sentences apart). With `queries`, both factors are mixed with the queries' own at `mix`
    (`mixed_with_queries`). Sets a rows block's `row_whitener` (R,) and `whitener` (k x k); a factored block beside
    it (every index stored) gets the dense `whitener` of `fit_whiteners`."""
    (energy, cols), n, m = _calibrated(_row_moments, blocks, collected, damping, queries, mix)
    ranks, touched = {}, {}
    for r, A, b in zip(energy, cols, blocks, strict=True):
        try:
            W, ranks[b.name] = whitening_matrix(A, damping)
        except GradientError as err:
            raise GradientError(f"{err} ({b.name})") from None
        b.whitener = W.float().to(device)
        if r is not None:
            seen = r > 0
            b.row_whitener = (r + damping * r[seen].mean()).rsqrt().float().to(device)
            touched[b.name] = int(seen.sum())
    return {"damping": damping, "samples": n, "scope": "per block; a lookup's rows x columns", "lambda": ROWS_RULE,
            "rank": ranks, "rows_touched": touched, "size": {b.name: b.size for b in blocks},
            **_queries_described(m, mix, ROWS_QUERY_RULE)}
