"""The manifest: one JSON file per index directory recording what made the index.

Every command that opens an index compares what it is about to do with the manifest's `identity`
(corpus, model, vector specs) and refuses a mismatch with a message saying what differs.
"""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from ftrace import FtraceError, __version__
from ftrace.config import StoreConfig
from ftrace.index.files import MANIFEST
from ftrace.plumbing import differences, write_atomic

FORMAT = 1


class ManifestError(FtraceError):
    pass


class CorpusInfo(BaseModel):
    source: str
    fingerprint: str
    sentences: int
    examples: int
    queries: int
    passages: tuple[int, int] | None = None  # (tokens, stride) long records were cut with (an addition's too)


class Addition(BaseModel):
    """A corpus appended to a complete index (`ftrace ingest --add`)."""

    source: str
    fingerprint: str  # the addition's own
    sentences: int
    examples: int
    queries: int
    corpus: str  # the fingerprint of the index's corpus with it
    added: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


class ModelInfo(BaseModel):
    name: str  # the model queries are answered and featurized with (a training run's final checkpoint)
    fingerprint: str
    checkpoints: list[str] = Field(default_factory=list)
    # the model before fine-tuning, when the index was built from an `ftrace train` run (for the
    # learned slices: what the base model already knew)
    base: str | None = None
    base_fingerprint: str | None = None
    train_dir: str | None = None
    dtype: str  # the weights' dtype the vectors were computed in

    def check_weights(self, index_dir: Path, fingerprint: str, base: bool = False) -> None:
        """Refuse a model (or, with `base`, the base model) whose weights are no longer those the index recorded."""
        name, want = (self.base, self.base_fingerprint) if base else (self.name, self.fingerprint)
        if want is not None and fingerprint != want:
            raise ManifestError(f"{index_dir}: {'base model' if base else 'model'} {name!r} has changed since the "
                                f"index was built (weights {fingerprint}, index {want})")


class QueryDefault(BaseModel):
    """The method `ftrace query` and `serve` use when none is given, chosen by `ftrace bench --save-default`."""

    method: str
    fusion: Literal["sum", "rrf", "cascade"] | None = None
    weight: float | None = Field(default=None, ge=0.0, le=1.0)
    cascade_k: int | None = Field(default=None, ge=1)
    source: str  # the bench run that chose it (its command and MRR)


class Manifest(BaseModel):
    format: int = FORMAT
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    corpus: CorpusInfo
    model: ModelInfo
    vectors: dict[str, dict]  # vector name -> featuriser spec (kind, layers, sizes, seeds, ...)
    store: StoreConfig
    bm25: dict = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    complete: bool = False  # every example's vectors are stored
    max_tokens: int  # tokens per sentence and query given to the model
    # how long each stage of the ingest that finished the index took (seconds; "vectors" counts the examples
    # that run featurised: fewer after a resume); not part of the identity
    timings: dict[str, float] = Field(default_factory=dict)
    # not part of the identity: a choice made after the index was built, from its own benchmark
    query_default: QueryDefault | None = None
    # corpora appended since it was built, oldest first, and one being appended (the index is incomplete meanwhile)
    additions: list[Addition] = Field(default_factory=list)
    adding: Addition | None = None

    def identity(self) -> dict:
        return {"corpus": self.corpus.fingerprint, "model": self.model.model_dump(),
                "vectors": self.vectors, "max_tokens": self.max_tokens,
                # a server collection's layout over nodes changes no result: recorded, not compared
                "store": self.store.model_dump(exclude={"shard_number", "replication_factor"})}

    def differences(self, other: Manifest) -> list[str]:
        return differences(self.identity(), other.identity(), "index")

    def check_asked(self, index_dir: Path, model: str | None, embed_layers: list[int] | None) -> None:
        """A query's --model and --embed-layers, which must be this index's."""
        if model is not None and model != self.model.name:
            raise ManifestError(f"{index_dir}: built with model {self.model.name!r}, not {model!r}")
        if embed_layers is not None and "embed" in self.vectors and self.vectors["embed"]["layers"] != embed_layers:
            raise ManifestError(f"{index_dir}: embeddings were built from layers {self.vectors['embed']['layers']}, "
                                f"not {embed_layers}")

    def write(self, index_dir: Path) -> None:
        write_atomic(Path(index_dir) / MANIFEST, self.model_dump_json(indent=2))  # never half a manifest

    @classmethod
    def read(cls, index_dir: Path) -> Manifest:
        path = Path(index_dir) / MANIFEST
        if not path.exists():
            raise ManifestError(f"{index_dir}: not an ftrace index ({MANIFEST} missing); run `ftrace ingest` first")
        try:
            raw = json.loads(path.read_text())
            return cls.model_validate(migrate_manifest(raw) if isinstance(raw, dict) else raw)
        except (json.JSONDecodeError, ValidationError) as e:
            raise ManifestError(f"{path}: unreadable manifest ({str(e).splitlines()[0]})") from None


def migrate_manifest(raw: dict) -> dict:
    """A manifest as the current code reads it: the one place that knows what older indexes left out."""
    if isinstance(raw.get("model"), dict):
        raw["model"].setdefault("dtype", "float32")  # indexes from before --dtype: float32 weights
    raw.setdefault("max_tokens", 128)  # indexes from before --max-tokens was recorded: 128 tokens
    return raw


INDEX_DISTRIBUTIONS = ("torch", "transformers", "qdrant-edge-py", "qdrant-client", "pyserini")


def versions(dists: tuple[str, ...] = INDEX_DISTRIBUTIONS) -> dict[str, str]:
    """ftrace's, Python's and the installed versions of `dists` (missing ones are left out)."""
    out = {"ftrace": __version__, "python": platform.python_version()}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out
