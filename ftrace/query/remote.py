"""`ftrace query` and `ftrace info` on an index that `ftrace serve` holds: asked of that server over HTTP, with
the standard library only (no torch, no model, no JVM in this process), instead of being refused. The server's
warm model answers, so a query costs this process's start and one request, not seconds of imports and loading
(perf/results/cold_cli-cpu.md). The server must answer as this process would have: in the dtype the query asks
for (or the index's) and on the device it names, else the query is refused in one line."""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ftrace import FtraceError
from ftrace.config import QueryConfig, TraceOptions
from ftrace.index.locks import served_by, served_note, store_wait_s
from ftrace.query.result import QueryResult

TIMEOUT_S = 600.0  # the server bounds each trace itself (--request-timeout, 503); this only guards a hung server
# the server holds a lock file on this machine's file system: ask it directly, never through an HTTP(S)_PROXY
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerError(FtraceError):
    pass


def _ask_once(url: str, where: str, path: str, body: dict | None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with _DIRECT.open(request, timeout=TIMEOUT_S) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # the server's one-line refusal, as `ftrace query` words it (`message`)
        try:
            answer = json.loads(e.read())
            detail = answer.get("message") or answer.get("detail") or e.reason
        except (ValueError, AttributeError, OSError, http.client.HTTPException):
            detail = e.reason
        raise ServerError(f"{where}, which answered {e.code}: {detail}") from None
    except (ValueError, http.client.HTTPException) as e:  # not JSON, a broken reply
        raise ServerError(f"{where}, whose answer is unreadable ({type(e).__name__}); is it an ftrace server of "
                          "this version?") from None


def _ask(index: Path, stamp: dict, path: str, body: dict | None = None) -> Any:
    """The server's JSON answer. A server still starting (it holds the index before it listens) is waited for,
    up to FTRACE_STORE_WAIT_S seconds, as a busy vector store is."""
    url, where = stamp["url"], served_note(index, stamp)
    deadline, told = time.monotonic() + store_wait_s(), False
    while True:
        try:
            return _ask_once(url, where, path, body)
        except urllib.error.URLError as e:
            if not isinstance(e.reason, ConnectionRefusedError):
                raise ServerError(f"{where}, which did not answer ({e.reason})") from None
        except OSError as e:  # e.g. a reset or a timeout mid-answer
            raise ServerError(f"{where}, which did not answer ({e})") from None
        now = served_by(index)
        if now is None or now.get("pid") != stamp.get("pid"):
            raise ServerError(f"{where}, which stopped before answering; run the command again")
        if time.monotonic() > deadline:
            raise ServerError(f"{where}, which is still starting after {store_wait_s():g} s (FTRACE_STORE_WAIT_S); "
                              "ask again once its log says 'Application startup complete'")
        if not told:
            print(f"{where}, which is starting: waiting for it", file=sys.stderr, flush=True)
            told = True
        time.sleep(0.25)


def _same_device(asked: str, served: str) -> bool:
    """--device as asked (auto, cpu, cuda, cuda:N, mps) against the one the server resolved."""
    kind, _, number = asked.partition(":")
    served_kind, _, served_number = served.partition(":")
    return asked == "auto" or (kind == served_kind and (not number or number == (served_number or "0")))


def query_served(stamp: dict, config: QueryConfig) -> QueryResult:
    """`ftrace query` by the server holding the index: the trace options travel as a POST /trace body. What the
    server fixed when it started must be what the query asks for: --model and --embed-layers (the index's), the
    dtype (--dtype, else the index's) and a --device given. --threads are the server's (given, they cost this
    process torch's import, which sets them)."""
    from ftrace.index.manifest import Manifest

    index = config.index
    manifest = Manifest.read(index)
    manifest.check_asked(index, config.model, config.embed_layers)
    where, served_dtype = served_note(index, stamp), stamp.get("dtype")
    dtype = config.dtype or manifest.model.dtype
    if served_dtype and dtype != served_dtype:
        why = (f"--dtype {dtype}: {where}, in {served_dtype}" if config.dtype else
               f"{where}, in {served_dtype}, but the index was built in {dtype}, the dtype a query uses by default")
        raise ServerError(f"{why}; ask it with --dtype {served_dtype}, or stop it")
    served_device = stamp.get("device")
    if "device" in config.model_fields_set and served_device and not _same_device(config.device, served_device):
        raise ServerError(f"--device {config.device}: {where}, on {served_device}; ask it without --device, "
                          "or stop it")
    body = config.model_dump(include=set(TraceOptions.model_fields), exclude_none=True)
    answer = _ask(index, stamp, "/trace", body)
    try:
        result = QueryResult.model_validate(answer)
    except ValueError:  # pydantic's ValidationError: a server of another version
        raise ServerError(f"{where}, whose answer is not a trace of this ftrace version") from None
    print(f"{where}: it answered", file=sys.stderr, flush=True)
    return result


def info_served(stamp: dict, index: Path) -> dict:
    """`ftrace info` by the server holding the index: its manifest and status, and under `serve` the server's
    URL, pid, device and methods."""
    answer = _ask(index, stamp, "/info")
    print(f"{served_note(index, stamp)}: it answered", file=sys.stderr, flush=True)
    return answer


@contextlib.contextmanager
def tracing(config: QueryConfig) -> Iterator[Callable[[QueryConfig], QueryResult]]:
    """How `ftrace query` traces: by the server holding the index when one does, else here (a Tracer opened for the
    block and closed after it)."""
    server = served_by(config.index)
    if server is not None:
        yield functools.partial(query_served, server)
        return
    from ftrace.query.tracer import Tracer

    tracer = Tracer(config.index, model=config.model, embed_layers=config.embed_layers, device=config.device,
                    dtype=config.dtype)
    try:
        yield tracer.query
    finally:
        tracer.close()
