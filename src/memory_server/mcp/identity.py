"""Who is calling an MCP tool: from the URL path (HTTP transports) or the process (stdio)."""

from __future__ import annotations

from contextvars import ContextVar

from fastmcp.exceptions import ToolError
from fastmcp.server.dependencies import get_access_token, get_http_request

from memory_server.services.memories import Caller

IDENTITY_CLAIM = "memory_server_identity"

# stdio and in-memory clients have no HTTP request: the identity of the whole process
# (set by `memory-server stdio --user --client`, or by a test) lives here.
PROCESS_IDENTITY: ContextVar[Caller | None] = ContextVar("PROCESS_IDENTITY", default=None)


def current_caller() -> Caller:
    """The user and app of the current tool call."""
    try:
        get_http_request()
    except RuntimeError:
        caller = PROCESS_IDENTITY.get()
        if caller is None:
            raise ToolError(
                "this MCP connection has no user: connect through /mcp/{client}/{transport}/{user}"
            ) from None
        return caller
    token = get_access_token()
    claims = getattr(token, "claims", None) or {}
    if not claims.get(IDENTITY_CLAIM):
        raise ToolError("this MCP request has no user: connect through /mcp/{client}/{transport}/{user}")
    return Caller(user_id=claims["user_id"], client_name=claims["client_name"])
