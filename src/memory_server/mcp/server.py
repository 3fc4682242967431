"""The MCP tools: thin adapters over ``MemoryService``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio
from fastmcp import FastMCP
from fastmcp.exceptions import ToolError
from fastmcp.server.middleware import Middleware, MiddlewareContext
from pydantic import Field

from memory_server import __version__
from memory_server.errors import MemoryServerError
from memory_server.mcp.identity import current_caller
from memory_server.metrics import ERRORS, TOOL_CALLS, TOOL_LATENCY
from memory_server.schemas import (
    AddResult,
    DeleteResult,
    MemoryOut,
    MemoryPage,
    MemoryTypeName,
    SearchResult,
)
from memory_server.services.memories import (
    MAX_DELETE_IDS,
    MAX_LIST_LIMIT,
    MAX_SEARCH_LIMIT,
    Caller,
    MemoryService,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

INSTRUCTIONS = """\
Long-term memory for this user. Search it before answering anything that may depend on
what the user told you earlier (preferences, projects, people, facts about them), and
add to it when the user shares something worth remembering later. Memories are private
to this user; each one records which app (client) stored it."""


class MetricsMiddleware(Middleware):
    """Counts and times every tool call for Prometheus."""

    async def on_call_tool(self, context: MiddlewareContext[Any], call_next: Any) -> Any:
        tool = context.message.name
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await call_next(context)
        except Exception:
            outcome = "error"
            raise
        finally:
            TOOL_LATENCY.labels(tool).observe(time.perf_counter() - started)
            TOOL_CALLS.labels(tool, outcome).inc()


async def _call(fn: Callable[..., T], *args: Any) -> T:
    """Run a (blocking) service call in a worker thread; domain errors become tool errors."""
    try:
        return await anyio.to_thread.run_sync(partial(fn, *args))
    except MemoryServerError as exc:
        ERRORS.labels(exc.code).inc()
        raise ToolError(exc.message) from None


def build_mcp(service: MemoryService) -> FastMCP:
    """The FastMCP server with every memory tool, bound to ``service``."""
    mcp = FastMCP(
        "memory-server",
        instructions=INSTRUCTIONS,
        version=__version__,
        mask_error_details=True,
        middleware=[MetricsMiddleware()],
    )

    def caller() -> Caller:
        return current_caller()

    @mcp.tool(annotations={"title": "Add memories", "destructiveHint": False})
    async def add_memories(
        text: Annotated[
            str, Field(description="What to remember, in plain words (one fact or a short passage).")
        ],
        infer: Annotated[
            bool | None,
            Field(
                description="true: let the LLM extract separate facts; false: store the text as given. "
                "Default: true when an LLM is configured, else false."
            ),
        ] = None,
        metadata: Annotated[
            dict[str, Any] | None,
            Field(description="Optional JSON object stored with the memory (e.g. a source)."),
        ] = None,
        memory_type: Annotated[
            MemoryTypeName | None,
            Field(
                description="long_term (default), short_term (expires after a week unless used often), "
                "rule (how the user wants you to behave), entity or relationship."
            ),
        ] = None,
        importance: Annotated[
            float | None, Field(ge=0, le=1, description="0 to 1; how much this matters (default 0.5).")
        ] = None,
    ) -> AddResult:
        """Store something the user wants remembered across conversations.

        Returns the memories created (event ADD) or, when the same or a nearly identical
        memory already exists, that memory (event NONE) instead of a copy.
        """
        return await _call(service.add, caller(), text, infer, metadata, memory_type, importance)

    @mcp.tool(annotations={"title": "Search memories", "readOnlyHint": True})
    async def search_memory(
        query: Annotated[str, Field(description="What you are looking for, as a question or keywords.")],
        limit: Annotated[int, Field(ge=1, le=MAX_SEARCH_LIMIT, description="Most results to return.")] = 10,
    ) -> SearchResult:
        """Find the user's memories closest in meaning to the query, best match first (with a score)."""
        return await _call(service.search, caller(), query, limit)

    @mcp.tool(annotations={"title": "List memories", "readOnlyHint": True})
    async def list_memories(
        limit: Annotated[int, Field(ge=1, le=MAX_LIST_LIMIT, description="Page size.")] = 50,
        offset: Annotated[int, Field(ge=0, description="How many of the newest memories to skip.")] = 0,
    ) -> MemoryPage:
        """List the user's memories, newest first, with the total count for paging."""
        return await _call(service.list_memories, caller(), limit, offset)

    @mcp.tool(annotations={"title": "Get a memory", "readOnlyHint": True})
    async def get_memory(
        memory_id: Annotated[
            str, Field(description="The id of a memory (a UUID from another tool's result).")
        ],
    ) -> MemoryOut:
        """Fetch one memory by its id: text, app, state, metadata and timestamps."""
        return await _call(service.get, caller(), memory_id)

    @mcp.tool(annotations={"title": "Update a memory", "destructiveHint": True, "idempotentHint": True})
    async def update_memory(
        memory_id: Annotated[str, Field(description="The id of the memory to change.")],
        text: Annotated[str, Field(description="The new text that replaces the old one.")],
    ) -> MemoryOut:
        """Replace the text of a memory (for corrections); search follows the new text at once."""
        return await _call(service.update, caller(), memory_id, text)

    @mcp.tool(annotations={"title": "Delete memories", "destructiveHint": True, "idempotentHint": True})
    async def delete_memories(
        memory_ids: Annotated[
            list[str],
            Field(min_length=1, max_length=MAX_DELETE_IDS, description="Ids of the memories to delete."),
        ],
    ) -> DeleteResult:
        """Delete memories by id. Ids that are unknown (or not this user's) come back in not_found."""
        return await _call(service.delete, caller(), memory_ids)

    @mcp.tool(annotations={"title": "Delete all memories", "destructiveHint": True, "idempotentHint": True})
    async def delete_all_memories() -> DeleteResult:
        """Delete every memory of this user, from every app. Only when the user clearly asks for it."""
        return await _call(service.delete_all, caller())

    _cache_input_schemas(mcp)
    return mcp


def _cache_input_schemas(mcp: FastMCP) -> None:
    """Hand the MCP SDK our tools' input schemas, fixed at start-up.

    Without a lookup, the SDK's streamable-HTTP handler runs a whole ``tools/list``
    (middleware, schema dereferencing) before every ``tools/call`` to check
    ``Mcp-Param-*`` headers: half the server time of a search at 1k memories.
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as thread:  # works whether or not an event loop is running here
        tools = thread.submit(lambda: asyncio.run(mcp.list_tools())).result()
    schemas = {tool.name: tool.parameters for tool in tools}
    mcp._mcp_server.get_tool_input_schema = schemas.get
