"""`ftrace ingest`: a corpus into BM25 and vectors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from ftrace.config.base import DEFAULT_INDEX, Device, Dtype, IndexPath, Strict, Threads, cli
from ftrace.config.data import MAX_TOKENS, CorpusSelection
from ftrace.config.store import StoreConfig
from ftrace.config.vectors import EmbeddingConfig, TracInConfig
from ftrace.plumbing import directory_problem

# Past this length an ingest batch holds fewer tokens (budget_batches' square_from): a whole-corpus ingest's memory
# peaked on its longest batches, where the attention weights the backward keeps (examples x length²) grow; 2.9% of
# LAMA's tokens lie in sentences longer than it (results/scale/README.md#ingest)
SQUARE_FROM = 128


# what `ftrace ingest --add` takes besides the index's own settings: where and how fast it runs
ADD_OPTIONS = {"index", "add", "corpus", "device", "batch_size", "batch_tokens", "threads"}


class IngestConfig(Strict):
    index: IndexPath = DEFAULT_INDEX
    corpus: CorpusSelection = CorpusSelection()
    model: Annotated[str | None, cli("'smollm2-135m' (built in, the default) or a Hugging Face causal LM id or "
                                     "path; with --train-run, the run's final checkpoint.")] = None
    embed: EmbeddingConfig = EmbeddingConfig()
    tracin: TracInConfig = TracInConfig()
    store: StoreConfig = StoreConfig()
    batch_size: Annotated[int, Field(ge=1), cli("Examples per forward/backward batch.", min=1)] = 32
    # memory grows with examples x padded length (SmolLM2: ~1.6-2.2 MB a token, perf/results/batch_memory-cpu*.md),
    # so long sentences (sorted together) come in smaller batches. 1024 (32 x 32) instead of 2048: 1,500 long LAMA
    # sentences in bfloat16 peaked at 4.5 instead of 7.0 GiB, in a time within run-to-run noise
    # (results/scale/README.md#ingest); past SQUARE_FROM tokens batches shrink further; the vectors
    # do not depend on it beyond float rounding
    batch_tokens: Annotated[int, Field(ge=1), cli("Token budget per batch: at most this many examples x padded "
                                                  "length (a longer sentence is a batch of its own); past "
                                                  f"{SQUARE_FROM} tokens, examples x length² within it x "
                                                  f"{SQUARE_FROM}.", min=1)] = 1024
    device: Device = "auto"
    dtype: Dtype = "float32"
    threads: Threads = None
    max_tokens: Annotated[int, Field(ge=8),
                          cli("Tokens per sentence and query given to the model; longer sentences lose their end "
                              "(counted at ingest), longer prompts their beginning.")] = MAX_TOKENS
    add: Annotated[str | None, cli("Append this corpus (any --corpus form) to the complete index --index, "
                                   "featurised as the index was (its model, checkpoints, vectors and passages).",
                                   metavar="CORPUS")] = None
    shard: Annotated[str | None, cli("Featurise only shard I of N (0-based, e.g. 0/4), one process or GPU each; "
                                     "then `ftrace ingest` without --shard finishes the index.",
                                     metavar="I/N")] = None

    @field_validator("index")
    @classmethod
    def _index_is_a_directory(cls, v: Path) -> Path:
        """A file is refused here, before the corpus loads (`ftrace.index.locks` checks again where it writes)."""
        problem = directory_problem(v)
        if problem:
            raise ValueError(f"{problem}; give a directory (an index, or a new path to build one in)")
        return v

    @field_validator("shard")
    @classmethod
    def _shard(cls, v: str | None) -> str | None:
        if v is None:
            return v
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", v)
        if not m:
            raise ValueError("give I/N: shard I (0-based) of N, e.g. 0/4")
        i, n = int(m[1]), int(m[2])
        if not 0 <= i < n:
            raise ValueError(f"shard {i} of {n}: I runs from 0 to N-1" if n else "N must be at least 1")
        return f"{i}/{n}"

    @property
    def shard_of(self) -> tuple[int, int] | None:
        """(I, N) for --shard I/N, else None."""
        return None if self.shard is None else (int(self.shard.split("/")[0]), int(self.shard.split("/")[1]))

    @model_validator(mode="after")
    def _consistent(self) -> IngestConfig:
        if self.store.backend == "remote" and not self.store.url:
            raise ValueError("--qdrant remote needs --qdrant-url")
        if self.tracin.train_dir is not None and self.tracin.checkpoints:
            raise ValueError("--checkpoint and --train-run: give model checkpoints or a training run, not both")
        if self.tracin.whiten_queries and not self.tracin.whiten:
            raise ValueError("--whiten-queries: needs --whiten (the queries' R is mixed into the whitening's)")
        mix = self.tracin.whiten_query_mix  # a recorded config (--config) sets it to the default: not a choice
        if mix != type(self.tracin).model_fields["whiten_query_mix"].default and not self.tracin.whiten_queries:
            raise ValueError("--whiten-query-mix: only with --whiten-queries N (the queries it mixes in)")
        self.corpus.check_passages(self.max_tokens)
        if self.add is not None:
            asked = sorted({f"the {f} options" if f in ("embed", "tracin", "store") else "--" + f.replace("_", "-")
                            for f in self.model_fields_set - ADD_OPTIONS}
                           | {"--" + f.replace("_", "-") for f in self.corpus.model_fields_set
                              if f not in ("text_field", "id_field")})
            if asked:
                raise ValueError(f"--add extends the index as it was built; leave out {asked[0]} (what may go "
                                 "with --add: --device, --batch-size, --batch-tokens, --threads, --text-field, "
                                 "--id-field)")
        return self
