"""`ftrace serve`: the index held in one process, over HTTP."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ftrace.config.base import DEFAULT_INDEX, Device, IndexPath, QueryDtype, Strict, Threads, cli


class ServeConfig(Strict):
    """`ftrace serve`: one process owns an index (model, Lucene and Qdrant opened once) and answers over HTTP."""

    index: IndexPath = DEFAULT_INDEX
    host: Annotated[str, cli("Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535), cli("TCP port.")] = 8000
    device: Device = "auto"
    dtype: QueryDtype = None
    threads: Threads = None
    # a request is answered 503 after this long, queueing included, and the worker drops it at its next step
    request_timeout: Annotated[float, Field(gt=0), cli("Seconds a /trace request may take, time in the queue "
                                                       "included; then it is answered 503 and dropped.")] = 30.0
