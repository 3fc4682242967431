"""FastMCP servers that bound what the memory server can reach (the floors).

``create``: one tool that does nothing, the transport's own cost.
``create_embedding``: one tool that embeds its text with the server's own model and
settings (``memory-server serve`` builds its embedder the same way) and returns nothing,
the transport plus the one embedding that every search and every new memory pays on top
of its own work.
"""

from __future__ import annotations

import os
from typing import Any

# As memory_server/__init__.py sets it: the floors run FastMCP as the server runs it.
os.environ.setdefault("PY_KEY_VALUE_DISABLE_BEARTYPE", "true")


def _app(mcp: Any) -> Any:
    """The streamable-HTTP app, mounted at ``/mcp/bench/http/bench-user`` like ours."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    app = mcp.http_app(transport="http", path="/")
    return Starlette(routes=[Mount("/mcp/bench/http/bench-user", app=app)], lifespan=app.lifespan)


def create() -> Any:
    from fastmcp import FastMCP

    mcp = FastMCP("noop")

    @mcp.tool
    def noop(query: str = "", limit: int = 10) -> dict[str, Any]:
        """Return at once."""
        return {"results": []}

    return _app(mcp)


def create_embedding() -> Any:
    import anyio
    from fastmcp import FastMCP

    from memory_server.config import load_providers, load_settings
    from memory_server.storage.embeddings import create_embedder

    settings = load_settings()
    section = load_providers(settings).embedder
    embedder = create_embedder(settings, section)
    embedder.embed_one("warm up")
    mcp = FastMCP("embed")

    @mcp.tool
    async def embed(query: str = "", limit: int = 10) -> dict[str, Any]:
        """Embed ``query`` in a worker thread (as the memory tools do), return nothing."""
        await anyio.to_thread.run_sync(embedder.embed_one, query)
        return {"results": []}

    return _app(mcp)
