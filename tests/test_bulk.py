"""The bulk write path (imports, Slack sync): batches, stable ids, idempotence, failure."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from memory_server.errors import Unavailable
from memory_server.runtime import Runtime
from memory_server.services.bulk import BulkItem
from memory_server.services.filters import MemoryFilter
from memory_server.services.memories import Caller, MemoryService

TOPICS = ["sailing", "pottery", "chess", "jazz piano", "birdwatching", "rock climbing", "baking", "astronomy"]
PLACES = ["Oslo", "Lima", "Hanoi", "Porto", "Quebec", "Nairobi", "Tbilisi", "Perth", "Bergen", "Cusco"]


def item(n: int, text_value: str | None = None) -> BulkItem:
    return BulkItem(
        memory_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"test:{n}")),
        text=text_value or f"Message {n}: {TOPICS[n % 8]} club meets in {PLACES[n // 8 % 10]} (thread {n})",
        metadata={"n": n},
    )


def point_count(runtime: Runtime, caller: Caller) -> int:
    store = runtime.pool.get(caller.user_id).store
    return store.count()


def test_batches_are_stored_and_searchable(service: MemoryService, runtime: Runtime, alice: Caller) -> None:
    items = [item(n) for n in range(250)]
    result = service.upsert_many(alice, items)
    assert len(result.added) == 250 and not result.skipped and not result.updated
    assert service.list_memories(alice, limit=1).total == 250
    assert point_count(runtime, alice) == 250
    found = service.search(alice, "Message 17: the pottery club in Hanoi", limit=3).results
    assert items[17].memory_id in [m.id for m in found]
    assert service.get(alice, items[17].memory_id).metadata == {"n": 17}


def test_running_the_same_batch_twice_changes_nothing(
    service: MemoryService, runtime: Runtime, alice: Caller
) -> None:
    items = [item(n) for n in range(20)]
    service.upsert_many(alice, items)
    again = service.upsert_many(alice, items)
    assert sorted(again.unchanged) == sorted(i.memory_id for i in items) and not again.added
    assert point_count(runtime, alice) == 20 and service.list_memories(alice).total == 20


def test_changed_text_is_updated_and_reembedded(service: MemoryService, alice: Caller) -> None:
    items = [item(n) for n in range(5)]
    service.upsert_many(alice, items)
    edited = BulkItem(
        items[2].memory_id, "Edited: the quarterly budget review moved to Wednesday", {"edited": True}
    )
    result = service.upsert_many(alice, [edited])
    assert result.updated == [items[2].memory_id]
    top = service.search(alice, "budget review day", limit=1).results[0]
    assert (
        top.id == items[2].memory_id and top.text.startswith("Edited:") and top.metadata == {"edited": True}
    )


def test_deleted_duplicate_invalid_and_foreign_items_are_skipped(
    service: MemoryService, runtime: Runtime, alice: Caller, bob: Caller
) -> None:
    service.upsert_many(alice, [item(1), item(2)])
    service.delete(alice, [item(1).memory_id])
    theirs = service.upsert_many(bob, [item(50)]).added[0]
    batch = [
        item(1),  # the user deleted it: stays deleted
        BulkItem(str(uuid.uuid4()), item(2).text),  # same text as a live memory
        BulkItem(str(uuid.uuid4()), "   "),  # empty
        BulkItem("not-a-uuid", "fine text"),
        BulkItem(theirs, "trying to overwrite bob's memory"),
        item(3),
        BulkItem(str(uuid.uuid4()), item(3).text),  # duplicate inside the batch
    ]
    result = service.upsert_many(alice, batch)
    assert result.added == [item(3).memory_id]
    reasons = list(result.skipped.values())
    assert result.skipped[item(1).memory_id] == "deleted"
    assert f"duplicate of {item(2).memory_id}" in reasons and f"duplicate of {item(3).memory_id}" in reasons
    assert any("empty" in r for r in reasons) and any("invalid memory id" in r for r in reasons)
    assert result.skipped[theirs] == "the id is already in use"
    assert service.get(bob, theirs).text == item(50).text
    assert service.list_memories(alice).total == 2 and point_count(runtime, alice) == 2


def test_sql_failure_undoes_the_batch_vectors(
    service: MemoryService, runtime: Runtime, alice: Caller
) -> None:
    service.upsert_many(alice, [item(1)])
    with runtime.db.engine.begin() as conn:
        if runtime.db.is_sqlite:
            conn.execute(
                text("CREATE TRIGGER no_more BEFORE INSERT ON memories BEGIN SELECT RAISE(FAIL, 'full'); END")
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION no_more() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'full'; END $$ "
                    "LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER no_more BEFORE INSERT ON memories FOR EACH ROW EXECUTE FUNCTION no_more()"
                )
            )
    with pytest.raises(Unavailable):
        service.upsert_many(alice, [item(n) for n in range(2, 12)])
    assert point_count(runtime, alice) == 1 and service.list_memories(alice).total == 1


def test_whole_memories_keep_app_state_type_categories_and_vector(
    service: MemoryService, runtime: Runtime, alice: Caller
) -> None:
    vector = runtime.embedder.embed(["a different sentence entirely"])[0]
    full = BulkItem(
        item(1).memory_id,
        "The archive of the 2019 tax return lives in the blue folder",
        {"source": "import"},
        app="cursor",
        state="archived",
        memory_type="rule",
        importance=0.9,
        categories=["Finance", "paperwork"],
        access_count=4,
        vector=vector,
    )
    wrong_size = BulkItem(item(2).memory_id, "A vector of the wrong size", vector=[0.1, 0.2])
    deleted_state = BulkItem(item(3).memory_id, "Cannot arrive deleted", state="deleted")
    result = service.upsert_many(alice, [full, wrong_size, deleted_state])
    assert result.added == [full.memory_id]
    assert "dimension" in result.skipped[wrong_size.memory_id]
    assert "cannot be written" in result.skipped[deleted_state.memory_id]
    [stored] = service.list_memories(
        alice, filters=MemoryFilter(states=["archived"]), log_access=False
    ).results
    assert (stored.app, stored.state, stored.memory_type, stored.importance) == (
        "cursor",
        "archived",
        "rule",
        0.9,
    )
    assert stored.categories == ["finance", "paperwork"] and stored.archived_at is not None
    assert stored.access_count == 4
    [point] = runtime.pool.get("alice").store.retrieve_many([full.memory_id], with_vectors=True)
    assert point.vector == pytest.approx(vector, abs=1e-6)
    with runtime.db.engine.connect() as conn:
        history = conn.execute(
            text("SELECT old_state, new_state FROM memory_status_history WHERE memory_id = :m"),
            {"m": full.memory_id},
        ).all()
        versions = conn.execute(
            text("SELECT version, content FROM memory_versions WHERE memory_id = :m"), {"m": full.memory_id}
        ).all()
    assert [tuple(h) for h in history] == [(None, "archived")]
    assert [tuple(v) for v in versions] == [(1, full.text)]


def test_skip_and_overwrite_leave_or_replace_stored_memories(service: MemoryService, alice: Caller) -> None:
    service.upsert_many(alice, [item(1), item(2)])
    edited = BulkItem(item(1).memory_id, "Edited text for the first message", state="paused", importance=0.1)
    same = BulkItem(item(2).memory_id, item(2).text, {"n": 2})
    skipped = service.upsert_many(alice, [edited, same], on_existing="skip")
    assert skipped.unchanged == [same.memory_id] and list(skipped.skipped) == [edited.memory_id]
    assert service.get(alice, edited.memory_id).text == item(1).text
    overwritten = service.upsert_many(alice, [edited, same], on_existing="overwrite")
    assert overwritten.updated == [edited.memory_id] and overwritten.unchanged == [same.memory_id]
    stored = service.get(alice, edited.memory_id)
    assert (stored.text, stored.state, stored.importance, stored.metadata) == (edited.text, "paused", 0.1, {})
    again = service.upsert_many(alice, [edited], on_existing="overwrite")
    assert again.unchanged == [edited.memory_id]
