"""Authentication and rate limiting of every HTTP request (REST, SSE, streamable HTTP).

Pure ASGI middleware, outside the MCP router and the REST routes: it finds the
credential (``Authorization: Bearer`` or ``?token=``, which it removes from the query
string), checks it once, leaves the principal in the scope for the adapters, and
charges the request to the credential's rate-limit bucket (the client address when
authentication is off). Health, metrics and the API documentation stay open so that
load balancers and scrapers need no credential.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from memory_server.auth import PRINCIPAL_KEY, QUERY_TOKEN_KEY, Authenticator, credential_of
from memory_server.errors import MemoryServerError, RateLimited, Unauthorized

OPEN_PATHS = frozenset({"/health", "/metrics", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"})


class RateLimiter:
    """A token bucket per key: ``per_minute`` requests a minute, bursts up to ``per_minute``."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)
        self._lock = threading.Lock()

    def take(self, key: str) -> int:
        """0 if the request may go ahead, else the seconds to wait before the next one."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                if len(self._buckets) > 100_000:  # forget idle buckets (they would be full anyway)
                    self._buckets = {k: v for k, v in self._buckets.items() if v[1] > now - 60}
                return 0
            self._buckets[key] = (tokens, now)
            return max(1, int(math.ceil((1 - tokens) / self.rate)))


def _error(exc: MemoryServerError) -> JSONResponse:
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="memory-server"'
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    body = {"error": {"code": exc.code, "message": exc.message}}
    return JSONResponse(body, status_code=exc.status, headers=headers)


class Authentication:
    """Resolves the principal of each request and applies the rate limit."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator, rate_limit_per_minute: int = 0) -> None:
        self.app = app
        self.auth = authenticator
        self.limiter = RateLimiter(rate_limit_per_minute) if rate_limit_per_minute > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self._check(scope)
        except MemoryServerError as exc:
            await _error(exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _check(self, scope: Scope) -> None:
        credential, from_query = credential_of(scope)
        if scope["path"].rstrip("/") in OPEN_PATHS or scope["path"] == "/":
            return
        principal = None
        if self.auth.enabled:
            if credential is None:
                raise Unauthorized(
                    "this server needs a credential: send Authorization: Bearer <token> "
                    "(or ?token=<token> from an MCP client that cannot send headers)"
                )
            principal = await self.auth.authenticate(credential)
            scope[PRINCIPAL_KEY] = principal
            if from_query:
                scope[QUERY_TOKEN_KEY] = credential
        if self.limiter is not None:
            client = scope.get("client")
            key = principal.key if principal is not None else f"ip:{client[0] if client else '-'}"
            wait = self.limiter.take(key)
            if wait:
                raise RateLimited(f"too many requests: try again in {wait} s", retry_after=wait)
