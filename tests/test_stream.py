"""GET /api/v1/memories/stream over a real HTTP server: change events in order, per user, across replicas."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from memory_server.api.app import create_app
from memory_server.config import Settings, load_settings
from memory_server.runtime import Runtime
from memory_server.storage.embeddings import FastEmbedEmbedder
from tests.fakes.server import serve_in_thread


async def read_events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Parse an SSE body into (event, data) pairs."""
    event, data = "message", ""
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data += line.split(":", 1)[1].strip()
        elif line == "" and data:
            yield event, json.loads(data)
            event, data = "message", ""


async def collect(url: str, user: str, count: int, ready: asyncio.Event) -> list[tuple[str, dict[str, Any]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream("GET", f"{url}/api/v1/memories/stream", headers={"X-User-Id": user}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for event, data in read_events(response):
            if event == "ready":
                ready.set()
                continue
            seen.append((event, data))
            if len(seen) == count:
                return seen
    return seen


@pytest.fixture
def server(runtime: Runtime, settings: Settings) -> Iterator[str]:
    with serve_in_thread(create_app(settings, runtime), lifespan="on") as url:
        yield url


async def test_events_arrive_in_order_for_their_user_only(server: str) -> None:
    ready, other_ready = asyncio.Event(), asyncio.Event()
    alice_task = asyncio.create_task(collect(server, "alice", 4, ready))
    bob_task = asyncio.create_task(collect(server, "bob", 1, other_ready))
    await asyncio.wait_for(asyncio.gather(ready.wait(), other_ready.wait()), 15)

    async with httpx.AsyncClient(base_url=server, headers={"X-User-Id": "alice"}, timeout=30) as api:
        mid = (await api.post("/api/v1/memories", json={"text": "The boiler was serviced in May"})).json()[
            "results"
        ][0]["id"]
        await api.put(f"/api/v1/memories/{mid}", json={"text": "The boiler was serviced in June"})
        await api.post("/api/v1/memories/actions/state", json={"action": "archive", "memory_ids": [mid]})
        await api.delete(f"/api/v1/memories/{mid}")
        await api.post("/api/v1/memories", json={"text": "bob's note"}, headers={"X-User-Id": "bob"})

    events = await asyncio.wait_for(alice_task, 15)
    assert [(e, d["memory_ids"]) for e, d in events] == [
        ("add", [mid]),
        ("update", [mid]),
        ("state", [mid]),
        ("delete", [mid]),
    ]
    assert events[1][1]["data"]["fields"] == ["content", "content_hash"]
    assert events[2][1]["data"]["state"] == "archived"
    assert all(d["user_id"] == "alice" for _, d in events)
    [(bob_event, bob_data)] = await asyncio.wait_for(bob_task, 15)
    assert bob_event == "add" and bob_data["user_id"] == "bob"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_changes_through_one_replica_reach_streams_on_another(
    database_url: str, tmp_path: Path, embedder: FastEmbedEmbedder, model_dir: Path
) -> None:
    """Two servers on one PostgreSQL database: a write on A shows up on B's stream (LISTEN/NOTIFY)."""
    with ExitStack() as stack:
        urls = []
        for name in ("a", "b"):
            settings = load_settings(
                data_dir=tmp_path / name, database_url=database_url, embedding_model_dir=model_dir
            )
            rt = Runtime.build(settings, embedder=embedder)
            stack.callback(rt.close)
            urls.append(stack.enter_context(serve_in_thread(create_app(settings, rt), lifespan="on")))
        replica_a, replica_b = urls
        ready = asyncio.Event()
        task = asyncio.create_task(collect(replica_b, "carol", 1, ready))
        await asyncio.wait_for(ready.wait(), 15)
        async with httpx.AsyncClient(base_url=replica_a, headers={"X-User-Id": "carol"}, timeout=30) as api:
            added = (await api.post("/api/v1/memories", json={"text": "Written through replica A"})).json()
        [(event, data)] = await asyncio.wait_for(task, 15)
        assert event == "add" and data["memory_ids"] == [added["results"][0]["id"]]
