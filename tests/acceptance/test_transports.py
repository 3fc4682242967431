"""The server as MCP clients see it: the official ``mcp`` SDK over streamable HTTP, SSE and stdio.

Every test runs against a real ``memory-server`` process (see conftest.py) and uses its own
user ids, so the tests share a server but no data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client

from .conftest import EXPECTED_TOOLS, Server, child_env, register_log, server_command

pytestmark = pytest.mark.acceptance

FACT = "My grandmother Ingrid grows blue hydrangeas next to her lighthouse on the island of Gotland."
PARAPHRASE = "which flowers does my granny plant near the lighthouse"
DISTRACTORS = [
    "I renewed my car insurance with a new provider in March.",
    "The quarterly tax report for the bakery is due on Friday.",
]
JSONRPC_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
LEGACY_PROTOCOL = "2025-11-25"


# ------------------------------------------------------------------ helpers


def structured(result: Any) -> dict[str, Any]:
    """The structured content of a successful tool result, checked against its text content."""
    assert not result.is_error, f"tool error: {text_of(result)}"
    content = result.structured_content
    assert isinstance(content, dict), f"no structured content in {result!r}"
    assert json.loads(text_of(result)) == content, "text content and structured content disagree"
    return content


def text_of(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


def tool_error(result: Any) -> str:
    """The message of a tool error; fails if the call succeeded or leaks internals."""
    message = text_of(result)
    assert result.is_error, f"expected a tool error, got {result.structured_content!r}"
    assert message.strip(), "tool error without a message"
    assert "Traceback" not in message and 'File "' not in message, f"internals leaked: {message}"
    return message


def assert_uuid(value: Any) -> str:
    assert isinstance(value, str)
    assert str(uuid.UUID(value)) == value, f"{value!r} is not a canonical UUID string"
    return value


async def list_tools(client: Client) -> set[str]:
    return {tool.name for tool in (await client.list_tools()).tools}


async def add(client: Client, text: str, app: str) -> dict[str, Any]:
    content = structured(await client.call_tool("add_memories", {"text": text}))
    assert len(content["results"]) == 1, content
    item: dict[str, Any] = content["results"][0]
    assert_uuid(item["id"])
    assert item["text"] == text
    assert item["event"] == "ADD"
    assert item["app"] == app
    assert item["state"] == "active"
    return item


async def listing(client: Client) -> dict[str, Any]:
    return structured(await client.call_tool("list_memories", {}))


async def search(client: Client, query: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = structured(await client.call_tool("search_memory", {"query": query}))[
        "results"
    ]
    return results


async def full_lifecycle(client: Client, app: str) -> None:
    """The whole tool surface as an assistant would use it, with exact checks at every step."""
    assert await list_tools(client) == EXPECTED_TOOLS

    item = await add(client, FACT, app)
    memory_id = item["id"]

    results = await search(client, PARAPHRASE)
    assert results, "the paraphrased query found nothing"
    top = results[0]
    assert top["id"] == memory_id
    assert top["text"] == FACT
    assert top["app"] == app
    assert isinstance(top["score"], float)
    assert top["event"] is None

    page = await listing(client)
    assert page["total"] == 1
    assert [(m["id"], m["text"], m["app"]) for m in page["results"]] == [(memory_id, FACT, app)]

    got = structured(await client.call_tool("get_memory", {"memory_id": memory_id}))
    assert (got["id"], got["text"], got["app"], got["state"]) == (memory_id, FACT, app, "active")
    assert got["score"] is None

    deleted = structured(await client.call_tool("delete_memories", {"memory_ids": [memory_id]}))
    assert deleted == {"deleted": [memory_id], "not_found": []}

    assert await search(client, PARAPHRASE) == []
    page = await listing(client)
    assert page["total"] == 0 and page["results"] == []
    assert "no memory" in tool_error(await client.call_tool("get_memory", {"memory_id": memory_id}))


def parse_rpc(response: httpx.Response) -> dict[str, Any]:
    """A JSON-RPC message from a streamable-HTTP response (plain JSON or one SSE event)."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:"):
                message: dict[str, Any] = json.loads(line[5:].strip())
                return message
        raise AssertionError(f"no data in SSE response: {response.text!r}")
    body: dict[str, Any] = response.json()
    return body


def rpc_call(request_id: int, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": LEGACY_PROTOCOL,
        "capabilities": {},
        "clientInfo": {"name": "acceptance-replay", "version": "0"},
    },
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def assert_rejected(response: httpx.Response) -> None:
    """A replayed request must fail at the HTTP or JSON-RPC level, never reach a tool."""
    if response.status_code >= 400:
        assert response.status_code < 500, f"server error instead of a rejection: {response.text}"
        return
    body = parse_rpc(response)
    assert "error" in body and "result" not in body, f"replayed request was served: {body}"


@asynccontextmanager
async def sdk(server: Server, client: str, user: str, transport: str = "http") -> AsyncIterator[Client]:
    url = server.mcp_url(client, transport, user)
    target: Any = sse_client(url) if transport == "sse" else url
    async with Client(target, mode="legacy" if transport == "sse" else "auto") as session:
        yield session


# ------------------------------------------------------------------ 1. each transport, whole tool surface


@pytest.mark.parametrize("mode", ["auto", "legacy"])
@pytest.mark.parametrize("slash", ["", "/"], ids=["no-slash", "slash"])
async def test_streamable_http_lifecycle(server: Server, user_id: str, slash: str, mode: str) -> None:
    url = server.mcp_url("acc-http", "http", user_id) + slash
    async with Client(url, mode=mode) as client:
        await full_lifecycle(client, "acc-http")


@pytest.mark.parametrize("mode", ["legacy", "auto"])
@pytest.mark.parametrize("slash", ["", "/"], ids=["no-slash", "slash"])
async def test_sse_lifecycle(server: Server, user_id: str, slash: str, mode: str) -> None:
    url = server.mcp_url("acc-sse", "sse", user_id) + slash
    async with Client(sse_client(url), mode=mode) as client:
        await full_lifecycle(client, "acc-sse")


def stop_background_server(data_dir: Path) -> None:
    """Stop the server a bridged stdio client started for ``data_dir`` (it outlives its clients)."""
    server_file = data_dir / "server.json"
    if server_file.is_file():
        with contextlib.suppress(ProcessLookupError, ValueError, KeyError):
            os.kill(int(json.loads(server_file.read_text())["pid"]), signal.SIGTERM)
        deadline = time.monotonic() + 20
        while server_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)


def stdio_params(data_dir: Path, model_dir: Path, workdir: Path, user: str, client: str, *flags: str) -> Any:
    command = server_command()
    return StdioServerParameters(
        command=command[0],
        args=[*command[1:], "stdio", "--user", user, "--client", client, *flags],
        env=child_env(data_dir, model_dir),
        cwd=workdir,
    )


@pytest.mark.parametrize("mode", ["bridged", "standalone"])
async def test_stdio_lifecycle(tmp_path: Path, acceptance_model_dir: Path, user_id: str, mode: str) -> None:
    # A data dir of its own: embedded Qdrant allows one process per data dir.
    data_dir, workdir = tmp_path / "stdio-data", tmp_path / "stdio-cwd"
    workdir.mkdir()
    log_path = tmp_path / "stdio.log"
    register_log(log_path)
    register_log(data_dir / "serve.log")
    flags = ["--standalone"] if mode == "standalone" else []
    params = stdio_params(data_dir, acceptance_model_dir, workdir, user_id, "acc-stdio", *flags)
    try:
        with log_path.open("w") as errlog:
            async with Client(stdio_client(params, errlog=errlog)) as client:
                await full_lifecycle(client, "acc-stdio")
        assert (data_dir / "memory.db").is_file(), "stdio server did not use its MEMORY_DATA_DIR"
        assert (data_dir / "server.json").is_file() == (mode == "bridged")
    finally:
        stop_background_server(data_dir)


async def test_three_stdio_clients_share_one_data_dir(tmp_path: Path, acceptance_model_dir: Path) -> None:
    """Claude Desktop, Claude Code and Cursor at once on one data dir: no embedded-store lock errors."""
    data_dir, workdir = tmp_path / "shared-data", tmp_path / "shared-cwd"
    workdir.mkdir()
    register_log(data_dir / "serve.log")
    user = f"shared-{uuid.uuid4().hex[:8]}"
    clients = ["claude-desktop", "claude-code", "cursor"]

    async def one(client_name: str) -> set[str]:
        params = stdio_params(data_dir, acceptance_model_dir, workdir, user, client_name)
        with (tmp_path / f"{client_name}.log").open("w") as errlog:
            async with Client(stdio_client(params, errlog=errlog)) as client:
                text = f"{client_name} noted: my favourite {client_name.split('-')[-1]} shortcut is ctrl-k"
                added = await client.call_tool("add_memories", {"text": text, "infer": False})
                assert not added.is_error, added.content
                await asyncio.sleep(1.0)  # let the others write too before reading
                for _ in range(50):
                    listed = (await client.call_tool("list_memories", {})).structured_content
                    assert listed is not None
                    apps = {m["app"] for m in listed["results"]}
                    if apps == set(clients):
                        return apps
                    await asyncio.sleep(0.2)
                return apps

    try:
        seen = await asyncio.gather(*(one(name) for name in clients))
    finally:
        stop_background_server(data_dir)
    assert all(apps == set(clients) for apps in seen), seen


async def test_search_ranks_the_matching_memory_first(server: Server, user_id: str) -> None:
    async with sdk(server, "acc-rank", user_id) as client:
        for text in DISTRACTORS:
            await add(client, text, "acc-rank")
        wanted = await add(client, FACT, "acc-rank")
        results = await search(client, PARAPHRASE)
        assert [r["id"] for r in results][:1] == [wanted["id"]]
        # Unrelated memories may fall under the minimum score (SEARCH_MIN_SCORE, default 0).
        assert 1 <= len(results) <= 3
        scores = [r["score"] for r in results]
        assert all(isinstance(s, float) for s in scores)
        assert scores == sorted(scores, reverse=True)
        # A memory is shared by the user's apps; `app` records which one stored it.
    async with sdk(server, "acc-other-app", user_id, "sse") as other_app:
        page = await listing(other_app)
        assert page["total"] == 3
        assert {m["app"] for m in page["results"]} == {"acc-rank"}


# ------------------------------------------------------------------ 2. users are isolated


async def test_users_cannot_see_or_touch_each_others_memories(
    server: Server, user_id: str, other_user_id: str
) -> None:
    async with sdk(server, "acc-iso", user_id) as alice:
        memory = await add(alice, FACT, "acc-iso")
    memory_id = memory["id"]

    for transport in ("http", "sse"):
        async with sdk(server, "acc-iso", other_user_id, transport) as bob:
            assert await search(bob, PARAPHRASE) == []
            assert await search(bob, FACT) == []
            page = await listing(bob)
            assert page["total"] == 0 and page["results"] == []
            assert "no memory" in tool_error(await bob.call_tool("get_memory", {"memory_id": memory_id}))
            assert "no memory" in tool_error(
                await bob.call_tool("update_memory", {"memory_id": memory_id, "text": "Bob was here."})
            )
            result = await bob.call_tool("delete_memories", {"memory_ids": [memory_id]})
            if result.is_error:
                assert memory_id in tool_error(result)
            else:
                assert structured(result) == {"deleted": [], "not_found": [memory_id]}
            cleared = structured(await bob.call_tool("delete_all_memories", {}))
            assert cleared["deleted"] == []

    async with sdk(server, "acc-iso", user_id, "sse") as alice:
        got = structured(await alice.call_tool("get_memory", {"memory_id": memory_id}))
        assert (got["text"], got["state"], got["updated_at"]) == (FACT, "active", memory["updated_at"])
        page = await listing(alice)
        assert page["total"] == 1 and page["results"][0]["id"] == memory_id
        assert (await search(alice, PARAPHRASE))[0]["id"] == memory_id


# ------------------------------------------------------------------ 3. a session is pinned to its path


async def test_streamable_http_session_cannot_be_replayed_on_another_path(
    server: Server, user_id: str, other_user_id: str
) -> None:
    own_path = f"/mcp/acc-pin/http/{user_id}"
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        response = await http.post(own_path, json=INITIALIZE, headers=JSONRPC_HEADERS)
        assert response.status_code == 200, response.text
        assert "result" in parse_rpc(response)
        session_id = response.headers["mcp-session-id"]
        headers = {**JSONRPC_HEADERS, "mcp-session-id": session_id, "mcp-protocol-version": LEGACY_PROTOCOL}
        response = await http.post(own_path, json=INITIALIZED, headers=headers)
        assert response.status_code in (200, 202), response.text

        response = await http.post(
            own_path, json=rpc_call(2, "add_memories", {"text": FACT}), headers=headers
        )
        added = parse_rpc(response)["result"]["structuredContent"]["results"][0]
        assert added["text"] == FACT

        foreign_paths = [
            f"/mcp/acc-pin/http/{other_user_id}",
            f"/mcp/acc-pin/http/{other_user_id}/",
            f"/mcp/acc-pin-other/http/{user_id}",  # same user, another client name
        ]
        for n, path in enumerate(foreign_paths):
            assert_rejected(
                await http.post(path, json=rpc_call(10 + n, "list_memories", {}), headers=headers)
            )
            replay = rpc_call(20 + n, "add_memories", {"text": f"Replayed write number {n} into {path}."})
            assert_rejected(await http.post(path, json=replay, headers=headers))

        # The session itself still works on its own path (with or without the slash).
        response = await http.post(own_path + "/", json=rpc_call(3, "list_memories", {}), headers=headers)
        page = parse_rpc(response)["result"]["structuredContent"]
        assert page["total"] == 1 and page["results"][0]["id"] == added["id"]

    async with sdk(server, "acc-pin", other_user_id) as bob:
        assert (await listing(bob))["total"] == 0
    async with sdk(server, "acc-pin", user_id) as alice:
        page = await listing(alice)
        assert [(m["id"], m["text"]) for m in page["results"]] == [(added["id"], FACT)]


async def test_sse_session_cannot_be_replayed_on_another_path(
    server: Server, user_id: str, other_user_id: str
) -> None:
    async with sdk(server, "acc-pin-sse", user_id) as alice:
        original = await add(alice, FACT, "acc-pin-sse")

    async with (
        httpx.AsyncClient(base_url=server.base_url, timeout=30) as http,
        http.stream("GET", f"/mcp/acc-pin-sse/sse/{user_id}") as stream,
    ):
        assert stream.status_code == 200
        lines = stream.aiter_lines()
        seen_ids: list[Any] = []

        async def next_data(event_id: int | None = None) -> str:
            with anyio.fail_after(30):
                async for line in lines:
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if event_id is None:
                        return data
                    seen_ids.append(json.loads(data).get("id"))
                    if seen_ids[-1] == event_id:
                        return data
            raise AssertionError("SSE stream ended")

        endpoint = await next_data()
        own_prefix = f"/mcp/acc-pin-sse/sse/{user_id}/messages/"
        assert endpoint.startswith(own_prefix + "?session_id="), endpoint
        assert (await http.post(endpoint, json=INITIALIZE)).status_code == 202
        assert "result" in json.loads(await next_data(1))
        assert (await http.post(endpoint, json=INITIALIZED)).status_code == 202

        query = endpoint[len(own_prefix) :]
        foreign = [
            f"/mcp/acc-pin-sse/sse/{other_user_id}/messages/{query}",
            f"/mcp/acc-pin-sse-other/sse/{user_id}/messages/{query}",
        ]
        for n, path in enumerate(foreign):
            response = await http.post(path, json=rpc_call(10 + n, "list_memories", {}))
            assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
            replay = rpc_call(20 + n, "add_memories", {"text": f"Replayed SSE write number {n}."})
            response = await http.post(path, json=replay)
            assert 400 <= response.status_code < 500, (path, response.status_code, response.text)

        # The session still serves its own user on its own path.
        assert (await http.post(endpoint, json=rpc_call(3, "list_memories", {}))).status_code == 202
        answer = json.loads(await next_data(3))
        assert seen_ids[-1] == 3 and set(seen_ids) <= {1, 3}, f"replayed requests were answered: {seen_ids}"
        page = answer["result"]["structuredContent"]
        assert [(m["id"], m["text"]) for m in page["results"]] == [(original["id"], FACT)]

    async with sdk(server, "acc-pin-sse", other_user_id) as bob:
        assert (await listing(bob))["total"] == 0
    async with sdk(server, "acc-pin-sse", user_id, "sse") as alice:
        page = await listing(alice)
        assert [(m["id"], m["text"]) for m in page["results"]] == [(original["id"], FACT)]


# ------------------------------------------------------------------ 4. bad path parameters


@pytest.mark.parametrize(
    ("client_name", "user"),
    [
        ("acc-path", "bad%20user"),
        ("acc-path", "u" * 200),
        ("acc@path", "valid-user"),
        ("acc-path", ".hidden"),
    ],
    ids=["space-in-user", "200-char-user", "at-in-client", "dot-first"],
)
@pytest.mark.parametrize("transport", ["http", "sse"])
def test_invalid_path_parameters_are_rejected_with_400(
    server: Server, client_name: str, user: str, transport: str
) -> None:
    path = f"{server.base_url}/mcp/{client_name}/{transport}/{user}"
    for method in ("GET", "POST"):
        response = httpx.request(method, path, json=INITIALIZE, headers=JSONRPC_HEADERS, timeout=10)
        assert response.status_code == 400, (method, response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
        assert body["error"]["code"] == "invalid_input"
        field = "client name" if "@" in client_name else "user id"
        assert field in body["error"]["message"]


async def test_unusual_valid_user_ids_work_and_stay_apart(server: Server) -> None:
    tag = uuid.uuid4().hex[:8]
    users = [f"Mixed.Case+{tag}@Example.com", f"mixed.case+{tag}@example.com", f"{tag}{'x' * 120}"]
    assert len(users[2]) == 128
    ids = {}
    for user in users:
        async with sdk(server, "acc-ids", user, "sse") as client:
            ids[user] = (await add(client, f"The favourite tea of {user} is smoky lapsang.", "acc-ids"))["id"]
    for user in users:
        async with sdk(server, "acc-ids", user) as client:
            page = await listing(client)
            assert [m["id"] for m in page["results"]] == [ids[user]], f"{user} sees {page}"


# ------------------------------------------------------------------ 5. errors are clear, internals masked


async def test_tool_errors_are_clear_and_masked(server: Server, user_id: str) -> None:
    async with sdk(server, "acc-errors", user_id) as client:
        message = tool_error(await client.call_tool("get_memory", {"memory_id": "not-a-uuid"}))
        assert "invalid memory id" in message and "not-a-uuid" in message

        for text in ("", "   \n"):
            message = tool_error(await client.call_tool("add_memories", {"text": text}))
            assert "empty" in message

        message = tool_error(await client.call_tool("add_memories", {"text": "x" * 40_000}))
        assert "bytes" in message or "too" in message.lower()

        message = tool_error(await client.call_tool("delete_memories", {"memory_ids": ["also-not-a-uuid"]}))
        assert "invalid memory id" in message

        message = tool_error(
            await client.call_tool("update_memory", {"memory_id": str(uuid.uuid4()), "text": "New text."})
        )
        assert "no memory" in message

        # Schema violations are caught before the service runs.
        tool_error(await client.call_tool("delete_memories", {"memory_ids": []}))
        tool_error(await client.call_tool("search_memory", {"query": "anything", "limit": 0}))

        # Nothing was stored by any of the failed calls.
        assert (await listing(client))["total"] == 0


# ------------------------------------------------------------------ 6. operations endpoints


def _tool_calls(metrics_text: str, tool: str, outcome: str) -> float:
    pattern = re.compile(r"^memory_server_mcp_tool_calls_total\{([^}]*)\} (\S+)$", re.MULTILINE)
    for labels, value in pattern.findall(metrics_text):
        if f'tool="{tool}"' in labels and f'outcome="{outcome}"' in labels:
            return float(value)
    return 0.0


async def test_health_metrics_and_docs(server: Server, user_id: str) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        health = await http.get("/health")
        assert health.status_code == 200
        body = health.json()
        assert body["status"] == "ok"
        assert isinstance(body["version"], str) and body["version"]
        assert {name: c["status"] for name, c in body["components"].items()} == {
            "database": "ok",
            "vector_store": "ok",
            "embedder": "ok",
        }

        before = (await http.get("/metrics")).text
        async with sdk(server, "acc-metrics", user_id) as client:
            await add(client, FACT, "acc-metrics")
            tool_error(await client.call_tool("get_memory", {"memory_id": "not-a-uuid"}))
        metrics = await http.get("/metrics")
        assert metrics.status_code == 200
        after = metrics.text
        assert re.search(
            r'^memory_server_mcp_tool_calls_total\{[^}]*tool="add_memories"[^}]*\} ', after, re.MULTILINE
        )
        assert _tool_calls(after, "add_memories", "ok") == _tool_calls(before, "add_memories", "ok") + 1
        assert _tool_calls(after, "get_memory", "error") == _tool_calls(before, "get_memory", "error") + 1

        docs = await http.get("/docs")
        assert docs.status_code == 200
        assert "swagger" in docs.text.lower()
        schema = await http.get("/openapi.json")
        assert schema.status_code == 200
        assert "/health" in schema.json()["paths"]
