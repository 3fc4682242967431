"""A FastMCP server with one tool that does nothing: the transport's own cost (the floor)."""

from __future__ import annotations

from typing import Any

from fastmcp import FastMCP


def create() -> Any:
    """The streamable-HTTP app, mounted at ``/mcp/bench/http/bench-user`` like ours."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    mcp = FastMCP("noop")

    @mcp.tool
    def noop(query: str = "", limit: int = 10) -> dict[str, Any]:
        """Return at once."""
        return {"results": []}

    app = mcp.http_app(transport="http", path="/")
    return Starlette(routes=[Mount("/mcp/bench/http/bench-user", app=app)], lifespan=app.lifespan)
