"""The embedded engine (qdrant-edge), hybrid ranking, migration, and parity with qdrant-client.

No Qdrant server can be installed on the build machines, so parity is checked against
qdrant-client's local mode, which runs the very ``UserCollection`` code a server deployment
uses (same requests, same fusion); only the engine behind the client differs.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from memory_server.config import load_settings
from memory_server.errors import ConfigurationError
from memory_server.identity import collection_name
from memory_server.runtime import Runtime
from memory_server.services.memories import Caller
from memory_server.storage.edge import EdgeCollection, EdgeVectorStore
from memory_server.storage.edge_shard import STATE_FILE
from memory_server.storage.embeddings import FastEmbedEmbedder, Precision
from memory_server.storage.mem0_pool import mem0_payload
from memory_server.storage.vectors import UserCollection, VectorStore

TEXTS = [
    "I adopted a grey cat called Pixel last winter",
    "My sister lives in Valparaiso and teaches chemistry",
    "The quarterly tax filing is due on the fifteenth",
    "I am training for a half marathon in October",
    "Our wifi password is written on the fridge",
    "The project codename is Zephyrine-42",
    "I prefer green tea over coffee in the morning",
    "Dentist appointment moved to Thursday at noon",
]
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def fill(
    collection: EdgeCollection | UserCollection, embedder: FastEmbedEmbedder, texts: list[str]
) -> list[str]:
    ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, t)) for t in texts]
    # Hours apart: no conversation links, so the ranking is plain hybrid.
    payloads = [
        mem0_payload("alice", "app-1", t, START + timedelta(hours=i), START + timedelta(hours=i))
        for i, t in enumerate(texts)
    ]
    collection.insert(vectors=embedder.embed(texts), payloads=payloads, ids=ids)
    return ids


def top(
    collection: EdgeCollection | UserCollection, embedder: FastEmbedEmbedder, query: str, k: int = 3
) -> list[str]:
    return [h.id for h in collection.rank(query, embedder.embed_one(query), top_k=k)]


def test_create_search_update_delete_and_reopen(tmp_path: Path, embedder: FastEmbedEmbedder) -> None:
    store = EdgeVectorStore(embedder.dims, tmp_path / "edge")
    collection = store.open_collection("alice")
    ids = fill(collection, embedder, TEXTS)
    assert collection.count() == len(TEXTS)
    [hit] = collection.search("", embedder.embed_one("a pet cat"), top_k=1)
    assert hit.id == ids[0] and hit.payload["data"] == TEXTS[0] and 0 < hit.score <= 1

    new_text = "I adopted a black dog called Byte"
    payload = dict(collection.get(ids[0]).payload)  # type: ignore[union-attr]
    collection.update(ids[0], vector=embedder.embed_one(new_text), payload={**payload, "data": new_text})
    assert top(collection, embedder, "dog named Byte", 1) == [ids[0]]
    collection.delete(ids[1])
    collection.delete_many([ids[2]])
    assert collection.get(ids[1]) is None and collection.count() == len(TEXTS) - 2
    store.close()

    reopened = EdgeVectorStore(embedder.dims, tmp_path / "edge")
    again = reopened.open_collection("alice")
    assert again.count() == len(TEXTS) - 2
    assert top(again, embedder, "dog named Byte", 1) == [ids[0]]
    [record] = again.retrieve_many([ids[3]], with_vectors=True)
    assert record.payload["data"] == TEXTS[3] and len(record.vector) == embedder.dims
    reopened.close()


def test_one_process_per_directory(tmp_path: Path, embedder: FastEmbedEmbedder) -> None:
    store = EdgeVectorStore(embedder.dims, tmp_path / "edge")
    try:
        with pytest.raises(ConfigurationError, match="in use by another memory-server process"):
            EdgeVectorStore(embedder.dims, tmp_path / "edge")
    finally:
        store.close()


def test_payload_filters(tmp_path: Path, embedder: FastEmbedEmbedder) -> None:
    store = EdgeVectorStore(embedder.dims, tmp_path / "edge")
    collection = store.open_collection("alice")
    ids = fill(collection, embedder, TEXTS[:4])
    collection.update(ids[1], payload={**collection.get(ids[1]).payload, "app_id": "app-2"})  # type: ignore[union-attr]
    vector = embedder.embed_one("family")
    assert {h.id for h in collection.search("", vector, top_k=10, filters={"app_id": "app-2"})} == {ids[1]}
    assert ids[1] not in {h.id for h in collection.search("", vector, 10, {"app_id": {"ne": "app-2"}})}
    listed, _ = collection.list(filters={"user_id": "alice", "app_id": ["app-1"]})
    assert sorted(h.id for h in listed) == sorted(ids[0:1] + ids[2:4])
    with pytest.raises(ValueError, match="another user"):
        collection.search("", vector, 5, filters={"user_id": "mallory"})
    store.close()


def test_hnsw_build_keeps_results(tmp_path: Path, embedder: FastEmbedEmbedder) -> None:
    """Past the threshold HNSW is built in the background; the top results stay the same."""
    store = EdgeVectorStore(embedder.dims, tmp_path / "edge", index_threshold=1200)
    collection = store.open_collection("alice")
    filler = [f"Reminder {n}: water the plant number {n % 37} in room {n % 11}" for n in range(1500)]
    fill(collection, embedder, TEXTS + filler)
    queries = ["which pet do I have", "what do I drink in the morning", "project codename"]
    exact = [top(collection, embedder, q) for q in queries]
    store.wait_indexed()
    assert "hnsw" in dense_index_kinds(tmp_path / "edge")
    assert [top(collection, embedder, q) for q in queries] == exact
    store.close()


def test_index_builds_grow_with_the_collection(tmp_path: Path) -> None:
    """The first build comes early; each later one waits for as many new points as are
    indexed, up to the threshold; the engine indexes every point a build covers."""
    dims = 32
    rng = np.random.default_rng(11)
    store = EdgeVectorStore(dims, tmp_path / "edge", index_threshold=3000, first_index=500)
    collection = store.open_collection("alice")
    shard = store.shard(collection_name("alice"))

    def add(n: int) -> None:
        vectors = rng.normal(size=(n, dims)).astype(np.float32).tolist()
        collection.insert(vectors=vectors, payloads=[{"user_id": "alice"}] * n)
        store.wait_indexed()

    steps = [(499, 0), (1, 500), (499, 500), (1, 1000), (999, 1000), (1, 2000), (2999, 4999)]
    steps += [(2999, 4999), (1, 7999)]  # past the threshold, a build every 3000 points
    for added, indexed in steps:
        add(added)
        assert shard.indexed == indexed, (added, indexed)
        assert collection.col_info()["indexed_vectors_count"] == indexed
    assert shard.build_at == 3000
    store.close()
    reopened = EdgeVectorStore(dims, tmp_path / "edge", index_threshold=3000, first_index=500)
    again = reopened.shard(collection_name("alice"))
    assert (again.indexed, again.unindexed, again.build_at) == (7999, 0, 3000)
    reopened.close()


def test_writes_made_during_a_build_get_the_next_one(tmp_path: Path) -> None:
    dims = 32
    rng = np.random.default_rng(12)
    store = EdgeVectorStore(dims, tmp_path / "edge", index_threshold=1000)
    collection = store.open_collection("alice")
    shard = store.shard(collection_name("alice"))

    def add(n: int) -> None:
        vectors = rng.normal(size=(n, dims)).astype(np.float32).tolist()
        collection.insert(vectors=vectors, payloads=[{"user_id": "alice"}] * n)

    add(1000)
    deadline = time.monotonic() + 30
    while shard._child is None:  # the copy is taken: what follows is written during the build
        assert time.monotonic() < deadline
        time.sleep(0.005)
    add(1500)
    store.wait_indexed()
    assert (shard.indexed, shard.unindexed) == (2500, 0)
    assert collection.col_info()["indexed_vectors_count"] == 2500
    store.close()


def test_idle_collections_beyond_the_cap_are_closed_and_reopen_on_use(
    tmp_path: Path, embedder: FastEmbedEmbedder
) -> None:
    store = EdgeVectorStore(embedder.dims, tmp_path / "edge", max_open=2, idle_seconds=0)
    ids: dict[str, str] = {}
    for user in ("ann", "bob", "cat"):
        text = f"{user} keeps the spare key under the blue pot"
        ids[user] = str(uuid.uuid5(uuid.NAMESPACE_URL, text))
        store.open_collection(user).insert(
            vectors=[embedder.embed_one(text)],
            payloads=[mem0_payload(user, "app-1", text, START, START)],
            ids=[ids[user]],
        )
        if user == "ann":
            ann_tail = store.shard(collection_name("ann")).tail
            assert ann_tail is not None and ann_tail[0] == ids["ann"]  # what the next add links to
    users = {collection_name(u): u for u in ("ann", "bob", "cat", "dan")}

    def open_now() -> set[str]:
        return {users[n] for n in store._shards}

    assert open_now() == {"bob", "cat"}  # the least recently used went
    assert top(store.open_collection("ann"), embedder, "where is the spare key?", 1) == [ids["ann"]]
    assert open_now() == {"cat", "ann"}
    assert store.shard(collection_name("ann")).tail == ann_tail  # kept across the close
    bob = store.shard(collection_name("bob"))  # reopened; cat closed
    store.shard(collection_name("ann"))  # bob is now the least recently used
    with bob.reading():  # but busy: ann goes instead
        store.open_collection("dan")
        assert open_now() == {"bob", "dan"} and not bob.closed
    assert top(store.open_collection("bob"), embedder, "where is the spare key?", 1) == [ids["bob"]]
    store.close()
    patient = EdgeVectorStore(embedder.dims, tmp_path / "edge", max_open=1)  # idle for a minute first
    for user in ("ann", "bob", "cat"):
        patient.open_collection(user)
    assert len(patient._shards) == 3
    patient.close()


def dense_index_kinds(path: Path) -> set[str]:
    """Dense-index kinds of the segments on disk: "plain" (exact search) or "hnsw"."""
    return {
        json.loads(meta.read_text())["config"]["vector_data"][""]["index"]["type"]
        for meta in path.glob("*/segments/*/segment.json")
    }


def test_a_shard_closed_before_its_index_was_built_gets_it_on_reopen(
    tmp_path: Path, embedder: FastEmbedEmbedder
) -> None:
    store = EdgeVectorStore(embedder.dims, tmp_path / "edge", index_threshold=100_000)
    fill(store.open_collection("alice"), embedder, [f"Note {n} about shelf {n % 13}" for n in range(1200)])
    store.close()
    assert "hnsw" not in dense_index_kinds(tmp_path / "edge")
    again = EdgeVectorStore(embedder.dims, tmp_path / "edge", index_threshold=1000)
    collection = again.open_collection("alice")
    assert top(collection, embedder, "shelf 7", 3)  # opening it starts the build
    again.wait_indexed()
    assert "hnsw" in dense_index_kinds(tmp_path / "edge")
    again.close()


def test_lexical_only_match_is_found(tmp_path: Path, embedder: FastEmbedEmbedder) -> None:
    """Codes mean little to the embedding model; BM25 tells them apart."""
    store = EdgeVectorStore(embedder.dims, tmp_path / "edge")
    collection = store.open_collection("alice")
    codes = ["KX7Q", "MB3R", "TZ9W", "PL4D", "HV2N"]
    ids = fill(collection, embedder, [f"Locker {c} holds the spare camera batteries" for c in codes] + TEXTS)
    for i, code in enumerate(codes):
        assert top(collection, embedder, f"which locker is {code}?", 1) == [ids[i]]
    hit = collection.rank("KX7Q", embedder.embed_one("KX7Q"), top_k=1)[0]
    assert -1 <= hit.score <= 1  # the score shown stays the cosine similarity
    store.close()


def test_conversation_neighbours_share_relevance(tmp_path: Path, embedder: FastEmbedEmbedder) -> None:
    """An answer stored right after its question is found by what the question said."""
    store = EdgeVectorStore(embedder.dims, tmp_path / "edge")
    collection = store.open_collection("alice")
    fill(collection, embedder, TEXTS)
    turns = ["What did you name the sailing boat you bought?", "We called her Albatross, after the poem."]
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    later = START + timedelta(days=2)
    payloads = [
        mem0_payload("alice", "app-1", t, later + timedelta(seconds=i), later) for i, t in enumerate(turns)
    ]
    collection.insert(vectors=embedder.embed(turns), payloads=payloads, ids=ids)
    stored = {r.id: r.payload for r in collection.retrieve_many(ids)}
    assert stored[ids[1]]["prev_id"] == ids[0] and stored[ids[0]]["next_id"] == ids[1]
    assert set(top(collection, embedder, "name of my sailing boat", 2)) == set(ids)
    store.close()


def test_cached_links_follow_every_write_and_a_reopen(tmp_path: Path, embedder: FastEmbedEmbedder) -> None:
    """Ranking reads conversation links from a cache: it must say what the shard says."""
    store = EdgeVectorStore(embedder.dims, tmp_path / "edge")
    collection = store.open_collection("alice")
    turns = [f"turn {i} of a chat about sailing boats" for i in range(6)]
    ids = [str(uuid.uuid4()) for _ in turns]
    payloads = [
        mem0_payload("alice", "app-1", t, START + timedelta(seconds=i), START) for i, t in enumerate(turns)
    ]
    collection.insert(vectors=embedder.embed(turns[:3]), payloads=payloads[:3], ids=ids[:3])
    collection.insert(
        vectors=embedder.embed(turns[3:]), payloads=payloads[3:], ids=ids[3:]
    )  # links to ids[2]

    def check(live: list[str]) -> None:
        on_disk = {r.id: r.payload for r in collection.retrieve_many(live)}
        cached = {mid: payload for mid, _, payload in collection._with_links([(mid, 1.0) for mid in live])}
        for mid in live:
            for key in ("prev_id", "next_id"):
                assert cached[mid].get(key) == on_disk[mid].get(key), (mid, key)

    assert len(collection._s.links) == len(ids)  # known from the inserts, not read back
    check(ids)
    assert collection._with_links([(ids[2], 1.0)])[0][2]["next_id"] == ids[3]
    collection.update(ids[1], payload={**payloads[1], "prev_id": None, "next_id": None})
    collection.delete(ids[4])
    live = [i for i in ids if i != ids[4]]
    check(live)
    store.close()

    # A clean close saves the cache and the conversation tail; the next open reads them
    # (no scroll of the whole shard) and removes the file.
    state = tmp_path / "edge" / collection_name("alice") / STATE_FILE
    saved = json.loads(state.read_text())
    reopened = EdgeVectorStore(embedder.dims, tmp_path / "edge")
    collection = reopened.open_collection("alice")
    assert collection._s.restored and not state.exists()
    assert len(collection._s.links) == len(live)  # as cached at close (check() read ids[1] back)
    check(live)
    later = str(uuid.uuid4())
    collection.insert(
        vectors=embedder.embed(["turn 6, after the restart"]),
        payloads=[
            mem0_payload("alice", "app-1", "turn 6, after the restart", START + timedelta(seconds=6), START)
        ],
        ids=[later],
    )
    assert collection.retrieve_many([later])[0].payload["prev_id"] == ids[5]  # the tail came back
    live.append(later)
    check(live)
    reopened.close()

    # No file (a process that stopped without closing), or one that does not match the
    # shard: the links are learned from the shard in the background.
    saved["points"] = len(live) + 1  # from before the last insert, say
    for broken in (None, json.dumps(saved), "{not json"):
        state.unlink()
        if broken is not None:
            state.write_text(broken)
        again = EdgeVectorStore(embedder.dims, tmp_path / "edge")
        collection = again.open_collection("alice")
        assert not collection._s.restored and not state.exists()
        deadline = time.monotonic() + 10
        while len(collection._s.links) < len(live) and time.monotonic() < deadline:
            time.sleep(0.01)  # learned in the background after the open
        assert len(collection._s.links) == len(live)
        check(live)
        again.close()


def test_same_ranking_as_the_qdrant_client_path(tmp_path: Path, embedder: FastEmbedEmbedder) -> None:
    edge = EdgeVectorStore(embedder.dims, tmp_path / "edge").open_collection("alice")
    client_store = VectorStore(embedder.dims, path=tmp_path / "qdrant")
    server_path = client_store.open_collection("alice")
    fill(edge, embedder, TEXTS)
    fill(server_path, embedder, TEXTS)
    for query in ["pet", "family abroad", "Zephyrine", "morning drink", "taxes deadline", "running race"]:
        a = edge.rank(query, embedder.embed_one(query), top_k=5)
        b = server_path.rank(query, embedder.embed_one(query), top_k=5)
        assert [h.id for h in a] == [h.id for h in b], query
        assert [round(h.score, 4) for h in a] == [round(h.score, 4) for h in b]
    edge.store.close()
    client_store.close()


def test_old_local_mode_data_is_migrated(
    tmp_path: Path, embedder: FastEmbedEmbedder, model_dir: Path
) -> None:
    alice = Caller("alice", "claude-desktop")
    old = load_settings(
        data_dir=tmp_path / "data", embedding_model_dir=model_dir, vector_engine="qdrant-local"
    )
    runtime = Runtime.build(old, embedder=embedder)
    added = [runtime.memories.add(alice, t).results[0].id for t in TEXTS]
    runtime.close()
    assert (tmp_path / "data" / "qdrant" / "collection").is_dir()

    new = load_settings(data_dir=tmp_path / "data", embedding_model_dir=model_dir)
    runtime = Runtime.build(new, embedder=embedder)
    try:
        assert isinstance(runtime.vectors, EdgeVectorStore)
        assert not (tmp_path / "data" / "qdrant").exists()
        assert (tmp_path / "data" / "qdrant.migrated").is_dir()
        assert runtime.pool.get("alice").store.count() == len(TEXTS)
        found = runtime.memories.search(alice, "what is the name of my cat?", limit=1).results
        assert found[0].id == added[0]
        runtime.memories.update(alice, added[4], "The wifi password changed to correct-horse")
        assert runtime.memories.search(alice, "wifi password", limit=1).results[0].id == added[4]
    finally:
        runtime.close()
    Runtime.build(new, embedder=embedder).close()  # a second start finds nothing left to migrate


@pytest.mark.parametrize("precision", ["int8", "float32"])
def test_batch_embedding_keeps_order_and_reuses_cached_vectors(model_dir: Path, precision: Precision) -> None:
    embedder = FastEmbedEmbedder(model_dir, "sentence-transformers/all-MiniLM-L6-v2", precision=precision)
    texts = ["a much longer sentence about the garden shed and the old red bicycle in it", "tea", "my cat"]
    singles = [embedder.embed([t])[0] for t in texts]  # (batches of one: no padding)
    batch = embedder.embed(texts)  # float32: sorted by length inside; returned in the given order
    for got, want in zip(batch, singles, strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    cached = embedder.embed_one("tea")
    assert embedder.embed(["tea", "my cat"])[0] is cached  # taken from the query cache
    embedder.embed(["never asked as a query"])
    assert embedder._cache.get("never asked as a query") is None  # batches do not fill it
    embedder.forget()
    assert embedder._cache.get("tea") is None
    assert embedder.embed_one("tea") == pytest.approx(cached, abs=1e-6)


class _CountingEmbedder(FastEmbedEmbedder):
    """The real float32 model (which batches), recording the size of each batch it runs."""

    def __init__(self, model_dir: Path) -> None:
        self.batches: list[int] = []
        super().__init__(model_dir, "sentence-transformers/all-MiniLM-L6-v2", precision="float32")

    def _run(self, texts: Sequence[str]) -> list[list[float]]:
        self.batches.append(len(texts))
        return super()._run(texts)


QUESTIONS = [f"question number {n} about {word}" for n, word in enumerate(["tea", "cats", "rain"] * 8)]


def _all_at_once(embedder: FastEmbedEmbedder, texts: list[str]) -> dict[str, list[float]]:
    """Each text embedded as a query by its own thread, all released together."""
    start = threading.Barrier(len(texts))

    def query(text: str) -> list[float]:
        start.wait()
        return embedder.embed_one(text)

    with concurrent.futures.ThreadPoolExecutor(len(texts)) as pool:
        return dict(zip(texts, pool.map(query, texts), strict=True))


def test_concurrent_queries_share_batches_and_get_their_own_vectors(model_dir: Path) -> None:
    embedder = _CountingEmbedder(model_dir)
    texts = QUESTIONS
    alone = {t: embedder._embed([t])[0] for t in texts}
    embedder.batches.clear()
    got = _all_at_once(embedder, texts)
    for text in texts:
        assert got[text] == pytest.approx(alone[text], abs=1e-4)
    assert sum(embedder.batches) == len(texts)
    assert max(embedder.batches) > 1 and len(embedder.batches) < len(texts)


def test_int8_vectors_do_not_depend_on_their_company(model_dir: Path) -> None:
    """The int8 model quantises each run's activations together, so every text runs alone:
    in a bulk batch, beside concurrent queries or by itself, a text gets the same vector."""
    embedder = FastEmbedEmbedder(model_dir, "sentence-transformers/all-MiniLM-L6-v2")
    texts = QUESTIONS
    alone = {t: embedder._embed([t])[0] for t in texts}
    in_bulk = embedder.embed([*texts, "a much longer sentence about the garden shed and the old red bicycle"])
    assert in_bulk[: len(texts)] == [alone[t] for t in texts]
    assert _all_at_once(embedder, texts) == alone
    assert 1 <= embedder._model._made <= 2  # concurrent texts ran side by side, on at most 2 more sessions


def test_searches_and_writes_go_on_while_hnsw_builds(tmp_path: Path) -> None:
    """The engine holds the GIL while it builds, so the build runs in a child process."""
    dims = 64
    rng = np.random.default_rng(7)
    store = EdgeVectorStore(dims, tmp_path / "edge", index_threshold=20_000, first_index=20_000)
    collection = store.open_collection("alice")
    vectors = rng.normal(size=(20_000, dims)).astype(np.float32)
    for start in range(0, len(vectors), 5_000):  # the last batch crosses the threshold
        chunk = vectors[start : start + 5_000]
        collection.insert(vectors=chunk.tolist(), payloads=[{"user_id": "alice"}] * len(chunk))
    shard = store.shard(collection_name("alice"))
    assert shard._builder is not None and shard._builder.is_alive()
    slowest = 0.0
    written: list[str] = []
    while shard._builder.is_alive():
        started = time.perf_counter()
        assert collection.rank("", vectors[0].tolist(), top_k=5)
        slowest = max(slowest, time.perf_counter() - started)
        point = str(uuid.uuid4())
        collection.insert(
            vectors=[vectors[len(written)].tolist()], payloads=[{"user_id": "alice"}], ids=[point]
        )
        written.append(point)
        time.sleep(0.01)
    assert written, "the build finished before anything could run beside it"
    assert slowest < 1.0, f"a search waited {slowest:.1f} s for the index build"
    assert "hnsw" in dense_index_kinds(tmp_path / "edge")
    # what was written during the build is in the built shard
    assert {h.id for h in collection.retrieve_many(written)} == set(written)
    assert collection.count() == 20_000 + len(written)
    store.close()


def test_a_stop_in_the_middle_of_an_index_swap_loses_nothing(
    tmp_path: Path, embedder: FastEmbedEmbedder
) -> None:
    store = EdgeVectorStore(embedder.dims, tmp_path / "edge")
    ids = fill(store.open_collection("alice"), embedder, TEXTS)
    store.close()
    # As a process killed between the swap's two renames leaves it: the live shard moved
    # aside, the built copy not yet in place (and a half-made copy of another build).
    name = collection_name("alice")
    building = tmp_path / "edge" / ".building"
    building.mkdir()
    (tmp_path / "edge" / name).rename(building / f"{name}.old")
    (building / "mem_u_bob").mkdir()
    again = EdgeVectorStore(embedder.dims, tmp_path / "edge")
    assert {h.id for h in again.open_collection("alice").retrieve_many(ids)} == set(ids)
    assert not building.exists()
    again.close()
