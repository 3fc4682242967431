"""With authentication on, one user can neither read, change nor delete another's memories.

Every REST route and every MCP tool (over a real HTTP server and the official ``mcp``
SDK client) is tried by bob against alice's memory: by id, by alice's path or header,
and by reusing a session; each attempt fails, and alice's memory is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from memory_server.api.app import create_app
from memory_server.config import Settings, load_settings
from memory_server.runtime import Runtime
from tests.fakes.server import serve_in_thread

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
JSONRPC = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'isolation.db'}"


@pytest.fixture
def server(runtime: Runtime, settings: Settings) -> Iterator[str]:
    secured = load_settings(
        data_dir=settings.data_dir,
        database_url=settings.database_url,
        embedding_model_dir=settings.embedding_model_dir,
        auth_mode="token",
    )
    with serve_in_thread(create_app(secured, runtime), lifespan="on") as url:
        yield url


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def mcp_client(url: str, token: str) -> Client:
    http = create_mcp_http_client(headers=bearer(token))
    return Client(streamable_http_client(url, http_client=http))


async def test_bob_reaches_nothing_of_alice(server: str, runtime: Runtime) -> None:
    _, alice = runtime.tokens.create("alice")
    _, bob = runtime.tokens.create("bob")
    async with httpx.AsyncClient(base_url=server, headers=bearer(alice), timeout=30) as api:
        mid = (
            await api.post("/api/v1/memories", json={"text": "Alice's locker code is 4512", "app": "cursor"})
        ).json()["results"][0]["id"]
        runtime.categorizer.drain()
        app_id = (await api.get("/api/v1/apps")).json()[0]["id"]
        before = (await api.get(f"/api/v1/memories/{mid}")).json()

    by_id: list[tuple[str, str, Any]] = [
        ("GET", f"/api/v1/memories/{mid}", None),
        ("PUT", f"/api/v1/memories/{mid}", {"text": "bob was here"}),
        ("DELETE", f"/api/v1/memories/{mid}", None),
        ("DELETE", "/api/v1/memories", {"memory_ids": [mid]}),
        ("GET", f"/api/v1/memories/{mid}/history", None),
        ("GET", f"/api/v1/memories/{mid}/access-log", None),
        ("GET", f"/api/v1/memories/{mid}/related", None),
        ("POST", "/api/v1/memories/actions/state", {"action": "archive", "memory_ids": [mid]}),
        ("GET", f"/api/v1/apps/{app_id}", None),
        ("PUT", f"/api/v1/apps/{app_id}", {"is_active": False}),
        ("GET", f"/api/v1/apps/{app_id}/memories", None),
    ]
    views: list[tuple[str, str, Any]] = [
        ("GET", "/api/v1/memories", None),
        ("POST", "/api/v1/memories/search", {"query": "locker code"}),
        ("GET", "/api/v1/apps", None),
        ("GET", "/api/v1/stats", None),
        ("GET", "/api/v1/categories", None),
        ("POST", "/api/v1/backup/export", {}),
        ("POST", "/api/v1/memories", {"text": "Bob's own note"}),
    ]
    async with httpx.AsyncClient(base_url=server, headers=bearer(bob), timeout=30) as api:
        for method, path, body in by_id:
            response = await api.request(method, path, json=body)
            assert response.status_code == 404, (method, path, response.text)
        for method, path, body in by_id + views:
            # naming alice in the header is refused outright, whatever the route
            response = await api.request(method, path, json=body, headers={"X-User-Id": "alice"})
            assert response.status_code == 403, (method, path, response.text)
            response = await api.request(method, path, json=body, headers={"Authorization": ""})
            assert response.status_code == 401, (method, path, response.text)
        assert (await api.get("/api/v1/memories")).json()["total"] == 0
        assert (await api.post("/api/v1/memories/search", json={"query": "locker code"})).json()[
            "results"
        ] == []
        state = await api.post("/api/v1/memories/actions/state", json={"action": "pause", "app": "cursor"})
        assert state.json()["changed"] == []
        assert (await api.get("/api/v1/stats")).json()["total"] == 0
        assert (
            "alice" not in (await api.post("/api/v1/backup/export", json={})).headers["content-disposition"]
        )
        for path in ("/api/v1/admin/users", "/api/v1/admin/users/alice/memories", "/api/v1/slack/status"):
            assert (await api.get(path)).status_code == 403, path
        # alice's MCP paths, both transports, with bob's credential (header or query)
        for transport in ("http", "sse"):
            response = await api.post(f"/mcp/cursor/{transport}/alice", json=INITIALIZE, headers=JSONRPC)
            assert response.status_code == 403
            response = await api.get(f"/mcp/cursor/{transport}/alice", params={"token": bob}, headers={})
            assert response.status_code == 403

    # every MCP tool, as bob on his own path, with alice's id
    async with mcp_client(f"{server}/mcp/cursor/http/bob", bob) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        calls = {
            "get_memory": {"memory_id": mid},
            "update_memory": {"memory_id": mid, "text": "bob was here"},
            "delete_memories": {"memory_ids": [mid]},
            "search_memory": {"query": "locker code"},
            "list_memories": {},
            "add_memories": {"text": "Bob likes chess"},
            "delete_all_memories": {},
        }
        assert set(calls) == tools
        for name, args in calls.items():
            result = await client.call_tool(name, args)
            content = result.structured_content or {}
            if name in ("get_memory", "update_memory"):
                assert result.is_error, name
            elif name == "delete_memories":
                assert result.is_error or (content["deleted"] == [] and content["not_found"] == [mid])
            elif name in ("search_memory", "list_memories"):
                assert all(r["id"] != mid for r in content["results"]), name
            elif name == "delete_all_memories":
                assert mid not in content["deleted"]

    # session reuse: bob's streamable-HTTP session on alice's path, with either credential
    async with httpx.AsyncClient(base_url=server, timeout=30) as http:
        started = await http.post("/mcp/cursor/http/bob", json=INITIALIZE, headers={**JSONRPC, **bearer(bob)})
        session = started.headers["mcp-session-id"]
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "list_memories"}}
        for token, status in ((bob, {403}), (alice, {400, 404})):
            reused = await http.post(
                "/mcp/cursor/http/alice",
                json=call,
                headers={**JSONRPC, **bearer(token), "mcp-session-id": session},
            )
            assert reused.status_code in status, reused.text
            assert "locker" not in reused.text

    async with httpx.AsyncClient(base_url=server, headers=bearer(alice), timeout=30) as api:
        after = (await api.get(f"/api/v1/memories/{mid}")).json()
        assert (after["text"], after["state"], after["updated_at"]) == (
            before["text"],
            before["state"],
            before["updated_at"],
        )
        assert (await api.get(f"/api/v1/apps/{app_id}")).json()["is_active"] is True
