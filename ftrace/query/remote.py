"""`ftrace query` and `ftrace info` on an index that `ftrace serve` holds: asked of that server over HTTP, with
the standard library only (no torch, no model, no JVM in this process), instead of being refused. The server's
warm model answers in its own time, so a query costs this process's start and one request, not seconds of
imports and loading (perf/results/cold_cli-cpu.md)."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ftrace import FtraceError
from ftrace.config import QueryConfig, TraceOptions
from ftrace.query.result import QueryResult

TIMEOUT_S = 600.0  # the server bounds each trace itself (--request-timeout, 503); this only guards a hung server
# the server holds a lock file on this machine's file system: ask it directly, never through an HTTP(S)_PROXY
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerError(FtraceError):
    pass


def _ask(url: str, index: Path, path: str, body: dict | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    where = f"{index}: served by `ftrace serve` at {url}"
    try:
        with _DIRECT.open(request, timeout=TIMEOUT_S) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # the server's one-line `detail` (a refusal, a timeout)
        try:
            detail = json.loads(e.read()).get("detail", e.reason)
        except (ValueError, AttributeError):
            detail = e.reason
        raise ServerError(f"{where}, which answered {e.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as e:  # e.g. it stopped since its lock was read
        reason = getattr(e, "reason", None) or e
        raise ServerError(f"{where}, which did not answer ({reason}); run the command again") from None


def _announce(url: str, index: Path) -> None:
    print(f"{index} is served by `ftrace serve` at {url}: asked it", file=sys.stderr, flush=True)


def query_served(url: str, config: QueryConfig) -> QueryResult:
    """`ftrace query` by the server holding the index: the trace options travel as a POST /trace body; the
    options the server fixed when it started are checked (--model, --embed-layers, against the index) or refused
    (--dtype: the server's weights answer); --device and --threads are the server's."""
    from ftrace.index.manifest import Manifest

    index = Path(config.index)
    Manifest.read(index).check_asked(index, config.model, config.embed_layers)
    if config.dtype is not None:
        raise ServerError(f"--dtype {config.dtype}: {index} is served by `ftrace serve` at {url}, whose weights "
                          "answer in the dtype it started with; leave --dtype out, or stop the server")
    _announce(url, index)
    body = config.model_dump(include=set(TraceOptions.model_fields), exclude_none=True)
    return QueryResult.model_validate(_ask(url, index, "/trace", body))


def info_served(url: str, index: Path) -> dict:
    """`ftrace info` by the server holding the index: its manifest and status, and the server's own line."""
    _announce(url, index)
    return _ask(url, index, "/info")
