"""The memory service against real SQLite / PostgreSQL, embedded Qdrant and the real embedder."""

from __future__ import annotations

import concurrent.futures
import time
import uuid

import pytest
from sqlalchemy import func, insert, select, text, update

from memory_server.errors import Forbidden, InvalidInput, NotFound, PayloadTooLarge, Unavailable
from memory_server.runtime import Runtime
from memory_server.services.bulk import BulkItem
from memory_server.services.memories import Caller, MemoryService
from memory_server.storage.models import (
    App,
    Category,
    Memory,
    MemoryAccessLog,
    MemoryCategory,
    MemoryStatusHistory,
    User,
)


def vector_ids(runtime: Runtime, caller: Caller, ids: list[str]) -> set[str]:
    """Which of ``ids`` have a point in the caller's Qdrant collection."""
    return {str(p.id) for p in runtime.pool.get(caller.user_id).store.retrieve_many(ids)}


def test_add_then_search_finds_it_first(service: MemoryService, runtime: Runtime, alice: Caller) -> None:
    added = service.add(alice, "My favourite programming language is Rust")
    service.add(alice, "I have two cats called Miso and Tofu")
    service.add(alice, "The dentist appointment is on Friday at 3pm")

    [memory] = added.results
    assert memory.event == "ADD" and memory.app == "claude-desktop" and memory.state == "active"
    found = service.search(alice, "which coding language do I like best?", limit=3).results
    assert [m.id for m in found][0] == memory.id
    assert found[0].score is not None and found[0].score > found[-1].score  # type: ignore[operator]
    assert vector_ids(runtime, alice, [memory.id]) == {memory.id}


def test_search_reads_the_same_rows_as_the_full_lookup(
    service: MemoryService, runtime: Runtime, alice: Caller, bob: Caller
) -> None:
    """Search's plain-row lookup (ids padded to a few fixed sizes, chunks of 512) against the
    ORM lookup that get/update use: same memories, same owner and state checks, same results."""
    items = [
        BulkItem(
            memory_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"rows:{n}")),
            text=f"Row check {n}: the {n * 7}th note about gardening",
            metadata={"n": n},
        )
        for n in range(600)
    ]
    service.upsert_many(alice, items)
    bobs = service.add(bob, "Bob keeps his own notes", infer=False).results[0].id
    ids = [i.memory_id for i in items]
    with runtime.db.session() as session:
        session.execute(update(Memory).where(Memory.id.in_(ids[:3])).values(state="archived"))
        session.execute(update(Memory).where(Memory.id == ids[3]).values(state="deleted"))
        session.add_all([Category(id="c-b", name="row check b"), Category(id="c-a", name="row check a")])
        session.flush()
        session.execute(
            insert(MemoryCategory),
            [{"memory_id": mid, "category_id": c} for mid in ids[:20] + ids[550:] for c in ("c-b", "c-a")],
        )
    actor = service._actor(alice)
    for wanted in ([ids[5]], ids[:9], [*ids[:40], bobs, str(uuid.uuid4())], [*ids, bobs]):
        for active_only in (True, False):
            with runtime.db.session(readonly=True) as session:
                fast = service._read_rows(session, actor, wanted, active_only)
                full = service._rows_with_app(session, actor, wanted, active_only)
                assert fast.keys() == full.keys()
                order = sorted(fast)
                assert service._outs(session, [fast[m] for m in order]) == service._outs(
                    session, [full[m] for m in order]
                )
    assert bobs not in fast and ids[3] not in fast and ids[0] in fast and len(fast) == 599
    with runtime.db.session(readonly=True) as session:
        [out] = service._outs(session, [fast[ids[590]]])
    assert (
        out.categories == ["row check a", "row check b"]
        and out.metadata == {"n": 590}
        and out.state == "active"
    )


def test_list_newest_first_with_total_and_paging(service: MemoryService, alice: Caller) -> None:
    texts = [f"Note number {i}: the sky was a different colour {i}" for i in range(5)]
    ids = [service.add(alice, t, infer=False).results[0].id for t in texts]

    page = service.list_memories(alice, limit=2, offset=0)
    assert page.total == 5
    assert [m.id for m in page.results] == ids[::-1][:2]
    rest = service.list_memories(alice, limit=10, offset=2)
    assert [m.id for m in rest.results] == ids[::-1][2:]


def test_get_and_access_logs_are_written(service: MemoryService, runtime: Runtime, alice: Caller) -> None:
    memory = service.add(alice, "I am allergic to peanuts").results[0]
    assert service.get(alice, memory.id).text == "I am allergic to peanuts"
    service.search(alice, "food allergy", limit=5)
    service.list_memories(alice)
    runtime.memories.access.flush()  # searches and listings record their reads behind the request
    with runtime.db.session() as session:
        kinds = sorted(
            session.scalars(select(MemoryAccessLog.access_type).where(MemoryAccessLog.memory_id == memory.id))
        )
    assert kinds == ["get", "list", "search"]


def test_update_reembeds_so_search_follows_new_text(service: MemoryService, alice: Caller) -> None:
    memory = service.add(alice, "I live in Berlin").results[0]
    service.add(alice, "My bicycle is red")
    assert service.search(alice, "Which city is my home in Portugal?", limit=1).results[0].id == memory.id

    updated = service.update(alice, memory.id, "I moved to Lisbon, Portugal last spring")
    assert updated.text == "I moved to Lisbon, Portugal last spring"
    assert updated.updated_at > memory.updated_at
    top = service.search(alice, "Lisbon Portugal", limit=2).results
    assert top[0].id == memory.id and top[0].text.startswith("I moved to Lisbon")
    assert service.get(alice, memory.id).text == "I moved to Lisbon, Portugal last spring"
    # the old wording ranks lower now than before the update
    assert service.search(alice, "Berlin", limit=2).results[0].score < 0.6  # type: ignore[operator]


def test_delete_removes_from_both_stores(service: MemoryService, runtime: Runtime, alice: Caller) -> None:
    keep = service.add(alice, "I play the cello").results[0]
    gone = service.add(alice, "My passport expires in 2031").results[0]
    unknown = str(uuid.uuid4())

    result = service.delete(alice, [gone.id, unknown])
    assert result.deleted == [gone.id] and result.not_found == [unknown]
    assert vector_ids(runtime, alice, [gone.id, keep.id]) == {keep.id}
    with runtime.db.session() as session:
        row = session.get(Memory, gone.id)
        assert row is not None and row.state == "deleted" and row.deleted_at is not None
        history = session.scalars(
            select(MemoryStatusHistory.new_state).where(MemoryStatusHistory.memory_id == gone.id)
        )
        assert list(history) == ["active", "deleted"]
    assert [m.id for m in service.search(alice, "passport", limit=5).results] == [keep.id]
    with pytest.raises(NotFound):
        service.get(alice, gone.id)
    with pytest.raises(NotFound):
        service.delete(alice, [gone.id])


def test_delete_all_only_touches_the_caller(
    service: MemoryService, runtime: Runtime, alice: Caller, bob: Caller
) -> None:
    texts = ["I grow tomatoes on the balcony", "My sister lives in Oslo", "I run 5k every Sunday"]
    mine = [service.add(alice, t).results[0].id for t in texts]
    theirs = service.add(bob, "bob likes sailing").results[0].id

    assert sorted(service.delete_all(alice).deleted) == sorted(mine)
    assert service.list_memories(alice).total == 0
    assert vector_ids(runtime, alice, mine) == set()
    assert service.list_memories(bob).results[0].id == theirs
    assert vector_ids(runtime, bob, [theirs]) == {theirs}


def test_exact_and_near_duplicates_are_not_stored_twice(
    service: MemoryService, runtime: Runtime, alice: Caller
) -> None:
    first = service.add(alice, "I drink my coffee black without sugar").results[0]
    again = service.add(alice, "  I drink my coffee black without sugar  ")
    assert again.results[0].id == first.id and again.results[0].event == "NONE"
    near = service.add(alice, "I drink my coffee black, without sugar.")
    assert near.results[0].id == first.id and near.results[0].event == "NONE"
    assert near.results[0].score is not None and near.results[0].score >= 0.95
    different = service.add(alice, "I drink green tea in the afternoon")
    assert different.results[0].event == "ADD"
    assert service.list_memories(alice).total == 2
    with runtime.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Memory)) == 2


def test_a_deleted_memory_can_be_added_again(service: MemoryService, alice: Caller) -> None:
    first = service.add(alice, "The wifi password is on the fridge").results[0]
    service.delete(alice, [first.id])
    again = service.add(alice, "The wifi password is on the fridge").results[0]
    assert again.event == "ADD" and again.id != first.id


def test_two_users_are_isolated(service: MemoryService, runtime: Runtime, alice: Caller, bob: Caller) -> None:
    secret = service.add(alice, "My bank PIN hint is my first dog's name").results[0]
    assert service.search(bob, "bank PIN hint", limit=10).results == []
    assert service.list_memories(bob).total == 0
    with pytest.raises(NotFound):
        service.get(bob, secret.id)
    with pytest.raises(NotFound):
        service.update(bob, secret.id, "hijacked")
    with pytest.raises(NotFound):
        service.delete(bob, [secret.id])
    service.delete_all(bob)
    assert service.get(alice, secret.id).text == "My bank PIN hint is my first dog's name"
    assert vector_ids(runtime, alice, [secret.id]) == {secret.id}
    # the same text is a separate memory for another user, not a duplicate
    assert service.add(bob, "My bank PIN hint is my first dog's name").results[0].event == "ADD"


def test_same_user_different_apps_share_memories(service: MemoryService, alice: Caller) -> None:
    cursor = Caller(alice.user_id, "cursor")
    memory = service.add(cursor, "The project deadline is 1 December").results[0]
    assert memory.app == "cursor"
    assert service.search(alice, "deadline", limit=1).results[0].id == memory.id


def test_a_paused_app_is_refused(service: MemoryService, runtime: Runtime, alice: Caller) -> None:
    service.add(alice, "I like hiking")
    # Paused behind this process's back (as another replica would): honoured once the
    # identity cache entry expires, ActorCache.ttl (2 s) at most.
    with runtime.db.session() as session:
        app = session.scalar(
            select(App).join(User).where(User.user_id == alice.user_id, App.name == alice.client_name)
        )
        assert app is not None
        app.is_active = False
    time.sleep(service.actors.ttl)
    for call in (
        lambda: service.add(alice, "something new"),
        lambda: service.search(alice, "hiking"),
        lambda: service.list_memories(alice),
        lambda: service.delete_all(alice),
    ):
        with pytest.raises(Forbidden, match="paused"):
            call()
    # another app of the same user still works and sees the memory
    assert service.list_memories(Caller(alice.user_id, "cursor")).total == 1


@pytest.mark.parametrize(
    ("text_value", "error"),
    [
        ("", InvalidInput),
        ("   \n\t ", InvalidInput),
        ("a\x00b", InvalidInput),
        (None, InvalidInput),
        ("x" * 40_000, PayloadTooLarge),
    ],
)
def test_bad_text_is_refused_and_nothing_changes(
    service: MemoryService, alice: Caller, text_value: object, error: type[Exception]
) -> None:
    service.add(alice, "an existing memory about kayaks")
    with pytest.raises(error):
        service.add(alice, text_value)
    assert [m.text for m in service.list_memories(alice).results] == ["an existing memory about kayaks"]


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "", "../../etc/passwd", "1; DROP TABLE memories"])
def test_malformed_ids_are_clear_errors(service: MemoryService, alice: Caller, bad_id: str) -> None:
    with pytest.raises(InvalidInput, match="invalid memory id"):
        service.get(alice, bad_id)
    with pytest.raises(InvalidInput, match="invalid memory id"):
        service.delete(alice, [bad_id])


@pytest.mark.parametrize(("limit", "offset"), [(0, 0), (-1, 0), (10**6, 0), (10, -1), ("10", 0)])
def test_bad_limits_are_clear_errors(
    service: MemoryService, alice: Caller, limit: object, offset: object
) -> None:
    with pytest.raises(InvalidInput, match="limit|offset"):
        service.list_memories(alice, limit, offset)


def test_metadata_round_trips_and_bad_metadata_is_refused(service: MemoryService, alice: Caller) -> None:
    memory = service.add(
        alice, "Standup is at 9:30", metadata={"source": "calendar", "tags": ["work"]}
    ).results[0]
    assert service.get(alice, memory.id).metadata == {"source": "calendar", "tags": ["work"]}
    with pytest.raises(InvalidInput, match="metadata"):
        service.add(alice, "x", metadata=["not", "an", "object"])
    with pytest.raises(InvalidInput, match="metadata"):
        service.add(alice, "y", metadata={"n": float("nan")})


def test_infer_without_an_llm_is_a_clear_error(service: MemoryService, alice: Caller) -> None:
    assert not service.llm_enabled
    with pytest.raises(InvalidInput, match="needs an LLM"):
        service.add(alice, "I like jazz", infer=True)
    assert service.list_memories(alice).total == 0


def test_failed_sql_write_leaves_no_orphan_vector(
    service: MemoryService, runtime: Runtime, alice: Caller
) -> None:
    """A real database failure (a trigger rejecting inserts) must undo the vector write."""
    service.add(alice, "kept memory about chess openings")
    collection = runtime.pool.get(alice.user_id).store
    before = collection.count()
    with runtime.db.engine.begin() as conn:
        if runtime.db.is_sqlite:
            conn.execute(
                text(
                    "CREATE TRIGGER reject_memories BEFORE INSERT ON memories "
                    "BEGIN SELECT RAISE(ABORT, 'writes are failing'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION reject() RETURNS trigger AS $$ "
                    "BEGIN RAISE EXCEPTION 'writes are failing'; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER reject_memories BEFORE INSERT ON memories "
                    "FOR EACH ROW EXECUTE FUNCTION reject()"
                )
            )

    with pytest.raises(Unavailable):
        service.add(alice, "this one cannot be stored: the database refuses it")

    assert collection.count() == before
    assert [m.text for m in service.list_memories(alice).results] == ["kept memory about chess openings"]


def test_concurrent_identical_adds_store_one_memory(
    service: MemoryService, runtime: Runtime, alice: Caller
) -> None:
    service.add(alice, "warm-up so the user and app exist")
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(
            pool.map(lambda _: service.add(alice, "Our team offsite is in Porto in May"), range(4))
        )
    ids = {r.results[0].id for r in results}
    assert len(ids) == 1
    assert sorted(r.results[0].event or "" for r in results).count("ADD") == 1
    collection = runtime.pool.get(alice.user_id).store
    assert collection.count() == 2


def test_restart_keeps_acknowledged_memories(runtime: Runtime, embedder: object, alice: Caller) -> None:
    added = runtime.memories.add(alice, "Remember that the spare key is under the blue pot").results[0]
    settings = runtime.settings
    runtime.close()
    reopened = Runtime.build(settings, embedder=embedder)  # type: ignore[arg-type]
    try:
        found = reopened.memories.search(alice, "where is the spare key?", limit=1).results
        assert [m.id for m in found] == [added.id]
    finally:
        reopened.close()
