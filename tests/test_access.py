"""Access records written behind the request (services/access.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import delete, event, func, select

from memory_server.config import Settings, load_settings
from memory_server.errors import Unavailable
from memory_server.runtime import Runtime
from memory_server.services.access import AccessRecorder
from memory_server.services.memories import Caller, MemoryService
from memory_server.storage.database import Database, make_engine, migrate
from memory_server.storage.embeddings import FastEmbedEmbedder
from memory_server.storage.models import App, Memory, MemoryAccessLog, User


def logged(runtime: Runtime, memory_id: str) -> list[str]:
    with runtime.db.session() as session:
        return sorted(
            session.scalars(select(MemoryAccessLog.access_type).where(MemoryAccessLog.memory_id == memory_id))
        )


def test_search_hits_are_logged_and_counted_by_the_background_writer(
    service: MemoryService, runtime: Runtime, alice: Caller
) -> None:
    memory = service.add(alice, "My passport expires in March 2031").results[0]
    for _ in range(3):
        assert service.search(alice, "passport expiry", limit=1).results[0].id == memory.id
    deadline = time.monotonic() + 10  # the writer runs every ACCESS_LOG_FLUSH_SECONDS (0.25 s)
    while logged(runtime, memory.id) != ["search"] * 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert logged(runtime, memory.id) == ["search"] * 3
    assert service.get(alice, memory.id).access_count == 4  # three search hits and this get


@pytest.fixture
def quiet(settings: Settings, embedder: FastEmbedEmbedder) -> Iterator[Runtime]:
    """A runtime whose background writer waits a minute: only an explicit flush writes."""
    rt = Runtime.build(settings.model_copy(update={"access_log_flush_seconds": 60}), embedder=embedder)
    yield rt
    rt.close()


def test_readers_in_this_process_see_buffered_reads_at_once(quiet: Runtime, alice: Caller) -> None:
    runtime = quiet
    memory = runtime.memories.add(alice, "The spare key is under the blue pot").results[0]
    runtime.memories.search(alice, "spare key", limit=1)
    runtime.memories.list_memories(alice)
    assert logged(runtime, memory.id) == []  # still buffered
    page = runtime.lifecycle.access_log(alice, memory.id)
    assert sorted(e.access_type for e in page.results) == ["list", "search"]
    apps = runtime.apps.list_apps(alice)
    assert [a.memories_accessed for a in apps] == [1]


def test_records_wait_while_the_database_is_away_and_are_written_later(tmp_path: Path) -> None:
    db_path = tmp_path / "memories.db"
    engine = make_engine(f"sqlite:///{db_path}")
    # After make_engine's own settings: give up on a held lock after 0.1 s, not 15 s.
    event.listen(engine, "connect", lambda conn, _record: conn.execute("PRAGMA busy_timeout=100"))
    db = Database(engine)
    migrate(engine)
    with db.session() as session:
        user = User(user_id="carol")
        session.add(user)
        session.flush()
        app = App(owner_id=user.id, name="cursor")
        session.add(app)
        session.flush()
        row = Memory(user_id=user.id, app_id=app.id, content="x", content_hash="h", state="active")
        session.add(row)
        session.flush()
        app_pk, memory_id = app.id, row.id
    recorder = AccessRecorder(db, interval=3600)
    recorder.record(app_pk, [memory_id], "search", {"query": "x"}, datetime.now(UTC), touch=True)
    holder = sqlite3.connect(db_path, timeout=0)
    holder.execute("BEGIN IMMEDIATE")  # the database refuses writes for now
    with pytest.raises(Unavailable):
        recorder.flush()
    holder.rollback()
    holder.close()
    recorder.close()  # the kept record goes out now
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(MemoryAccessLog)) == 1
        assert session.scalar(select(Memory.access_count).where(Memory.id == memory_id)) == 1
    db.dispose()


def test_reads_of_a_memory_purged_before_the_flush_are_skipped(quiet: Runtime, alice: Caller) -> None:
    runtime = quiet
    gone = runtime.memories.add(alice, "Old wifi password is hunter2").results[0]
    kept = runtime.memories.add(alice, "New wifi password is correct-horse").results[0]
    runtime.memories.search(alice, "wifi password", limit=2)
    assert logged(runtime, kept.id) == []  # still buffered
    with runtime.db.session() as session:
        session.execute(delete(Memory).where(Memory.id == gone.id))
    runtime.memories.access.flush()
    assert logged(runtime, kept.id) == ["search"]
    assert logged(runtime, gone.id) == []


def test_close_writes_what_is_buffered(quiet: Runtime, alice: Caller) -> None:
    runtime = quiet
    memory = runtime.memories.add(alice, "Dentist appointment on 4 June").results[0]
    runtime.memories.search(alice, "dentist", limit=1)
    assert logged(runtime, memory.id) == []  # still buffered
    runtime.memories.access.close()
    assert logged(runtime, memory.id) == ["search"]


@pytest.fixture
def sqlite_runtime(tmp_path: Path, model_dir: Path, embedder: FastEmbedEmbedder) -> Iterator[Runtime]:
    """SQLite only: its single write lock is what this is about."""
    rt = Runtime.build(
        load_settings(data_dir=tmp_path / "lite", embedding_model_dir=model_dir), embedder=embedder
    )
    yield rt
    rt.close()


def test_a_search_answers_while_another_writer_holds_the_sqlite_lock(
    sqlite_runtime: Runtime, alice: Caller
) -> None:
    runtime = sqlite_runtime
    assert runtime.db.is_sqlite
    memory = runtime.memories.add(alice, "The boat is moored at pier 7").results[0]
    database = runtime.db.engine.url.database
    assert database is not None
    holder = sqlite3.connect(database, timeout=10)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("UPDATE apps SET name = name")  # a writer mid-transaction
    done = threading.Event()
    found: list[str] = []

    def search() -> None:
        found.extend(m.id for m in runtime.memories.search(alice, "where is the boat", limit=1).results)
        done.set()

    worker = threading.Thread(target=search)
    worker.start()
    # Before searches became read-only they queued here until the writer finished.
    assert done.wait(10), "the search waited for the writer"
    holder.rollback()
    holder.close()
    worker.join()
    assert found == [memory.id]
