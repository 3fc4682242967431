"""memory-server doctor: each kind of drift between SQL and the vector store is found and repaired."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from memory_server.runtime import Runtime
from memory_server.services.memories import Caller
from memory_server.storage.mem0_pool import mem0_payload
from memory_server.storage.models import utcnow


def test_each_drift_is_found_and_repaired(runtime: Runtime, alice: Caller, bob: Caller) -> None:
    service = runtime.memories
    keep = service.add(alice, "My passport number ends in 4471").results[0]
    lose = service.add(alice, "The spare key is with the neighbour at number 12").results[0]
    stale = service.add(alice, "Dentist is Dr Ahmed on Queen Street").results[0]
    service.add(bob, "Bob's memory is fine").results[0]
    store = runtime.pool.get(alice.user_id).store
    assert runtime.doctor().check().clean

    orphan = str(uuid.uuid4())  # a vector whose SQL write never committed
    now = utcnow()
    vector = runtime.pool.embedder.embed("half-written memory")
    store.insert(
        vectors=[vector], payloads=[mem0_payload("alice", "x", "half-written memory", now, now)], ids=[orphan]
    )
    store.delete_many([lose.id])  # a vector lost
    wrong = runtime.pool.embedder.embed("something else entirely")
    store.insert(
        vectors=[wrong],
        payloads=[mem0_payload("alice", "x", "something else entirely", now, now)],
        ids=[stale.id],
    )

    report = runtime.doctor().check()
    assert report.users_checked == 2 and not report.clean
    [drift] = report.drift
    assert (drift.user_id, drift.orphan_vectors, drift.missing_vectors, drift.stale_content) == (
        "alice",
        [orphan],
        [lose.id],
        [stale.id],
    )
    assert service.search(alice, "who has the spare key?", limit=3).results[0].id != lose.id

    assert runtime.doctor().check(repair=True).drift[0].user_id == "alice"
    assert runtime.doctor().check().clean
    assert service.search(alice, "who has the spare key?", limit=1).results[0].id == lose.id
    assert service.search(alice, "dentist on Queen Street", limit=1).results[0].id == stale.id
    assert {str(p.id) for p in store.retrieve_many([orphan, keep.id])} == {keep.id}


def test_cli_exit_codes(runtime: Runtime, alice: Caller, tmp_path: Path) -> None:
    memory = runtime.memories.add(alice, "A memory whose vector goes missing").results[0]
    runtime.pool.get(alice.user_id).store.delete_many([memory.id])
    settings = runtime.settings
    runtime.close()  # the embedded store allows one process at a time
    env = {
        "MEMORY_DATA_DIR": str(settings.data_dir),
        "DATABASE_URL": settings.resolved_database_url,
        "EMBEDDING_MODEL_DIR": str(settings.model_dir),
        "PATH": "/usr/bin:/bin",
    }
    command = [sys.executable, "-m", "memory_server.cli", "doctor"]
    found = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert found.returncode == 1 and "1 missing vector(s)" in found.stdout
    fixed = subprocess.run(
        [*command, "--repair"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert fixed.returncode == 0 and "repaired" in fixed.stdout
    clean = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert clean.returncode == 0 and "no drift" in clean.stdout
