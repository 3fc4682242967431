"""The FastAPI application factory: health, metrics, docs, and MCP over SSE and streamable HTTP."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from memory_server import __version__
from memory_server.api import admin as admin_api
from memory_server.api import apps as apps_api
from memory_server.api import backup as backup_api
from memory_server.api import memories as memories_api
from memory_server.api.limits import BodySizeLimit
from memory_server.api.middleware import HttpMetrics
from memory_server.api.security import Authentication
from memory_server.api.slack import router as slack_router
from memory_server.auth import Authenticator
from memory_server.config import Settings
from memory_server.errors import MemoryServerError
from memory_server.events import listen_postgres
from memory_server.mcp.bridge import announce, withdraw
from memory_server.mcp.router import McpRouter
from memory_server.mcp.server import build_mcp
from memory_server.metrics import ERRORS, StoredMemoriesCollector
from memory_server.runtime import Runtime
from memory_server.scheduler import build_scheduler
from memory_server.slack.sync import SlackSync
from memory_server.storage.embeddings import Embedder

log = logging.getLogger(__name__)


def error_body(code: str, message: str) -> dict[str, Any]:
    """The one JSON error shape of the HTTP API."""
    return {"error": {"code": code, "message": message}}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


# Published on every route, so clients (and schemathesis) see the real error shape; declaring
# 422 here also replaces FastAPI's default validation-error schema, which we do not use.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "invalid input",
        401: "missing or invalid credential",
        403: "not allowed for this credential or app",
        404: "not found for this user",
        409: "conflicts with what is stored",
        413: "text or body over the size limit",
        422: "request does not match the schema",
        429: "rate limit reached (see Retry-After)",
        503: "a component is unavailable",
    }.items()
}


def create_app(
    settings: Settings, runtime: Runtime | None = None, embedder: Embedder | None = None
) -> FastAPI:
    """Build the whole HTTP server from settings (or from a ready runtime, in tests).

    ``embedder``, if given, is the loaded embedding model for ``Runtime.build`` to use.
    """
    settings.check_auth()
    runtime = runtime or Runtime.build(settings, embedder=embedder)
    authenticator = Authenticator(settings, runtime.tokens)
    mcp = build_mcp(runtime.memories)
    sse_app = mcp.http_app(transport="sse", path="/")
    http_app = mcp.http_app(transport="http", path="/")
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StoredMemoriesCollector(runtime.memories.count_by_state))
    slack = SlackSync(settings, runtime.memories, runtime.db)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(sse_app.lifespan(sse_app))
            await stack.enter_async_context(http_app.lifespan(http_app))
            stop = asyncio.Event()
            listener = None
            if not runtime.db.is_sqlite:
                url = runtime.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
                listening = asyncio.Event()
                listener = asyncio.create_task(listen_postgres(url, runtime.db.events, stop, listening))
                try:  # serve only once changes from other replicas can reach this one's streams
                    await asyncio.wait_for(listening.wait(), timeout=10)
                except TimeoutError:
                    log.warning("event listener not connected yet; streams see other replicas' changes later")
            scheduler = build_scheduler(slack, runtime=runtime)
            scheduler.start()
            _app.state.scheduler = scheduler
            if runtime.vectors.is_local:  # let stdio clients of this data dir find us
                announce(settings.data_dir, settings.host, settings.port)
            runtime.pool.warm_up()
            log.info("memory-server %s ready", __version__)
            try:
                yield
            finally:
                log.info("memory-server shutting down")
                withdraw(settings.data_dir)
                stop.set()
                if listener is not None:
                    await listener
                scheduler.shutdown(wait=False)
                await slack.aclose()  # before the runtime closes under a running sync
        runtime.close()

    app = FastAPI(
        title="memory-server",
        version=__version__,
        description="Long-term memory for AI assistants. MCP at /mcp/{client_name}/sse/{user_id} "
        "and /mcp/{client_name}/http/{user_id}.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.state.runtime = runtime
    app.state.auth = authenticator
    app.state.mcp = mcp
    app.state.slack = slack
    app.state.scheduler = None

    @app.exception_handler(MemoryServerError)
    async def domain_error(_request: Request, exc: MemoryServerError) -> JSONResponse:
        ERRORS.labels(exc.code).inc()
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        ERRORS.labels("validation").inc()
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse(error_body("validation_error", problems), status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        ERRORS.labels("internal").inc()
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal_error", "internal error"), status_code=500)

    @app.get("/health", tags=["operations"], summary="Health of each component")
    async def health() -> JSONResponse:
        checks = {
            "database": runtime.db.ping,
            "vector_store": runtime.vectors.ping,
            "embedder": lambda: runtime.embedder.embed_one("health check"),
        }
        components: dict[str, dict[str, str]] = {}
        for name, check in checks.items():
            try:
                with anyio.fail_after(5):
                    await anyio.to_thread.run_sync(check)
                components[name] = {"status": "ok"}
            except Exception as exc:
                log.warning("health check %s failed: %s", name, type(exc).__name__)
                components[name] = {"status": "down", "error": type(exc).__name__}
        healthy = all(c["status"] == "ok" for c in components.values())
        body = {"status": "ok" if healthy else "degraded", "version": __version__, "components": components}
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def metrics() -> Response:
        payload = generate_latest(REGISTRY) + await anyio.to_thread.run_sync(generate_latest, registry)
        return Response(payload, media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    app.include_router(memories_api.router)
    app.include_router(apps_api.router)
    app.include_router(slack_router)
    app.include_router(backup_api.router)
    app.include_router(admin_api.router)
    # Outermost last: metrics, CORS, body size, authentication and rate limit, MCP routing.
    app.add_middleware(McpRouter, sse_app=sse_app, http_app=http_app, auth_enabled=authenticator.enabled)
    app.add_middleware(
        Authentication, authenticator=authenticator, rate_limit_per_minute=settings.rate_limit_resolved
    )
    app.add_middleware(
        BodySizeLimit, max_bytes=settings.max_request_bytes, exempt=frozenset({backup_api.IMPORT_PATH})
    )
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "X-User-Id",
                "Mcp-Session-Id",
                "Mcp-Protocol-Version",
            ],
            expose_headers=["Mcp-Session-Id", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(HttpMetrics, routes_app=app.router)
    return app
