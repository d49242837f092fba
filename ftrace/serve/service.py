"""The served index: one warm Tracer, used from one worker thread only, for the server's lifetime.

Why one thread: the model, the Qdrant Edge shard (one owner: an exclusive WAL lock, no read-only
open) and the JVM behind Lucene (pyjnius attaches each calling thread) are single-owner resources.
Every use of the Tracer is submitted to a single-thread executor, so concurrent requests queue and
run one at a time, in arrival order, always on the same thread; the event loop stays free for
/health and for accepting connections meanwhile. The server also holds the index's `.serve.lock`
for its lifetime (`ftrace.index.locks.serving`): `ftrace query` and `info` on the index ask this server
(`ftrace.query.remote`); another `ftrace serve` or a `bench` is refused at once and pointed at its URL
(not for vectors in a Qdrant server, `--qdrant-url`, which any number of processes share).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ftrace.config import TraceOptions
from ftrace.index.locks import serving
from ftrace.query.result import QueryResult
from ftrace.query.tracer import Tracer

T = TypeVar("T")


class Service:
    def __init__(self, index: Path, device: str, url: str, dtype: str | None = None):
        self.index, self.device, self.url, self.dtype = Path(index), device, url, dtype
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ftrace-tracer")
        self._held = contextlib.ExitStack()
        self.tracer: Tracer | None = None
        try:
            self.tracer = self._pool.submit(self._open).result()
        except BaseException:
            self.close()
            raise

    def _open(self) -> Tracer:
        # refused here if incomplete, written or served
        tracer = Tracer(self.index, device=self.device, dtype=self.dtype)
        try:
            if tracer.index.manifest.store.backend != "remote":  # a Qdrant server is shared: nothing to hold
                self._held.enter_context(serving(self.index, self.url, tracer.device_name, tracer.dtype))
            return self._warm(tracer.open())
        except BaseException:
            tracer.close()
            raise

    @staticmethod
    def _warm(tracer: Tracer) -> Tracer:
        """Trace once by every method, so the first request pays no first-call costs (the first greedy
        answer alone takes seconds)."""
        prompt = tracer.texts.example_prompt()
        target = tracer.answer(prompt).strip() or "the"
        for method in tracer.methods:
            tracer.query(TraceOptions(prompt=prompt, target=target, k=1, method=method))
        return tracer

    @property
    def _tracer(self) -> Tracer:
        assert self.tracer is not None, "the service is closed"
        return self.tracer

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the tracer's thread, after every call submitted before it."""
        return await asyncio.wrap_future(self._pool.submit(fn, *args))

    def trace(self, request: TraceOptions, deadline: float | None = None) -> tuple[QueryResult, dict[str, float]]:
        """One `ftrace query` and the seconds each part took; past `deadline`
        (time.monotonic()) it stops at its next part (`RequestTimeout`), freeing the worker."""
        tracer = self._tracer
        tracer.deadline = deadline
        try:
            result = tracer.query(request)
        finally:
            tracer.deadline = None
        return result, dict(tracer.timings)

    def info(self) -> dict:
        """What `ftrace info` shows (the manifest and the index's status), plus this server."""
        t = self._tracer
        status = t.index.status(store=t.store, bm25=t.bm25)
        device = str(next(t.lm.model.parameters()).device)
        return {**t.index.manifest.model_dump(mode="json"), "status": status,
                "serve": {"url": self.url, "pid": os.getpid(), "device": device, "methods": t.methods}}

    def close(self) -> None:
        """Close the stores and release the index (again: nothing)."""
        try:
            if self.tracer is not None:
                self._pool.submit(self.tracer.close).result()
                self.tracer = None
                print(f"closed {self.index}", file=sys.stderr, flush=True)
        finally:
            self._pool.shutdown()
            self._held.close()
