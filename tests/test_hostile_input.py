"""Property-based hostile input over the service and the MCP tools: a clear error or a correct result,
never an internal error, and nothing already stored changes."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory_server.errors import MemoryServerError
from memory_server.mcp.identity import PROCESS_IDENTITY
from memory_server.mcp.server import build_mcp
from memory_server.runtime import Runtime
from memory_server.services.memories import Caller

FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)

texts = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=50).map(lambda t: t + "\x00" + t),
    st.sampled_from(["", " ", "\n\t", "'; DROP TABLE memories; --", "../../etc/passwd", "%00", "🦜" * 500]),
    st.integers(min_value=33_000, max_value=40_000).map(lambda n: "x" * n),
)
ids = st.one_of(
    st.text(max_size=60),
    st.uuids().map(str),
    st.sampled_from(["", "null", "1 OR 1=1", "../x", "00000000-0000"]),
)
names = st.one_of(st.text(max_size=140), st.sampled_from(["a/b", "a b", "x" * 200, "' OR '1'='1", "..", "é"]))
limits = st.one_of(st.integers(min_value=-(10**12), max_value=10**12), st.sampled_from([0, -1, 10**9]))


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """Input handling does not depend on the backend; SQLite keeps this fast."""
    return f"sqlite:///{tmp_path / 'hostile.db'}"


def snapshot(runtime: Runtime, caller: Caller) -> list[tuple[str, str, str]]:
    page = runtime.memories.list_memories(caller, limit=500, log_access=False)
    return sorted((m.id, m.text, m.state) for m in page.results)


@pytest.fixture
def seeded(runtime: Runtime) -> tuple[Runtime, Caller, list[tuple[str, str, str]]]:
    caller = Caller("victim", "claude-desktop")
    runtime.memories.add(caller, "The victim's stored memory about sailing")
    runtime.memories.add(Caller("other", "cursor"), "Another user's memory about chess")
    return runtime, caller, snapshot(runtime, caller)


def test_service_rejects_or_handles_anything(
    seeded: tuple[Runtime, Caller, list[tuple[str, str, str]]],
) -> None:
    runtime, victim, before = seeded
    service = runtime.memories
    attacker = Caller("attacker", "cursor")

    @FAST
    @given(text=texts, memory_id=ids, limit=limits, offset=limits, many=st.lists(ids, max_size=30))
    def run(text: str, memory_id: str, limit: int, offset: int, many: list[str]) -> None:
        for call in (
            lambda: service.search(attacker, text, limit=limit),
            lambda: service.list_memories(attacker, limit=limit, offset=offset),
            lambda: service.get(attacker, memory_id),
            lambda: service.update(attacker, memory_id, text),
            lambda: service.delete(attacker, many or [memory_id]),
            lambda: service.add(attacker, text, metadata={"k": text[:50]}),
        ):
            try:
                call()
            except MemoryServerError as exc:
                assert exc.status < 500 and "Traceback" not in exc.message

    run()
    assert snapshot(runtime, victim) == before


@given(user=names, client=names)
@FAST
def test_identities_are_validated(user: str, client: str) -> None:
    try:
        Caller(user, client)
    except MemoryServerError as exc:
        assert exc.status == 400


def test_ten_thousand_ids_in_one_delete(seeded: tuple[Runtime, Caller, list[tuple[str, str, str]]]) -> None:
    runtime, victim, before = seeded
    attacker = Caller("attacker", "cursor")
    kept = runtime.memories.add(attacker, "attacker's own memory").results[0].id
    many = [str(uuid.uuid4()) for _ in range(9_999)] + [kept]
    result = runtime.memories.delete(attacker, many)
    assert result.deleted == [kept] and len(result.not_found) == 9_999
    with pytest.raises(MemoryServerError, match="at most 10000"):
        runtime.memories.delete(attacker, many + [str(uuid.uuid4())])
    assert snapshot(runtime, victim) == before


def test_a_megabyte_text_is_refused_cleanly(
    seeded: tuple[Runtime, Caller, list[tuple[str, str, str]]],
) -> None:
    runtime, victim, before = seeded
    with pytest.raises(MemoryServerError) as refused:
        runtime.memories.add(victim, "m" * 1_048_576)
    assert refused.value.status == 413 and "limit is 32768 bytes" in refused.value.message
    assert snapshot(runtime, victim) == before


def test_mcp_tools_under_hostile_arguments(
    seeded: tuple[Runtime, Caller, list[tuple[str, str, str]]],
) -> None:
    runtime, victim, before = seeded
    mcp = build_mcp(runtime.memories)
    arguments = st.fixed_dictionaries(
        {},
        optional={
            "text": st.one_of(texts, st.integers(), st.none(), st.lists(st.text(max_size=5), max_size=3)),
            "query": st.one_of(texts, st.integers(), st.none()),
            "memory_id": st.one_of(ids, st.integers(), st.none()),
            "memory_ids": st.one_of(st.lists(ids, max_size=20), st.text(max_size=10), st.none()),
            "limit": st.one_of(limits, st.text(max_size=5), st.floats(allow_nan=True)),
            "offset": limits,
            "infer": st.one_of(st.booleans(), st.text(max_size=5)),
            "metadata": st.one_of(
                st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3), st.text()
            ),
            "importance": st.one_of(st.floats(allow_nan=True), st.integers()),
            "memory_type": st.text(max_size=20),
        },
    )
    tools = [
        "add_memories",
        "search_memory",
        "list_memories",
        "get_memory",
        "update_memory",
        "delete_memories",
    ]

    async def call_all(args: dict[str, Any]) -> None:
        token = PROCESS_IDENTITY.set(Caller("attacker", "cursor"))
        try:
            async with Client(mcp) as client:
                for tool in tools:
                    result = await client.call_tool(tool, args, raise_on_error=False)
                    text = str(result.content[0].text) if result.content else ""
                    assert "Traceback" not in text and "Error calling tool" not in text, (tool, args, text)
        finally:
            PROCESS_IDENTITY.reset(token)

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(args=arguments)
    def run(args: dict[str, Any]) -> None:
        asyncio.run(call_all(args))

    run()
    assert snapshot(runtime, victim) == before
