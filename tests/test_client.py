"""The Python client against a real server on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from memory_server.api.app import create_app
from memory_server.client import (
    ConflictError,
    InvalidInputError,
    MemoryClient,
    NotFoundError,
    PayloadTooLargeError,
    UnavailableError,
)
from memory_server.config import Settings
from memory_server.runtime import Runtime
from tests.fakes.server import free_port, serve_in_thread


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """The client talks HTTP; one database backend is enough here (routes are tested on both)."""
    return f"sqlite:///{tmp_path / 'client.db'}"


@pytest.fixture
def url(runtime: Runtime, settings: Settings) -> Iterator[str]:
    with serve_in_thread(create_app(settings, runtime), lifespan="on") as base:
        yield base


async def test_round_trip(url: str, runtime: Runtime) -> None:
    async with MemoryClient(url, user_id="erin") as client:
        added = await client.add("My car is a blue Volvo estate", app="scripts", importance=0.7)
        car = added.results[0]
        assert car.event == "ADD" and car.app == "scripts" and car.importance == 0.7
        await client.add(messages=[{"role": "user", "content": "I go climbing on Thursdays"}])

        assert [m.id for m in await client.search("what vehicle do I drive?", limit=1)] == [car.id]
        page = await client.list_memories(size=1)
        assert page.total == 2 and page.pages == 2 and len(page.items) == 1
        assert len({m.id async for m in client.iterate(size=1)}) == 2
        assert (await client.get(car.id)).text == "My car is a blue Volvo estate"

        updated = await client.update(car.id, text="My car is a red Volvo estate")
        assert updated.text.startswith("My car is a red")
        assert [h.kind for h in await client.history(car.id)] == ["content", "state", "content"]
        assert (await client.set_state("archive", memory_ids=[car.id])).changed == [car.id]
        assert (await client.list_memories(state=["archived"])).items[0].id == car.id
        assert (await client.access_log(car.id)).total >= 1
        runtime.categorizer.drain()
        assert any(c.memories for c in await client.categories())
        stats = await client.stats()
        assert stats.by_state == {"active": 1, "archived": 1}
        apps = {a.name: a for a in await client.apps()}
        assert (await client.set_app_active(apps["scripts"].id, False)).is_active is False

        deleted = await client.delete(car.id)
        assert deleted.deleted == [car.id]


async def test_errors_map_to_exceptions(url: str) -> None:
    async with MemoryClient(url, user_id="erin") as client:
        with pytest.raises(InvalidInputError) as bad:
            await client.get("not-a-uuid")
        assert bad.value.status == 400 and "invalid memory id" in bad.value.message
        with pytest.raises(NotFoundError):
            await client.get("6f1c1c8e-3c7d-4c47-9a55-1a4d2b1f0f00")
        with pytest.raises(PayloadTooLargeError):
            await client.add("x" * 40_000)
        with pytest.raises(InvalidInputError):
            await client.add("y", importance=3)
        first = (await client.add("Unique fact one about herons")).results[0]
        second = (await client.add("Another fact about kestrels")).results[0]
        with pytest.raises(ConflictError):
            await client.update(second.id, text="Unique fact one about herons")
        assert first.id != second.id


async def test_unreachable_server_is_unavailable() -> None:
    async with MemoryClient(f"http://127.0.0.1:{free_port()}", user_id="erin", timeout=2) as client:
        with pytest.raises(UnavailableError, match="cannot reach"):
            await client.stats()


async def test_export_and_import_through_rest(
    url: str, runtime: Runtime, second_database_url: str, tmp_path: Path, embedder: object, model_dir: Path
) -> None:
    from memory_server.config import load_settings

    async with MemoryClient(url, user_id="frank") as source:
        await source.add("Frank's bike lock code is 3319", memory_type="rule", importance=0.9)
        await source.add("Frank plays five-a-side football on Wednesdays", app="phone")
        exported = await source.export(vectors=True)
        assert exported[:2] == b"\x1f\x8b"  # gzip

    other_settings = load_settings(
        data_dir=tmp_path / "other", database_url=second_database_url, embedding_model_dir=model_dir
    )
    other = Runtime.build(other_settings, embedder=embedder)  # type: ignore[arg-type]
    try:
        with serve_in_thread(create_app(other_settings, other), lifespan="on") as other_url:
            async with MemoryClient(other_url, user_id="frank") as target:
                report = await target.import_file(exported)
                assert (report.total, report.added) == (2, 2) and report.reembedded is False
                again = await target.import_file(exported)
                assert again.added == 0 and again.unchanged == 2
                found = await target.search("what is the code for my bicycle lock?", limit=1)
                assert found[0].text == "Frank's bike lock code is 3319" and found[0].memory_type == "rule"
                assert {m.app async for m in target.iterate()} == {"default", "phone"}
                with pytest.raises(InvalidInputError, match="gzip|JSON|header|format"):
                    await target.import_file(b"not an export")
    finally:
        other.close()
