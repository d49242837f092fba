"""`ftrace serve`: the HTTP API and the explorer page over one warm index (FastAPI + uvicorn).

    POST /trace   `ftrace query`'s options as JSON -> the JSON `ftrace query --json` prints; the
                  Server-Timing header says where the time went (answer, vectors, bm25, qdrant, total)
    GET  /info    the manifest and what the index holds (as `ftrace info`), plus this server
    GET  /health  liveness, answered without waiting for queued traces
    GET  /        the explorer page (static/); /docs, /redoc and /openapi.json: FastAPI's OpenAPI docs,
                  their scripts and styles served from the fastapi-offline wheel (no CDN: they work offline)

Bad requests get a 4xx whose `detail` is one line naming the JSON field: 422 where the body does not
validate (TraceOptions, the query's own types, bounds and checks, strictly: `"k": true` or `"k": "5"` is not a
number), 400 where the tracer refuses it (e.g. a method the index lacks); the tracer's messages name `ftrace query`'s
options (`--method`, `--target`), which `http_message` turns into the fields (`method`, `target`); a 400's
`message` keeps the options' names, for `ftrace query` asking in a user's place (`query.remote`). Every
request's work is bounded: a body over MAX_BODY bytes gets a 413 (a POST without a Content-Length, 411); a
prompt keeps its last --max-tokens tokens (for the answer too); a /trace request not answered within
--request-timeout seconds (time in the queue included) gets a 503, and the worker drops it at its next step.
How concurrent requests are made safe: `serve.service`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import ConfigDict, create_model

from ftrace import FtraceError, __version__
from ftrace.config import Cli, ServeConfig, TraceOptions, option_name
from ftrace.query.result import QueryResult
from ftrace.query.tracer import RequestTimeout
from ftrace.serve.service import Service

STATIC = Path(__file__).parent / "static"
MAX_BODY = 65_536  # bytes of a request body: a prompt keeps only its last --max-tokens tokens anyway
# what a request may set: `ftrace query`'s options but the index, model and device, which are the server's
REQUEST_FIELDS = tuple(TraceOptions.model_fields)


class _Request(TraceOptions):
    # strict: a JSON body's types are what they say, so `"k": true` or `"k": "5"` is refused, not read as 1 or 5
    model_config = ConfigDict(strict=True)


def _request_model() -> type[TraceOptions]:
    """POST /trace's body: TraceOptions (types, defaults, bounds, checks), its fields described by their CLI help."""
    fields: dict[str, Any] = {}
    for name in REQUEST_FIELDS:
        field = copy.copy(TraceOptions.model_fields[name])
        field.description = next((m.help for m in field.metadata if isinstance(m, Cli)), None)
        fields[name] = (field.annotation, field)
    return create_model("TraceRequest", __base__=_Request, **fields)


TraceRequest = _request_model()

# `ftrace query`'s names of the request's fields, as its messages spell them (--method, --cascade-k, PROMPT) -> the
# JSON field; a quoted value (a user's text, e.g. "--method '--k': ...") is left as it is
_FIELD_OF = {option_name(name, mark): name for name in REQUEST_FIELDS
             for mark in TraceOptions.model_fields[name].metadata if isinstance(mark, Cli)}
_CLI_NAME = re.compile(r"'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"|(?<![\w-])("
                       + "|".join(map(re.escape, sorted(_FIELD_OF, key=len, reverse=True))) + r")(?![\w-])")


def http_message(message: str) -> str:
    """A message of the tracer or config, which names `ftrace query`'s options, as it reads over HTTP: naming the
    request's JSON fields (`--method 'x': ...` -> `method 'x': ...`, `PROMPT` -> `prompt`)."""
    return _CLI_NAME.sub(lambda m: _FIELD_OF[m[1]] if m[1] else m[0], message)


def _shown(value: Any) -> str:
    """A request's value in a message: text quoted as ftrace's messages quote it, anything else as JSON (true)."""
    if isinstance(value, str):
        return repr(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def one_line(err: RequestValidationError) -> str:
    """The first validation error as `field value: reason`."""
    e = err.errors()[0]
    msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
    if e.get("type") == "json_invalid":
        return f"request body: not valid JSON ({e.get('ctx', {}).get('error', msg)})"
    loc = [str(p) for p in e.get("loc", ()) if p != "body"]
    if not loc:
        return f"request body: {msg} (send a JSON object such as {{\"prompt\": \"...\"}})"
    if e.get("type") == "extra_forbidden":
        return f"{'.'.join(loc)}: not an option of this request (it takes {', '.join(REQUEST_FIELDS)})"
    shown = f" {_shown(e['input'])}" if e.get("type") != "missing" and "input" in e else ""
    return f"{'.'.join(loc)}{shown}: {http_message(msg)}"


def server_timing(timings: dict[str, float]) -> str:
    return ", ".join(f"{part};dur={seconds * 1000:.1f}" for part, seconds in timings.items())


def create_app(service: Service, timeout: float = 30.0) -> FastAPI:
    """The app over `service`; `timeout`: seconds a /trace request may take, queueing included."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield  # the service opened before the server started (so a bad index fails in one line)
        service.close()  # on shutdown: uvicorn then re-raises a SIGTERM/SIGINT, ending the process

    # FastAPI's own /docs and /redoc load their scripts from a CDN (a blank page offline); fastapi-offline's serve
    # them from its wheel, at /docs-assets
    app = FastAPIOffline(title="ftrace", version=__version__, lifespan=lifespan, static_url="/docs-assets",
                         description="Fact tracing: the training sentences behind a language model's prediction.")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": one_line(exc)}, status_code=422)

    @app.middleware("http")
    async def bounded(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        size = request.headers.get("content-length", "")
        if not size and request.method == "POST":  # a chunked body: its size is unknown until it is read whole
            return JSONResponse({"detail": "request body: send it with a Content-Length header (chunked bodies "
                                           f"are refused; at most {MAX_BODY:,} bytes)"}, status_code=411)
        if size.isdigit() and int(size) > MAX_BODY:
            return JSONResponse({"detail": f"request body: {int(size):,} bytes, over the limit of {MAX_BODY:,} (a "
                                           "prompt keeps only its last --max-tokens tokens anyway)"}, status_code=413)
        return await call_next(request)

    @app.exception_handler(RequestTimeout)
    async def too_slow(request: Request, exc: RequestTimeout) -> JSONResponse:
        return timed_out()

    def timed_out() -> JSONResponse:
        return JSONResponse({"detail": f"the request took longer than {timeout:g} s (--request-timeout), time in the "
                                       "queue included; it was dropped"}, status_code=503)

    @app.exception_handler(FtraceError)
    async def refused(request: Request, exc: FtraceError) -> JSONResponse:
        # `message`: the same words naming `ftrace query`'s options, for the CLI asking in its place (query.remote)
        return JSONResponse({"detail": http_message(str(exc)), "message": str(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:  # logged by uvicorn too
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {first}"}, status_code=500)

    @app.post("/trace", response_model=QueryResult, summary="Trace one prediction (as `ftrace query --json`)")
    async def trace(request: TraceRequest) -> Response:  # type: ignore[valid-type]
        try:  # the worker drops the request at its next step after the deadline; the client hears at once
            result, timings = await asyncio.wait_for(
                service.run(service.trace, request, time.monotonic() + timeout), timeout)
        except TimeoutError:
            return timed_out()
        return Response(result.model_dump_json(), media_type="application/json",
                        headers={"Server-Timing": server_timing(timings)})

    @app.get("/info", summary="The index's manifest and status (as `ftrace info`), and this server")
    async def info() -> dict:
        return await service.run(service.info)

    @app.get("/health", summary="Liveness")
    async def health() -> dict:
        return {"status": "ok", "index": str(service.index)}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def listen(host: str, port: int) -> socket.socket:
    """Bind before the model loads, so a taken port fails at once, in one line."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise FtraceError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    return sock


def serve(config: ServeConfig) -> None:
    import uvicorn

    sock = listen(config.host, config.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    try:
        service = Service(config.index, config.device, url, config.dtype)
        try:
            print(f"serving {config.index} at {url} (explorer {url}/, API docs {url}/docs)", file=sys.stderr,
                  flush=True)
            uvicorn.Server(uvicorn.Config(create_app(service, config.request_timeout), log_level="info")).run(
                sockets=[sock])
        finally:
            service.close()
    finally:
        sock.close()
