"""HTTP request metrics, labelled by route template (never by raw path: ids would explode cardinality)."""

from __future__ import annotations

import time

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memory_server.mcp.router import MCP_PATH
from memory_server.metrics import HTTP_LATENCY, HTTP_REQUESTS


class HttpMetrics:
    """Pure ASGI middleware (works with streaming responses such as SSE)."""

    def __init__(self, app: ASGIApp, routes_app: ASGIApp) -> None:
        self.app = app
        self.routes_app = routes_app

    def _route(self, scope: Scope) -> str:
        match = MCP_PATH.match(scope["path"])
        if match:
            return f"/mcp/{{client_name}}/{match['kind']}/{{user_id}}"
        for route in getattr(self.routes_app, "routes", []):
            found, _ = route.matches(scope)
            if found == Match.FULL:
                return str(getattr(route, "path", "other"))
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._route(scope)
        method = scope["method"]
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_LATENCY.labels(method, route).observe(time.perf_counter() - started)
