"""The server driven by the MCP Inspector CLI (``npx @modelcontextprotocol/inspector --cli``).

The Inspector is a second, independent MCP client implementation (TypeScript SDK): if it
can list, add, search, list and delete over both HTTP transports, so can other clients.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from .conftest import EXPECTED_TOOLS, Inspector, InspectorRun, Server

pytestmark = [pytest.mark.acceptance, pytest.mark.inspector]

FACT = "Our family dog Biscuit is afraid of thunderstorms and hides under the piano."
PARAPHRASE = "what scares my pet during bad weather"
TOOL_ERROR_EXIT = 5  # Inspector's exit code when a tool answers isError: true


def result_of(run: InspectorRun) -> dict[str, Any]:
    assert run.returncode == 0, (
        f"Inspector exit {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    )
    body = run.json()
    assert "result" in body, body
    result: dict[str, Any] = body["result"]
    return result


def structured(run: InspectorRun) -> dict[str, Any]:
    result = result_of(run)
    assert result["isError"] is False, result
    content: dict[str, Any] = result["structuredContent"]
    assert json.loads(result["content"][0]["text"]) == content
    return content


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_inspector_cli_drives_every_step(
    inspector: Inspector, server: Server, user_id: str, transport: str
) -> None:
    url = server.mcp_url("inspector", transport, user_id)

    def call(tool: str, *args: str) -> InspectorRun:
        return inspector(
            url,
            transport,
            "tools/call",
            "--tool-name",
            tool,
            *(a for arg in args for a in ("--tool-arg", arg)),
        )

    tools = result_of(inspector(url, transport, "tools/list"))["tools"]
    assert {tool["name"] for tool in tools} == EXPECTED_TOOLS
    by_name = {tool["name"]: tool for tool in tools}
    assert by_name["delete_memories"]["inputSchema"]["properties"]["memory_ids"]["type"] == "array"

    added = structured(call("add_memories", f"text={FACT}"))["results"]
    assert len(added) == 1
    memory = added[0]
    assert str(uuid.UUID(memory["id"])) == memory["id"]
    assert (memory["text"], memory["app"], memory["event"]) == (FACT, "inspector", "ADD")

    # key=value values are coerced by the Inspector: limit=3 arrives as a number.
    found = structured(call("search_memory", f"query={PARAPHRASE}", "limit=3"))["results"]
    assert found and found[0]["id"] == memory["id"] and found[0]["text"] == FACT
    assert isinstance(found[0]["score"], float)

    page = structured(call("list_memories"))
    assert page["total"] == 1 and [m["id"] for m in page["results"]] == [memory["id"]]

    # A tool error: Inspector exits with its tool-error code and prints the server's message.
    bad = call("get_memory", "memory_id=not-a-uuid")
    assert bad.returncode == TOOL_ERROR_EXIT, (bad.returncode, bad.stdout, bad.stderr)
    error = bad.json()["result"]
    assert error["isError"] is True
    assert "invalid memory id" in error["content"][0]["text"]
    assert "Traceback" not in bad.stdout + bad.stderr

    # An array argument: the value after `key=` is parsed as JSON.
    deleted = structured(call("delete_memories", f'memory_ids=["{memory["id"]}"]'))
    assert deleted == {"deleted": [memory["id"]], "not_found": []}

    assert structured(call("list_memories")) == {"results": [], "total": 0, "limit": 50, "offset": 0}
    assert structured(call("search_memory", f"query={PARAPHRASE}"))["results"] == []
