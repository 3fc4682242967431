"""The REST API under /api/v1 against real SQLite and PostgreSQL, in-process over ASGI."""

from __future__ import annotations

import gzip
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastmcp import Client

from memory_server.api.app import create_app
from memory_server.config import Settings
from memory_server.mcp.identity import PROCESS_IDENTITY
from memory_server.mcp.server import build_mcp
from memory_server.runtime import Runtime
from memory_server.services.memories import Caller

ALICE = {"X-User-Id": "alice"}
BOB = {"X-User-Id": "bob"}


@pytest.fixture
async def api(runtime: Runtime, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, runtime)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=ALICE) as client:
        yield client


async def add(api: httpx.AsyncClient, text: str, **extra: Any) -> dict[str, Any]:
    response = await api.post("/api/v1/memories", json={"text": text, **extra})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["results"][0]
    return result


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return str(body["error"]["code"])


async def test_create_get_update_delete(api: httpx.AsyncClient) -> None:
    memory = await add(
        api,
        "My landlord is called Mr Okafor",
        app="dashboard",
        metadata={"k": 1},
        memory_type="entity",
        importance=0.9,
    )
    assert (memory["app"], memory["memory_type"], memory["importance"]) == ("dashboard", "entity", 0.9)
    mid = memory["id"]

    got = (await api.get(f"/api/v1/memories/{mid}")).json()
    assert got["text"] == "My landlord is called Mr Okafor" and got["access_count"] == 1

    updated = await api.put(
        f"/api/v1/memories/{mid}", json={"text": "My landlord is Mrs Okafor", "importance": 0.4}
    )
    assert updated.json()["text"] == "My landlord is Mrs Okafor" and updated.json()["importance"] == 0.4
    meta_only = await api.put(f"/api/v1/memories/{mid}", json={"metadata": {"source": "lease"}})
    assert meta_only.json()["metadata"] == {"source": "lease"} and meta_only.json()["text"].endswith("Okafor")

    history = (await api.get(f"/api/v1/memories/{mid}/history")).json()
    assert [(h["kind"], h.get("version"), h.get("new_state")) for h in history] == [
        ("content", 1, None),
        ("state", None, "active"),
        ("content", 2, None),
    ]
    assert history[2]["text"] == "My landlord is Mrs Okafor"

    deleted = await api.delete(f"/api/v1/memories/{mid}")
    assert deleted.json() == {"deleted": [mid], "not_found": []}
    assert error_of(await api.get(f"/api/v1/memories/{mid}"), 404) == "not_found"
    assert (await api.get(f"/api/v1/memories/{mid}/history")).json()[-1]["new_state"] == "deleted"


async def test_messages_are_stored_one_memory_per_user_or_assistant_turn(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/api/v1/memories",
        json={
            "messages": [
                {"role": "system", "content": "be nice"},
                {"role": "user", "content": "I am vegetarian"},
                {"role": "assistant", "content": "Noted: you do not eat meat"},
            ]
        },
    )
    assert [m["text"] for m in response.json()["results"]] == [
        "I am vegetarian",
        "Noted: you do not eat meat",
    ]


async def test_list_pagination_filters_and_sorting(api: httpx.AsyncClient) -> None:
    a = await add(api, "Flight to Tokyo on 3 March", app="cursor", memory_type="short_term", importance=0.2)
    b = await add(api, "Favourite editor is Helix", app="vscode", importance=0.9)
    c = await add(api, "Dentist on Friday at noon", app="cursor", importance=0.5)
    await api.post("/api/v1/memories/actions/state", json={"action": "archive", "memory_ids": [c["id"]]})

    page = (await api.get("/api/v1/memories", params={"size": 2, "page": 1})).json()
    assert (
        page["total"] == 3 and page["pages"] == 2 and [m["id"] for m in page["items"]] == [c["id"], b["id"]]
    )
    page2 = (await api.get("/api/v1/memories", params={"size": 2, "page": 2})).json()
    assert [m["id"] for m in page2["items"]] == [a["id"]]

    def ids(response: httpx.Response) -> list[str]:
        assert response.status_code == 200, response.text
        return [m["id"] for m in response.json()["items"]]

    assert ids(await api.get("/api/v1/memories", params={"app": "cursor"})) == [c["id"], a["id"]]
    assert ids(await api.get("/api/v1/memories", params={"state": "active"})) == [b["id"], a["id"]]
    assert ids(
        await api.get("/api/v1/memories", params={"state": ["archived", "active"], "app": "cursor"})
    ) == [c["id"], a["id"]]
    assert ids(await api.get("/api/v1/memories", params={"memory_type": "short_term"})) == [a["id"]]
    assert ids(await api.get("/api/v1/memories", params={"q": "HELIX"})) == [b["id"]]
    assert ids(await api.get("/api/v1/memories", params={"sort": "-importance"})) == [
        b["id"],
        c["id"],
        a["id"],
    ]
    assert ids(await api.get("/api/v1/memories", params={"sort": "app"}))[-1] == b["id"]
    assert ids(await api.get("/api/v1/memories", params={"created_from": b["created_at"]})) == [
        c["id"],
        b["id"],
    ]
    assert ids(await api.get("/api/v1/memories", params={"created_to": b["created_at"]})) == [a["id"]]
    assert error_of(await api.get("/api/v1/memories", params={"sort": "colour"}), 422) == "validation_error"
    assert error_of(await api.get("/api/v1/memories", params={"size": 0}), 422) == "validation_error"


async def test_state_actions_by_ids_app_and_category(api: httpx.AsyncClient, runtime: Runtime) -> None:
    tea = await add(api, "I drink oolong tea every morning", app="cursor")
    code = await add(api, "I write Python code on a Linux laptop", app="vscode")
    runtime.categorizer.drain()

    paused = (
        await api.post("/api/v1/memories/actions/state", json={"action": "pause", "app": "cursor"})
    ).json()
    assert paused == {"state": "paused", "changed": [tea["id"]]}
    mcp_view = runtime.memories.search(Caller("alice", "claude"), "tea in the morning", limit=5).results
    assert tea["id"] not in [m.id for m in mcp_view]

    again = await api.post(
        "/api/v1/memories/actions/state", json={"action": "pause", "memory_ids": [tea["id"]]}
    )
    assert again.json()["changed"] == []  # already paused
    activated = await api.post(
        "/api/v1/memories/actions/state", json={"action": "activate", "memory_ids": [tea["id"]]}
    )
    assert activated.json()["changed"] == [tea["id"]]

    category = (await api.get(f"/api/v1/memories/{code['id']}")).json()["categories"][0]
    archived = await api.post(
        "/api/v1/memories/actions/state", json={"action": "archive", "category": category}
    )
    assert code["id"] in archived.json()["changed"]
    assert (await api.get(f"/api/v1/memories/{code['id']}")).json()["archived_at"] is not None

    both = await api.post(
        "/api/v1/memories/actions/state", json={"action": "pause", "app": "cursor", "category": "food"}
    )
    assert error_of(both, 400) == "invalid_input"
    assert error_of(
        await api.post("/api/v1/memories/actions/state", json={"action": "explode", "app": "x"}), 422
    )


async def test_delete_many_related_and_access_log(api: httpx.AsyncClient) -> None:
    cats = await add(api, "I have two cats, Miso and Tofu")
    vet = await add(api, "The cats' vet is on Elm Street")
    await add(api, "I am learning Portuguese")
    related = (await api.get(f"/api/v1/memories/{cats['id']}/related", params={"limit": 1})).json()["results"]
    assert [m["id"] for m in related] == [vet["id"]]

    for _ in range(3):
        await api.get(f"/api/v1/memories/{cats['id']}")
    log = (await api.get(f"/api/v1/memories/{cats['id']}/access-log", params={"size": 2})).json()
    assert log["total"] == 3 and len(log["items"]) == 2 and log["items"][0]["access_type"] == "get"

    unknown = str(uuid.uuid4())
    deleted = await api.request("DELETE", "/api/v1/memories", json={"memory_ids": [cats["id"], unknown]})
    assert deleted.json() == {"deleted": [cats["id"]], "not_found": [unknown]}
    assert error_of(await api.request("DELETE", "/api/v1/memories", json={"memory_ids": []}), 422)


async def test_search_route(api: httpx.AsyncClient) -> None:
    bike = await add(api, "My bike is a green Brompton")
    await add(api, "Sister's birthday is 9 May")
    found = (await api.post("/api/v1/memories/search", json={"query": "folding bicycle", "limit": 1})).json()
    assert [m["id"] for m in found["results"]] == [bike["id"]]


async def test_apps_pause_resume_and_counts(api: httpx.AsyncClient, runtime: Runtime) -> None:
    caller = Caller("alice", "claude-desktop")
    runtime.memories.add(caller, "Prefers answers in British English")
    await add(api, "Uses Linux at work", app="dashboard")
    runtime.memories.search(caller, "spelling", limit=1)

    apps = {a["name"]: a for a in (await api.get("/api/v1/apps")).json()}
    desktop = apps["claude-desktop"]
    assert desktop["memories_created"] == 1 and desktop["memories_accessed"] == 1 and desktop["is_active"]
    assert (await api.get(f"/api/v1/apps/{desktop['id']}")).json()["name"] == "claude-desktop"
    memories = (await api.get(f"/api/v1/apps/{desktop['id']}/memories")).json()
    assert [m["text"] for m in memories["items"]] == ["Prefers answers in British English"]

    paused = await api.put(f"/api/v1/apps/{desktop['id']}", json={"is_active": False})
    assert paused.json()["is_active"] is False
    token = PROCESS_IDENTITY.set(caller)
    try:
        async with Client(build_mcp(runtime.memories)) as mcp:
            refused = await mcp.call_tool("search_memory", {"query": "english"}, raise_on_error=False)
            assert refused.is_error and "paused" in str(refused.content[0].text)
            await api.put(f"/api/v1/apps/{desktop['id']}", json={"is_active": True})
            allowed = await mcp.call_tool("search_memory", {"query": "english"})
            assert not allowed.is_error
    finally:
        PROCESS_IDENTITY.reset(token)

    assert error_of(await api.get(f"/api/v1/apps/{uuid.uuid4()}"), 404) == "not_found"
    assert error_of(await api.get("/api/v1/apps/not-an-id"), 400) == "invalid_input"


async def test_stats_and_categories(api: httpx.AsyncClient, runtime: Runtime) -> None:
    await add(api, "I am allergic to penicillin", memory_type="rule")
    await add(api, "Quarterly planning meeting with my manager on Monday", app="cursor")
    gone = await add(api, "temporary note to delete")
    await api.delete(f"/api/v1/memories/{gone['id']}")
    runtime.categorizer.drain()

    stats = (await api.get("/api/v1/stats")).json()
    assert stats["total"] == 2 and stats["by_state"] == {"active": 2, "deleted": 1}
    assert stats["by_app"] == {"default": 1, "cursor": 1}
    assert stats["by_memory_type"] == {"rule": 1, "long_term": 1}
    categories = {c["name"]: c for c in (await api.get("/api/v1/categories")).json()}
    assert {"personal", "work", "health", "travel"} <= set(categories)
    assert categories["health"]["memories"] == 1 and categories["work"]["memories"] == 1
    assert sum(stats["by_category"].values()) == sum(c["memories"] for c in categories.values())


async def test_errors_have_one_shape(api: httpx.AsyncClient, runtime: Runtime) -> None:
    assert error_of(await api.get("/api/v1/memories/nope"), 400) == "invalid_input"
    assert error_of(await api.get(f"/api/v1/memories/{uuid.uuid4()}"), 404) == "not_found"
    assert error_of(await api.post("/api/v1/memories", json={"text": ""}), 400) == "invalid_input"
    assert error_of(await api.post("/api/v1/memories", json={}), 400) == "invalid_input"
    assert error_of(await api.post("/api/v1/memories", json={"text": "x", "importance": 7}), 422)
    assert (
        error_of(await api.post("/api/v1/memories", json={"text": "y" * 40_000}), 413) == "payload_too_large"
    )
    assert (
        error_of(await api.get("/api/v1/memories", headers={"X-User-Id": "bad user"}), 400) == "invalid_input"
    )
    huge = {"text": "z", "metadata": {"blob": "q" * (runtime.settings.max_request_bytes + 10)}}
    assert error_of(await api.post("/api/v1/memories", json=huge), 413) == "payload_too_large"
    assert error_of(await api.get("/api/v1/nothing-here"), 404) == "not_found"
    first = await add(api, "Unique sentence about a red kite")
    second = await add(api, "Another sentence about an owl")
    clash = await api.put(
        f"/api/v1/memories/{second['id']}", json={"text": "Unique sentence about a red kite"}
    )
    assert error_of(clash, 409) == "conflict" and first["id"] in clash.json()["error"]["message"]


async def test_another_user_can_reach_nothing(api: httpx.AsyncClient, runtime: Runtime) -> None:
    """Every route, tried by bob with alice's ids, fails or shows nothing, and changes nothing."""
    mine = await add(api, "Alice's locker code is 4512", app="cursor")
    runtime.categorizer.drain()
    alice_app = (await api.get("/api/v1/apps")).json()[0]
    before = (await api.get(f"/api/v1/memories/{mine['id']}")).json()
    mid, app_id = mine["id"], alice_app["id"]

    attempts = [
        ("GET", f"/api/v1/memories/{mid}", None, 404),
        ("PUT", f"/api/v1/memories/{mid}", {"text": "bob was here"}, 404),
        ("DELETE", f"/api/v1/memories/{mid}", None, 404),
        ("DELETE", "/api/v1/memories", {"memory_ids": [mid]}, 404),
        ("GET", f"/api/v1/memories/{mid}/history", None, 404),
        ("GET", f"/api/v1/memories/{mid}/access-log", None, 404),
        ("GET", f"/api/v1/memories/{mid}/related", None, 404),
        ("POST", "/api/v1/memories/actions/state", {"action": "archive", "memory_ids": [mid]}, 404),
        ("GET", f"/api/v1/apps/{app_id}", None, 404),
        ("PUT", f"/api/v1/apps/{app_id}", {"is_active": False}, 404),
        ("GET", f"/api/v1/apps/{app_id}/memories", None, 404),
    ]
    for method, path, body, status in attempts:
        response = await api.request(method, path, json=body, headers=BOB)
        assert response.status_code == status, (method, path, response.text)

    empty_views = [
        await api.get("/api/v1/memories", headers=BOB),
        await api.get("/api/v1/memories", params={"app": "cursor"}, headers=BOB),
    ]
    assert all(r.json()["total"] == 0 for r in empty_views)
    assert (await api.post("/api/v1/memories/search", json={"query": "locker code"}, headers=BOB)).json() == {
        "results": []
    }
    by_app = await api.post(
        "/api/v1/memories/actions/state", json={"action": "pause", "app": "cursor"}, headers=BOB
    )
    assert by_app.json()["changed"] == []
    bob_stats = (await api.get("/api/v1/stats", headers=BOB)).json()
    assert bob_stats["total"] == 0 and bob_stats["by_app"] == {}
    assert all(c["memories"] == 0 for c in (await api.get("/api/v1/categories", headers=BOB)).json())
    assert "cursor" not in {a["name"] for a in (await api.get("/api/v1/apps", headers=BOB)).json()}
    exported = await api.post("/api/v1/backup/export", json={"vectors": True}, headers=BOB)
    assert exported.status_code == 200 and b"locker" not in gzip.decompress(exported.content)
    # alice's own export, imported by bob, lands nowhere near alice: the ids are hers, so they are skipped
    mine_exported = (await api.post("/api/v1/backup/export", json={})).content
    imported = await api.post("/api/v1/backup/import", content=mine_exported, headers=BOB)
    assert imported.json()["added"] == 0 and imported.json()["skipped"] == {mid: "the id is already in use"}

    after = (await api.get(f"/api/v1/memories/{mid}")).json()
    assert (after["text"], after["state"], after["updated_at"]) == (
        before["text"],
        before["state"],
        before["updated_at"],
    )
    assert (await api.get(f"/api/v1/apps/{app_id}")).json()["is_active"] is True
