"""Qdrant through qdrant-client: a Qdrant server (``QDRANT_URL``), or the old local mode.

The default embedded store is ``storage/edge.py`` (Qdrant's engine in-process); this
module serves deployments with a Qdrant server, and keeps qdrant-client's local mode
(``VECTOR_ENGINE=qdrant-local``) for comparisons and for migrating its data.

mem0's own ``Qdrant`` store does the reads; ``UserCollection`` subclasses it to share one
client, to write BM25 sparse vectors computed locally (mem0's encoder would download a
model), to rank with the shared hybrid ranking, and to index the fields we filter on.
"""

from __future__ import annotations

import functools
import logging
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mem0.vector_stores.qdrant import Qdrant
from qdrant_client import QdrantClient, models

from memory_server.errors import ConfigurationError, Unavailable
from memory_server.identity import COLLECTION_PREFIX, collection_name, dimension_mismatch
from memory_server.storage.lexical import ENCODER, SPARSE_NAME
from memory_server.storage.ranking import NEXT, PREV, Candidate, Hit, HybridMixin, RankingConfig

log = logging.getLogger(__name__)


# Aliases: UserCollection overrides mem0's `list` method, which hides the builtin in its body.
Ids = list[str]
Vector = list[float]
Points = list[models.PointStruct]
AnyList = list[Any]
Candidates = list[Candidate]
Ints = list[int]
Floats = list[float]
Hits = list[Hit]


class _LockedClient:
    """Serialises calls into an embedded (local mode) Qdrant client, which is not thread-safe."""

    def __init__(self, client: QdrantClient) -> None:
        self._client = client
        self._lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attr(*args, **kwargs)

        return locked


class UserCollection(HybridMixin, Qdrant):  # type: ignore[misc]
    """mem0's Qdrant store bound to one user's collection on the shared client."""

    def __init__(
        self, client: Any, user_id: str, dims: int, is_local: bool, ranking: RankingConfig | None = None
    ) -> None:
        # Set before super().__init__, which creates the collection and indexes.
        self._local = is_local
        self.user_id = user_id
        self.ranking = ranking or RankingConfig()
        self._tail = None
        self._write_lock = threading.RLock()
        self._sparse = False
        super().__init__(collection_name=collection_name(user_id), embedding_model_dims=dims, client=client)
        self.is_local = is_local

    def search(
        self, query: str, vectors: Vector, top_k: int = 5, filters: dict[str, Any] | None = None
    ) -> Any:
        return super().search(query, vectors, top_k=top_k, filters=self._scoped(filters))

    def list(self, filters: dict[str, Any] | None = None, top_k: int = 100) -> Any:
        return super().list(filters=self._scoped(filters), top_k=top_k)

    def _get_bm25_encoder(self) -> None:
        return None

    def create_col(
        self, vector_size: int, on_disk: bool, distance: models.Distance = models.Distance.COSINE
    ) -> None:
        self._has_bm25_slot = False  # mem0's own BM25 writes stay off; ours are in insert()
        if self.client.collection_exists(self.collection_name):
            info = self.client.get_collection(self.collection_name)
            existing = _vector_size(info)
            if existing is not None and existing != vector_size:
                raise ConfigurationError(dimension_mismatch(self.collection_name, existing, vector_size))
            # Collections made before hybrid search have no sparse slot: they rank by dense alone.
            self._sparse = SPARSE_NAME in (info.config.params.sparse_vectors or {})
            return
        self.client.create_collection(
            collection_name=self.collection_name,
            vectors_config=models.VectorParams(size=vector_size, distance=distance, on_disk=on_disk),
            sparse_vectors_config={SPARSE_NAME: models.SparseVectorParams(modifier=models.Modifier.IDF)},
        )
        self._sparse = True
        self._create_filter_indexes()

    def _create_filter_indexes(self) -> None:
        if getattr(self, "_local", True):
            return  # local mode has no payload indexes
        for field in ("user_id", "app_id"):
            try:
                self.client.create_payload_index(
                    collection_name=self.collection_name, field_name=field, field_schema="keyword"
                )
            except Exception as exc:  # an index that already exists is fine
                log.debug("payload index on %s: %s", self.collection_name, exc)

    # ------------------------------------------------------------ writes with BM25 and links

    def _point(self, point_id: Any, vector: Any, payload: dict[str, Any]) -> models.PointStruct:
        named: dict[str, Any] = {"": list(vector)}
        if self._sparse:
            indices, values = ENCODER.document(str(payload.get("data") or ""))
            if indices:
                named[SPARSE_NAME] = models.SparseVector(indices=indices, values=values)
        return models.PointStruct(id=point_id, vector=named, payload=payload)

    def insert(self, vectors: AnyList, payloads: AnyList | None = None, ids: AnyList | None = None) -> None:
        ids = [str(i) for i in ids] if ids is not None else [str(uuid.uuid4()) for _ in vectors]
        payloads = [dict(p) for p in payloads] if payloads is not None else [{} for _ in vectors]
        with self._write_lock:
            self._link(ids, payloads)
            points = [self._point(i, v, p) for i, v, p in zip(ids, vectors, payloads, strict=True)]
            self.client.upsert(collection_name=self.collection_name, points=points)

    def update(self, vector_id: Any, vector: AnyList | None = None, payload: Any = None) -> None:
        if vector is not None and payload is not None:
            point = self._point(vector_id, vector, payload)
            self.client.upsert(collection_name=self.collection_name, points=[point])
        else:
            super().update(vector_id, vector=vector, payload=payload)

    # ------------------------------------------------------------ ranking primitives

    def _dense(self, vector: Vector, limit: int) -> Candidates:
        found = self.client.query_points(
            collection_name=self.collection_name, query=list(vector), limit=limit, with_payload=[PREV, NEXT]
        ).points
        return [(str(p.id), float(p.score), dict(p.payload or {})) for p in found]

    def _lexical(self, indices: Ints, values: Floats, limit: int) -> Candidates:
        if not self._sparse:
            return []
        found = self.client.query_points(
            collection_name=self.collection_name,
            query=models.SparseVector(indices=indices, values=values),
            using=SPARSE_NAME,
            limit=limit,
            with_payload=[PREV, NEXT],
        ).points
        return [(str(p.id), float(p.score), dict(p.payload or {})) for p in found]

    def _fetch(self, ids: Ids) -> Hits:
        return [
            Hit(str(p.id), 0.0, dict(p.payload or {}), vector=_dense_vector(p.vector))
            for p in self.retrieve_many(ids, with_vectors=True)
        ]

    def _set_payload(self, point_id: str, payload: dict[str, Any]) -> None:
        self.client.set_payload(collection_name=self.collection_name, payload=payload, points=[point_id])

    def count(self) -> int:
        """Points in the collection."""
        return int(self.client.count(self.collection_name).count)

    def delete_many(self, ids: Ids) -> None:
        """Delete several points in one call."""
        if ids:
            self.client.delete(
                collection_name=self.collection_name, points_selector=models.PointIdsList(points=list(ids))
            )

    def retrieve_many(self, ids: Ids, with_vectors: bool = False) -> AnyList:
        """Fetch several points in one call."""
        return list(
            self.client.retrieve(
                collection_name=self.collection_name,
                ids=list(ids),
                with_payload=True,
                with_vectors=with_vectors,
            )
        )

    def upsert_points(self, points: Points) -> None:
        """Write points back as they were (used to undo a delete)."""
        if points:
            self.client.upsert(
                collection_name=self.collection_name,
                points=[
                    self._point(p.id, _dense_vector(p.vector) or [], dict(p.payload or {})) for p in points
                ],
            )


def _dense_vector(vector: Any) -> list[float] | None:
    if isinstance(vector, dict):
        vector = vector.get("")
    return list(vector) if vector is not None else None


def _vector_size(info: Any) -> int | None:
    vectors = info.config.params.vectors
    if isinstance(vectors, dict):
        vectors = vectors.get("") or next(iter(vectors.values()), None)
    return getattr(vectors, "size", None)


class VectorStore:
    """The one Qdrant client of the process, and per-user collections on it."""

    def __init__(
        self,
        dims: int,
        path: Path | None = None,
        url: str | None = None,
        api_key: str | None = None,
        ranking: RankingConfig | None = None,
    ):
        self.dims = dims
        self.is_local = url is None
        self.ranking = ranking or RankingConfig()
        try:
            if url is None:
                assert path is not None
                path.mkdir(parents=True, exist_ok=True)
                self.client: Any = _LockedClient(QdrantClient(path=str(path)))
            else:
                self.client = QdrantClient(url=url, api_key=api_key, timeout=10)
        except RuntimeError as exc:
            if "already accessed" in str(exc):
                raise ConfigurationError(
                    f"the embedded Qdrant store in {path} is in use by another memory-server process; "
                    "stop it, or point MEMORY_DATA_DIR elsewhere, or use a Qdrant server (QDRANT_URL)"
                ) from None
            raise

    def check_dimensions(self, sample_user: str | None = None) -> None:
        """Fail fast if an existing collection was made with another embedding dimension.

        Embedded Qdrant keeps every collection in memory, so all are checked; on a server
        only ``sample_user``'s collection is (the rest are checked when first opened).
        """
        try:
            names = [c.name for c in self.client.get_collections().collections]
        except Exception as exc:
            raise Unavailable(f"the vector store is unavailable: {type(exc).__name__}") from exc
        if not self.is_local:
            names = [n for n in names if sample_user is not None and n == collection_name(sample_user)]
        for name in names:
            if not name.startswith(COLLECTION_PREFIX):
                continue
            size = _vector_size(self.client.get_collection(name))
            if size is not None and size != self.dims:
                raise ConfigurationError(dimension_mismatch(name, size, self.dims))

    def open_collection(self, user_id: str) -> UserCollection:
        """mem0's store for one user's collection (created on first use)."""
        return UserCollection(self.client, user_id, self.dims, self.is_local, self.ranking)

    def ping(self) -> None:
        self.client.get_collections()

    def wait_indexed(self) -> None:
        """Nothing to wait for: a Qdrant server indexes on its own."""

    def close(self) -> None:
        close: Callable[[], None] | None = getattr(self.client, "close", None)
        if close is not None:
            close()
