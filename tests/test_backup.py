"""Export and import (docs/backup.md): round trips, re-embedding, modes, resuming, bad files, the CLI."""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select
from typer.testing import CliRunner

from memory_server.cli import app as cli_app
from memory_server.config import load_settings
from memory_server.errors import InvalidInput, NotFound
from memory_server.runtime import Runtime
from memory_server.services.backup import EXPORTED_STATES
from memory_server.services.bulk import BulkItem, category_id
from memory_server.services.filters import MemoryFilter
from memory_server.services.memories import Caller, MemoryService
from memory_server.storage.embeddings import FastEmbedEmbedder
from memory_server.storage.models import Category, Memory, MemoryCategory, MemoryState, MemoryStatusHistory

ALICE = Caller("alice", "claude-desktop")
CURSOR = Caller("alice", "cursor")
TEXTS = [
    "I am allergic to peanuts and carry an epinephrine pen",
    "My sister Maya lives in Lisbon and teaches chemistry",
    "I prefer dark roast coffee with oat milk in the morning",
    "The quarterly planning meeting is every first Monday at 10:00",
    "I am learning to sail a small dinghy on weekends",
    "Our wifi password at the cabin is written on the fridge",
    "I run 5k three times a week along the river",
    "My favourite novel is The Left Hand of Darkness",
    "The car needs new winter tyres before November",
    "I want to read one book a month this year",
]
CURSOR_TEXTS = [
    "The API service is written in Go and deployed on Fly.io",
    "Use ruff and mypy --strict for every Python repository",
    "Staging database backups run nightly at 02:00 UTC",
]
QUERIES = [
    "food allergy",
    "what coffee do I like",
    "family in Portugal",
    "python tooling",
    "exercise routine",
]


def populate(service: MemoryService, runtime: Runtime) -> dict[str, str]:
    """Memories in every exportable state, three types, two apps, categories, metadata and uses."""
    ids: dict[str, str] = {}
    for n, text in enumerate(TEXTS):
        kind = ["long_term", "short_term", "rule"][n % 3]
        [out] = service.add(
            ALICE, text, metadata={"n": n, "tags": ["a", n]}, memory_type=kind, importance=n / 10
        ).results
        ids[text] = out.id
    for text in CURSOR_TEXTS:
        ids[text] = service.add(CURSOR, text).results[0].id
    service.update(ALICE, ids[TEXTS[4]], text="I am learning to sail a small dinghy on Saturdays")
    service.update(ALICE, ids[TEXTS[5]], metadata={"private": True})
    service.get(ALICE, ids[TEXTS[6]])
    actor = service._actor(ALICE)
    runtime.categorizer.drain()  # the background categoriser is done; replace its picks with known ones
    with runtime.db.session() as session:
        session.execute(delete(MemoryCategory))
        service._set_state(session, actor, [ids[TEXTS[7]], ids[CURSOR_TEXTS[2]]], MemoryState.paused)
        service._set_state(session, actor, [ids[TEXTS[8]], ids[TEXTS[1]]], MemoryState.archived)
        service._set_state(session, actor, [ids[TEXTS[9]]], MemoryState.deleted)
        session.add(Category(id=category_id("sailing"), name="sailing"))
        session.flush()
        for text, name in [(TEXTS[4], "sailing"), (TEXTS[4], "hobbies"), (TEXTS[0], "health")]:
            session.add(MemoryCategory(memory_id=ids[text], category_id=category_id(name)))
    return ids


def snapshot(service: MemoryService) -> list[dict[str, Any]]:
    """Every exportable memory of alice, oldest first, as the service reports it."""
    page = service.list_memories(
        ALICE, limit=500, filters=MemoryFilter(states=EXPORTED_STATES), sort="created", log_access=False
    )
    return [m.model_dump() for m in page.results]


def vectors(runtime: Runtime, ids: list[str]) -> dict[str, list[float]]:
    points = runtime.pool.get("alice").store.retrieve_many(ids, with_vectors=True)
    return {str(p.id): list(p.vector) for p in points}


def point_count(runtime: Runtime, user: str = "alice") -> int:
    store = runtime.pool.get(user).store
    return store.count()


def export_bytes(service: MemoryService, **options: Any) -> bytes:
    return b"".join(service.backups.export("alice", **options))


def lines(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gzip.decompress(data).splitlines()]


def pack(records: list[dict[str, Any]]) -> bytes:
    return gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode())


def header(**changes: Any) -> dict[str, Any]:
    base = {
        "format": "memory-server-export",
        "version": 1,
        "user_id": "alice",
        "embedder": {"name": "sentence-transformers/all-MiniLM-L6-v2", "dims": 384},
    }
    return {**base, **changes}


@pytest.fixture
def target(
    tmp_path: Path, second_database_url: str, model_dir: Path, embedder: FastEmbedEmbedder
) -> Iterator[Runtime]:
    """A second, empty server: its own data directory and database."""
    settings = load_settings(
        data_dir=tmp_path / "target", database_url=second_database_url, embedding_model_dir=model_dir
    )
    rt = Runtime.build(settings, embedder=embedder)
    yield rt
    rt.close()


@pytest.mark.parametrize("with_vectors", [True, False], ids=["vectors", "no-vectors"])
def test_round_trip_reproduces_memories_states_and_search(
    service: MemoryService, runtime: Runtime, target: Runtime, with_vectors: bool
) -> None:
    ids = populate(service, runtime)
    data = export_bytes(service, include_vectors=with_vectors)
    report = target.memories.backups.import_file(data)
    before = snapshot(service)
    assert len(before) == len(TEXTS) + len(CURSOR_TEXTS) - 1  # the deleted one stays behind
    assert (report.total, report.added, report.skipped, report.reembedded) == (
        len(before),
        len(before),
        {},
        not with_vectors,
    )
    assert snapshot(target.memories) == before
    states = {m["state"] for m in before}
    assert states == {"active", "paused", "archived"} and {m["app"] for m in before} == {
        "claude-desktop",
        "cursor",
    }
    edited = next(m for m in before if m["id"] == ids[TEXTS[4]])
    assert edited["categories"] == ["hobbies", "sailing"] and edited["text"].endswith("Saturdays")

    # Every memory has its vector, paused and archived ones too.
    source_vectors = vectors(runtime, [m["id"] for m in before])
    copied = vectors(target, [m["id"] for m in before])
    assert copied.keys() == source_vectors.keys() and point_count(target) == len(before)
    for memory_id, vector in source_vectors.items():
        # Float32 all the way; only the store's normalisation of unit vectors may move a last bit.
        assert copied[memory_id] == pytest.approx(vector, abs=1e-6 if with_vectors else 1e-5)

    for query in QUERIES:
        expected = [m.id for m in service.search(ALICE, query, limit=5).results]
        assert [m.id for m in target.memories.search(ALICE, query, limit=5).results] == expected

    # Non-active states arrive with a history row saying so.
    with target.db.session() as session:
        history = session.execute(
            select(MemoryStatusHistory.old_state, MemoryStatusHistory.new_state).where(
                MemoryStatusHistory.memory_id == ids[TEXTS[8]]
            )
        ).all()
    assert [tuple(h) for h in history] == [(None, "archived")]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_export_header_filters_and_pages(service: MemoryService, runtime: Runtime) -> None:
    ids = populate(service, runtime)
    same_moment = datetime(2020, 1, 1, tzinfo=UTC)
    batch = [
        BulkItem(
            str(uuid.uuid4()), f"Imported note number {n}", created_at=same_moment, updated_at=same_moment
        )
        for n in range(7)
    ]
    service.upsert_many(ALICE, batch)
    records = lines(export_bytes(service, page_size=3))  # pages split the seven equal timestamps
    head, memories = records[0], records[1:]
    assert head["format"] == "memory-server-export" and head["version"] == 1 and head["user_id"] == "alice"
    assert head["embedder"] == {"name": runtime.embedder.name, "dims": 384} and head["vectors"] is False
    assert len(memories) == len({m["id"] for m in memories}) == len(TEXTS) + len(CURSOR_TEXTS) - 1 + 7
    assert ids[TEXTS[9]] not in {m["id"] for m in memories}  # deleted
    assert [m["created_at"] for m in memories] == sorted(m["created_at"] for m in memories)
    assert all("vector" not in m for m in memories)

    cursor_only = lines(export_bytes(service, app="cursor"))
    assert cursor_only[0]["filters"]["app"] == "cursor"
    assert {m["text"] for m in cursor_only[1:]} == set(CURSOR_TEXTS)
    later = lines(export_bytes(service, since=datetime.now(UTC) - timedelta(hours=1)))
    assert len(later) - 1 == len(memories) - 7  # the 2020 notes have not changed since

    with pytest.raises(NotFound, match="no user 'nobody'"):
        service.backups.export("nobody")
    with pytest.raises(NotFound, match="no app 'vscode'"):
        service.backups.export("alice", app="vscode")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_vectors_from_another_embedder_are_recomputed(
    service: MemoryService, runtime: Runtime, target: Runtime, embedder: FastEmbedEmbedder
) -> None:
    populate(service, runtime)
    records = lines(export_bytes(service, include_vectors=True))
    # Another embedder made these vectors: every text is embedded again by the one running here.
    foreign = [header(embedder={"name": "text-embedding-3-small", "dims": 4})] + [
        {**r, "vector": [0.5, 0.5, 0.5, 0.5]} for r in records[1:]
    ]
    report = target.memories.backups.import_file(pack(foreign))
    assert report.reembedded and report.added == len(records) - 1
    stored = vectors(target, [r["id"] for r in records[1:]])
    for record in records[1:4]:
        assert stored[record["id"]] == pytest.approx(embedder.embed([record["text"]])[0], abs=1e-5)
    for query in QUERIES:
        assert [m.id for m in target.memories.search(ALICE, query, limit=3).results] == [
            m.id for m in service.search(ALICE, query, limit=3).results
        ]

    # The same embedder made them: they are stored as they are (this one is deliberately odd).
    odd = [0.0] * 384
    odd[0] = 1.0
    extra_id = str(uuid.uuid4())
    extra = {"id": extra_id, "text": "A memory only this file has", "vector": odd}
    report = target.memories.backups.import_file(pack([records[0], extra]))
    assert not report.reembedded and report.added == 1
    assert vectors(target, [extra_id])[extra_id] == pytest.approx(odd, abs=1e-6)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_skip_keeps_and_overwrite_replaces_stored_memories(
    service: MemoryService, runtime: Runtime, target: Runtime
) -> None:
    ids = populate(service, runtime)
    data = export_bytes(service)
    target.memories.backups.import_file(data)
    total = len(snapshot(service))
    changed_text, paused = ids[TEXTS[0]], ids[TEXTS[2]]
    target.memories.update(ALICE, changed_text, text="I am no longer allergic to anything")
    actor = target.memories._actor(ALICE)
    with target.db.session() as session:
        target.memories._set_state(session, actor, [paused], MemoryState.paused)

    skipped = target.memories.backups.import_file(data, mode="skip")
    assert (skipped.added, skipped.updated, skipped.unchanged) == (0, 0, total - 1)
    assert list(skipped.skipped) == [changed_text]
    after_skip = {m["id"]: m for m in snapshot(target.memories)}
    assert after_skip[changed_text]["text"].startswith("I am no longer")
    assert after_skip[paused]["state"] == "paused"

    overwritten = target.memories.backups.import_file(data, mode="overwrite")
    assert (overwritten.added, overwritten.updated, overwritten.unchanged) == (0, 2, total - 2)
    assert snapshot(target.memories) == snapshot(service)
    again = target.memories.backups.import_file(data, mode="overwrite")
    assert (again.updated, again.unchanged) == (0, total)
    [top] = target.memories.search(ALICE, "peanut allergy", limit=1).results
    assert top.id == changed_text  # the restored text was re-embedded


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_interrupted_import_resumes_without_duplicates(
    service: MemoryService, runtime: Runtime, target: Runtime
) -> None:
    items = [
        BulkItem(
            str(uuid.uuid5(uuid.NAMESPACE_URL, f"resume:{n}")),
            f"Note {n}: bring item {n * 7 % 601} to room {n}",
        )
        for n in range(600)
    ]
    service.upsert_many(ALICE, items)
    records = lines(export_bytes(service, include_vectors=True))
    backups = target.memories.backups

    # A file cut short (say, a copy that stopped) imports what it has ...
    partial = backups.import_file(pack(records[:251]))
    assert partial.added == 250

    # ... an import stopped by Ctrl-C keeps the batches it finished ...
    def stop_after_four_batches(done: int, total: int) -> None:
        if done >= 400:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        backups.import_file(pack(records), batch_size=100, progress=stop_after_four_batches)
    with target.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Memory)) == 400

    # ... and running it again finishes the job, adding nothing twice.
    final = backups.import_file(pack(records))
    assert (final.added, final.unchanged, final.skipped) == (200, 400, {})
    with target.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Memory)) == 600
        assert session.scalar(select(func.count(func.distinct(Memory.content_hash)))) == 600
    assert point_count(target) == 600


GOOD = {"id": "8f14e45f-ceea-467f-a8f5-0a4f3e8a1b2c", "text": "A perfectly fine memory"}
DAMAGED = {
    "empty file": (b"", "the file is empty"),
    "not gzip or json": (b"\x00\x01 binary junk\nmore junk\n", "not a memory-server-export header"),
    "another format": (pack([{"format": "other-tool", "version": 1}]), "not a memory-server export"),
    "newer version": (pack([header(version=2), GOOD]), "version 2 is not supported.*upgrade"),
    "bad json": (pack([header(), GOOD]) + gzip.compress(b'{"id": oops\n'), "line 3 is not valid JSON"),
    "missing text": (pack([header(), GOOD, {"id": str(uuid.uuid4())}]), "line 3: text: Field required"),
    "deleted state": (pack([header(), {**GOOD, "state": "deleted"}]), "line 2: state"),
    "bad id": (pack([header(), {**GOOD, "id": "42"}]), "line 2: id: .*invalid memory id"),
    "wrong vector size": (pack([header(), {**GOOD, "vector": [0.1, 0.2]}]), "line 2: the vector has 2"),
    "duplicate id": (pack([header(), GOOD, {**GOOD, "text": "again"}]), "appears twice"),
    "truncated gzip": (pack([header()] + [{**GOOD, "id": str(uuid.uuid4())}] * 50)[:-30], "truncated"),
    "bad header user": (pack([header(user_id="no spaces allowed"), GOOD]), "the header.*invalid user id"),
}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_or_unsupported_files_import_nothing(target: Runtime, case: str) -> None:
    data, problem = DAMAGED[case]
    with pytest.raises(InvalidInput, match=problem):
        target.memories.backups.import_file(data)
    with target.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Memory)) == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_minimal_plain_json_lines_file_imports_with_defaults(target: Runtime) -> None:
    plain = "".join(json.dumps(r) + "\n" for r in [header(embedder=None), GOOD]).encode()
    report = target.memories.backups.import_file(plain, user_id="bob", client_name="restore")
    assert (report.user_id, report.added, report.reembedded) == ("bob", 1, True)
    stored = target.memories.get(Caller("bob", "restore"), GOOD["id"])
    assert (stored.text, stored.app, stored.state, stored.memory_type) == (
        GOOD["text"],
        "restore",
        "active",
        "long_term",
    )


def cli_env(data_dir: Path, model_dir: Path) -> dict[str, str]:
    return {"MEMORY_DATA_DIR": str(data_dir), "EMBEDDING_MODEL_DIR": str(model_dir)}


def test_cli_export_then_import_into_another_data_dir(
    tmp_path: Path, model_dir: Path, embedder: FastEmbedEmbedder
) -> None:
    source_dir, dest_dir = tmp_path / "source", tmp_path / "dest"
    source = Runtime.build(
        load_settings(data_dir=source_dir, embedding_model_dir=model_dir), embedder=embedder
    )
    try:
        populate(source.memories, source)
        expected = snapshot(source.memories)
    finally:
        source.close()  # one process per embedded Qdrant directory
    runner = CliRunner()
    file = tmp_path / "alice.jsonl.gz"

    exported = runner.invoke(
        cli_app,
        ["export", "--user", "alice", "--vectors", "--output", str(file)],
        env=cli_env(source_dir, model_dir),
    )
    assert exported.exit_code == 0, exported.output
    assert (
        lines(file.read_bytes())[0]["vectors"] is True and not file.with_name(file.name + ".partial").exists()
    )
    to_stdout = runner.invoke(
        cli_app, ["export", "--user", "alice", "--app", "cursor"], env=cli_env(source_dir, model_dir)
    )
    assert to_stdout.exit_code == 0 and len(lines(to_stdout.stdout_bytes)) == 1 + len(CURSOR_TEXTS)

    imported = runner.invoke(cli_app, ["import", str(file)], env=cli_env(dest_dir, model_dir))
    assert imported.exit_code == 0, imported.output
    n = len(expected)
    assert f"imported {n} memories for alice: {n} added, 0 updated, 0 unchanged, 0 skipped" in imported.stderr
    again = runner.invoke(
        cli_app, ["import", str(file), "--mode", "overwrite"], env=cli_env(dest_dir, model_dir)
    )
    assert f"0 added, 0 updated, {n} unchanged" in again.stderr

    bogus = tmp_path / "bogus.gz"
    bogus.write_bytes(pack([header(version=9)]))
    refused = runner.invoke(cli_app, ["import", str(bogus)], env=cli_env(dest_dir, model_dir))
    assert refused.exit_code == 2 and "version 9 is not supported" in refused.stderr

    dest = Runtime.build(load_settings(data_dir=dest_dir, embedding_model_dir=model_dir), embedder=embedder)
    try:
        assert snapshot(dest.memories) == expected
    finally:
        dest.close()
