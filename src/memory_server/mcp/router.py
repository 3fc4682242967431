"""ASGI routing of ``/mcp/{client_name}/{sse|http}/{user_id}`` to the MCP transport apps.

The user and client come from the path, are validated before anything MCP runs (400
otherwise), and are attached to the request as its authenticated principal. The MCP
SDK records that principal as the owner of a session when the session starts and
answers "session not found" when a later request with the same session id arrives on
another user's (or client's) path: the identity is pinned for the session's life.
The path is rewritten instead of using a Starlette ``Mount``, so both ``.../user`` and
``.../user/`` are served directly (a 307 redirect breaks clients behind TLS proxies).

With authentication on, the credential (checked by ``api.security.Authentication``)
must belong to the path's user, and an app-scoped token to the path's client: 403
otherwise. A credential sent as ``?token=`` is carried into the SSE ``endpoint`` event,
so that the client's message POSTs, which go to the URL the server names, carry it too.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

from fastmcp.server.auth.auth import AccessToken
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memory_server.auth import PRINCIPAL_KEY, QUERY_PARAMETER, QUERY_TOKEN_KEY
from memory_server.errors import Forbidden, MemoryServerError, Unauthorized
from memory_server.identity import validate_client_name, validate_user_id
from memory_server.mcp.identity import IDENTITY_CLAIM
from memory_server.services.tokens import Principal

MCP_PATH = re.compile(r"^/mcp/(?P<client_name>[^/]*)/(?P<kind>sse|http)/(?P<user_id>[^/]*)(?P<rest>/.*)?$")


class McpRouter:
    """Pure ASGI middleware in front of the FastAPI app."""

    def __init__(self, app: ASGIApp, sse_app: ASGIApp, http_app: ASGIApp, auth_enabled: bool = False) -> None:
        self.app, self.sse_app, self.http_app = app, sse_app, http_app
        self.auth_enabled = auth_enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = MCP_PATH.match(scope["path"]) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        client_name, kind, user_id = match["client_name"], match["kind"], match["user_id"]
        try:
            validate_client_name(client_name)
            validate_user_id(user_id)
            if self.auth_enabled:
                check_path_identity(scope.get(PRINCIPAL_KEY), user_id, client_name)
        except MemoryServerError as exc:
            body = {"error": {"code": exc.code, "message": exc.message}}
            await JSONResponse(body, status_code=exc.status)(scope, receive, send)
            return
        prefix = f"/mcp/{client_name}/{kind}/{user_id}"
        token = AccessToken(
            token="path-identity",
            client_id=f"{client_name}/{user_id}",
            scopes=[],
            subject=user_id,
            claims={IDENTITY_CLAIM: True, "user_id": user_id, "client_name": client_name},
        )
        sub_scope: dict[str, Any] = dict(scope)
        sub_scope["root_path"] = scope.get("root_path", "") + prefix
        sub_scope["path"] = sub_scope["root_path"] + (match["rest"] or "/")
        sub_scope["raw_path"] = sub_scope["path"].encode()
        sub_scope["user"] = AuthenticatedUser(token)
        sub_scope["auth"] = None
        query_token = scope.get(QUERY_TOKEN_KEY)
        if kind == "sse" and query_token and scope["method"] == "GET":
            send = _endpoint_with_token(send, query_token)
        await (self.sse_app if kind == "sse" else self.http_app)(sub_scope, receive, send)


def check_path_identity(principal: Principal | None, user_id: str, client_name: str) -> None:
    """Refuse a path that names another user than the credential's, or another app than its scope."""
    if principal is None:
        raise Unauthorized("no credential")  # unreachable: the authentication middleware ran first
    if principal.user_id != user_id:
        raise Forbidden("this credential belongs to another user than the one in the URL")
    if principal.app is not None and principal.app != client_name:
        raise Forbidden(f"this token is limited to the app {principal.app!r}; use it in that app's URL")


def _endpoint_with_token(send: Send, token: str) -> Send:
    """Add ``token=`` to the message URL of the SSE ``endpoint`` event (sent once, first)."""
    marker = b"?session_id="
    replacement = f"?{urlencode({QUERY_PARAMETER: token})}&session_id=".encode()
    done = False

    async def wrapped(message: Message) -> None:
        nonlocal done
        if not done and message["type"] == "http.response.body" and marker in message.get("body", b""):
            message = {**message, "body": message["body"].replace(marker, replacement, 1)}
            done = True
        await send(message)

    return wrapped
