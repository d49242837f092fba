"""Gradient featurizers: `GradientFeaturizer` (one model's per-example projected gradients, per
block unit-normalised, optionally whitened) and `TracInFeaturizer` (the stored "tracin" vector:
gradients at one or more checkpoints, combined so that the stored cosine is the mean of
per-checkpoint TracIn/TrackStar scores). Conventions: docs/gradients.md."""

from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import accumulate
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ftrace.config import MAX_SPARSE_SIZE, MAX_VECTOR_SIZE, GradientConfig
from ftrace.features import Calibration, StateFile
from ftrace.features.gradients.blocks import Block, GradientError, find_block, resolve_blocks
from ftrace.features.gradients.collector import GradientCollector
from ftrace.features.gradients.optimizer import apply_optimizer_state
from ftrace.features.gradients.projection import assign_projection, seeded_matrices
from ftrace.features.gradients.whitening import (
    COMPLEMENT_RULE,
    LAMBDA_RULE,
    QUERY_RULE,
    ROWS_QUERY_RULE,
    ROWS_RULE,
    check_whitenable,
    fit_row_whiteners,
    fit_whiteners,
    unit,
    whitener,
)
from ftrace.model.batching import LossBatch
from ftrace.plumbing import replacing
from ftrace.sparse import SparseVectors, Vectors

FORMAT_VERSION = 2  # 2: whitening lambda relative to the spectrum, rank-deficient R handled; tied, example loss
EXAMPLE_LOSS = {"sentence": "whole sentence",
                "object": "object span (first fact's object found in the text, given the text before it; "
                          "whole sentence where none)"}

__all__ = ["GradientError", "GradientFeaturizer", "TracInFeaturizer", "combine_checkpoints", "tied_norm_ratio"]


class GradientFeaturizer:
    """Per-example projected loss gradients of one model (docs/gradients.md)."""

    def __init__(self, model: Any, config: GradientConfig):
        if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
            raise GradientError("gradient features need a decoder-only causal LM, not an encoder-decoder")
        if config.dim < 1:
            raise GradientError(f"gradient dim {config.dim}: must be at least 1")
        if config.block_dim is not None and config.projection != "rows":
            raise GradientError(f"--tracin-block-dim {config.block_dim}: only with --tracin-projection rows (the "
                                "other projections size every block by --tracin-dim)")
        if config.dim > MAX_VECTOR_SIZE and config.projection != "rows":  # rows: dim is numbers a row
            raise GradientError(f"gradient dim {config.dim}: a vector may have at most {MAX_VECTOR_SIZE} numbers")
        if not config.layers:
            raise GradientError("gradient layers: give at least one module name pattern")
        self.model, self.config = model, config
        self.device = next(model.parameters()).device
        self.blocks: list[Block] = resolve_blocks(model, config.layers, config.tied)
        for b in self.blocks:
            assign_projection(b, config.dim, config.seed, config.projection, self.device, config.block_dim)
        self.size = sum(b.size for b in self.blocks)
        self.sparse = config.projection == "rows"  # a Qdrant sparse vector: indices up to 2^32
        if self.sparse and not any(b.kind == "rows" for b in self.blocks):
            raise GradientError(f"--tracin-projection rows keeps embedding lookups' rows; --tracin-layers "
                                f"{','.join(config.layers)} selects none (add the input embedding)")
        if self.size > MAX_VECTOR_SIZE and not self.sparse:
            raise GradientError(
                f"gradient dim {config.dim} x {len(self.blocks)} blocks = {self.size} numbers, over the "
                f"limit of {MAX_VECTOR_SIZE}: lower dim or select fewer layers")
        if config.whiten:
            check_whitenable(self.blocks)
        self._optimizer: dict | None = None
        if config.optimizer_state is not None:
            self._optimizer = apply_optimizer_state(self.blocks, config.optimizer_state, model,
                                                    self.device, config.optimizer_floor)
        self._whitening: dict | None = None  # {"damping", "samples", ...} once fitted
        self.collector = GradientCollector(model, self.blocks)

    def projection(self, name: str) -> dict[str, torch.Tensor]:
        """The seeded matrices of block `name`, before any optimizer correction: {"rows", "cols"}
        (factored; projected = rows^T G cols), {"dense"} (projected = vec(G) @ dense), the sketch's
        signs and buckets, or the rows projection's row weights and columns' matrix (projection.py)."""
        return seeded_matrices(find_block(self.blocks, name), self.config.seed)

    def spec(self) -> dict:
        return {
            "kind": "gradient",
            "format": FORMAT_VERSION,
            "loss": f"sum of token cross-entropy over labelled positions; examples: "
                    f"{EXAMPLE_LOSS[self.config.example_loss]}",
            "layers": list(self.config.layers),
            "tied": self.config.tied,
            "blocks": [{"name": b.name, "modules": [u.module_name for u in b.uses], "shape": list(b.shape),
                        "factors": list(b.factors), "size": b.size} for b in self.blocks],
            "dim": self.config.dim,
            "size": self.size,
            "seed": self.config.seed,
            "projection": self.config.projection,
            "normalization": "per block unit, concatenated, unit (dot = mean of per-block cosines)",
            "corrections": {
                "optimizer": self._optimizer,
                "whitening": ({"enabled": self.config.whiten, "fitted": self._whitening is not None}
                              | (self._whitening or {})),
            },
        }

    # --- vectors ------------------------------------------------------------------------------

    def projections(self, batch: LossBatch, normalize_blocks: bool = True, whiten: bool = True) -> np.ndarray:
        """(B, size) per-block projected gradients before the final normalisation: raw when
        normalize_blocks=False; else each block unit-normalised and, when fitted and whiten=True,
        mapped by (R + lambda I)^-1/2 (without re-normalising)."""
        per_block = self.collector.collect(batch)
        if normalize_blocks:
            per_block = [unit(p) for p in per_block]
            if whiten and self._whitening is not None:
                per_block = [p @ whitener(b) for p, b in zip(per_block, self.blocks, strict=True)]
        return torch.cat(per_block, 1).cpu().numpy().astype(np.float32)

    def vectors(self, batch: LossBatch) -> Vectors:
        if self.config.whiten and self._whitening is None:
            raise GradientError("gradient whiten: fit_whitening (or load the index's whitening state) first")
        if self.sparse:  # the same normalisation on sparse vectors, whitened in collect_rows: block unit, joined, unit
            parts = [p.unit() for p in self.collector.collect_rows(batch)]
            offsets = list(accumulate((b.size for b in self.blocks[:-1]), initial=0))
            return SparseVectors.joined(parts, offsets).unit()
        per_block = [unit(p) for p in self.collector.collect(batch)]
        if self._whitening is not None:
            per_block = [unit(p @ whitener(b)) for p, b in zip(per_block, self.blocks, strict=True)]
        return unit(torch.cat(per_block, 1)).cpu().numpy().astype(np.float32)

    # --- whitening state ------------------------------------------------------------------------

    def fit_whitening(self, batches: Iterable[LossBatch], damping: float | None = None,
                      queries: Iterable[LossBatch] | None = None, mix: float = 0.0) -> None:
        """Fit per-block (R + lambda I)^-1/2 (whitening.py: lambda = damping x mean eigenvalue, rank
        deficiency handled) on per-block-normalised projected training gradients, with `queries`' gradients mixed
        into R at `mix` (TrackStar's task-specific R); damping defaults to the config's whiten_damping."""
        if not self.config.whiten:
            raise GradientError("gradient whiten is off: set whiten=True to fit whitening")
        damping = self.config.whiten_damping if damping is None else damping
        if self.sparse:  # collect_rows whitens where fitted: a refit starts from the plain vectors
            for b in self.blocks:
                b.whitener = b.row_whitener = None
            collect_rows = self.collector.collect_rows
            self._whitening = fit_row_whiteners(self.blocks, map(collect_rows, batches), damping, self.device,
                                                None if queries is None else map(collect_rows, queries), mix)
            return
        collect = self.collector.collect
        self._whitening = fit_whiteners(self.blocks, map(collect, batches), damping, self.device,
                                        None if queries is None else map(collect, queries), mix)

    def _identity(self) -> dict:
        s = self.spec()
        opt = s["corrections"]["optimizer"]
        s["corrections"] = {"optimizer": opt and {k: v for k, v in opt.items() if k != "path"}}
        return s

    def state_dict(self) -> dict:
        """What queries need besides the config: the fitted whitening (if any) and the spec."""
        return {"format": FORMAT_VERSION, "spec": json.dumps(self._identity(), sort_keys=True),
                "whitening": None if self._whitening is None else dict(self._whitening),
                "whiteners": {b.name: b.whitener.cpu() for b in self.blocks if b.whitener is not None},
                "row_whiteners": {b.name: b.row_whitener.cpu() for b in self.blocks if b.row_whitener is not None}}

    def load_state_dict(self, state: dict) -> None:
        mine = self._identity()
        theirs = json.loads(state.get("spec", "{}"))
        if theirs != mine:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise GradientError(f"gradient state was made with a different configuration ({', '.join(diff)} differ)")
        if state.get("whitening") is not None:
            if not self.config.whiten:
                raise GradientError("gradient state holds whitening but whiten is off in this configuration")
            for b in self.blocks:
                b.whitener = state["whiteners"][b.name].float().to(self.device)
                if b.kind == "rows":
                    b.row_whitener = state["row_whiteners"][b.name].float().to(self.device)
            self._whitening = dict(state["whitening"])

    def save(self, path: str | Path) -> None:
        """Written beside and renamed: a killed ingest never leaves half a state file to resume from."""
        with replacing(Path(path)) as tmp:
            torch.save(self.state_dict(), tmp)

    def load(self, path: str | Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise GradientError(f"{path}: no gradient state file") from None
        self.load_state_dict(state)


def tied_norm_ratio(model: Any, batch: LossBatch, config: GradientConfig) -> dict[str, float]:
    """Per tied block of `config.layers` (blocks.py: a weight used by an Embedding and another
    module, e.g. SmolLM2's embedding = LM head): the mean over the batch's examples of
    ||projected output-side gradient|| / ||projected input-side gradient|| (tied "output" over tied
    "input"; raw projections, optimizer correction as configured, no normalisation or whitening).
    The projections preserve squared norms in expectation, so this estimates the ratio of the
    per-example gradient norms."""
    sides = [GradientFeaturizer(model, config.model_copy(update={"tied": t, "whiten": False}))
             for t in ("input", "output")]
    tied = [i for i, b in enumerate(sides[0].blocks) if b.tied]
    if not tied:
        raise GradientError(f"tied_norm_ratio: no block of layers {config.layers} is tied")
    inp, out = (f.collector.collect(batch) for f in sides)
    return {sides[0].blocks[i].name: float((out[i].norm(dim=1) / inp[i].norm(dim=1).clamp(min=1e-30)).mean())
            for i in tied}


def combine_checkpoints(vectors: list[np.ndarray]) -> np.ndarray:
    """Concatenate per-checkpoint unit vectors (each (N, d)) scaled by 1/sqrt(C): the dot product
    of two combined vectors is the mean over the C checkpoints of their per-checkpoint dot products
    (cosines), i.e. TracIn's checkpoint sum with equal weights, up to the constant C."""
    if not vectors:
        raise GradientError("combine_checkpoints: no checkpoint vectors")
    n = {v.shape[0] for v in vectors}
    if len(n) != 1 or any(v.ndim != 2 for v in vectors):
        raise GradientError(f"combine_checkpoints: per-checkpoint arrays must be (N, d) with the same N, got "
                            f"{[v.shape for v in vectors]}")
    total = sum(v.shape[1] for v in vectors)
    if total > MAX_VECTOR_SIZE:
        raise GradientError(f"combine_checkpoints: {len(vectors)} checkpoints give {total} numbers, "
                            f"over {MAX_VECTOR_SIZE}")
    return (np.concatenate(vectors, axis=1) / np.sqrt(len(vectors))).astype(np.float32)


def _own_optimizer(config: GradientConfig, checkpoint: dict) -> GradientConfig:
    state = checkpoint.get("optimizer_state")
    return config if state is None else config.model_copy(update={"optimizer_state": state})


class TracInFeaturizer:
    """The "tracin" vector: one `GradientFeaturizer` per checkpoint. Whitening, when asked for, is
    fitted per checkpoint on a seeded calibration sample and saved in the index (`state(i)` for checkpoint i) so
    queries are whitened the same way."""

    name = "tracin"

    def __init__(self, models: list[torch.nn.Module], checkpoints: list[dict], config: GradientConfig,
                 whiten_samples: int = 0, whiten_queries: int = 0, query_mix: float = 0.0):
        """`checkpoints`: {"name", "fingerprint"} per model, plus "optimizer_state" where that
        checkpoint's gradients are divided by its own second moments (a training run's). `whiten_queries`: the
        corpus's queries whose gradients are mixed into the whitening's R at `query_mix` (0: none)."""
        self.per_checkpoint = [GradientFeaturizer(m, _own_optimizer(config, c)) for m, c in
                               zip(models, checkpoints, strict=True)]
        self.checkpoints, self.config, self.whiten_samples = checkpoints, config, whiten_samples
        self.whiten_queries, self.query_mix = whiten_queries, query_mix
        self.size = self.per_checkpoint[0].size * len(self.per_checkpoint)
        self.sparse = self.per_checkpoint[0].sparse
        if self.sparse and self.size > MAX_SPARSE_SIZE:
            each = self.per_checkpoint[0].size
            raise GradientError(f"--tracin-projection rows: {len(checkpoints)} checkpoints x {each} indices = "
                                f"{self.size}, over a Qdrant sparse vector's {MAX_SPARSE_SIZE}: lower --tracin-dim "
                                "or take fewer checkpoints")
        if self.size > MAX_VECTOR_SIZE and not self.sparse:
            each = self.per_checkpoint[0].size
            raise GradientError(f"{len(checkpoints)} checkpoints x {each} numbers = {self.size}, over Qdrant's "
                                f"{MAX_VECTOR_SIZE}: lower --tracin-dim or take fewer checkpoints")

    @classmethod
    def from_spec(cls, lm: Any, spec: dict, state: StateFile) -> TracInFeaturizer:
        from ftrace.features.base import load_checkpoints

        models, checkpoints = load_checkpoints(lm, [c["name"] for c in spec["checkpoints"]])
        recorded = [{"name": c["name"], "fingerprint": c["fingerprint"]} for c in spec["checkpoints"]]
        if checkpoints != recorded:
            raise GradientError(f"{state(0).parent}: a gradient checkpoint has changed since the index was built "
                                f"(index {recorded}, now {checkpoints})")
        checkpoints = spec["checkpoints"]
        whitening = spec["corrections"]["whitening"]
        f = cls(models, checkpoints, GradientConfig(**spec["config"]), whitening["samples"],
                whitening.get("queries", 0), whitening.get("query_mix", 0.0))
        f.load(state)
        return f

    def spec(self) -> dict:
        """What made the vectors; stable before and after whitening is fitted (it names the
        calibration, the fitted matrices live in the state files)."""
        spec = self.per_checkpoint[0].spec()
        if any("optimizer_state" in c for c in self.checkpoints):
            spec["corrections"]["optimizer"] = [f.spec()["corrections"]["optimizer"] for f in self.per_checkpoint]
        spec["corrections"]["whitening"] = {"enabled": self.config.whiten, "samples": self.whiten_samples,
                                            "fitted_on": "seeded sample of training examples"}
        if self.whiten_queries:  # `ftrace bench` reads these to leave the sample's queries out of its draws
            spec["corrections"]["whitening"] |= {
                "fitted_on": "seeded samples of training examples and of the corpus's queries (the same seed)",
                "queries": self.whiten_queries, "query_mix": self.query_mix,
                "query_rule": ROWS_QUERY_RULE if self.sparse else QUERY_RULE}
        spec["per_checkpoint_size"] = spec.pop("size")
        spec.update(size=self.size, checkpoints=self.checkpoints, config=self.config.model_dump(),
                    combination="per-checkpoint unit vectors / sqrt(C): dot = mean of per-checkpoint cosines")
        if self.config.whiten and self.sparse:  # the fitted ranks are in the state files
            spec["corrections"]["whitening"] |= {"damping": self.config.whiten_damping, "lambda": ROWS_RULE}
        elif self.config.whiten:
            spec["corrections"]["whitening"] |= {"damping": self.config.whiten_damping, "lambda": LAMBDA_RULE,
                                                 "rank_deficient": COMPLEMENT_RULE}
        return spec

    @property
    def example_loss(self) -> str:
        """Which LossBatch `vectors` wants for training examples ("sentence" or "object"):
        `Objective(f.example_loss, tokenizer, max_tokens).batch(examples)`."""
        return self.config.example_loss

    def fit(self, batches: Calibration, state: StateFile) -> None:
        if not self.config.whiten:
            return
        for i, f in enumerate(self.per_checkpoint):
            path = state(i)
            if path.exists():  # resumed ingest: reuse the fitted whitening, never refit under stored vectors
                f.load(path)
                continue
            queries = batches(self.whiten_queries, self.config.seed, queries=True) if self.whiten_queries else None
            f.fit_whitening(batches(self.whiten_samples, self.config.seed), queries=queries, mix=self.query_mix)
            f.save(path)

    def load(self, state: StateFile) -> None:
        if self.config.whiten:
            for i, f in enumerate(self.per_checkpoint):
                f.load(state(i))

    def vectors(self, batch: LossBatch) -> Vectors:
        per = [f.vectors(batch) for f in self.per_checkpoint]
        if len(per) == 1:
            return per[0]
        if self.sparse:  # combine_checkpoints' concatenation / sqrt(C), on sparse vectors
            each = self.per_checkpoint[0].size
            return SparseVectors.joined(cast(list[SparseVectors], per), [i * each for i in range(len(per))],
                                        1 / np.sqrt(len(per)))
        return combine_checkpoints(cast(list[np.ndarray], per))
