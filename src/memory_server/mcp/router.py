"""ASGI routing of ``/mcp/{client_name}/{sse|http}/{user_id}`` to the MCP transport apps.

The user and client come from the path, are validated before anything MCP runs (400
otherwise), and are attached to the request as its authenticated principal. The MCP
SDK records that principal as the owner of a session when the session starts and
answers "session not found" when a later request with the same session id arrives on
another user's (or client's) path: the identity is pinned for the session's life.
The path is rewritten instead of using a Starlette ``Mount``, so both ``.../user`` and
``.../user/`` are served directly (a 307 redirect breaks clients behind TLS proxies).
"""

from __future__ import annotations

import re
from typing import Any

from fastmcp.server.auth.auth import AccessToken
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from memory_server.errors import InvalidInput
from memory_server.identity import validate_client_name, validate_user_id
from memory_server.mcp.identity import IDENTITY_CLAIM

MCP_PATH = re.compile(r"^/mcp/(?P<client_name>[^/]*)/(?P<kind>sse|http)/(?P<user_id>[^/]*)(?P<rest>/.*)?$")


class McpRouter:
    """Pure ASGI middleware in front of the FastAPI app."""

    def __init__(self, app: ASGIApp, sse_app: ASGIApp, http_app: ASGIApp) -> None:
        self.app, self.sse_app, self.http_app = app, sse_app, http_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = MCP_PATH.match(scope["path"]) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        client_name, kind, user_id = match["client_name"], match["kind"], match["user_id"]
        try:
            validate_client_name(client_name)
            validate_user_id(user_id)
        except InvalidInput as exc:
            response = JSONResponse({"error": {"code": exc.code, "message": exc.message}}, status_code=400)
            await response(scope, receive, send)
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
        await (self.sse_app if kind == "sse" else self.http_app)(sub_scope, receive, send)
