"""MCP tools through fastmcp's in-memory client: schemas, results and errors."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastmcp import Client

from memory_server.mcp.identity import PROCESS_IDENTITY
from memory_server.mcp.server import build_mcp
from memory_server.runtime import Runtime
from memory_server.services.memories import Caller

TOOLS = {
    "add_memories",
    "search_memory",
    "list_memories",
    "get_memory",
    "update_memory",
    "delete_memories",
    "delete_all_memories",
}


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[Client[Any]]:
    token = PROCESS_IDENTITY.set(Caller("carol", "vscode"))
    try:
        async with Client(build_mcp(runtime.memories)) as c:
            yield c
    finally:
        PROCESS_IDENTITY.reset(token)


async def call(client: Client[Any], tool: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def error(client: Client[Any], tool: str, **args: Any) -> str:
    result = await client.call_tool(tool, args, raise_on_error=False)
    assert result.is_error
    return str(result.content[0].text)  # type: ignore[union-attr]


async def test_list_tools_schemas(client: Client[Any]) -> None:
    tools = {t.name: t for t in await client.list_tools()}
    assert set(tools) == TOOLS
    add = tools["add_memories"].input_schema
    assert add["required"] == ["text"]
    assert set(add["properties"]) == {"text", "infer", "metadata", "memory_type", "importance"}
    search = tools["search_memory"].input_schema
    assert search["properties"]["limit"]["default"] == 10 and search["properties"]["limit"]["maximum"] == 100
    assert tools["list_memories"].input_schema["properties"]["limit"]["default"] == 50
    assert tools["delete_memories"].input_schema["properties"]["memory_ids"]["type"] == "array"
    assert tools["delete_all_memories"].input_schema.get("properties", {}) == {}
    for tool in tools.values():
        assert tool.description and len(tool.description) > 30
        assert tool.output_schema is not None
        # nullable fields as type lists: one check per field for clients that validate results
        assert "anyOf" not in json.dumps(tool.output_schema), tool.name
    memory = tools["search_memory"].output_schema["properties"]["results"]["items"]["properties"]  # type: ignore[index]
    assert memory["archived_at"]["type"] == ["string", "null"]
    assert memory["event"]["enum"] == ["ADD", "NONE", None]
    assert (
        tools["search_memory"].annotations is not None and tools["search_memory"].annotations.read_only_hint
    )
    assert (
        tools["delete_all_memories"].annotations is not None
        and tools["delete_all_memories"].annotations.destructive_hint
    )


async def test_tool_round_trip(client: Client[Any]) -> None:
    added = await call(
        client, "add_memories", text="I am learning to play the banjo", metadata={"source": "chat"}
    )
    memory = added["results"][0]
    assert memory["event"] == "ADD" and memory["app"] == "vscode" and memory["metadata"] == {"source": "chat"}
    await call(client, "add_memories", text="My daughter's birthday is on 4 July")

    found = await call(client, "search_memory", query="musical instrument practice", limit=1)
    assert [m["id"] for m in found["results"]] == [memory["id"]]
    assert isinstance(found["results"][0]["score"], float)

    listed = await call(client, "list_memories")
    assert listed["total"] == 2 and listed["results"][1]["id"] == memory["id"]

    got = await call(client, "get_memory", memory_id=memory["id"])
    assert got["text"] == "I am learning to play the banjo"

    updated = await call(
        client, "update_memory", memory_id=memory["id"], text="I switched from banjo to ukulele"
    )
    assert updated["text"] == "I switched from banjo to ukulele"
    top = await call(client, "search_memory", query="ukulele", limit=1)
    assert top["results"][0]["id"] == memory["id"]

    deleted = await call(client, "delete_memories", memory_ids=[memory["id"]])
    assert deleted == {"deleted": [memory["id"]], "not_found": []}
    assert (await call(client, "list_memories"))["total"] == 1
    assert len((await call(client, "delete_all_memories"))["deleted"]) == 1
    assert (await call(client, "list_memories"))["total"] == 0


async def test_duplicate_returns_existing_with_event_none(client: Client[Any]) -> None:
    first = (await call(client, "add_memories", text="I take the 8:15 train to work"))["results"][0]
    again = await call(client, "add_memories", text="I take the 8:15 train to work")
    assert again["results"][0]["id"] == first["id"] and again["results"][0]["event"] == "NONE"
    assert again["message"]


async def test_errors_are_clear_tool_errors(client: Client[Any]) -> None:
    assert "invalid memory id" in await error(client, "get_memory", memory_id="42")
    assert "empty" in await error(client, "add_memories", text="   ")
    assert "limit is 32768 bytes" in await error(client, "add_memories", text="z" * 33_000)
    unknown = str(uuid.uuid4())
    assert f"no memory with id {unknown}" in await error(client, "get_memory", memory_id=unknown)
    assert "no memory with id" in await error(client, "update_memory", memory_id=unknown, text="x")
    assert "needs an LLM" in await error(client, "add_memories", text="jazz", infer=True)
    # schema validation by the MCP layer names the argument
    assert "limit" in await error(client, "search_memory", query="q", limit=0)
    assert "memory_ids" in await error(client, "delete_memories", memory_ids=[])


async def test_no_identity_is_refused(runtime: Runtime) -> None:
    async with Client(build_mcp(runtime.memories)) as c:
        result = await c.call_tool("list_memories", {}, raise_on_error=False)
    assert result.is_error and "no user" in str(result.content[0].text)


async def test_internal_errors_are_masked(runtime: Runtime) -> None:
    """A failure we did not foresee reaches the client without internals."""
    token = PROCESS_IDENTITY.set(Caller("dave", "claude-code"))
    try:
        async with Client(build_mcp(runtime.memories)) as c:
            await c.call_tool("add_memories", {"text": "first"})
            runtime.db.engine.dispose()
            runtime.vectors.close()  # the embedded store is gone: every vector call now fails
            result = await c.call_tool("search_memory", {"query": "first"}, raise_on_error=False)
    finally:
        PROCESS_IDENTITY.reset(token)
    text = str(result.content[0].text)
    assert result.is_error
    assert "Traceback" not in text and "qdrant" not in text.lower() and "/" not in text
