"""The embedded vector store: Qdrant's own engine in-process (qdrant-edge), one shard per user.

qdrant-client's local mode searches by brute force in numpy and checks payload filters
point by point in Python; this engine is Qdrant's Rust core: payload indexes, HNSW, BM25
sparse vectors, a WAL, and a reopen in a fraction of a second. Each user's collection is
one shard directory under ``$MEMORY_DATA_DIR/edge``. Points not yet indexed are searched
exactly; once there are enough of them (5,000 the first time, then as many as are
indexed, at most ``index_threshold``) a child process builds HNSW on a copy of the shard
(the engine holds the GIL while it builds, so building in this process would stop every
request), and the built copy replaces the live shard with the writes made meanwhile
replayed. Searches keep running, exactly, while it builds.

``EdgeCollection`` offers the methods of mem0's ``VectorStoreBase`` that mem0 calls, plus
the helpers the services use, so mem0 works on it through the same seam as on Qdrant.
"""

from __future__ import annotations

import fcntl
import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import qdrant_edge as qe

from memory_server.errors import ConfigurationError, Unavailable
from memory_server.identity import COLLECTION_PREFIX, collection_name, dimension_mismatch
from memory_server.storage.edge_shard import (
    DEFAULT_INDEX_THRESHOLD,
    FIRST_INDEX_POINTS,
    LINKS,
    META_FILE,
    Shard,
    recover_builds,
)
from memory_server.storage.lexical import ENCODER, SPARSE_NAME
from memory_server.storage.links import link_of
from memory_server.storage.ranking import NEXT, PREV, Candidate, Hit, HybridMixin, RankingConfig

log = logging.getLogger(__name__)

# Open shards kept beyond this many are closed once unused for IDLE_SECONDS: each holds a
# file, ~0.4 MB and its search threads, and a server with thousands of users must not
# keep them all. Reopening a small one takes milliseconds (large ones stay in use).
DEFAULT_MAX_OPEN = 256
IDLE_SECONDS = 60.0
# Threads of each shard's search pool (segments searched in parallel). The engine's
# default follows the CPUs (8 threads here, on 2 cores); a collection has 2-3 segments,
# and 2 threads searched 15k points as fast as 8 (0.5 ms) where 1 took twice as long.
SEARCH_THREADS = 2
# Payload fields we filter or order on get an index (user_id: mem0 filters by it).
_KEYWORD_FIELDS = ("user_id", "app_id")

Ids = list[str]
AnyList = list[Any]


def _kilobytes(points: int, dims: int) -> int:
    return max(1, points * dims * 4 // 1024)


def _filter(filters: dict[str, Any] | None) -> qe.Filter | None:
    """mem0-style filters (``{"key": value}``, lists, ``{"in"/"ne"/"gte"...: v}``) as an edge filter."""
    if not filters:
        return None
    must: list[Any] = []
    must_not: list[Any] = []
    for key, value in filters.items():
        if isinstance(value, dict):
            for op, arg in value.items():
                if op == "eq":
                    must.append(qe.FieldCondition(key, match=qe.MatchValue(arg)))
                elif op == "ne":
                    must_not.append(qe.FieldCondition(key, match=qe.MatchValue(arg)))
                elif op == "in":
                    must.append(qe.FieldCondition(key, match=qe.MatchAny(list(arg))))
                elif op == "nin":
                    must_not.append(qe.FieldCondition(key, match=qe.MatchAny(list(arg))))
                elif op in ("gt", "gte", "lt", "lte"):
                    must.append(qe.FieldCondition(key, range=qe.RangeFloat(**{op: float(arg)})))
                else:
                    raise ValueError(f"unsupported filter operator {op!r}")
        elif isinstance(value, list):
            must.append(qe.FieldCondition(key, match=qe.MatchAny(value)))
        else:
            must.append(qe.FieldCondition(key, match=qe.MatchValue(value)))
    return qe.Filter(must=must or None, must_not=must_not or None)


def _dense_of(vector: Any) -> list[float] | None:
    if isinstance(vector, dict):
        vector = vector.get("")
    return list(vector) if vector is not None else None


class EdgeVectorStore:
    """The shards of one data directory, opened on first use and kept open while used
    (at most ``max_open`` of them once the others have been idle for ``idle_seconds``)."""

    is_local = True

    def __init__(
        self,
        dims: int,
        path: Path,
        ranking: RankingConfig | None = None,
        index_threshold: int = DEFAULT_INDEX_THRESHOLD,
        first_index: int = FIRST_INDEX_POINTS,
        max_open: int = DEFAULT_MAX_OPEN,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self.dims = dims
        self.path = path
        self.ranking = ranking or RankingConfig()
        self.index_threshold = index_threshold
        self.first_index = min(first_index, index_threshold)
        self.max_open = max_open
        self.idle_seconds = idle_seconds
        self._shards: dict[str, Shard] = {}
        self._used: dict[str, float] = {}  # collection -> when it was last looked up
        self._lock = threading.Lock()
        self._closed = False
        path.mkdir(parents=True, exist_ok=True)
        self._lockfile: IO[str] | None = open(path / ".lock", "a")  # noqa: SIM115 (held until close)
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lockfile.close()
            self._lockfile = None
            raise ConfigurationError(
                f"the embedded vector store in {path} is in use by another memory-server process; "
                "stop it, or point MEMORY_DATA_DIR elsewhere, or use a Qdrant server (QDRANT_URL)"
            ) from None
        recover_builds(path)

    def _config(self) -> qe.EdgeConfig:
        return qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=self.dims, distance=qe.Distance.Cosine),
            sparse_vectors={SPARSE_NAME: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=_kilobytes(self.first_index, self.dims)),
            # One indexing thread: the other core keeps serving while HNSW builds.
            hnsw_config=qe.HnswIndexConfig(
                m=16, ef_construct=100, full_scan_threshold=10_000, max_indexing_threads=1
            ),
            max_search_threads=SEARCH_THREADS,
        )

    def collection_names(self) -> list[str]:
        """Names of the collections on disk."""
        return sorted(
            p.name for p in self.path.iterdir() if p.is_dir() and p.name.startswith(COLLECTION_PREFIX)
        )

    def stored_dims(self, name: str) -> int | None:
        meta = self.path / name / META_FILE
        try:
            return int(json.loads(meta.read_text())["dims"])
        except (OSError, ValueError, KeyError):
            return None

    def shard(self, name: str, create: bool = True) -> Shard:
        """The open shard of collection ``name`` (opened, or created, on first use)."""
        found = self._shards.get(name)
        if found is not None:
            self._used[name] = time.monotonic()
            return found
        with self._lock:
            if self._closed:
                raise Unavailable("the vector store is closed")
            found = self._shards.get(name)
            if found is not None:
                self._used[name] = time.monotonic()
                return found
            where = self.path / name
            existing = self.stored_dims(name)
            if existing is not None and existing != self.dims:
                raise ConfigurationError(dimension_mismatch(name, existing, self.dims))
            if existing is not None:
                shard = qe.EdgeShard.load(str(where), self._config())
            elif not create:
                raise KeyError(name)
            else:
                shard = qe.EdgeShard.create(str(where), self._config())
                for field in _KEYWORD_FIELDS:
                    shard.update(qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword))
                shard.flush()
                (where / META_FILE).write_text(json.dumps({"dims": self.dims, "format": 1}))
            opened = Shard(shard, where, self._config(), self.index_threshold, self.first_index)
            self._shards[name] = opened
            self._used[name] = time.monotonic()
            self._close_idle(keep=name)
        opened.maybe_index()  # a shard closed before its index was built gets one now
        if existing is not None and not opened.restored:
            threading.Thread(target=opened.learn_links, name=f"links-{name}", daemon=True).start()
        return opened

    def _close_idle(self, keep: str) -> None:
        """Close the least recently used shards beyond ``max_open`` that have been idle for
        ``idle_seconds`` (called holding the lock, so no open of the same directory races it)."""
        excess = len(self._shards) - self.max_open
        if excess <= 0:
            return
        now = time.monotonic()
        for name in sorted(self._shards, key=lambda n: self._used.get(n, 0.0)):
            if excess <= 0 or now - self._used.get(name, 0.0) < self.idle_seconds:
                break
            if name == keep:
                continue
            try:
                closed = self._shards[name].close_if_idle()
            except Exception:
                log.exception("closing the idle shard %s failed", name)
                closed = False
            if closed:
                self._shards.pop(name)
                self._used.pop(name, None)
                excess -= 1

    def check_dimensions(self, sample_user: str | None = None) -> None:
        """Fail fast if a collection on disk was made with another embedding dimension."""
        for name in self.collection_names():
            size = self.stored_dims(name)
            if size is not None and size != self.dims:
                raise ConfigurationError(dimension_mismatch(name, size, self.dims))

    def open_collection(self, user_id: str) -> EdgeCollection:
        """The store of one user's collection (created on first use)."""
        return EdgeCollection(self, user_id)

    def ping(self) -> None:
        if self._closed:
            raise Unavailable("the vector store is closed")

    def wait_indexed(self) -> None:
        """Block until every background index build has finished (benchmarks, tests)."""
        for shard in list(self._shards.values()):
            shard.wait_indexed()

    def close(self) -> None:
        """Flush and close every shard, then release the directory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            shards, self._shards = list(self._shards.values()), {}
        for shard in shards:
            try:
                shard.close()
            except Exception:
                log.exception("closing a shard failed")
        if self._lockfile is not None:
            self._lockfile.close()
            self._lockfile = None


class EdgeCollection(HybridMixin):
    """One user's collection: mem0's vector-store methods and our helpers, on an edge shard."""

    def __init__(self, store: EdgeVectorStore, user_id: str, name: str | None = None) -> None:
        self.store = store
        self.user_id = user_id
        self.collection_name = name or collection_name(user_id)
        self.embedding_model_dims = store.dims
        self.ranking = store.ranking
        self.is_local = True
        store.shard(self.collection_name)  # create it now, as mem0's stores do

    # ------------------------------------------------------------ plumbing

    @property
    def _s(self) -> Shard:
        shard = self.store.shard(self.collection_name)
        if shard.closed:
            raise Unavailable("the vector store is closed")
        return shard

    @property
    def _tail(self) -> Any:
        return self._s.tail

    @_tail.setter
    def _tail(self, value: Any) -> None:
        self._s.tail = value

    def _points(
        self, vectors: Sequence[Sequence[float]], payloads: Sequence[dict[str, Any]], ids: Sequence[str]
    ) -> list[qe.Point]:
        points = []
        for vector, payload, point_id in zip(vectors, payloads, ids, strict=True):
            indices, values = ENCODER.document(str(payload.get("data") or ""))
            named: dict[str, Any] = {"": [float(v) for v in vector]}
            if indices:
                named[SPARSE_NAME] = qe.SparseVector(indices, values)
            points.append(qe.Point(str(point_id), named, payload))
        return points

    def _write(self, points: list[qe.Point]) -> None:
        shard = self._s
        with shard.lock:
            shard.update(qe.UpdateOperation.upsert_points(points))
            shard.links.forget(str(p.id) for p in points)
        shard.maybe_index(len(points))

    @staticmethod
    def _hit(point: Any, with_vector: bool = False) -> Hit:
        return Hit(
            str(point.id),
            float(getattr(point, "score", 0.0) or 0.0),
            dict(point.payload or {}),
            vector=_dense_of(point.vector) if with_vector else None,
        )

    # ------------------------------------------------------------ ranking primitives

    def _dense(self, vector: list[float], limit: int) -> list[Candidate]:
        with self._s.reading() as shard:
            found = shard.query(
                qe.QueryRequest(limit=limit, query=qe.Query.Nearest(list(vector)), with_payload=False)
            )
        return self._with_links([(str(p.id), float(p.score)) for p in found])

    def _lexical(self, indices: list[int], values: list[float], limit: int) -> list[Candidate]:
        with self._s.reading() as shard:
            found = shard.query(
                qe.QueryRequest(
                    limit=limit,
                    query=qe.Query.Nearest(qe.SparseVector(indices, values), using=SPARSE_NAME),
                    with_payload=False,
                )
            )
        return self._with_links([(str(p.id), float(p.score)) for p in found])

    def _with_links(self, scored: list[tuple[str, float]]) -> list[Candidate]:
        """The candidates with their links as payload, from the shard's cache (misses read once)."""
        shard = self._s
        epoch = shard.links.epoch
        found = [(mid, score, shard.links.get(mid)) for mid, score in scored]
        missing: list[Any] = [mid for mid, _, link in found if link is None]
        if missing:
            with shard.reading() as edge:
                records = edge.retrieve(missing, with_payload=LINKS, with_vector=False)
            read = {str(r.id): link_of(r.payload) for r in records}
            shard.links.keep(read, epoch)
            found = [(mid, score, link or read.get(mid)) for mid, score, link in found]
        return [(mid, score, {PREV: link[0], NEXT: link[1]} if link else {}) for mid, score, link in found]

    def _fetch(self, ids: list[str]) -> list[Hit]:
        return [self._hit(p, with_vector=True) for p in self.retrieve_many(ids, with_vectors=True)]

    def _set_payload(self, point_id: str, payload: dict[str, Any]) -> None:
        shard = self._s
        shard.update(qe.UpdateOperation.set_payload([point_id], payload))
        shard.links.merged(point_id, payload)

    # ------------------------------------------------------------ mem0's VectorStoreBase

    def insert(
        self,
        vectors: Sequence[Sequence[float]],
        payloads: list[dict[str, Any]] | None = None,
        ids: Ids | None = None,
    ) -> None:
        ids = [str(i) for i in ids] if ids is not None else [str(uuid.uuid4()) for _ in vectors]
        payloads = [dict(p) for p in payloads] if payloads is not None else [{} for _ in vectors]
        shard = self._s
        with shard.lock:
            self._link(ids, payloads)
            shard.update(qe.UpdateOperation.upsert_points(self._points(vectors, payloads, ids)))
            shard.links.wrote({i: link_of(p) for i, p in zip(ids, payloads, strict=True)})
        shard.maybe_index(len(ids))

    def search(
        self, query: str, vectors: list[float], top_k: int = 5, filters: dict[str, Any] | None = None
    ) -> list[Hit]:
        """Nearest points by cosine similarity (mem0's dense search)."""
        with self._s.reading() as shard:
            found = shard.query(
                qe.QueryRequest(
                    limit=top_k,
                    query=qe.Query.Nearest(list(vectors)),
                    filter=_filter(self._scoped(filters)),
                    with_payload=True,
                )
            )
        return [self._hit(p) for p in found]

    def keyword_search(self, query: str, top_k: int = 5, filters: dict[str, Any] | None = None) -> None:
        return None  # mem0's own keyword pass is not used: ``rank`` does hybrid search

    def delete(self, vector_id: str) -> None:
        self.delete_many([str(vector_id)])

    def update(
        self, vector_id: str, vector: list[float] | None = None, payload: dict[str, Any] | None = None
    ) -> None:
        point_id = str(vector_id)
        if vector is not None and payload is not None:
            self._write(self._points([vector], [payload], [point_id]))
            return
        shard = self._s
        with shard.lock:
            if payload is not None:
                shard.update(qe.UpdateOperation.overwrite_payload([point_id], payload))
                shard.links.forget([point_id])
            if vector is not None:
                shard.update(
                    qe.UpdateOperation.update_vectors([qe.PointVectors(point_id, {"": list(vector)})])
                )

    def get(self, vector_id: str) -> Hit | None:
        found = self.retrieve_many([str(vector_id)])
        return self._hit(found[0]) if found else None

    def list(self, filters: dict[str, Any] | None = None, top_k: int = 100) -> tuple[AnyList, None]:
        with self._s.reading() as shard:
            records, _next = shard.scroll(
                qe.ScrollRequest(limit=top_k, filter=_filter(self._scoped(filters)), with_payload=True)
            )
        return [self._hit(r) for r in records], None

    def list_cols(self) -> AnyList:
        return self.store.collection_names()

    def col_info(self) -> dict[str, Any]:
        with self._s.reading() as shard:
            info = shard.info()
        return {"points_count": info.points_count, "indexed_vectors_count": info.indexed_vectors_count}

    def delete_col(self) -> None:
        self.delete_many([h.id for h in self.list(top_k=10**9)[0]])

    def reset(self) -> None:
        self.delete_col()

    # ------------------------------------------------------------ our helpers

    def delete_many(self, ids: Ids) -> None:
        """Delete several points in one call."""
        if ids:
            shard = self._s
            with shard.lock:
                shard.update(qe.UpdateOperation.delete_points([str(i) for i in ids]))
                shard.links.forget(str(i) for i in ids)

    def retrieve_many(self, ids: Ids, with_vectors: bool = False) -> AnyList:
        """Fetch several points in one call (vectors as a plain list)."""
        if not ids:
            return []
        with self._s.reading() as shard:
            records = shard.retrieve([str(i) for i in ids], with_payload=True, with_vector=with_vectors)
        return [
            Hit(str(r.id), 0.0, dict(r.payload or {}), vector=_dense_of(r.vector) if with_vectors else None)
            for r in records
        ]

    def upsert_points(self, points: Sequence[Any]) -> None:
        """Write points back as they were (used to undo a change)."""
        if points:
            self._write(
                self._points(
                    [_dense_of(p.vector) or [] for p in points],
                    [dict(p.payload or {}) for p in points],
                    [str(p.id) for p in points],
                )
            )

    def count(self) -> int:
        """Points in the collection."""
        with self._s.reading() as shard:
            return int(shard.count(qe.CountRequest(exact=True)))
