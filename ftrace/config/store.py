"""Where the vectors live (recorded in the manifest): the Qdrant back end and its layout."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from ftrace.config.base import Strict, cli


class StoreConfig(Strict):
    """Where the vectors live (recorded in the manifest)."""

    backend: Annotated[Literal["edge", "local", "remote"],
                       cli("Vector back end: edge (in process), local (qdrant-client local mode), remote.",
                           "--qdrant")] = "edge"
    collection: Annotated[str, cli("Qdrant collection name (client back ends).", "--collection")] = "ftrace"
    url: Annotated[str | None, cli("Qdrant server or cluster URL (implies --qdrant remote).", "--qdrant-url")] = None
    float16: Annotated[bool, cli("Vector storage type (default float16).", "--float16/--float32")] = True
    hnsw: Annotated[bool, cli("Build an HNSW index after ingest (default: exact search).", "--hnsw")] = False
    # a Qdrant server's collection layout (docker/README.md): shards spread points over the cluster's
    # nodes, replicas keep copies of each shard on other nodes
    shard_number: Annotated[int, Field(ge=1), cli("Qdrant server: shards of the collection.", "--qdrant-shards",
                                                  min=1)] = 1
    replication_factor: Annotated[int, Field(ge=1), cli("Qdrant server: copies of each shard.", "--qdrant-replicas",
                                                        min=1)] = 1

    @model_validator(mode="after")
    def _url_means_remote(self) -> StoreConfig:
        if self.url and self.backend == "edge":
            self.backend = "remote"
        if self.backend == "edge" and (self.shard_number, self.replication_factor) != (1, 1):
            raise ValueError("--qdrant-shards/--qdrant-replicas set a Qdrant server's collection layout: give "
                             "--qdrant-url (or --qdrant local)")
        return self
