"""Every command's settings, declared once: pydantic models composed per command.

A setting is a field: its type, default, validation and help live here, and `ftrace.cli` turns the
fields marked with `Cli(...)` into the command's options (`ftrace.options.command_from_config`). Sections
(corpus selection, embedding, gradients, store) are models of their own, reused by the commands
that need them; the featurizers take their section (e.g. `GradientConfig`) as it is.

Names: "gradient" is the machinery (projected per-example loss gradients, kind "gradient" in
manifests); "tracin" is the stored vector and the retrieval method built from it (TracIn /
TrackStar scores), hence the `--tracin-*` options.

One module per concern, each beside the others here rather than in its layer: every layer imports its settings
from `ftrace.config`, which imports nothing heavier than pydantic (the CLI's cold start), so the constants the domain
layers share (MAX_TOKENS, MAX_VECTOR_SIZE, the fusion defaults) live here too.

    base     the CLI marks (Cli), Strict, the options several commands share (index, device, dtype, threads)
    data     the corpus selection, the token limit, passages
    vectors  the embedding and gradient featurizers' settings, the example loss
    store    the Qdrant back end and layout
    ingest / query / serve / bench / train / info   one config per command
"""

from ftrace.config.base import (
    DEFAULT_INDEX,
    DEFAULT_MODEL,
    Cli,
    Device,
    Dtype,
    IndexPath,
    QueryDtype,
    Strict,
    Threads,
    cli,
    option_name,
)
from ftrace.config.bench import GRID, BenchConfig, CandidateSizes
from ftrace.config.data import MAX_TOKENS, PASSAGE_OVERLAP, SPLITS, CorpusSelection
from ftrace.config.info import InfoConfig
from ftrace.config.ingest import ADD_OPTIONS, SQUARE_FROM, IngestConfig
from ftrace.config.query import CASCADE_K, FUSION_WEIGHT, CascadeK, QueryConfig, TraceOptions
from ftrace.config.serve import ServeConfig
from ftrace.config.store import StoreConfig
from ftrace.config.train import TrainConfig
from ftrace.config.vectors import (
    BLOCK_DIM,
    DEFAULT_EXAMPLE_LOSS,
    MAX_SPARSE_SIZE,
    MAX_VECTOR_SIZE,
    EmbeddingConfig,
    ExampleLoss,
    GradientConfig,
    Projection,
    TracInConfig,
)

__all__ = [
    "ADD_OPTIONS", "BLOCK_DIM", "BenchConfig", "CASCADE_K", "CandidateSizes", "CascadeK", "Cli", "CorpusSelection",
    "DEFAULT_EXAMPLE_LOSS", "DEFAULT_INDEX", "DEFAULT_MODEL", "Device", "Dtype", "EmbeddingConfig",
    "ExampleLoss", "FUSION_WEIGHT", "GRID", "GradientConfig", "IndexPath", "InfoConfig", "IngestConfig", "MAX_TOKENS",
    "MAX_SPARSE_SIZE", "MAX_VECTOR_SIZE", "PASSAGE_OVERLAP", "Projection", "QueryConfig", "QueryDtype", "SPLITS",
    "SQUARE_FROM",
    "ServeConfig", "StoreConfig", "Strict", "Threads", "TracInConfig", "TraceOptions", "TrainConfig", "cli",
    "option_name",
]
