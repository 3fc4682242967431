"""Memory lifecycle over a controlled clock, and categorisation offline and through an LLM."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from memory_server.config import Settings, load_settings
from memory_server.runtime import Runtime
from memory_server.services.filters import MemoryFilter
from memory_server.services.memories import Caller
from memory_server.storage.embeddings import FastEmbedEmbedder
from memory_server.storage.models import MemoryStatusHistory
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server import serve_in_thread


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def timed(settings: Settings, embedder: FastEmbedEmbedder, clock: Clock) -> Iterator[Runtime]:
    settings = settings.model_copy(update={"archive_after_days": 3, "promote_access_count": 3})
    rt = Runtime.build(settings, embedder=embedder, clock=clock)
    yield rt
    rt.close()


def states(rt: Runtime, caller: Caller, ids: list[str]) -> list[tuple[str, str]]:
    return [(rt.memories.get(caller, i).state, rt.memories.get(caller, i).memory_type) for i in ids]


def test_short_term_memories_expire_promote_and_archive(timed: Runtime, clock: Clock, alice: Caller) -> None:
    service = timed.memories
    expiring = service.add(alice, "Parking spot today is B12", memory_type="short_term").results[0]
    assert expiring.expires_at == clock.now + timedelta(days=7)
    used = service.add(alice, "Current sprint goal is the billing export", memory_type="short_term").results[
        0
    ]
    stale = service.add(
        alice, "Ordered a pizza on Tuesday", memory_type="short_term", importance=0.1
    ).results[0]
    kept = service.add(
        alice, "Ordered a new passport, very important", memory_type="short_term", importance=0.9
    )
    long_term = service.add(alice, "My blood type is O negative").results[0]

    clock.advance(days=1)
    for _ in range(3):
        service.get(alice, used.id)
    report = timed.lifecycle.run_maintenance(timed.policy)
    assert (report.promoted, report.expired, report.archived) == (1, 0, 0)
    assert (
        service.get(alice, used.id).memory_type == "long_term"
        and service.get(alice, used.id).expires_at is None
    )

    clock.advance(days=3)  # past ARCHIVE_AFTER_DAYS=3: the unimportant, unused one goes
    report = timed.lifecycle.run_maintenance(timed.policy)
    assert (report.promoted, report.expired, report.archived) == (0, 0, 1)
    assert service.get(alice, stale.id).state == "archived"

    clock.advance(days=4)  # day 8: past the 7-day expiry
    report = timed.lifecycle.run_maintenance(timed.policy)
    assert report.expired == 2  # the parking spot and the important passport note
    ids = [expiring.id, used.id, stale.id, kept.results[0].id, long_term.id]
    assert states(timed, alice, ids) == [
        ("archived", "short_term"),
        ("active", "long_term"),
        ("archived", "short_term"),
        ("archived", "short_term"),
        ("active", "long_term"),
    ]
    found = {m.id for m in service.search(alice, "parking spot B12", limit=5).results}
    assert found and found <= {used.id, long_term.id}  # archived memories never appear
    with timed.db.session() as session:
        changes = session.scalars(
            select(MemoryStatusHistory.new_state).where(MemoryStatusHistory.memory_id == expiring.id)
        ).all()
    assert list(changes) == ["active", "archived"]
    assert timed.lifecycle.run_maintenance(timed.policy).model_dump() == {
        "promoted": 0,
        "expired": 0,
        "archived": 0,
    }


def test_archived_memories_never_reach_mcp_results(timed: Runtime, alice: Caller) -> None:
    memory = timed.memories.add(alice, "The garage door code is 7781").results[0]
    timed.lifecycle.change_state(alice, "archive", memory_ids=[memory.id])
    assert timed.memories.search(alice, "garage door code", limit=10).results == []
    assert timed.memories.list_memories(alice).total == 0
    timed.lifecycle.change_state(alice, "activate", memory_ids=[memory.id])
    assert timed.memories.search(alice, "garage door code", limit=1).results[0].id == memory.id


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("I am allergic to penicillin", "health"),
        ("Flight to Tokyo on 3 March", "travel"),
        ("I am learning Portuguese", "education"),
        ("My landlord is called Mr Okafor", "home"),
        ("I drink oolong tea every morning", "food"),
    ],
)
def test_offline_categories(runtime: Runtime, alice: Caller, text: str, category: str) -> None:
    memory = runtime.memories.add(alice, text).results[0]
    runtime.categorizer.drain()
    assert category in runtime.memories.get(alice, memory.id).categories


def test_memories_added_from_many_threads_are_all_categorised(runtime: Runtime, alice: Caller) -> None:
    """Ids queued while a batch runs are picked up by the next batch, none left behind."""
    texts = [f"Flight {n} to Tokyo on {n} March, seat {n}A" for n in range(1, 25)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        ids = [r.results[0].id for r in pool.map(lambda t: runtime.memories.add(alice, t), texts)]
    runtime.categorizer.drain()
    assert all("travel" in runtime.memories.get(alice, mid).categories for mid in ids)


def test_sweep_categorises_what_the_queue_missed(runtime: Runtime, alice: Caller) -> None:
    runtime.categorizer.close()  # as if the process died before the background work ran
    memory = runtime.memories.add(alice, "I am allergic to penicillin").results[0]
    assert runtime.memories.get(alice, memory.id).categories == []
    _, categorised = runtime.maintain()
    assert categorised == 1 and "health" in runtime.memories.get(alice, memory.id).categories


def _categorising_llm(messages: list[dict[str, Any]]) -> str:
    prompt = messages[-1]["content"]
    if "You sort a user's memories" not in prompt:  # mem0's fact extraction
        return json.dumps({"memory": []})
    ids = [line.split(":")[0].lstrip("- ").strip() for line in prompt.split("Memories:\n")[1].splitlines()]
    return json.dumps({"categories": {i: ["hobbies", "birdwatching"] for i in ids if i}})


@pytest.fixture
def llm_runtime(
    tmp_path: Path, embedder: FastEmbedEmbedder, model_dir: Path
) -> Iterator[tuple[Runtime, FakeOpenAI]]:
    fake = FakeOpenAI(reply=_categorising_llm)
    with serve_in_thread(fake.app()) as url:
        settings = load_settings(
            data_dir=tmp_path / "llm",
            openai_api_key="sk-x",
            llm_base_url=f"{url}/v1",
            embedding_model_dir=model_dir,
        )
        rt = Runtime.build(settings, embedder=embedder)
        yield rt, fake
        rt.close()


def test_llm_categories_include_new_ones(llm_runtime: tuple[Runtime, FakeOpenAI], alice: Caller) -> None:
    rt, fake = llm_runtime
    memory = rt.memories.add(alice, "Saw a kingfisher at the canal", infer=False).results[0]
    rt.categorizer.drain()
    assert rt.memories.get(alice, memory.id).categories == ["birdwatching", "hobbies"]
    names = {c.name: c.description for c in rt.apps.categories(alice)}
    assert names["birdwatching"] == "proposed by the LLM"
    assert any("You sort a user's memories" in r["body"]["messages"][-1]["content"] for r in fake.requests)


def test_a_failing_llm_never_loses_the_memory(llm_runtime: tuple[Runtime, FakeOpenAI], alice: Caller) -> None:
    rt, fake = llm_runtime
    fake.fail_with = 500
    memory = rt.memories.add(alice, "Saw a heron at dawn", infer=False).results[0]
    rt.categorizer.drain()
    got = rt.memories.get(alice, memory.id)
    assert got.text == "Saw a heron at dawn" and got.categories == []
    fake.fail_with = None
    rt.maintain()
    assert rt.memories.get(alice, memory.id).categories == ["birdwatching", "hobbies"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_serve_runs_maintenance_on_its_interval(
    settings: Settings, embedder: FastEmbedEmbedder, alice: Caller
) -> None:
    import asyncio

    from memory_server.api.app import create_app

    fast = settings.model_copy(update={"maintenance_interval_minutes": 0.01, "short_term_ttl_days": 0.00001})
    rt = Runtime.build(fast, embedder=embedder)
    app = create_app(fast, rt)
    async with app.router.lifespan_context(app):
        job = app.state.scheduler.get_job("maintenance")
        assert job is not None and job.max_instances == 1 and job.coalesce is True
        memory = rt.memories.add(alice, "Tram stop moved to Elm Road", memory_type="short_term").results[0]
        deadline = asyncio.get_running_loop().time() + 30
        archived = MemoryFilter(states=["archived"])
        # polling with list (not get: a get counts as a use, and enough uses would promote it)
        while [m.id for m in rt.memories.list_memories(alice, filters=archived).results] != [memory.id]:
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail("the scheduled maintenance never archived the expired memory")
            await asyncio.sleep(0.1)
