"""`ftrace serve`: the HTTP API and the explorer page over one warm index (FastAPI + uvicorn).

    POST /trace   `ftrace query`'s options as JSON -> the JSON `ftrace query --json` prints; the
                  Server-Timing header says where the time went (answer, vectors, bm25, qdrant, total)
    GET  /info    the manifest and what the index holds (as `ftrace info`), plus this server
    GET  /health  liveness, answered without waiting for queued traces
    GET  /        the explorer page (static/); /docs and /openapi.json: FastAPI's OpenAPI docs

Bad requests get a 4xx whose `detail` is one line naming the field: 422 where the body does not
validate (QueryConfig's own types and bounds), 400 where the tracer refuses it (e.g. a method the
index lacks). How concurrent requests are made safe: `serve.service`.
"""

from __future__ import annotations

import contextlib
import copy
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, create_model

from ftrace import FtraceError, __version__
from ftrace.config import Cli, QueryConfig, ServeConfig, Strict
from ftrace.query.tracer import QueryResult
from ftrace.serve.service import Service

STATIC = Path(__file__).parent / "static"
# what a request may set: `ftrace query`'s options but the index, model and device, which are the server's
REQUEST_FIELDS = ("prompt", "target", "k", "method", "fusion", "weight", "cascade_k", "depth")


def _request_model() -> type[BaseModel]:
    """POST /trace's body: QueryConfig's fields (types, defaults, bounds), described by their CLI help."""
    fields: dict[str, Any] = {}
    for name in REQUEST_FIELDS:
        field = copy.copy(QueryConfig.model_fields[name])
        field.description = next((m.help for m in field.metadata if isinstance(m, Cli)), None)
        fields[name] = (field.annotation, field)
    return create_model("TraceRequest", __base__=Strict, **fields)


TraceRequest = _request_model()


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
    shown = f" {e['input']!r}" if e.get("type") != "missing" and "input" in e else ""
    return f"{'.'.join(loc)}{shown}: {msg}"


def server_timing(timings: dict[str, float]) -> str:
    return ", ".join(f"{part};dur={seconds * 1000:.1f}" for part, seconds in timings.items())


def create_app(service: Service) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield  # the service opened before the server started (so a bad index fails in one line)
        service.close()  # on shutdown: uvicorn then re-raises a SIGTERM/SIGINT, ending the process

    app = FastAPI(title="ftrace", version=__version__, lifespan=lifespan,
                  description="Fact tracing: the training sentences behind a language model's prediction.")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": one_line(exc)}, status_code=422)

    @app.exception_handler(FtraceError)
    async def refused(request: Request, exc: FtraceError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:  # logged by uvicorn too
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {first}"}, status_code=500)

    @app.post("/trace", response_model=QueryResult, summary="Trace one prediction (as `ftrace query --json`)")
    async def trace(request: TraceRequest) -> Response:  # type: ignore[valid-type]
        result, timings = await service.run(service.trace, request.model_dump())  # type: ignore[attr-defined]
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
            uvicorn.Server(uvicorn.Config(create_app(service), log_level="info")).run(sockets=[sock])
        finally:
            service.close()
    finally:
        sock.close()
